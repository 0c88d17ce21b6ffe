// The rules policy (tamiyo/rules_policy.h): YAML parsing with file:line errors, the metric
// table, and evaluation with rate limits.
#include "tamiyo/rules_policy.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>

#include "core/error.h"

namespace esper::tamiyo {
namespace {

// ---- metric table ----

enum class MetricType : uint8_t { kNumber, kStage, kBool };

struct EvalContext {
    const View& view;
    const LayerView& layer;
    const SeedView& seed;
    uint64_t step;
};

using Getter = std::optional<double> (*)(const EvalContext&);

struct MetricDef {
    const char* name;
    MetricType type;
    Getter get;
};

std::optional<double> opt(const std::optional<double>& v) { return v; }
double num(uint64_t v) { return static_cast<double>(v); }

const MetricDef kMetrics[] = {
    {"seed.id", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.seed.seed); }},
    {"seed.layer", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.seed.layer); }},
    {"seed.stage", MetricType::kStage,
     [](const EvalContext& c) -> std::optional<double> {
         return num(static_cast<uint64_t>(c.seed.stage));
     }},
    {"seed.alpha", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         return static_cast<double>(c.seed.alpha);
     }},
    {"seed.steps_in_stage", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         return num(c.seed.steps_in_stage(c.step));
     }},
    {"seed.act_mean", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.act_mean); }},
    {"seed.act_var", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.act_var); }},
    {"seed.dead_fraction", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.dead_fraction); }},
    {"seed.grad_norm", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.grad_norm); }},
    {"seed.blueprint_grad_norm", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.blueprint_grad_norm); }},
    {"seed.gradient_health", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.gradient_health); }},
    {"seed.contribution", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.contribution); }},
    {"seed.health", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.seed.latest.health); }},
    {"seed.germinations", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.seed.germinations); }},
    {"seed.culls", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.seed.culls); }},
    {"layer.id", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.layer); }},
    {"layer.active", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.active_seeds()); }},
    {"layer.dormant", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.stage_counts[0]); }},
    {"layer.fossilized", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.stage_counts[7]); }},
    {"layer.culled", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.stage_counts[8]); }},
    {"layer.germinations", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.layer.germinations); }},
    {"layer.steps_since_germination", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         if (!c.layer.last_germination_step) return std::nullopt;
         return num(
             c.step > *c.layer.last_germination_step ? c.step - *c.layer.last_germination_step : 0);
     }},
    {"layer.mean_health", MetricType::kNumber,
     [](const EvalContext& c) { return c.layer.mean_health(); }},
    {"layer.mean_contribution", MetricType::kNumber,
     [](const EvalContext& c) { return c.layer.mean_contribution(); }},
    {"run.step", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.step); }},
    {"run.epoch", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.view.run().epoch); }},
    {"run.loss", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.view.run().latest.loss); }},
    {"run.test_loss", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.view.run().latest.test_loss); }},
    {"run.accuracy", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.view.run().latest.accuracy); }},
    {"run.test_accuracy", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.view.run().latest.test_accuracy); }},
    {"run.best_loss", MetricType::kNumber,
     [](const EvalContext& c) { return opt(c.view.run().best_loss); }},
    {"run.plateau", MetricType::kBool,
     [](const EvalContext& c) -> std::optional<double> {
         return c.view.run().plateau ? 1.0 : 0.0;
     }},
    {"run.plateaus", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> { return num(c.view.run().plateaus); }},
    {"run.steps_since_improvement", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         return num(c.view.run().steps_since_improvement());
     }},
    {"run.blueprint_params", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         return static_cast<double>(c.view.live_blueprint_params());
     }},
    {"run.host_params", MetricType::kNumber,
     [](const EvalContext& c) -> std::optional<double> {
         return static_cast<double>(c.view.run().latest.host_params);
     }},
};
constexpr int kNumMetrics = static_cast<int>(sizeof(kMetrics) / sizeof(kMetrics[0]));

std::optional<int> find_metric(std::string_view name) {
    for (int i = 0; i < kNumMetrics; ++i)
        if (name == kMetrics[i].name) return i;
    return std::nullopt;
}

// ---- parsing ----

class Parser {
public:
    explicit Parser(std::string filename) : file_(std::move(filename)) {}

    [[noreturn]] void fail(int line, const std::string& field, const std::string& reason) const {
        ESPER_THROW(kInvalidInput, file_, ":", line, ": ", field, ": ", reason);
    }
    static int line_of(const YAML::Node& n, int fallback) {
        return n.Mark().line >= 0 ? n.Mark().line + 1 : fallback;
    }

