// Lifecycle commands as plain C++ values (not Cap'n Proto): the agent translates bus messages
// into these and calls SeedManager::apply. A batch applies its items in order, all or nothing:
// if one item is rejected nothing changes and no event is written.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "kasmina/lifecycle/config.h"
#include "kasmina/lifecycle/lifecycle.h"

namespace esper::kasmina {

struct SeedRef {
    int32_t layer = 0;
    int32_t seed = 0;
    bool operator==(const SeedRef&) const = default;
};

// DORMANT → GERMINATED with a blueprint; strategy defaults to lifecycle.grafting.strategy.
struct GerminateCommand {
    SeedRef target;
    BlueprintKind kind = BlueprintKind::kResidualMlp;
    std::optional<GraftingStrategy> strategy;
};
// Any transition by name (gate approvals: TRAINING→GRAFTING, EVALUATING→FINE_TUNING,
// FINE_TUNING→FOSSILIZED, ...); the validator decides.
struct TransitionCommand {
    SeedRef target;
    SeedStage to = SeedStage::kDormant;
};
struct CullCommand {
    SeedRef target;
};  // → CULLED
struct CancelCommand {
    SeedRef target;
};  // → CANCELLED
struct RollbackCommand {
    SeedRef target;
};  // → ROLLED_BACK
// Replaces a seed's α schedule (GERMINATED, TRAINING or GRAFTING); progress is kept.
struct SetAlphaScheduleCommand {
    SeedRef target;
    GraftingStrategy strategy = GraftingStrategy::kLinear;
    std::optional<int64_t> ramp_steps;
};

struct Command;
struct BatchCommand {
    std::vector<Command> commands;
};

struct Command {
    uint64_t id = 0;  // for the agent's idempotency
    TransitionOrigin origin = TransitionOrigin::kController;
    std::string reason;  // appended to the event's reason
    std::variant<GerminateCommand, TransitionCommand, CullCommand, CancelCommand, RollbackCommand,
                 SetAlphaScheduleCommand, BatchCommand>
        body;
};

enum class OutcomeStatus : uint8_t { kApplied = 0, kRejected = 1 };

struct Outcome {
    OutcomeStatus status = OutcomeStatus::kApplied;
    std::string reason;        // rejection reason (empty when applied)
    int32_t failed_item = -1;  // a rejected batch: the index of the item that was refused
    bool applied() const { return status == OutcomeStatus::kApplied; }
};

}  // namespace esper::kasmina
