// Tamiyo's settings as one value: plateau detection, budgets, policy time budget, the heuristic's
// thresholds and the starting policy. Read from the `tamiyo:` section of a YAML file (a run
// config or a file of its own; other top-level keys are left to their owners), with every
// unknown key, wrong type or out-of-range value reported as `file:line: tamiyo.field: reason`.
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

// Parses the `tamiyo:` section of `text` (defaults when absent); throws Error(kInvalidInput).
Config parse_config(const std::string& text, const std::string& filename);
Config load_config_file(const std::string& path);

// The effective config as YAML (a `tamiyo:` section), for logs and run directories.
std::string format_config(const Config& config);

}  // namespace esper::tamiyo