    RulesConfig parse(const std::string& text) {
        YAML::Node root;
        try {
            root = YAML::Load(text);
        } catch (const YAML::ParserException& e) {
            fail(e.mark.line + 1, "yaml", e.msg);
        }
        if (!root.IsMap()) fail(line_of(root, 1), "policy", "expected a mapping at the top level");
        check_keys(root, "policy", {"version", "name", "description", "defaults", "rules"});
        RulesConfig cfg;
        cfg.source = file_;

        const YAML::Node version = root["version"];
        if (!version) fail(1, "version", "missing (write `version: 1`)");
        if (get_uint(version, "version", 1, 1) != 1)
            fail(line_of(version, 1), "version", "must be 1");

        const YAML::Node name = root["name"];
        if (!name) fail(1, "name", "missing");
        cfg.name = get_string(name, "name");
        if (cfg.name.empty()) fail(line_of(name, 1), "name", "must not be empty");
        if (const YAML::Node d = root["description"])
            cfg.description = get_string(d, "description");

        Rule defaults;
        if (const YAML::Node d = root["defaults"]) {
            if (!d.IsMap()) fail(line_of(d, 1), "defaults", "expected a mapping");
            check_keys(d, "defaults", {"blueprint", "size", "strategy"});
            parse_germinate_fields(d, "defaults", defaults);
        }

        const YAML::Node rules = root["rules"];
        if (!rules) fail(1, "rules", "missing (a list of rules)");
        if (!rules.IsSequence() || rules.size() == 0)
            fail(line_of(rules, 1), "rules", "expected a non-empty list of rules");
        std::set<std::string> names;
        for (size_t i = 0; i < rules.size(); ++i) {
            const std::string field = fmt::format("rules[{}]", i);
            Rule r = parse_rule(rules[i], field, defaults);
            if (!names.insert(r.name).second)
                fail(r.line, field + ".name", "duplicate rule name '" + r.name + "'");
            cfg.rules.push_back(std::move(r));
        }
        return cfg;
    }

private:
    void check_keys(const YAML::Node& map, const std::string& field,
                    std::initializer_list<const char*> allowed) const {
        for (auto it = map.begin(); it != map.end(); ++it) {
            const std::string key = it->first.Scalar();
            bool ok = false;
            for (const char* a : allowed) ok = ok || key == a;
            if (!ok) {
                std::string list;
                for (const char* a : allowed) list += std::string(list.empty() ? "" : ", ") + a;
                fail(line_of(it->first, 1), field + "." + key,
                     "unknown key (allowed: " + list + ")");
            }
        }
    }

    std::string get_string(const YAML::Node& n, const std::string& field) const {
        if (!n.IsScalar()) fail(line_of(n, 1), field, "expected a string");
        return n.Scalar();
    }

