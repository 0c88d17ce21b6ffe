// The `rules` policy: a YAML file of rules, each a list of conditions over seed/layer/run metrics
// (all must hold), an action on the matching seed, and rate limits. Rules are tried in file
// order and a seed gets at most one decision per round (the first rule that matches it).
// The grammar is documented in docs/policies.md; every mistake in a file is reported on load as
// `file:line: field: reason` (Error kInvalidInput) and nothing is swapped in.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tamiyo/policy.h"

namespace esper::tamiyo {

enum class CmpOp : uint8_t { kLt, kLe, kGt, kGe, kEq, kNe, kIn, kNotIn, kMeasured, kUnmeasured };

struct RuleCondition {
    int metric = 0;  // index into the metric table (rules_policy.cpp)
    CmpOp op = CmpOp::kEq;
    double value = 0.0;
    std::vector<double> values;  // for in / not in
    std::string text;            // as written, for reasons (stage values in the vocabulary's
                                 // spelling: "seed.stage == FINE_TUNING")
    int line = 0;
};

struct RuleLimits {
    uint32_t per_decision = 0;  // decisions per round from this rule; 0 = unlimited
    uint32_t per_layer = 0;     // per round and layer; 0 = unlimited
    uint64_t every_steps = 0;   // min steps between rounds in which the rule acted
    uint32_t max_total = 0;     // over the policy's lifetime; 0 = unlimited
};

struct Rule {
    std::string name;
    int line = 0;
    std::vector<RuleCondition> when;
    DecisionKind action = DecisionKind::kGerminate;
    BlueprintKind blueprint = BlueprintKind::kResidualMlp;
    uint32_t blueprint_size = 0;
    std::string strategy = "linear";
    std::optional<int> order_by;  // metric index; candidates sorted by it (unmeasured last)
    bool order_descending = false;
    RuleLimits limits;
    std::string reason;  // optional text prepended to the generated reason
};

struct RulesConfig {
    std::string name;
    std::string description;
    std::string source;  // file path
    std::vector<Rule> rules;
};

// Parses and validates; throws Error(kInvalidInput) "file:line: field: reason".
RulesConfig parse_rules(const std::string& text, const std::string& filename);
RulesConfig load_rules_file(const std::string& path);

// The metric names a condition may use ("seed.health", "layer.active", "run.plateau", ...).
std::vector<std::string> rules_metric_names();

class RulesPolicy final : public Policy {
public:
    explicit RulesPolicy(RulesConfig config);
    static std::unique_ptr<RulesPolicy> from_file(const std::string& path);
    static std::unique_ptr<RulesPolicy> from_string(const std::string& text,
                                                    const std::string& filename);

    std::string name() const override { return config_.name; }
    std::string kind() const override { return "rules"; }
    std::string source() const override { return config_.source; }
    std::vector<Decision> decide(const View& view, uint64_t step) override;
    const RulesConfig& config() const { return config_; }

private:
    struct RuleState {
        std::optional<uint64_t> last_fired_step;
        uint32_t total = 0;
    };
    RulesConfig config_;
    std::vector<RuleState> state_;
};

}  // namespace esper::tamiyo
