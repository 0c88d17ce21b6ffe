// The one place where the wire enums (schemas/common.capnp, schemas/events.capnp) meet the one
// vocabulary (kernels/vocabulary.h): a static_assert per enumerant ties their values, and the
// conversions below are the only way between them. Wire → vocabulary is checked and returns
// nullopt for a value this build does not know (a newer sender, a damaged frame): a command
// carrying one is rejected with a reason, a telemetry record is dropped and counted; never cast.
// Vocabulary → wire cannot fail: every vocabulary value has its enumerant (asserted here).
// A wire enumerant added without a vocabulary value is caught by tests/agents (the count).
#pragma once

#include <cstdint>
#include <optional>

#include "kernels/vocabulary.h"
#include "schemas/common.capnp.h"
#include "schemas/events.capnp.h"

namespace esper::agents {

namespace wire_detail {
template <typename W, typename V>
constexpr bool same(W wire, V vocabulary) {
    return static_cast<uint64_t>(wire) == static_cast<uint64_t>(vocabulary);
}
}  // namespace wire_detail

// ---- compile-time ties: value by value, and the last enumerant closes the range ----

static_assert(wire_detail::same(schema::SeedStage::DORMANT, SeedStage::kDormant));
static_assert(wire_detail::same(schema::SeedStage::GERMINATED, SeedStage::kGerminated));
static_assert(wire_detail::same(schema::SeedStage::TRAINING, SeedStage::kTraining));
static_assert(wire_detail::same(schema::SeedStage::GRAFTING, SeedStage::kGrafting));
static_assert(wire_detail::same(schema::SeedStage::STABILIZATION, SeedStage::kStabilization));
static_assert(wire_detail::same(schema::SeedStage::EVALUATING, SeedStage::kEvaluating));
static_assert(wire_detail::same(schema::SeedStage::FINE_TUNING, SeedStage::kFineTuning));
static_assert(wire_detail::same(schema::SeedStage::FOSSILIZED, SeedStage::kFossilized));
static_assert(wire_detail::same(schema::SeedStage::CULLED, SeedStage::kCulled));
static_assert(wire_detail::same(schema::SeedStage::CANCELLED, SeedStage::kCancelled));
static_assert(wire_detail::same(schema::SeedStage::ROLLED_BACK, SeedStage::kRolledBack));
static_assert(static_cast<int>(schema::SeedStage::ROLLED_BACK) + 1 == kNumSeedStages);

static_assert(wire_detail::same(schema::BlueprintKind::RESIDUAL_MLP, BlueprintKind::kResidualMlp));
static_assert(wire_detail::same(schema::BlueprintKind::LOWRANK, BlueprintKind::kLowrank));
static_assert(wire_detail::same(schema::BlueprintKind::SCALE_SHIFT, BlueprintKind::kScaleShift));
static_assert(wire_detail::same(schema::BlueprintKind::MLP_UNITS, BlueprintKind::kMlpUnits));
static_assert(wire_detail::same(schema::BlueprintKind::ATTENTION_HEAD,
                                BlueprintKind::kAttentionHead));
static_assert(wire_detail::same(schema::BlueprintKind::LORA, BlueprintKind::kLora));
static_assert(static_cast<int>(schema::BlueprintKind::LORA) + 1 == kNumBlueprintKinds);

static_assert(wire_detail::same(schema::GraftingStrategy::LINEAR, GraftingStrategy::kLinear));
static_assert(wire_detail::same(schema::GraftingStrategy::COSINE, GraftingStrategy::kCosine));
static_assert(wire_detail::same(schema::GraftingStrategy::SIGMOID, GraftingStrategy::kSigmoid));
static_assert(wire_detail::same(schema::GraftingStrategy::DRIFT_CONTROLLED,
                                GraftingStrategy::kDriftControlled));
static_assert(wire_detail::same(schema::GraftingStrategy::MOMENTUM, GraftingStrategy::kMomentum));
static_assert(wire_detail::same(schema::GraftingStrategy::STABILITY, GraftingStrategy::kStability));
static_assert(wire_detail::same(schema::GraftingStrategy::ADAPTIVE, GraftingStrategy::kAdaptive));
static_assert(static_cast<int>(schema::GraftingStrategy::ADAPTIVE) + 1 == kNumGraftingStrategies);

static_assert(wire_detail::same(schema::TransitionOrigin::AUTO, TransitionOrigin::kAuto));
static_assert(wire_detail::same(schema::TransitionOrigin::CONTROLLER,
                                TransitionOrigin::kController));
static_assert(wire_detail::same(schema::TransitionOrigin::OPERATOR, TransitionOrigin::kOperator));
static_assert(wire_detail::same(schema::TransitionOrigin::GOVERNOR, TransitionOrigin::kGovernor));
static_assert(static_cast<int>(schema::TransitionOrigin::GOVERNOR) + 1 == kNumTransitionOrigins);

// ---- wire → vocabulary (checked) ----

constexpr std::optional<SeedStage> from_wire(schema::SeedStage s) {
    return stage_from_value(static_cast<uint64_t>(s));
}
constexpr std::optional<BlueprintKind> from_wire(schema::BlueprintKind k) {
    return blueprint_kind_from_value(static_cast<uint64_t>(k));
}
constexpr std::optional<GraftingStrategy> from_wire(schema::GraftingStrategy s) {
    return grafting_strategy_from_value(static_cast<uint64_t>(s));
}
constexpr std::optional<TransitionOrigin> from_wire(schema::TransitionOrigin o) {
    return origin_from_value(static_cast<uint64_t>(o));
}

// ---- vocabulary → wire (total: the asserts above cover every vocabulary value) ----

constexpr schema::SeedStage to_wire(SeedStage s) { return static_cast<schema::SeedStage>(s); }
constexpr schema::BlueprintKind to_wire(BlueprintKind k) {
    return static_cast<schema::BlueprintKind>(k);
}
constexpr schema::GraftingStrategy to_wire(GraftingStrategy s) {
    return static_cast<schema::GraftingStrategy>(s);
}
constexpr schema::TransitionOrigin to_wire(TransitionOrigin o) {
    return static_cast<schema::TransitionOrigin>(o);
}

}  // namespace esper::agents