    uint64_t get_uint(const YAML::Node& n, const std::string& field, uint64_t lo,
                      uint64_t hi) const {
        if (!n.IsScalar()) fail(line_of(n, 1), field, "expected an integer");
        const std::string& s = n.Scalar();
        uint64_t v = 0;
        size_t used = 0;
        try {
            if (s.empty() || s[0] == '-') throw std::invalid_argument("negative");
            v = std::stoull(s, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != s.size())
            fail(line_of(n, 1), field, "expected a non-negative integer, got '" + s + "'");
        if (v < lo || v > hi)
            fail(line_of(n, 1), field, fmt::format("out of range [{}, {}]: {}", lo, hi, s));
        return v;
    }

    void parse_germinate_fields(const YAML::Node& n, const std::string& field, Rule& r) const {
        if (const YAML::Node b = n["blueprint"]) {
            auto k = parse_blueprint_kind(get_string(b, field + ".blueprint"));
            if (!k)
                fail(line_of(b, 1), field + ".blueprint",
                     "unknown blueprint '" + b.Scalar() + "' (" + names_list(kBlueprintKindNames) +
                         ")");
            r.blueprint = *k;
        }
        if (const YAML::Node s = n["size"])
            r.blueprint_size = static_cast<uint32_t>(get_uint(s, field + ".size", 0, 1u << 16));
        if (const YAML::Node s = n["strategy"]) {
            const std::string name = get_string(s, field + ".strategy");
            const auto strategy = parse_grafting_strategy(name);
            if (!strategy) {
                std::string list;
                for (auto known : kGraftingStrategyNames)
                    list += std::string(list.empty() ? "" : ", ") + std::string(known);
                fail(line_of(s, 1), field + ".strategy",
                     "unknown strategy '" + name + "' (" + list + ")");
            }
            r.strategy = std::string(grafting_strategy_name(*strategy));
        }
    }

    Rule parse_rule(const YAML::Node& n, const std::string& field, const Rule& defaults) const {
        if (!n.IsMap()) fail(line_of(n, 1), field, "expected a mapping with name, when, action");
        check_keys(n, field,
                   {"name", "when", "action", "blueprint", "size", "strategy", "order_by", "limit",
                    "reason"});
        Rule r = defaults;
        r.line = line_of(n, 1);
        if (const YAML::Node name = n["name"])
            r.name = get_string(name, field + ".name");
        else
            r.name = field;

        const YAML::Node action = n["action"];
        if (!action) fail(r.line, field + ".action", "missing");
        auto kind = parse_decision_kind(get_string(action, field + ".action"));
        if (!kind)
            fail(line_of(action, r.line), field + ".action",
                 "unknown action '" + action.Scalar() +
                     "' (germinate, approve, deny, cull, cancel, fossilize, rollback)");
        r.action = *kind;
        if (r.action != DecisionKind::kGerminate)
            for (const char* k : {"blueprint", "size", "strategy"})
                if (n[k])
                    fail(line_of(n[k], r.line), field + "." + k,
                         "only valid with action: germinate");
        parse_germinate_fields(n, field, r);

        if (const YAML::Node w = n["when"]) {
            if (!w.IsSequence())
                fail(line_of(w, r.line), field + ".when", "expected a list of conditions");
            for (size_t i = 0; i < w.size(); ++i)
                r.when.push_back(parse_condition(w[i], fmt::format("{}.when[{}]", field, i)));
        }

        if (const YAML::Node o = n["order_by"]) {
            std::string s = get_string(o, field + ".order_by");
            if (!s.empty() && s[0] == '-') {
                r.order_descending = true;
                s.erase(0, 1);
            }
            auto m = find_metric(s);
            if (!m) fail(line_of(o, r.line), field + ".order_by", "unknown metric '" + s + "'");
            if (kMetrics[*m].type != MetricType::kNumber)
                fail(line_of(o, r.line), field + ".order_by", "'" + s + "' is not a number");
            r.order_by = *m;
        }

        if (const YAML::Node l = n["limit"]) {
            const std::string lf = field + ".limit";
            if (!l.IsMap()) fail(line_of(l, r.line), lf, "expected a mapping");
            check_keys(l, lf, {"per_decision", "per_layer", "every_steps", "max_total"});
            constexpr uint64_t kMax32 = std::numeric_limits<uint32_t>::max();
            if (l["per_decision"])
                r.limits.per_decision = static_cast<uint32_t>(
                    get_uint(l["per_decision"], lf + ".per_decision", 1, kMax32));
            if (l["per_layer"])
                r.limits.per_layer =
                    static_cast<uint32_t>(get_uint(l["per_layer"], lf + ".per_layer", 1, kMax32));
            if (l["every_steps"])
                r.limits.every_steps =
                    get_uint(l["every_steps"], lf + ".every_steps", 1, uint64_t{1} << 62);
            if (l["max_total"])
                r.limits.max_total =
                    static_cast<uint32_t>(get_uint(l["max_total"], lf + ".max_total", 1, kMax32));
        }
        if (const YAML::Node s = n["reason"]) r.reason = get_string(s, field + ".reason");
        return r;
    }

    double parse_value(const std::string& tok, MetricType type, int line, const std::string& field,
                       const std::string& metric) const {
        if (type == MetricType::kStage) {
            auto st = parse_stage(tok);
            if (!st)
                fail(line, field,
                     fmt::format("'{}' is not a stage name ({})", tok,
                                 fmt::join(kSeedStageNames, ", ")));
            return static_cast<double>(*st);
        }
        if (type == MetricType::kBool) {
            if (tok == "true") return 1.0;
            if (tok == "false") return 0.0;
            fail(line, field, metric + " is true or false, got '" + tok + "'");
        }
        double v = 0.0;
        size_t used = 0;
        try {
            v = std::stod(tok, &used);
        } catch (const std::exception&) {
            used = 0;
        }
        if (used == 0 || used != tok.size() || !std::isfinite(v))
            fail(line, field, "expected a number, got '" + tok + "'");
        return v;
    }

    RuleCondition parse_condition(const YAML::Node& n, const std::string& field) const {
        const int line = line_of(n, 1);
        if (!n.IsScalar())
            fail(line, field, "expected a condition string such as \"seed.health < 0.5\"");
        RuleCondition c;
        c.text = n.Scalar();
        c.line = line;
        std::istringstream in(c.text);
        std::string metric, op;
        in >> metric >> op;
        if (metric.empty() || op.empty())
            fail(line, field, "expected \"<metric> <op> <value>\", got '" + c.text + "'");
        auto m = find_metric(metric);
        if (!m) fail(line, field, "unknown metric '" + metric + "' (see docs/policies.md)");
        c.metric = *m;
        const MetricType type = kMetrics[*m].type;
        std::string rest;
        std::getline(in, rest);
        const auto first = rest.find_first_not_of(" \t");
        rest = first == std::string::npos
                   ? ""
                   : rest.substr(first, rest.find_last_not_of(" \t") - first + 1);

        if (op == "is") {
            if (rest == "measured")
                c.op = CmpOp::kMeasured;
            else if (rest == "unmeasured")
                c.op = CmpOp::kUnmeasured;
            else
                fail(line, field, "expected 'is measured' or 'is unmeasured'");
            return c;
        }
        if (op == "not") {
            std::string in_kw;
            std::istringstream r2(rest);
            r2 >> in_kw;
            if (in_kw != "in") fail(line, field, "expected 'not in [...]'");
            std::getline(r2, rest);
            const auto f2 = rest.find_first_not_of(" \t");
            rest = f2 == std::string::npos ? "" : rest.substr(f2);
            op = "not in";
        }
        if (op == "in" || op == "not in") {
            c.op = op == "in" ? CmpOp::kIn : CmpOp::kNotIn;
            if (rest.size() < 2 || rest.front() != '[' || rest.back() != ']')
                fail(line, field, "expected a list after '" + op + "', like [0, 3, 7]");
            std::string body = rest.substr(1, rest.size() - 2);
            std::istringstream items(body);
            std::string item;
            while (std::getline(items, item, ',')) {
                const auto a = item.find_first_not_of(" \t");
                if (a == std::string::npos) fail(line, field, "empty item in list");
                item = item.substr(a, item.find_last_not_of(" \t") - a + 1);
                c.values.push_back(parse_value(item, type, line, field, metric));
            }
            if (c.values.empty()) fail(line, field, "empty list after '" + op + "'");
            if (type == MetricType::kStage) {
                std::vector<std::string_view> names;
                for (double v : c.values) names.push_back(stage_name(static_cast<SeedStage>(v)));
                c.text = fmt::format("{} {} [{}]", metric, op, fmt::join(names, ", "));
            }
            return c;
        }
        static const std::map<std::string, CmpOp> kOps = {{"<", CmpOp::kLt},  {"<=", CmpOp::kLe},
                                                          {">", CmpOp::kGt},  {">=", CmpOp::kGe},
                                                          {"==", CmpOp::kEq}, {"!=", CmpOp::kNe}};
        auto it = kOps.find(op);
        if (it == kOps.end())
            fail(line, field,
                 "unknown operator '" + op + "' (<, <=, >, >=, ==, !=, in, not in, is)");
        c.op = it->second;
        if (type != MetricType::kNumber && c.op != CmpOp::kEq && c.op != CmpOp::kNe)
            fail(line, field, metric + " can only be compared with == or !=");
        if (rest.empty() || rest.find_first_of(" \t") != std::string::npos)
            fail(line, field, "expected one value after '" + op + "', got '" + rest + "'");
        c.value = parse_value(rest, type, line, field, metric);
        // One spelling of stages in every output: reasons echo this text.
        if (type == MetricType::kStage)
            c.text =
                fmt::format("{} {} {}", metric, op, stage_name(static_cast<SeedStage>(c.value)));
        return c;
    }

    std::string file_;
};

bool holds(const RuleCondition& c, const EvalContext& ctx) {
    const std::optional<double> v = kMetrics[c.metric].get(ctx);
    switch (c.op) {
        case CmpOp::kMeasured:
            return v.has_value();
        case CmpOp::kUnmeasured:
            return !v.has_value();
        default:
            break;
    }
    if (!v) return false;  // a comparison with an unmeasured metric never holds
    const double x = *v;
    switch (c.op) {
        case CmpOp::kLt:
            return x < c.value;
        case CmpOp::kLe:
            return x <= c.value;
        case CmpOp::kGt:
            return x > c.value;
        case CmpOp::kGe:
            return x >= c.value;
        case CmpOp::kEq:
            return x == c.value;
        case CmpOp::kNe:
            return x != c.value;
        case CmpOp::kIn:
            return std::find(c.values.begin(), c.values.end(), x) != c.values.end();
        case CmpOp::kNotIn:
            return std::find(c.values.begin(), c.values.end(), x) == c.values.end();
        default:
            return false;
    }
}

}  // namespace

