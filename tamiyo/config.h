// Tamiyo's settings as one value: plateau detection, budgets, policy time budget, the heuristic's
// thresholds and the starting policy. Read from the `tamiyo:` section of a YAML file (a run
// config or a file of its own; other top-level keys are left to their owners), with every
// unknown key, wrong type or out-of-range value reported as `file:line: tamiyo.field: reason`.
// Settings the executor owns (gate times, per-layer limits) have one key, in the executor's
// sections; the agent copies them in with set_executor_settings(), and parse_config refuses
// their old tamiyo.* spellings with the key to set instead.
#pragma once

#include <cstdint>
#include <string>

#include "tamiyo/controller.h"
#include "tamiyo/heuristic_policy.h"
#include "tamiyo/view.h"

namespace esper::tamiyo {

struct Config {
    std::string policy = "heuristic";       // a spec for make_policy()
    uint64_t decision_interval_steps = 50;  // how often the agent calls decide()
    ViewConfig view;
    ControllerConfig controller;
    HeuristicConfig heuristic;
};

// What Tamiyo reads from the executor's sections of the run config (lifecycle:, blueprints:).
struct ExecutorSettings {
    uint64_t training_steps = 200;               // lifecycle.training_steps
    uint64_t evaluation_steps = 100;             // lifecycle.evaluation_steps
    uint64_t fine_tuning_steps = 200;            // lifecycle.fine_tuning_steps
    uint32_t max_active_per_layer = 4;           // lifecycle.max_active_per_layer
    int64_t max_blueprint_params_per_layer = 0;  // blueprints.max_params_per_layer (0 = none)
    bool operator==(const ExecutorSettings&) const = default;
};
// Copies `s` into the heuristic's gate times and the budget.
void set_executor_settings(Config& config, const ExecutorSettings& s);
ExecutorSettings executor_settings(const Config& config);

// Parses the `tamiyo:` section of `text` (defaults when absent); throws Error(kInvalidInput).
Config parse_config(const std::string& text, const std::string& filename);
Config load_config_file(const std::string& path);

// The effective config as YAML (a `tamiyo:` section that parse_config reads back, followed by
// the executor settings in use as a comment), for logs and run directories.
std::string format_config(const Config& config);

}  // namespace esper::tamiyo
