// One entry point for every way a policy is named: "heuristic" (built in), a YAML file (rules)
// or a shared library (plugin, `.so`). Used by `esper tamiyo --policy` and `esper policy load`;
// errors are Error(kInvalidInput) with file:line where there is one, and nothing is swapped in.
#pragma once

#include <string>

#include "tamiyo/heuristic_policy.h"
#include "tamiyo/policy.h"

namespace esper::tamiyo {

// `spec`: "heuristic" | path ending in .yaml/.yml | path ending in .so (optionally followed by
// ":" and a config string for the plugin's init, e.g. "lib/libmy.so:training_steps=50").
PolicyPtr make_policy(const std::string& spec, const HeuristicConfig& heuristic = {});

// A rules policy from YAML text that arrived over the bus; `filename` is used in errors.
PolicyPtr make_rules_policy_from_text(const std::string& text, const std::string& filename);

// Multi-line human summary for `esper policy show` (kind, name, source, rules or settings).
std::string describe_policy(const Policy& policy);

}  // namespace esper::tamiyo
