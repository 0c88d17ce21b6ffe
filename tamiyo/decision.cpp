// Names and formatting for tamiyo/decision.h.
#include "tamiyo/decision.h"

#include <array>
#include <sstream>

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
    std::ostringstream os;
    os << decision_kind_name(d.kind) << " layer=" << d.layer << " seed=" << d.seed;
    if (d.kind == DecisionKind::kGerminate)
        os << " blueprint=" << blueprint_kind_name(d.blueprint) << "/" << d.blueprint_size
           << " strategy=" << d.strategy;
    else
        os << " to=" << stage_name(d.to_stage);
    if (!d.policy.empty()) os << " policy=" << d.policy;
    os << " reason=\"" << d.reason << "\"";
    return os.str();
}

}  // namespace esper::tamiyo
