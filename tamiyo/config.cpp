// YAML → tamiyo::Config (tamiyo/config.h).
#include "tamiyo/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <utility>

#include "core/error.h"

namespace esper::tamiyo {
namespace {

class Reader {
public:
    explicit Reader(std::string file) : file_(std::move(file)) {}

    [[noreturn]] void fail(const YAML::Node& n, const std::string& field,
                           const std::string& why) const {
        const int line = n.Mark().line >= 0 ? n.Mark().line + 1 : 1;
        ESPER_THROW(kInvalidInput, file_, ":", line, ": ", field, ": ", why);
    }

    // The section's mapping (undefined when absent), refusing unknown keys.
    YAML::Node section(const YAML::Node& parent, const char* key, const std::string& field,
                       std::initializer_list<const char*> allowed) const {
        YAML::Node n = parent[key];
        if (!n) return n;
        if (!n.IsMap()) fail(n, field, "expected a mapping");
        for (auto it = n.begin(); it != n.end(); ++it) {
            const std::string k = it->first.Scalar();
            bool ok = false;
            std::string list;
            for (const char* a : allowed) {
                ok = ok || k == a;
                list += std::string(list.empty() ? "" : ", ") + a;
            }
            if (!ok) fail(it->first, field + "." + k, "unknown key (known: " + list + ")");
        }
        return n;
    }

