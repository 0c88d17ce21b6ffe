// Names and parameter formulas for tamiyo/types.h.
#include "tamiyo/types.h"

#include <algorithm>
#include <cctype>

namespace esper::tamiyo {
namespace {

constexpr std::array<std::string_view, kNumStages> kStageNames = {
    "DORMANT",     "GERMINATED", "TRAINING", "GRAFTING",  "STABILIZATION", "EVALUATING",
    "FINE_TUNING", "FOSSILIZED", "CULLED",   "CANCELLED", "ROLLED_BACK"};

constexpr std::array<std::string_view, kNumBlueprintKinds> kKindNames = {"residual_mlp", "lowrank",
                                                                         "scale_shift"};

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

}  // namespace

std::string_view stage_name(Stage s) {
    auto v = static_cast<size_t>(s);
    return v < kStageNames.size() ? kStageNames[v] : std::string_view("INVALID");
}

std::optional<Stage> parse_stage(std::string_view name) {
    for (size_t i = 0; i < kStageNames.size(); ++i)
        if (iequals(name, kStageNames[i])) return static_cast<Stage>(i);
    return std::nullopt;
}

std::optional<Stage> stage_from_value(int value) {
    if (value < 0 || value >= kNumStages) return std::nullopt;
    return static_cast<Stage>(value);
}

std::string_view blueprint_kind_name(BlueprintKind k) {
    auto v = static_cast<size_t>(k);
    return v < kKindNames.size() ? kKindNames[v] : std::string_view("invalid");
}

std::optional<BlueprintKind> parse_blueprint_kind(std::string_view name) {
    for (size_t i = 0; i < kKindNames.size(); ++i)
        if (iequals(name, kKindNames[i])) return static_cast<BlueprintKind>(i);
    return std::nullopt;
}

int64_t blueprint_param_count(BlueprintKind k, uint32_t size, int64_t width) {
    if (width <= 0) return 0;
    const int64_t s = size == 0 ? 1 : static_cast<int64_t>(size);
    switch (k) {
        case BlueprintKind::kResidualMlp: {
            const int64_t hidden = s * width;
            return width * hidden + hidden + hidden * width + width;
        }
        case BlueprintKind::kLowrank:
            return width * s + s + s * width + width;
        case BlueprintKind::kScaleShift:
            return 2 * width;
    }
    return 0;
}

bool is_known_strategy(std::string_view name) {
    return std::find(kStrategyNames.begin(), kStrategyNames.end(), name) != kStrategyNames.end();
}

}  // namespace esper::tamiyo
