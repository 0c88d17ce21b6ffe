// Plain value types shared by the Tamiyo view, decisions and policies: seed stages (values fixed
// by DESIGN §4.3, identical to kasmina's but declared here so tamiyo/ never includes kasmina/),
// blueprint kinds with their parameter formulas, and grafting-strategy names.
// Names are upper case for stages ("TRAINING") and snake_case for kinds ("residual_mlp").
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace esper::tamiyo {

enum class Stage : uint8_t {
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
inline constexpr int kNumStages = 11;

std::string_view stage_name(Stage s);
// Accepts upper- or lower-case names; nullopt for anything else.
std::optional<Stage> parse_stage(std::string_view name);
// Wire value → stage; nullopt when out of range (bus input is checked, never asserted).
std::optional<Stage> stage_from_value(int value);

// GERMINATED..FINE_TUNING: counts against the per-layer seed budget. GERMINATED is included
// because it enters TRAINING on its own as soon as a training slot frees up.
constexpr bool stage_is_active(Stage s) {
    return s >= Stage::kGerminated && s <= Stage::kFineTuning;
}
// GERMINATED..FOSSILIZED: the seed owns blueprint parameters.
constexpr bool stage_holds_blueprint(Stage s) {
    return s >= Stage::kGerminated && s <= Stage::kFossilized;
}
// Stages whose exit waits for a controller decision (once the minimum time has run).
constexpr bool stage_has_gate(Stage s) {
    return s == Stage::kTraining || s == Stage::kEvaluating || s == Stage::kFineTuning;
}

enum class BlueprintKind : uint8_t { kResidualMlp = 0, kLowrank = 1, kScaleShift = 2 };
inline constexpr int kNumBlueprintKinds = 3;

std::string_view blueprint_kind_name(BlueprintKind k);  // residual_mlp | lowrank | scale_shift
std::optional<BlueprintKind> parse_blueprint_kind(std::string_view name);

// Parameters of one blueprint on a chunk of `width` features (DESIGN §4.5):
// residual_mlp(e): w → e·w → w; lowrank(r): w → r → w; scale_shift: per-feature affine.
// `size` is e or r (0 = the executor's default; counted as 1 here). Returns 0 when width <= 0.
int64_t blueprint_param_count(BlueprintKind k, uint32_t size, int64_t width);

// The α schedules the executor knows (DESIGN §4.4).
inline constexpr std::array<std::string_view, 7> kStrategyNames = {
    "linear", "cosine", "sigmoid", "drift_controlled", "momentum", "stability", "adaptive"};
bool is_known_strategy(std::string_view name);

}  // namespace esper::tamiyo
