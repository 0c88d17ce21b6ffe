// The one vocabulary of Esper (DESIGN §3): seed stages, blueprint kinds, grafting strategies and
// transition origins, their spellings, and the parameter formula of a blueprint. kernels/,
// kasmina/ and tamiyo/ all include this header (std only, host and device); the wire enums of
// schemas/common.capnp are tied to it by static_asserts in agents/wire_vocabulary.h. Values are
// fixed: they appear in schemas, checkpoints and events. Never add a second table of these names.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#if defined(__CUDACC__)
#define ESPER_HD __host__ __device__
#else
#define ESPER_HD
#endif

namespace esper {

// ---- enums (values fixed) ----

enum class SeedStage : uint8_t {
    kDormant = 0,
    kGerminated = 1,
    kTraining = 2,
    kGrafting = 3,
    kStabilization = 4,
    kEvaluating = 5,
    kFineTuning = 6,
    kFossilized = 7,
    kCulled = 8,
    kCancelled = 9,
    kRolledBack = 10,
};
inline constexpr int kNumSeedStages = 11;

// residual_mlp, lowrank and scale_shift sit on a chunk of a seed layer (DESIGN §4.5); mlp_units,
// attention_head and lora are the transformer host's widening sites (DESIGN §14): new MLP hidden
// units, a new attention head, a low-rank adapter on the qkv projection.
enum class BlueprintKind : uint8_t {
    kResidualMlp = 0,
    kLowrank = 1,
    kScaleShift = 2,
    kMlpUnits = 3,
    kAttentionHead = 4,
    kLora = 5,
};
inline constexpr int kNumBlueprintKinds = 6;
// The chunk kinds come first: a seed layer's kernels only ever see these.
inline constexpr int kNumChunkBlueprintKinds = 3;

// α schedules (DESIGN §4.4); stored in the seed table's `strategy` column.
enum class GraftingStrategy : uint8_t {
    kLinear = 0,
    kCosine = 1,
    kSigmoid = 2,
    kDriftControlled = 3,
    kMomentum = 4,
    kStability = 5,
    kAdaptive = 6,
};
inline constexpr int kNumGraftingStrategies = 7;

// Who caused a transition (the "origin" of a lifecycle event).
enum class TransitionOrigin : uint8_t { kAuto = 0, kController = 1, kOperator = 2, kGovernor = 3 };
inline constexpr int kNumTransitionOrigins = 4;

// ---- spellings: stages upper case (events, bus JSON, policies, reports), the rest snake_case ----

inline constexpr std::array<std::string_view, kNumSeedStages> kSeedStageNames = {
    "DORMANT",     "GERMINATED", "TRAINING", "GRAFTING",  "STABILIZATION", "EVALUATING",
    "FINE_TUNING", "FOSSILIZED", "CULLED",   "CANCELLED", "ROLLED_BACK"};
inline constexpr std::array<std::string_view, kNumBlueprintKinds> kBlueprintKindNames = {
    "residual_mlp", "lowrank", "scale_shift", "mlp_units", "attention_head", "lora"};
inline constexpr std::array<std::string_view, kNumGraftingStrategies> kGraftingStrategyNames = {
    "linear", "cosine", "sigmoid", "drift_controlled", "momentum", "stability", "adaptive"};
inline constexpr std::array<std::string_view, kNumTransitionOrigins> kTransitionOriginNames = {
    "auto", "controller", "operator", "governor"};

namespace vocabulary_detail {
constexpr char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }
constexpr bool iequals(std::string_view a, std::string_view b) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); ++i)
        if (lower(a[i]) != lower(b[i])) return false;
    return true;
}
}  // namespace vocabulary_detail

// The spelling of value `v` in `names`, or "?" when out of range (values from the wire).
template <typename E, size_t N>
constexpr std::string_view enum_name(E v, const std::array<std::string_view, N>& names) {
    const auto i = static_cast<size_t>(v);
    return i < N ? names[i] : std::string_view("?");
}
// The value spelled `name` (ASCII case-insensitive), or nullopt.
template <typename E, size_t N>
constexpr std::optional<E> parse_enum(std::string_view name,
                                      const std::array<std::string_view, N>& names) {
    for (size_t i = 0; i < N; ++i)
        if (vocabulary_detail::iequals(name, names[i])) return static_cast<E>(i);
    return std::nullopt;
}
// The value `raw` as an enum, or nullopt when out of range (bus input is checked, never cast).
template <typename E, size_t N>
constexpr std::optional<E> enum_from_value(uint64_t raw,
                                           const std::array<std::string_view, N>& /*names*/) {
    return raw < N ? std::optional<E>(static_cast<E>(raw)) : std::nullopt;
}

// "a, b, c": the spellings of a table, for "expected one of ..." messages.
template <size_t N>
std::string names_list(const std::array<std::string_view, N>& names) {
    std::string out;
    for (size_t i = 0; i < N; ++i) {
        if (i) out += ", ";
        out += names[i];
    }
    return out;
}