std::vector<std::string> rules_metric_names() {
    std::vector<std::string> out;
    for (const MetricDef& m : kMetrics) out.emplace_back(m.name);
    return out;
}

RulesConfig parse_rules(const std::string& text, const std::string& filename) {
    return Parser(filename).parse(text);
}

RulesConfig load_rules_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) ESPER_THROW(kInvalidInput, path, ": cannot open policy file");
    std::ostringstream ss;
    ss << in.rdbuf();
    return parse_rules(ss.str(), path);
}

RulesPolicy::RulesPolicy(RulesConfig config)
    : config_(std::move(config)), state_(config_.rules.size()) {}

std::unique_ptr<RulesPolicy> RulesPolicy::from_file(const std::string& path) {
    return std::make_unique<RulesPolicy>(load_rules_file(path));
}

std::unique_ptr<RulesPolicy> RulesPolicy::from_string(const std::string& text,
                                                      const std::string& filename) {
    return std::make_unique<RulesPolicy>(parse_rules(text, filename));
}

std::vector<Decision> RulesPolicy::decide(const View& view, uint64_t step) {
    std::vector<Decision> out;
    std::set<std::pair<uint32_t, uint32_t>> decided;
    for (size_t ri = 0; ri < config_.rules.size(); ++ri) {
        const Rule& rule = config_.rules[ri];
        RuleState& st = state_[ri];
        if (rule.limits.max_total > 0 && st.total >= rule.limits.max_total) continue;
        if (rule.limits.every_steps > 0 && st.last_fired_step &&
            step < *st.last_fired_step + rule.limits.every_steps)
            continue;

        struct Match {
            std::optional<double> key;
            const SeedView* seed;
        };
        std::vector<Match> matches;
        for (const auto& [layer_id, lv] : view.layers()) {
            for (const SeedView& s : lv.seeds) {
                if (!s.known || decided.count({s.layer, s.seed})) continue;
                const EvalContext ctx{view, lv, s, step};
                bool ok = true;
                for (const RuleCondition& c : rule.when)
                    if (!holds(c, ctx)) {
                        ok = false;
                        break;
                    }
                if (!ok) continue;
                std::optional<double> key;
                if (rule.order_by) key = kMetrics[*rule.order_by].get(ctx);
                matches.push_back({key, &s});
            }
        }
        if (matches.empty()) continue;
        if (rule.order_by) {
            const bool desc = rule.order_descending;
            std::stable_sort(matches.begin(), matches.end(),
                             [desc](const Match& a, const Match& b) {
                                 if (a.key.has_value() != b.key.has_value())
                                     return a.key.has_value();
                                 if (!a.key) return false;
                                 return desc ? *a.key > *b.key : *a.key < *b.key;
                             });
        }

        std::map<uint32_t, uint32_t> per_layer;
        uint32_t fired = 0;
        for (const Match& m : matches) {
            if (rule.limits.per_decision > 0 && fired >= rule.limits.per_decision) break;
            if (rule.limits.max_total > 0 && st.total >= rule.limits.max_total) break;
            if (rule.limits.per_layer > 0 && per_layer[m.seed->layer] >= rule.limits.per_layer)
                continue;
            Decision d;
            d.kind = rule.action;
            d.layer = m.seed->layer;
            d.seed = m.seed->seed;
            d.blueprint = rule.blueprint;
            d.blueprint_size = rule.blueprint_size;
            d.strategy = rule.strategy;
            std::string conds;
            for (const RuleCondition& c : rule.when)
                conds += (conds.empty() ? "" : " and ") + c.text;
            d.reason = fmt::format("{}/{}: {}{}", config_.name, rule.name,
                                   rule.reason.empty() ? "" : rule.reason + "; ",
                                   conds.empty() ? "always" : conds);
            out.push_back(std::move(d));
            decided.insert({m.seed->layer, m.seed->seed});
            ++per_layer[m.seed->layer];
            ++fired;
            ++st.total;
        }
        if (fired > 0) st.last_fired_step = step;
    }
    return out;
}

}  // namespace esper::tamiyo
