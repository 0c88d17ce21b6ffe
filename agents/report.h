// The run report: a self-contained report.html (inline SVG, no scripts, no external files) built
// from a run directory's metrics.jsonl and events.jsonl — train/test loss and accuracy vs step,
// seeds per stage over time, parameter growth, and the lifecycle event list. Stages are spelled
// the vocabulary's way (kernels/vocabulary.h), as in events.jsonl.
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
    std::optional<double> train_loss;  // last train line
    int64_t last_step = -1;
    std::optional<int64_t> host_params;  // last train line's host_params / blueprint_params
    std::optional<int64_t> blueprint_params;
    std::array<int, kNumSeedStages> seeds_in_stage{};    // non-dormant seeds per stage at the end
    std::array<int, kNumSeedStages> transitions_into{};  // lifecycle transitions into each stage
    int malformed_lines = 0;
};

RunSummary summarize_run(const std::filesystem::path& run_dir);

// The summary as an aligned text table for the terminal.
std::string format_summary(const RunSummary& summary);

// Reads DIR/metrics.jsonl, DIR/events.jsonl (and DIR/config.yaml if present) and returns the
// HTML page. Missing files give empty sections; a malformed line is skipped and counted.
std::string render_report(const std::filesystem::path& run_dir);

// render_report() written to DIR/report.html (temp file + rename). Returns the path.
std::filesystem::path write_report(const std::filesystem::path& run_dir);

}  // namespace esper::agents
