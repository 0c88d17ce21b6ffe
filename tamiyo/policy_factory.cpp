// Policy construction from a spec string (tamiyo/policy_factory.h).
#include "tamiyo/policy_factory.h"

#include <sstream>

#include "core/error.h"
#include "tamiyo/plugin_policy.h"
#include "tamiyo/rules_policy.h"

namespace esper::tamiyo {
namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

PolicyPtr make_policy(const std::string& spec, const HeuristicConfig& heuristic) {
    if (spec == "heuristic") return std::make_unique<HeuristicPolicy>(heuristic);
    if (ends_with(spec, ".yaml") || ends_with(spec, ".yml")) return RulesPolicy::from_file(spec);
    const auto so = spec.find(".so");
    if (so != std::string::npos && (so + 3 == spec.size() || spec[so + 3] == ':')) {
        const std::string path = spec.substr(0, so + 3);
        const std::string config = so + 3 < spec.size() ? spec.substr(so + 4) : std::string();
        return PluginPolicy::load(path, config);
    }
    ESPER_THROW(kInvalidInput, "policy '", spec,
                "': expected 'heuristic', a rules file (.yaml/.yml) or a plugin (.so)");
}

PolicyPtr make_rules_policy_from_text(const std::string& text, const std::string& filename) {
    return RulesPolicy::from_string(text, filename);
}

std::string describe_policy(const Policy& policy) {
    std::ostringstream os;
    os << "policy " << policy.name() << " (" << policy.kind() << ", " << policy.source() << ")\n";
    if (const auto* rules = dynamic_cast<const RulesPolicy*>(&policy)) {
        const RulesConfig& cfg = rules->config();
        if (!cfg.description.empty()) os << "  " << cfg.description << "\n";
        for (const Rule& r : cfg.rules) {
            os << "  rule " << r.name << " (line " << r.line
               << "): " << decision_kind_name(r.action);
            if (r.action == DecisionKind::kGerminate)
                os << " " << blueprint_kind_name(r.blueprint) << "/" << r.blueprint_size << " "
                   << r.strategy;
            os << "\n";
            for (const RuleCondition& c : r.when) os << "    when " << c.text << "\n";
            if (r.limits.per_decision)
                os << "    limit per_decision " << r.limits.per_decision << "\n";
            if (r.limits.per_layer) os << "    limit per_layer " << r.limits.per_layer << "\n";
            if (r.limits.every_steps)
                os << "    limit every_steps " << r.limits.every_steps << "\n";
            if (r.limits.max_total) os << "    limit max_total " << r.limits.max_total << "\n";
        }
    } else if (const auto* h = dynamic_cast<const HeuristicPolicy*>(&policy)) {
        const HeuristicConfig& c = h->config();
        os << "  germinate " << c.germinations_per_round
           << " per layer on a plateau: " << blueprint_kind_name(c.blueprint) << "/"
           << c.blueprint_size << " " << c.strategy << "\n"
           << "  TRAINING gate after " << c.training_steps
           << " steps: gradient health >= " << c.min_gradient_health << " (cull after "
           << c.training_patience_steps << ")\n"
           << "  EVALUATING gate after " << c.evaluation_steps << " steps: contribution < "
           << -c.min_benefit << " else cull\n"
           << "  FINE_TUNING: cull if contribution > " << c.cull_contribution
           << ", fossilize after " << c.fine_tuning_steps << " steps\n";
    }
    return os.str();
}

}  // namespace esper::tamiyo