constexpr std::string_view stage_name(SeedStage s) { return enum_name(s, kSeedStageNames); }
constexpr std::string_view blueprint_kind_name(BlueprintKind k) {
    return enum_name(k, kBlueprintKindNames);
}
constexpr std::string_view grafting_strategy_name(GraftingStrategy s) {
    return enum_name(s, kGraftingStrategyNames);
}
constexpr std::string_view origin_name(TransitionOrigin o) {
    return enum_name(o, kTransitionOriginNames);
}
constexpr std::optional<SeedStage> parse_stage(std::string_view n) {
    return parse_enum<SeedStage>(n, kSeedStageNames);
}
constexpr std::optional<BlueprintKind> parse_blueprint_kind(std::string_view n) {
    return parse_enum<BlueprintKind>(n, kBlueprintKindNames);
}
constexpr std::optional<GraftingStrategy> parse_grafting_strategy(std::string_view n) {
    return parse_enum<GraftingStrategy>(n, kGraftingStrategyNames);
}
constexpr std::optional<TransitionOrigin> parse_origin(std::string_view n) {
    return parse_enum<TransitionOrigin>(n, kTransitionOriginNames);
}
constexpr std::optional<SeedStage> stage_from_value(uint64_t raw) {
    return enum_from_value<SeedStage>(raw, kSeedStageNames);
}
constexpr std::optional<BlueprintKind> blueprint_kind_from_value(uint64_t raw) {
    return enum_from_value<BlueprintKind>(raw, kBlueprintKindNames);
}
constexpr std::optional<GraftingStrategy> grafting_strategy_from_value(uint64_t raw) {
    return enum_from_value<GraftingStrategy>(raw, kGraftingStrategyNames);
}
constexpr std::optional<TransitionOrigin> origin_from_value(uint64_t raw) {
    return enum_from_value<TransitionOrigin>(raw, kTransitionOriginNames);
}

// ---- stage classes (DESIGN §4.3) ----

// GERMINATED..FINE_TUNING: counts against the per-layer seed budget (GERMINATED enters TRAINING
// on its own as soon as a training slot frees up).
ESPER_HD constexpr bool stage_is_active(SeedStage s) {
    return s >= SeedStage::kGerminated && s <= SeedStage::kFineTuning;
}
// GERMINATED..FOSSILIZED: owns a blueprint arena slot.
ESPER_HD constexpr bool stage_holds_slot(SeedStage s) {
    return s >= SeedStage::kGerminated && s <= SeedStage::kFossilized;
}
ESPER_HD constexpr bool stage_is_terminal(SeedStage s) { return s == SeedStage::kFossilized; }
// Stages whose exit waits for a controller decision (or an auto gate) once the minimum time ran.
ESPER_HD constexpr bool stage_has_gate(SeedStage s) {
    return s == SeedStage::kTraining || s == SeedStage::kEvaluating || s == SeedStage::kFineTuning;
}

// ---- blueprint parameter formula (DESIGN §4.5, kernels/seed_layer.h slot layout) ----

// The transformer's widening kinds: they sit on a widening site, not on a chunk, and fossilizing
// folds them into the host (the units, head or adapter become host parameters).
ESPER_HD constexpr bool blueprint_is_widening(BlueprintKind k) {
    return k == BlueprintKind::kMlpUnits || k == BlueprintKind::kAttentionHead ||
           k == BlueprintKind::kLora;
}
// True when blueprints of kind k in an arena with this in_width read the host layer's input
// (widening blueprints) instead of their chunk. scale_shift always reads its chunk.
ESPER_HD constexpr bool blueprint_reads_layer_input(BlueprintKind k, int64_t in_width) {
    return in_width > 0 && k != BlueprintKind::kScaleShift;
}
// Parameters a seed really uses. Chunk kinds, on a chunk of width w: residual_mlp/lowrank
// r(x) = U·act(V·x + b1) + b2 with V [hidden, n], U [w, hidden] (n = w, or in_width for layer
// input); scale_shift 2·w; hidden = expansion·max_chunk_width for residual_mlp, the rank for
// lowrank. Widening kinds, on a block of d_model = in_width, w = the site's output width:
// mlp_units V [k, C], c [k], U [C, k] (hidden = k); attention_head q/k/v [D, C] + biases and an
// output [C, D] (hidden = D, w = C: 4·D·C + 3·D); lora A [r, C], B [3C, r] (hidden = r, w = 3C).
// The executor publishes these counts; nothing else recomputes them.
ESPER_HD constexpr int64_t blueprint_param_count(BlueprintKind k, int64_t w, int64_t hidden,
                                                 int64_t in_width = 0) {
    switch (k) {
        case BlueprintKind::kScaleShift:
            return 2 * w;
        case BlueprintKind::kMlpUnits:
            return hidden * in_width + hidden + w * hidden;
        case BlueprintKind::kAttentionHead:
            return 3 * (hidden * in_width + hidden) + w * hidden;
        case BlueprintKind::kLora:
            return hidden * in_width + w * hidden;
        default:
            break;
    }
    const int64_t n = blueprint_reads_layer_input(k, in_width) ? in_width : w;
    return hidden * n + hidden + w * hidden + w;
}

}  // namespace esper
