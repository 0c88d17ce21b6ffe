// Names and formatting for tamiyo/decision.h.
#include "tamiyo/decision.h"

#include <fmt/format.h>

#include <array>

namespace esper::tamiyo {
namespace {
constexpr std::array<std::string_view, 7> kKindNames = {"germinate", "approve",   "deny",    "cull",
                                                        "cancel",    "fossilize", "rollback"};
}  // namespace

std::string_view decision_kind_name(DecisionKind k) {
    auto v = static_cast<size_t>(k);
    return v < kKindNames.size() ? kKindNames[v] : std::string_view("invalid");
}

std::optional<DecisionKind> parse_decision_kind(std::string_view name) {
    for (size_t i = 0; i < kKindNames.size(); ++i)
        if (name == kKindNames[i]) return static_cast<DecisionKind>(i);
    return std::nullopt;
}

std::optional<SeedStage> gate_next_stage(SeedStage s) {
    switch (s) {
        case SeedStage::kTraining:
            return SeedStage::kGrafting;
        case SeedStage::kEvaluating:
            return SeedStage::kFineTuning;
        case SeedStage::kFineTuning:
            return SeedStage::kFossilized;
        default:
            return std::nullopt;
    }
}

std::string to_string(const Decision& d) {
    std::string out =
        fmt::format("{} layer={} seed={}", decision_kind_name(d.kind), d.layer, d.seed);
    if (d.kind == DecisionKind::kGerminate)
        out += fmt::format(" blueprint={}/{} strategy={}", blueprint_kind_name(d.blueprint),
                           d.blueprint_size, d.strategy);
    else
        out += fmt::format(" to={}", stage_name(d.to_stage));
    if (!d.policy.empty()) out += fmt::format(" policy={}", d.policy);
    return out + fmt::format(" reason=\"{}\"", d.reason);
}

}  // namespace esper::tamiyo
