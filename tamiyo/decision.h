// A controller decision: what a policy asks the executor to do to one seed, with the reason that
// ends up in the lifecycle event and the name of the policy that made it. Decisions are values;
// the agent layer turns accepted ones into bus commands (deny produces no command: the seed keeps
// waiting at its gate, and the decision is only recorded).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "kernels/vocabulary.h"

namespace esper::tamiyo {

enum class DecisionKind : uint8_t {
    kGerminate = 0,  // DORMANT → GERMINATED with blueprint kind/size and strategy
    kApprove = 1,    // pass the gate the seed waits at: to_stage = the next stage
    kDeny = 2,       // keep the seed waiting at its gate (recorded, no command)
    kCull = 3,       // → CULLED
    kCancel = 4,     // → CANCELLED
    kFossilize = 5,  // FINE_TUNING → FOSSILIZED
    kRollback = 6,   // → ROLLED_BACK
};

std::string_view decision_kind_name(DecisionKind k);  // germinate | approve | deny | ...
std::optional<DecisionKind> parse_decision_kind(std::string_view name);

// The stage a seed waiting in `s` goes to when its gate is approved (TRAINING → GRAFTING,
// EVALUATING → FINE_TUNING, FINE_TUNING → FOSSILIZED); nullopt when `s` has no gate.
std::optional<SeedStage> gate_next_stage(SeedStage s);

struct Decision {
    DecisionKind kind = DecisionKind::kGerminate;
    uint32_t layer = 0;
    uint32_t seed = 0;
    BlueprintKind blueprint = BlueprintKind::kResidualMlp;  // germinate only
    uint32_t blueprint_size = 0;      // e (residual_mlp) or r (lowrank); 0 = executor default
    std::string strategy = "linear";  // germinate only: the α schedule
    SeedStage to_stage =
        SeedStage::kDormant;  // the stage the command asks for (set by the controller)
    std::string reason;       // human-readable, recorded in events
    std::string policy;       // name of the policy that made it (set by the controller)

    bool operator==(const Decision&) const = default;
};

// "germinate layer=0 seed=3 blueprint=residual_mlp/1 strategy=linear reason=..." for logs.
std::string to_string(const Decision& d);

}  // namespace esper::tamiyo
