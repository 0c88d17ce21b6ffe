// Policy construction from a spec string (tamiyo/policy_factory.h).
#include "tamiyo/policy_factory.h"

#include <fmt/format.h>

#include <iterator>

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
    std::string out =
        fmt::format("policy {} ({}, {})\n", policy.name(), policy.kind(), policy.source());
    auto os = std::back_inserter(out);
    if (const auto* rules = dynamic_cast<const RulesPolicy*>(&policy)) {
        const RulesConfig& cfg = rules->config();
        if (!cfg.description.empty()) fmt::format_to(os, "  {}\n", cfg.description);
        for (const Rule& r : cfg.rules) {
            fmt::format_to(os, "  rule {} (line {}): {}", r.name, r.line,
                           decision_kind_name(r.action));
            if (r.action == DecisionKind::kGerminate)
                fmt::format_to(os, " {}/{} {}", blueprint_kind_name(r.blueprint), r.blueprint_size,
                               r.strategy);
            out += "\n";
            for (const RuleCondition& c : r.when) fmt::format_to(os, "    when {}\n", c.text);
            if (r.limits.per_decision)
                fmt::format_to(os, "    limit per_decision {}\n", r.limits.per_decision);
            if (r.limits.per_layer)
                fmt::format_to(os, "    limit per_layer {}\n", r.limits.per_layer);
            if (r.limits.every_steps)
                fmt::format_to(os, "    limit every_steps {}\n", r.limits.every_steps);
            if (r.limits.max_total)
                fmt::format_to(os, "    limit max_total {}\n", r.limits.max_total);
        }
    } else if (const auto* h = dynamic_cast<const HeuristicPolicy*>(&policy)) {
        out += h->describe();
    }
    return out;
}

}  // namespace esper::tamiyo