    void get(const YAML::Node& map, const char* key, const std::string& field, uint64_t& out,
             uint64_t lo, uint64_t hi) const {
        const YAML::Node n = map[key];
        if (!n) return;
        const std::string f = field + "." + key;
        if (!n.IsScalar()) fail(n, f, "expected an integer");
        const std::string& s = n.Scalar();
        size_t used = 0;
        uint64_t v = 0;
        try {
            if (!s.empty() && s[0] != '-') v = std::stoull(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != s.size())
            fail(n, f, "expected a non-negative integer, got '" + s + "'");
        if (v < lo || v > hi) fail(n, f, fmt::format("out of range [{}, {}]: {}", lo, hi, s));
        out = v;
    }
    template <typename T>
    void get_int(const YAML::Node& map, const char* key, const std::string& field, T& out,
                 uint64_t lo, uint64_t hi) const {
        uint64_t v = static_cast<uint64_t>(out);
        get(map, key, field, v, lo, hi);
        out = static_cast<T>(v);
    }
    void get(const YAML::Node& map, const char* key, const std::string& field, double& out,
             double lo, double hi) const {
        const YAML::Node n = map[key];
        if (!n) return;
        const std::string f = field + "." + key;
        if (!n.IsScalar()) fail(n, f, "expected a number");
        const std::string& s = n.Scalar();
        size_t used = 0;
        double v = 0.0;
        try {
            v = std::stod(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != s.size() || !std::isfinite(v))
            fail(n, f, "expected a number, got '" + s + "'");
        if (v < lo || v > hi) fail(n, f, fmt::format("out of range [{}, {}]: {}", lo, hi, s));
        out = v;
    }
    // Keys that moved to the executor's sections: refused with the key to set instead.
    void moved(const YAML::Node& map, const std::string& field,
               std::initializer_list<std::pair<const char*, const char*>> keys) const {
        for (const auto& [key, to] : keys)
            if (const YAML::Node n = map[key])
                fail(n, field + "." + key,
                     fmt::format("moved: set {} (one key for Tamiyo and Kasmina)", to));
    }
    void get(const YAML::Node& map, const char* key, const std::string& field,
             std::string& out) const {
        const YAML::Node n = map[key];
        if (!n) return;
        if (!n.IsScalar()) fail(n, field + "." + key, "expected a string");
        out = n.Scalar();
    }

private:
    std::string file_;
};

}  // namespace

Config parse_config(const std::string& text, const std::string& filename) {
    Reader r(filename);
    YAML::Node root;
    try {
        root = YAML::Load(text);
    } catch (const YAML::ParserException& e) {
        ESPER_THROW(kInvalidInput, filename, ":", e.mark.line + 1, ": yaml: ", e.msg);
    }
    Config c;
    if (!root.IsDefined() || root.IsNull()) return c;
    if (!root.IsMap()) r.fail(root, "config", "expected a mapping at the top level");
    const YAML::Node t = r.section(root, "tamiyo", "tamiyo",
                                   {"policy", "decision_interval_steps", "policy_time_budget_ms",
                                    "pending_timeout_steps", "plateau", "budget", "heuristic"});
    if (!t) return c;
    constexpr uint64_t kMaxSteps = uint64_t{1} << 40;
    constexpr uint64_t kMax32 = 0xffffffffu;
    r.get(t, "policy", "tamiyo", c.policy);
    r.get(t, "decision_interval_steps", "tamiyo", c.decision_interval_steps, 1, kMaxSteps);
    r.get(t, "policy_time_budget_ms", "tamiyo", c.controller.policy_time_budget_ms, 0.001, 60000.0);
    r.get(t, "pending_timeout_steps", "tamiyo", c.controller.pending_timeout_steps, 1, kMaxSteps);

    if (const YAML::Node p =
            r.section(t, "plateau", "tamiyo.plateau", {"patience_steps", "min_delta"})) {
        r.get(p, "patience_steps", "tamiyo.plateau", c.view.plateau.patience_steps, 1, kMaxSteps);
        r.get(p, "min_delta", "tamiyo.plateau", c.view.plateau.min_delta, 0.0, 1e9);
    }
    if (const YAML::Node b = t["budget"]) {
        if (b.IsMap())
            r.moved(b, "tamiyo.budget",
                    {{"max_active_per_layer", "lifecycle.max_active_per_layer"},
                     {"max_blueprint_params", "blueprints.max_params_per_layer"}});
    }
    if (const YAML::Node b =
            r.section(t, "budget", "tamiyo.budget",
                      {"germination_cooldown_steps", "max_germinations_per_decision"})) {
        BudgetConfig& bc = c.controller.budget;
        r.get(b, "germination_cooldown_steps", "tamiyo.budget", bc.germination_cooldown_steps, 0,
              kMaxSteps);
        r.get_int(b, "max_germinations_per_decision", "tamiyo.budget",
                  bc.max_germinations_per_decision, 0, kMax32);
    }
    if (const YAML::Node h = t["heuristic"]) {
        if (h.IsMap())
            r.moved(h, "tamiyo.heuristic",
                    {{"training_steps", "lifecycle.training_steps"},
                     {"evaluation_steps", "lifecycle.evaluation_steps"},
                     {"fine_tuning_steps", "lifecycle.fine_tuning_steps"}});
    }
    if (const YAML::Node h =
            r.section(t, "heuristic", "tamiyo.heuristic",
                      {"germinations_per_round", "blueprint", "blueprint_size", "strategy",
                       "min_gradient_health", "training_patience_steps", "min_benefit",
                       "cull_contribution", "rent_per_param"})) {
        HeuristicConfig& hc = c.heuristic;
        const std::string f = "tamiyo.heuristic";
        r.get_int(h, "germinations_per_round", f, hc.germinations_per_round, 0, kMax32);
        if (const YAML::Node n = h["blueprint"]) {
            std::string name;
            r.get(h, "blueprint", f, name);
            auto k = parse_blueprint_kind(name);
            if (!k)
                r.fail(
                    n, f + ".blueprint",
                    "unknown blueprint '" + name + "' (" + names_list(kBlueprintKindNames) + ")");
            hc.blueprint = *k;
        }
        r.get_int(h, "blueprint_size", f, hc.blueprint_size, 0, 1u << 16);
        if (const YAML::Node n = h["strategy"]) {
            std::string name;
            r.get(h, "strategy", f, name);
            const auto strategy = parse_grafting_strategy(name);
            if (!strategy) r.fail(n, f + ".strategy", "unknown strategy '" + name + "'");
            hc.strategy = std::string(grafting_strategy_name(*strategy));
        }
        r.get(h, "min_gradient_health", f, hc.min_gradient_health, 0.0, 1.0);
        r.get(h, "training_patience_steps", f, hc.training_patience_steps, 0, kMaxSteps);
        r.get(h, "min_benefit", f, hc.min_benefit, 0.0, 1e9);
        r.get(h, "cull_contribution", f, hc.cull_contribution, -1e9, 1e9);
        r.get(h, "rent_per_param", f, hc.rent_per_param, 0.0, 1.0);
    }
    return c;
}

Config load_config_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) ESPER_THROW(kInvalidInput, path, ": cannot open config file");
    std::ostringstream ss;
    ss << in.rdbuf();
    return parse_config(ss.str(), path);
}

void set_executor_settings(Config& c, const ExecutorSettings& s) {
    c.heuristic.training_steps = s.training_steps;
    c.heuristic.evaluation_steps = s.evaluation_steps;
    c.heuristic.fine_tuning_steps = s.fine_tuning_steps;
    c.controller.budget.max_active_per_layer = s.max_active_per_layer;
    c.controller.budget.max_blueprint_params_per_layer = s.max_blueprint_params_per_layer;
}

ExecutorSettings executor_settings(const Config& c) {
    return {c.heuristic.training_steps, c.heuristic.evaluation_steps, c.heuristic.fine_tuning_steps,
            c.controller.budget.max_active_per_layer,
            c.controller.budget.max_blueprint_params_per_layer};
}

namespace {
// Shortest text that reads back to the same double (0.05, not 0.050000000000000003).
std::string number(double v) { return fmt::format("{}", v); }
}  // namespace

std::string format_config(const Config& c) {
    const BudgetConfig& b = c.controller.budget;
    const HeuristicConfig& h = c.heuristic;
    YAML::Emitter out;
    out << YAML::BeginMap << YAML::Key << "tamiyo" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "policy" << YAML::Value << c.policy;
    out << YAML::Key << "decision_interval_steps" << YAML::Value << c.decision_interval_steps;
    out << YAML::Key << "policy_time_budget_ms" << YAML::Value
        << number(c.controller.policy_time_budget_ms);
    out << YAML::Key << "pending_timeout_steps" << YAML::Value
        << c.controller.pending_timeout_steps;
    out << YAML::Key << "plateau" << YAML::Value << YAML::Flow << YAML::BeginMap;
    out << YAML::Key << "patience_steps" << YAML::Value << c.view.plateau.patience_steps;
    out << YAML::Key << "min_delta" << YAML::Value << number(c.view.plateau.min_delta);
    out << YAML::EndMap;
    out << YAML::Key << "budget" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "germination_cooldown_steps" << YAML::Value << b.germination_cooldown_steps;
    out << YAML::Key << "max_germinations_per_decision" << YAML::Value
        << b.max_germinations_per_decision;
    out << YAML::EndMap;
    out << YAML::Key << "heuristic" << YAML::Value << YAML::BeginMap;
    out << YAML::Key << "germinations_per_round" << YAML::Value << h.germinations_per_round;
    out << YAML::Key << "blueprint" << YAML::Value << std::string(blueprint_kind_name(h.blueprint));
    out << YAML::Key << "blueprint_size" << YAML::Value << h.blueprint_size;
    out << YAML::Key << "strategy" << YAML::Value << h.strategy;
    out << YAML::Key << "min_gradient_health" << YAML::Value << number(h.min_gradient_health);
    out << YAML::Key << "training_patience_steps" << YAML::Value << h.training_patience_steps;
    out << YAML::Key << "min_benefit" << YAML::Value << number(h.min_benefit);
    out << YAML::Key << "cull_contribution" << YAML::Value << number(h.cull_contribution);
    out << YAML::Key << "rent_per_param" << YAML::Value << number(h.rent_per_param);
    out << YAML::EndMap << YAML::EndMap << YAML::EndMap;
    out << YAML::Newline
        << YAML::Comment(
               fmt::format("from the executor's sections: lifecycle.training_steps {}, "
                           "lifecycle.evaluation_steps {}, lifecycle.fine_tuning_steps {}, "
                           "lifecycle.max_active_per_layer {}, blueprints.max_params_per_layer {}",
                           h.training_steps, h.evaluation_steps, h.fine_tuning_steps,
                           b.max_active_per_layer, b.max_blueprint_params_per_layer));
    return std::string(out.c_str()) + "\n";
}

}  // namespace esper::tamiyo
