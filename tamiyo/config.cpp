// YAML → tamiyo::Config (tamiyo/config.h).
#include "tamiyo/config.h"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <fstream>
#include <initializer_list>
#include <sstream>

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
        if (v < lo || v > hi)
            fail(n, f,
                 "out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]: " + s);
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
        if (v < lo || v > hi) {
            std::ostringstream os;
            os << "out of range [" << lo << ", " << hi << "]: " << s;
            fail(n, f, os.str());
        }
        out = v;
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
    if (const YAML::Node b =
            r.section(t, "budget", "tamiyo.budget",
                      {"max_active_per_layer", "max_blueprint_params", "germination_cooldown_steps",
                       "max_germinations_per_decision"})) {
        BudgetConfig& bc = c.controller.budget;
        r.get_int(b, "max_active_per_layer", "tamiyo.budget", bc.max_active_per_layer, 0, kMax32);
        r.get_int(b, "max_blueprint_params", "tamiyo.budget", bc.max_blueprint_params, 0,
                  kMaxSteps);
        r.get(b, "germination_cooldown_steps", "tamiyo.budget", bc.germination_cooldown_steps, 0,
              kMaxSteps);
        r.get_int(b, "max_germinations_per_decision", "tamiyo.budget",
                  bc.max_germinations_per_decision, 0, kMax32);
    }
    if (const YAML::Node h = r.section(
            t, "heuristic", "tamiyo.heuristic",
            {"germinations_per_round", "blueprint", "blueprint_size", "strategy", "training_steps",
             "min_gradient_health", "training_patience_steps", "evaluation_steps", "min_benefit",
             "fine_tuning_steps", "cull_contribution"})) {
        HeuristicConfig& hc = c.heuristic;
        const std::string f = "tamiyo.heuristic";
        r.get_int(h, "germinations_per_round", f, hc.germinations_per_round, 0, kMax32);
        if (const YAML::Node n = h["blueprint"]) {
            std::string name;
            r.get(h, "blueprint", f, name);
            auto k = parse_blueprint_kind(name);
            if (!k)
                r.fail(n, f + ".blueprint",
                       "unknown blueprint '" + name + "' (residual_mlp, lowrank, scale_shift)");
            hc.blueprint = *k;
        }
        r.get_int(h, "blueprint_size", f, hc.blueprint_size, 0, 1u << 16);
        if (const YAML::Node n = h["strategy"]) {
            r.get(h, "strategy", f, hc.strategy);
            if (!is_known_strategy(hc.strategy))
                r.fail(n, f + ".strategy", "unknown strategy '" + hc.strategy + "'");
        }
        r.get(h, "training_steps", f, hc.training_steps, 0, kMaxSteps);
        r.get(h, "min_gradient_health", f, hc.min_gradient_health, 0.0, 1.0);
        r.get(h, "training_patience_steps", f, hc.training_patience_steps, 0, kMaxSteps);
        r.get(h, "evaluation_steps", f, hc.evaluation_steps, 0, kMaxSteps);
        r.get(h, "min_benefit", f, hc.min_benefit, 0.0, 1e9);
        r.get(h, "fine_tuning_steps", f, hc.fine_tuning_steps, 0, kMaxSteps);
        r.get(h, "cull_contribution", f, hc.cull_contribution, -1e9, 1e9);
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

std::string format_config(const Config& c) {
    std::ostringstream os;
    const BudgetConfig& b = c.controller.budget;
    const HeuristicConfig& h = c.heuristic;
    os << "tamiyo:\n"
       << "  policy: " << c.policy << "\n"
       << "  decision_interval_steps: " << c.decision_interval_steps << "\n"
       << "  policy_time_budget_ms: " << c.controller.policy_time_budget_ms << "\n"
       << "  pending_timeout_steps: " << c.controller.pending_timeout_steps << "\n"
       << "  plateau: {patience_steps: " << c.view.plateau.patience_steps
       << ", min_delta: " << c.view.plateau.min_delta << "}\n"
       << "  budget:\n"
       << "    max_active_per_layer: " << b.max_active_per_layer << "\n"
       << "    max_blueprint_params: " << b.max_blueprint_params << "\n"
       << "    germination_cooldown_steps: " << b.germination_cooldown_steps << "\n"
       << "    max_germinations_per_decision: " << b.max_germinations_per_decision << "\n"
       << "  heuristic:\n"
       << "    germinations_per_round: " << h.germinations_per_round << "\n"
       << "    blueprint: " << blueprint_kind_name(h.blueprint) << "\n"
       << "    blueprint_size: " << h.blueprint_size << "\n"
       << "    strategy: " << h.strategy << "\n"
       << "    training_steps: " << h.training_steps << "\n"
       << "    min_gradient_health: " << h.min_gradient_health << "\n"
       << "    training_patience_steps: " << h.training_patience_steps << "\n"
       << "    evaluation_steps: " << h.evaluation_steps << "\n"
       << "    min_benefit: " << h.min_benefit << "\n"
       << "    fine_tuning_steps: " << h.fine_tuning_steps << "\n"
       << "    cull_contribution: " << h.cull_contribution << "\n";
    return os.str();
}

}  // namespace esper::tamiyo
