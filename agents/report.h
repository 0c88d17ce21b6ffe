// The run report: a self-contained report.html (no external files) built from a run directory's
// metrics.jsonl, events.jsonl, run.json and config.yaml. The text (how the run ended and why,
// wall-clock times, the summary, every event, the config) is HTML; the charts are the dashboard's
// (web/charts.js on uPlot, both inlined) drawn from the data embedded as JSON: loss, accuracy or
// bits per byte, seeds per stage, parameters, the seed swimlane and grid, with policy changes and
// annotations marked. A resumed run's metrics overlap (steps after the checkpoint are written
// twice): the newer lines win. Stages are spelled the vocabulary's way (kernels/vocabulary.h).
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "kernels/vocabulary.h"

namespace esper::agents {

// What the end-of-run summary table shows, derived from the run directory's files.
struct RunSummary {
    std::optional<double> test_accuracy;  // last eval line
    std::optional<double> test_loss;
    std::optional<double> test_bits_per_byte;  // last eval line of a text run (validation)
    std::optional<double> train_loss;  // last train line
    int64_t last_step = -1;
    std::optional<int64_t> host_params;  // last train line's host_params / blueprint_params
    std::optional<int64_t> blueprint_params;
    std::array<int, kNumSeedStages> seeds_in_stage{};    // non-dormant seeds per stage at the end
    std::array<int, kNumSeedStages> transitions_into{};  // lifecycle transitions into each stage
    int malformed_lines = 0;
    std::string state;         // from run.json: finished | stopped | failed ("" when absent)
    std::string state_reason;  // why it failed or stopped
};

RunSummary summarize_run(const std::filesystem::path& run_dir);

// The summary as an aligned text table for the terminal.
std::string format_summary(const RunSummary& summary);

// Reads DIR/metrics.jsonl, DIR/events.jsonl (and DIR/run.json, DIR/config.yaml if present) and
// returns the HTML page. Missing files give empty sections; a malformed line is skipped and
// counted.
std::string render_report(const std::filesystem::path& run_dir);

// render_report() written to DIR/report.html (temp file + rename). Returns the path.
std::filesystem::path write_report(const std::filesystem::path& run_dir);

}  // namespace esper::agents
