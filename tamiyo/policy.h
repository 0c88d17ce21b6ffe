// The policy interface: given the view and the current step, propose decisions. Policies may
// keep state (rate limits, plugin handles) so decide() is not const. The controller fills in
// Decision::policy and to_stage, applies budgets and sanity checks, and records everything; a
// policy only proposes. A policy may throw esper::Error: the controller disables it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tamiyo/decision.h"
#include "tamiyo/view.h"

namespace esper::tamiyo {

class Policy {
public:
    virtual ~Policy() = default;
    // Name recorded with every decision and in the policy history ("heuristic", the rules
    // file's `name:`, the plugin's reported name).
    virtual std::string name() const = 0;
    // "heuristic" | "rules" | "plugin" (or a test's own kind).
    virtual std::string kind() const = 0;
    // Where it came from (a file path) or "built-in"; shown by `esper policy show`.
    virtual std::string source() const { return "built-in"; }
    virtual std::vector<Decision> decide(const View& view, uint64_t step) = 0;
};

using PolicyPtr = std::unique_ptr<Policy>;

}  // namespace esper::tamiyo
