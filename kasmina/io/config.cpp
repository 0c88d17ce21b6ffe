// YAML → kasmina::Config. Each section reader first refuses unknown keys (reporting the key's
// line), then reads each known key with a typed, range-checked helper (reporting the value's
// line). yaml-cpp marks are 0-based; messages use 1-based lines.
#include "kasmina/io/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <limits>
#include <map>
#include <sstream>

#include "core/error.h"

namespace esper::kasmina {

namespace {
template <size_t N>
std::string join_names(const std::array<std::string_view, N>& names) {
    std::string out;
    for (size_t i = 0; i < N; ++i) {
        if (i) out += ", ";
        out += names[i];
    }
    return out;
}
}  // namespace

// ---- the reader ----

namespace {

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

class Reader {
public:
    explicit Reader(std::string_view source) : source_(source) {}

    [[noreturn]] void fail(const YAML::Node& at, const std::string& field,
                           const std::string& reason) const {
        // An empty document has no mark: its first line.
        const int line = at.Mark().line >= 0 ? at.Mark().line + 1 : 1;
        ESPER_THROW(kInvalidInput, source_, ":", line, ": ", field, ": ", reason);
    }

    static std::string join(const std::string& prefix, std::string_view key) {
        return prefix.empty() ? std::string(key) : prefix + "." + std::string(key);
    }

    // Returns the section's map node (or an undefined node when absent), refusing unknown keys.
    YAML::Node section(const YAML::Node& parent, const std::string& prefix,
                       std::initializer_list<std::string_view> known) const {
        if (!parent.IsMap())
            fail(parent, prefix.empty() ? "(top level)" : prefix, "expected a mapping");
        for (auto it = parent.begin(); it != parent.end(); ++it) {
            const YAML::Node k = it->first;  // the iterator yields temporaries
            if (!k.IsScalar())
                fail(k, prefix.empty() ? "(top level)" : prefix, "keys must be plain names");
            const std::string key = k.Scalar();
            bool ok = false;
            for (std::string_view n : known) ok = ok || n == key;
            if (!ok) {
                std::string list;
                for (std::string_view n : known) {
                    if (!list.empty()) list += ", ";
                    list += n;
                }
                fail(k, join(prefix, key), "unknown key (known: " + list + ")");
            }
        }
        return parent;
    }

    // Child of a map, or nullopt when absent. `child_map` requires the child to be a mapping.
    std::optional<YAML::Node> child(const YAML::Node& map, std::string_view key) const {
        for (auto it = map.begin(); it != map.end(); ++it) {
            if (it->first.Scalar() == key) return it->second;
        }
        return std::nullopt;
    }
    std::optional<YAML::Node> child_map(const YAML::Node& map, const std::string& prefix,
                                        std::string_view key) const {
        auto c = child(map, key);
        if (c && !c->IsMap()) fail(*c, join(prefix, key), "expected a mapping" + got(*c));
        return c;
    }

    static std::string got(const YAML::Node& n) {
        if (n.IsNull()) return ", got nothing";
        if (n.IsScalar()) return ", got '" + n.Scalar() + "'";
        if (n.IsSequence()) return ", got a list";
        if (n.IsMap()) return ", got a mapping";
        return "";
    }

    void get_int(const YAML::Node& map, const std::string& prefix, std::string_view key,
                 int64_t& out, int64_t lo = 0, int64_t hi = kMaxInt) const {
        auto c = child(map, key);
        if (!c) return;
        out = parse_int(*c, join(prefix, key), lo, hi);
    }
    int64_t parse_int(const YAML::Node& n, const std::string& field, int64_t lo, int64_t hi) const {
        long long v = 0;
        if (!n.IsScalar() || !YAML::convert<long long>::decode(n, v)) {
            fail(n, field, "expected an integer" + got(n));
        }
        if (v < lo || v > hi) {
            fail(n, field,
                 hi == kMaxInt ? fmt::format("out of range: {} not in [{}, inf)", v, lo)
                               : fmt::format("out of range: {} not in [{}, {}]", v, lo, hi));
        }
        return v;
    }
    void get_uint(const YAML::Node& map, const std::string& prefix, std::string_view key,
                  uint64_t& out) const {
        auto c = child(map, key);
        if (!c) return;
        unsigned long long v = 0;
        const bool neg = c->IsScalar() && !c->Scalar().empty() && c->Scalar()[0] == '-';
        if (!c->IsScalar() || neg || !YAML::convert<unsigned long long>::decode(*c, v)) {
            fail(*c, join(prefix, key), "expected a non-negative integer" + got(*c));
        }
        out = v;
    }
    void get_double(const YAML::Node& map, const std::string& prefix, std::string_view key,
                    double& out, double lo, double hi, bool lo_open = false) const {
        auto c = child(map, key);
        if (!c) return;
        double v = 0;
        if (!c->IsScalar() || !YAML::convert<double>::decode(*c, v) || !std::isfinite(v)) {
            fail(*c, join(prefix, key), "expected a finite number" + got(*c));
        }
        if (v < lo || v > hi || (lo_open && v == lo)) {
            const char* open = lo_open ? "(" : "[";
            fail(*c, join(prefix, key),
                 std::isinf(hi)
                     ? fmt::format("out of range: {} not in {}{}, inf)", v, open, lo)
                     : fmt::format("out of range: {} not in {}{}, {}]", v, open, lo, hi));
        }
        out = v;
    }
    void get_bool(const YAML::Node& map, const std::string& prefix, std::string_view key,
                  bool& out) const {
        auto c = child(map, key);
        if (!c) return;
        bool v = false;
        if (!c->IsScalar() || !YAML::convert<bool>::decode(*c, v)) {
            fail(*c, join(prefix, key), "expected true or false" + got(*c));
        }
        out = v;
    }
    void get_string(const YAML::Node& map, const std::string& prefix, std::string_view key,
                    std::string& out) const {
        auto c = child(map, key);
        if (!c) return;
        if (c->IsNull()) {
            out.clear();
            return;
        }
        if (!c->IsScalar()) fail(*c, join(prefix, key), "expected a string" + got(*c));
        out = c->Scalar();
    }
    template <typename E, size_t N>
    void get_enum(const YAML::Node& map, const std::string& prefix, std::string_view key, E& out,
                  const std::array<std::string_view, N>& names) const {
        auto c = child(map, key);
        if (!c) return;
        if (!c->IsScalar())
            fail(*c, join(prefix, key), "expected one of " + join_names(names) + got(*c));
        auto v = parse_enum<E>(c->Scalar(), names);
        if (!v) fail(*c, join(prefix, key), "expected one of " + join_names(names) + got(*c));
        out = *v;
    }

    // Line of a key's value (or of the map when the key is absent), for cross-field checks.
    YAML::Node at(const YAML::Node& map, std::string_view key) const {
        auto c = child(map, key);
        return c ? *c : map;
    }

private:
    std::string source_;
};

constexpr double kInf = std::numeric_limits<double>::infinity();

void read_run(const Reader& r, const YAML::Node& n, RunConfig& c) {
    const std::string p = "run";
    r.section(n, p,
              {"seed", "device", "precision", "cuda_graph", "epochs", "max_steps",
               "checkpoint_every_steps", "telemetry_interval_steps", "eval_every_steps",
               "digest_every_steps"});
    r.get_uint(n, p, "seed", c.seed);
    r.get_string(n, p, "device", c.device);
    if (c.device != "auto" && c.device != "cpu" && c.device != "cuda") {
        r.fail(r.at(n, "device"), "run.device",
               "expected one of auto, cpu, cuda, got '" + c.device + "'");
    }
    r.get_string(n, p, "precision", c.precision);
    if (c.precision != "fp32" && c.precision != "bf16") {
        r.fail(r.at(n, "precision"), "run.precision",
               "expected fp32 or bf16, got '" + c.precision + "'");
    }
    r.get_bool(n, p, "cuda_graph", c.cuda_graph);
    r.get_int(n, p, "epochs", c.epochs);
    r.get_int(n, p, "max_steps", c.max_steps);
    r.get_int(n, p, "checkpoint_every_steps", c.checkpoint_every_steps);
    r.get_int(n, p, "telemetry_interval_steps", c.telemetry_interval_steps, 1);
    r.get_int(n, p, "eval_every_steps", c.eval_every_steps);
    r.get_int(n, p, "digest_every_steps", c.digest_every_steps);
    if (c.epochs == 0 && c.max_steps == 0) {
        r.fail(r.at(n, "epochs"), "run.epochs", "epochs and max_steps are both 0: nothing to run");
    }
}

void read_data(const Reader& r, const YAML::Node& n, DataConfig& c) {
    const std::string p = "data";
    r.section(n, p, {"dataset", "path", "batch_size", "teacher", "npy", "text"});
    r.get_string(n, p, "dataset", c.dataset);
    if (c.dataset != "fashion_mnist" && c.dataset != "teacher" && c.dataset != "npy" &&
        c.dataset != "text") {
        r.fail(r.at(n, "dataset"), "data.dataset",
               "expected one of fashion_mnist, teacher, npy, text, got '" + c.dataset + "'");
    }
    if (c.dataset == "text") c.path = kDefaultTextCorpus;  // unless data.path says otherwise
    r.get_string(n, p, "path", c.path);
    r.get_int(n, p, "batch_size", c.batch_size, 1, 1 << 24);
    if (auto t = r.child_map(n, p, "teacher")) {
        const std::string tp = "data.teacher";
        r.section(*t, tp,
                  {"train_samples", "test_samples", "features", "classes", "hidden", "noise"});
        r.get_int(*t, tp, "train_samples", c.teacher.train_samples, 1);
        r.get_int(*t, tp, "test_samples", c.teacher.test_samples, 1);
        r.get_int(*t, tp, "features", c.teacher.features, 1);
        r.get_int(*t, tp, "classes", c.teacher.classes, 2);
        r.get_int(*t, tp, "hidden", c.teacher.hidden, 1);
        r.get_double(*t, tp, "noise", c.teacher.noise, 0.0, kInf);
    }
    if (auto t = r.child_map(n, p, "npy")) {
        const std::string tp = "data.npy";
        r.section(*t, tp, {"train_features", "train_labels", "test_features", "test_labels"});
        r.get_string(*t, tp, "train_features", c.npy.train_features);
        r.get_string(*t, tp, "train_labels", c.npy.train_labels);
        r.get_string(*t, tp, "test_features", c.npy.test_features);
        r.get_string(*t, tp, "test_labels", c.npy.test_labels);
    }
    if (auto t = r.child_map(n, p, "text")) {
        const std::string tp = "data.text";
        r.section(*t, tp, {"validation_fraction", "eval_windows"});
        r.get_double(*t, tp, "validation_fraction", c.text.validation_fraction, 0.0, 0.5, true);
        r.get_int(*t, tp, "eval_windows", c.text.eval_windows, 1, 1 << 20);
    }
    if (c.dataset == "npy" && (c.npy.train_features.empty() || c.npy.train_labels.empty())) {
        r.fail(r.at(n, "dataset"), "data.npy",
               "dataset npy needs npy.train_features and npy.train_labels");
    }
}

void read_transformer(const Reader& r, const YAML::Node& n, TransformerConfig& c) {
    const std::string p = "model.transformer";
    r.section(n, p,
              {"n_layer", "n_head", "d_model", "context", "tie_embeddings", "widening_seeds",
               "max_extra_units", "max_extra_heads", "initial_extra_units", "initial_extra_heads",
               "grow_depth", "grow_width"});
    r.get_int(n, p, "n_layer", c.n_layer, 1, 1024);
    r.get_int(n, p, "n_head", c.n_head, 1, 1024);
    r.get_int(n, p, "d_model", c.d_model, 1, 1 << 16);
    r.get_int(n, p, "context", c.context, 1, 1 << 16);
    r.get_bool(n, p, "tie_embeddings", c.tie_embeddings);
    r.get_int(n, p, "widening_seeds", c.widening_seeds, 0, 1 << 10);
    r.get_int(n, p, "max_extra_units", c.max_extra_units, 0, 1 << 20);
    r.get_int(n, p, "max_extra_heads", c.max_extra_heads, 0, 1024);
    r.get_int(n, p, "initial_extra_units", c.initial_extra_units, 0, c.max_extra_units);
    r.get_int(n, p, "initial_extra_heads", c.initial_extra_heads, 0, c.max_extra_heads);
    if (c.d_model % c.n_head != 0) {
        r.fail(r.at(n, "d_model"), p + ".d_model",
               fmt::format("{} is not a multiple of n_head {}", c.d_model, c.n_head));
    }
    if (auto g = r.child_map(n, p, "grow_depth")) {
        const std::string gp = p + ".grow_depth";
        r.section(*g, gp, {"blocks", "at_step", "init", "warmup_steps"});
        r.get_int(*g, gp, "blocks", c.grow_depth.blocks, 0, 1024);
        r.get_int(*g, gp, "at_step", c.grow_depth.at_step, 1, int64_t(1) << 40);
        r.get_enum(*g, gp, "init", c.grow_depth.init, kDepthInitNames);
        r.get_int(*g, gp, "warmup_steps", c.grow_depth.warmup_steps, 0, int64_t(1) << 40);
        if (c.grow_depth.blocks > 0 && c.grow_depth.at_step == 0)
            r.fail(r.at(*g, "at_step"), gp + ".at_step",
                   "growing blocks needs the step they join at (>= 1)");
    }
    if (auto g = r.child_map(n, p, "grow_width")) {
        const std::string gp = p + ".grow_width";
        r.section(*g, gp, {"units", "heads", "at_step", "init"});
        GrowWidthConfig& w = c.grow_width;
        r.get_int(*g, gp, "units", w.units, 0, c.max_extra_units - c.initial_extra_units);
        r.get_int(*g, gp, "heads", w.heads, 0, c.max_extra_heads - c.initial_extra_heads);
        r.get_int(*g, gp, "at_step", w.at_step, 1, int64_t(1) << 40);
        r.get_enum(*g, gp, "init", w.init, kWidthInitNames);
        if ((w.units > 0 || w.heads > 0) && w.at_step == 0)
            r.fail(r.at(*g, "at_step"), gp + ".at_step",
                   "growing width needs the step it happens at (>= 1)");
    }
}

void read_model(const Reader& r, const YAML::Node& n, ModelConfig& c) {
    const std::string p = "model";
    r.section(n, p,
              {"kind", "hidden", "activation", "seeds_per_layer", "widening_seeds",
               "max_extra_units", "transformer"});
    r.get_enum(n, p, "kind", c.kind, kModelKindNames);
    if (auto t = r.child_map(n, p, "transformer")) read_transformer(r, *t, c.transformer);
    if (auto h = r.child(n, "hidden")) {
        if (!h->IsSequence() || h->size() == 0) {
            r.fail(*h, "model.hidden",
                   "expected a non-empty list of layer widths" + Reader::got(*h));
        }
        c.hidden.clear();
        for (size_t i = 0; i < h->size(); ++i) {
            c.hidden.push_back(
                r.parse_int((*h)[i], "model.hidden[" + std::to_string(i) + "]", 1, 1 << 24));
        }
    }
    r.get_enum(n, p, "activation", c.activation, kActivationNames);
    r.get_int(n, p, "seeds_per_layer", c.seeds_per_layer, 1, 1 << 24);
    r.get_int(n, p, "widening_seeds", c.widening_seeds, 0, 1 << 10);
    r.get_int(n, p, "max_extra_units", c.max_extra_units, 0, 1 << 20);
    if (c.kind == ModelKind::kTransformer) {
        // The effective config writes both keys (0) for every host: only a value is refused.
        auto mlp_only = [&](const char* key, int64_t value) {
            if (value != 0)
                r.fail(r.at(n, key), std::string("model.") + key,
                       fmt::format("is for the MLP host; the transformer's is "
                                   "model.transformer.{}",
                                   key));
        };
        mlp_only("widening_seeds", c.widening_seeds);
        mlp_only("max_extra_units", c.max_extra_units);
        const int64_t hidden = 4 * c.transformer.d_model;
        if (c.seeds_per_layer > hidden)
            r.fail(r.at(n, "seeds_per_layer"), "model.seeds_per_layer",
                   fmt::format("seeds_per_layer {} exceeds the {} MLP hidden units of a block "
                               "(4 · d_model; S > D)",
                               c.seeds_per_layer, hidden));
        return;
    }
    for (size_t i = 0; i < c.hidden.size(); ++i) {
        if (c.seeds_per_layer > c.hidden[i]) {
            r.fail(r.at(n, "seeds_per_layer"), "model.seeds_per_layer",
                   fmt::format("seeds_per_layer {} exceeds the width {} of layer {} (S > D)",
                               c.seeds_per_layer, c.hidden[i], i));
        }
    }
}

void read_optimizer(const Reader& r, const YAML::Node& n, OptimizerConfig& c) {
    const std::string p = "optimizer";
    r.section(n, p,
              {"kind", "lr", "momentum", "beta1", "beta2", "eps", "weight_decay", "schedule",
               "warmup_steps", "step_size", "gamma", "grad_clip", "blueprint_lr"});
    r.get_enum(n, p, "kind", c.kind, kOptimizerKindNames);
    r.get_double(n, p, "lr", c.lr, 0.0, kInf, true);
    r.get_double(n, p, "momentum", c.momentum, 0.0, 1.0);
    r.get_double(n, p, "beta1", c.beta1, 0.0, 1.0);
    r.get_double(n, p, "beta2", c.beta2, 0.0, 1.0);
    r.get_double(n, p, "eps", c.eps, 0.0, kInf, true);
    r.get_double(n, p, "weight_decay", c.weight_decay, 0.0, kInf);
    r.get_enum(n, p, "schedule", c.schedule, kLrScheduleNames);
    r.get_int(n, p, "warmup_steps", c.warmup_steps);
    r.get_int(n, p, "step_size", c.step_size, 1);
    r.get_double(n, p, "gamma", c.gamma, 0.0, 1.0, true);
    r.get_double(n, p, "grad_clip", c.grad_clip, 0.0, kInf);
    r.get_double(n, p, "blueprint_lr", c.blueprint_lr, 0.0, kInf);
}

void read_blueprints(const Reader& r, const YAML::Node& n, BlueprintsConfig& c) {
    const std::string p = "blueprints";
    r.section(n, p,
              {"residual_mlp", "lowrank", "scale_shift", "mlp_units", "attention_head", "lora",
               "max_params_per_layer", "input", "init"});
    r.get_enum(n, p, "input", c.input, kBlueprintInputNames);
    r.get_enum(n, p, "init", c.init, kBlueprintInitNames);
    if (auto b = r.child_map(n, p, "residual_mlp")) {
        r.section(*b, "blueprints.residual_mlp", {"expansion", "slots"});
        r.get_int(*b, "blueprints.residual_mlp", "expansion", c.residual_mlp.expansion, 1, 64);
        r.get_int(*b, "blueprints.residual_mlp", "slots", c.residual_mlp.slots, 0, 1 << 24);
    }
    if (auto b = r.child_map(n, p, "lowrank")) {
        r.section(*b, "blueprints.lowrank", {"rank", "slots"});
        r.get_int(*b, "blueprints.lowrank", "rank", c.lowrank.rank, 1, 1 << 16);
        r.get_int(*b, "blueprints.lowrank", "slots", c.lowrank.slots, 0, 1 << 24);
    }
    if (auto b = r.child_map(n, p, "scale_shift")) {
        r.section(*b, "blueprints.scale_shift", {"slots"});
        r.get_int(*b, "blueprints.scale_shift", "slots", c.scale_shift.slots, 0, 1 << 24);
    }
    if (auto b = r.child_map(n, p, "mlp_units")) {
        r.section(*b, "blueprints.mlp_units", {"units", "slots"});
        r.get_int(*b, "blueprints.mlp_units", "units", c.mlp_units.units, 1, 1 << 16);
        r.get_int(*b, "blueprints.mlp_units", "slots", c.mlp_units.slots, 0, 1 << 16);
    }
    if (auto b = r.child_map(n, p, "attention_head")) {
        r.section(*b, "blueprints.attention_head", {"slots"});
        r.get_int(*b, "blueprints.attention_head", "slots", c.attention_head.slots, 0, 1 << 16);
    }
    if (auto b = r.child_map(n, p, "lora")) {
        r.section(*b, "blueprints.lora", {"rank", "slots"});
        r.get_int(*b, "blueprints.lora", "rank", c.lora.rank, 1, 1 << 16);
        r.get_int(*b, "blueprints.lora", "slots", c.lora.slots, 0, 1 << 16);
    }
    r.get_int(n, p, "max_params_per_layer", c.max_params_per_layer);
}

void read_lifecycle(const Reader& r, const YAML::Node& n, LifecycleConfig& c) {
    const std::string p = "lifecycle";
    r.section(n, p,
              {"training_steps", "stabilization_steps", "evaluation_steps", "fine_tuning_steps",
               "embargo_steps", "max_training_per_layer", "max_active_per_layer", "auto_gates",
               "decision_timeout_steps", "contribution", "ablation_batches", "grafting", "gates"});
    r.get_int(n, p, "training_steps", c.training_steps);
    r.get_int(n, p, "stabilization_steps", c.stabilization_steps);
    r.get_int(n, p, "evaluation_steps", c.evaluation_steps);
    r.get_int(n, p, "fine_tuning_steps", c.fine_tuning_steps);
    r.get_int(n, p, "embargo_steps", c.embargo_steps);
    r.get_int(n, p, "max_training_per_layer", c.max_training_per_layer, 1);
    r.get_int(n, p, "max_active_per_layer", c.max_active_per_layer, 1);
    r.get_bool(n, p, "auto_gates", c.auto_gates);
    r.get_int(n, p, "decision_timeout_steps", c.decision_timeout_steps, 1);
    r.get_enum(n, p, "contribution", c.contribution, kContributionMeasureNames);
    r.get_int(n, p, "ablation_batches", c.ablation_batches, 1, 1024);
    if (auto g = r.child_map(n, p, "grafting")) {
        const std::string gp = "lifecycle.grafting";
        GraftingConfig& s = c.grafting;
        r.section(
            *g, gp,
            {"strategy", "ramp_steps", "steepness", "momentum", "momentum_gain", "drift_threshold",
             "drift_ema", "stability_threshold", "stability_patience", "adaptive_window"});
        r.get_enum(*g, gp, "strategy", s.strategy, kGraftingStrategyNames);
        r.get_int(*g, gp, "ramp_steps", s.ramp_steps, 1);
        r.get_double(*g, gp, "steepness", s.steepness, 0.0, kInf, true);
        r.get_double(*g, gp, "momentum", s.momentum, 0.0, 1.0);
        r.get_double(*g, gp, "momentum_gain", s.momentum_gain, 0.0, kInf);
        r.get_double(*g, gp, "drift_threshold", s.drift_threshold, 0.0, kInf, true);
        r.get_double(*g, gp, "drift_ema", s.drift_ema, 0.0, 1.0);
        r.get_double(*g, gp, "stability_threshold", s.stability_threshold, 0.0, kInf, true);
        r.get_int(*g, gp, "stability_patience", s.stability_patience, 1);
        r.get_int(*g, gp, "adaptive_window", s.adaptive_window, 1);
    }
    if (auto g = r.child_map(n, p, "gates")) {
        const std::string gp = "lifecycle.gates";
        GatesConfig& s = c.gates;
        r.section(*g, gp,
                  {"min_gradient_health", "min_contribution", "cull_contribution",
                   "min_improvement", "max_error_rate", "min_stability"});
        r.get_double(*g, gp, "min_gradient_health", s.min_gradient_health, 0.0, 1.0);
        r.get_double(*g, gp, "min_contribution", s.min_contribution, -kInf, kInf);
        r.get_double(*g, gp, "cull_contribution", s.cull_contribution, 0.0, kInf);
        r.get_double(*g, gp, "min_improvement", s.min_improvement, -kInf, kInf);
        r.get_double(*g, gp, "max_error_rate", s.max_error_rate, 0.0, 1.0);
        r.get_double(*g, gp, "min_stability", s.min_stability, 0.0, 1.0);
    }
    if (c.max_training_per_layer > c.max_active_per_layer) {
        r.fail(r.at(n, "max_training_per_layer"), "lifecycle.max_training_per_layer",
               "exceeds max_active_per_layer");
    }
}

void read_governor(const Reader& r, const YAML::Node& n, GovernorConfig& c) {
    const std::string p = "governor";
    r.section(n, p,
              {"enabled", "divergence_factor", "window", "snapshot_every_steps",
               "max_consecutive_trips"});
    r.get_bool(n, p, "enabled", c.enabled);
    r.get_double(n, p, "divergence_factor", c.divergence_factor, 1.0, kInf, true);
    r.get_int(n, p, "window", c.window, 1);
    r.get_int(n, p, "snapshot_every_steps", c.snapshot_every_steps, 1);
    r.get_int(n, p, "max_consecutive_trips", c.max_consecutive_trips, 0);
}

void read_faults(const Reader& r, const YAML::Node& n, FaultInjection& c) {
    const std::string p = "faults";
    r.section(n, p, {"nan_at_step", "corrupt_digest_rank", "checkpoint_crash_after_files"});
    r.get_int(n, p, "nan_at_step", c.nan_at_step, -1);
    r.get_int(n, p, "corrupt_digest_rank", c.corrupt_digest_rank, -1);
    r.get_int(n, p, "checkpoint_crash_after_files", c.checkpoint_crash_after_files, -1);
}

// yaml-cpp keeps both entries of a repeated key and lookups return the first, so a repeated key
// would silently lose its second value: refused in every mapping of the document (the tamiyo:
// section too, whose own reader shares the file).
void refuse_duplicate_keys(const Reader& r, const YAML::Node& n, const std::string& prefix) {
    if (n.IsSequence()) {
        for (size_t i = 0; i < n.size(); ++i)
            refuse_duplicate_keys(r, n[i], prefix + "[" + std::to_string(i) + "]");
        return;
    }
    if (!n.IsMap()) return;
    std::map<std::string, int> first_line;
    for (auto it = n.begin(); it != n.end(); ++it) {
        const YAML::Node k = it->first;
        if (!k.IsScalar()) continue;  // reported by section() as "keys must be plain names"
        const int line = k.Mark().line + 1;
        auto [at, inserted] = first_line.emplace(k.Scalar(), line);
        if (!inserted)
            r.fail(k, Reader::join(prefix, k.Scalar()),
                   fmt::format("duplicate key (first at line {})", at->second));
        refuse_duplicate_keys(r, it->second, Reader::join(prefix, k.Scalar()));
    }
}

}  // namespace

MemoryEstimate estimate_memory(const Config& c) {
    MemoryEstimate m;
    constexpr double kFloat = 4.0;
    // Input features and classes of the dataset (npy: unknown until read, counted as 0).
    double features = 0, classes = 10, samples = 0;
    if (c.data.dataset == "fashion_mnist") {
        features = 784;
        samples = 70000;
    } else if (c.data.dataset == "teacher") {
        features = double(c.data.teacher.features);
        classes = double(c.data.teacher.classes);
        samples = double(c.data.teacher.train_samples) + double(c.data.teacher.test_samples);
    }
    m.data_bytes = samples * features * kFloat;
    // Host parameters with their gradients and optimizer moments.
    const double per_param = c.optimizer.kind == OptimizerKind::kAdamw ? 4 : 3;
    double params = 0, in = features, widths = 0;
    for (int64_t h : c.model.hidden) {
        params += in * double(h) + double(h);
        in = double(h);
        widths += double(h);
    }
    params += in * classes + classes;
    // mlp_units: each hidden layer's reserved room and its widening site's arena (4 buffers).
    in = features;
    for (size_t l = 0; l < c.model.hidden.size(); ++l) {
        const double out = l + 1 < c.model.hidden.size() ? double(c.model.hidden[l + 1]) : classes;
        const double unit = in + 1.0 + out;
        params += double(c.model.max_extra_units) * unit;
        if (c.model.widening_seeds > 0)
            m.arena_bytes += 4.0 * kFloat * double(c.blueprints.mlp_units.slots) *
                             double(c.blueprints.mlp_units.units) * unit;
        in = double(c.model.hidden[l]);
    }
    m.host_bytes = params * per_param * kFloat;
    // Activations kept for the backward pass (h, y and their gradients per layer), per sample.
    m.activation_bytes = 4.0 * double(c.data.batch_size) * (widths + classes + features) * kFloat;
    // Blueprint arenas, pre-allocated per layer and kind: parameters, gradients, two moments.
    double in_width = features;
    for (int64_t h : c.model.hidden) {
        const int64_t s = std::max<int64_t>(1, c.model.seeds_per_layer);
        const int64_t w = (h + s - 1) / s;
        const int64_t layer_in =
            c.blueprints.input == BlueprintInput::kLayer ? int64_t(in_width) : int64_t(0);
        const BlueprintsConfig& b = c.blueprints;
        m.arena_bytes +=
            4.0 * kFloat *
            (double(b.residual_mlp.slots) *
                 double(blueprint_param_count(BlueprintKind::kResidualMlp, w,
                                              b.residual_mlp.expansion * w, layer_in)) +
             double(b.lowrank.slots) * double(blueprint_param_count(BlueprintKind::kLowrank, w,
                                                                    b.lowrank.rank, layer_in)) +
             double(b.scale_shift.slots) *
                 double(blueprint_param_count(BlueprintKind::kScaleShift, w, 0)));
        in_width = double(h);
    }
    if (c.model.kind == ModelKind::kTransformer) {
        // The byte-level transformer instead of the MLP above: embeddings, n_layer blocks of
        // attention (4 C^2) and MLP (8 C^2, with the reserved extra units), the output head; its
        // activations hold per position about 16 C values a block plus the attention scores.
        const TransformerConfig& t = c.model.transformer;
        const double C = double(t.d_model), T = double(t.context), L = double(t.n_layer);
        const double F = 4.0 * C + double(t.max_extra_units);
        const double heads = double(t.n_head + t.max_extra_heads);
        const double block = 4.0 * C * C + 2.0 * C * F + 13.0 * C + F;
        const double tparams = 256.0 * C + T * C + L * block + (t.tie_embeddings ? 0.0 : 256.0 * C);
        m.host_bytes = tparams * per_param * kFloat;
        m.activation_bytes =
            double(c.data.batch_size) * T * (L * (16.0 * C + heads * T) + 256.0) * kFloat * 2.0;
        m.arena_bytes = 0;  // widening seeds live in the host's reserved room, counted above
        m.data_bytes = 0;   // the corpus is read as bytes, its size known only at load
    }
    m.total_bytes = m.data_bytes + m.host_bytes + m.activation_bytes + m.arena_bytes;
    return m;
}

uint64_t physical_memory_bytes() {
    const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGE_SIZE);
    return pages > 0 && page > 0 ? uint64_t(pages) * uint64_t(page) : 0;
}

namespace {

std::string gib(double bytes) { return fmt::format("{:.1f} GiB", bytes / double(1ull << 30)); }

// A config that cannot fit in memory is refused at validation, naming the size (it used to pass
// and die in std::bad_alloc once the model was built).
void refuse_what_cannot_fit(const Reader& r, const YAML::Node& root, const Config& c,
                            uint64_t memory_bytes) {
    if (memory_bytes == 0) return;
    const MemoryEstimate m = estimate_memory(c);
    if (m.total_bytes <= double(memory_bytes)) return;
    const bool transformer = c.model.kind == ModelKind::kTransformer;
    const char* key = transformer ? "transformer" : "hidden";
    const YAML::Node model = root.IsMap() && root["model"] ? root["model"] : root;
    const YAML::Node at = model.IsMap() && model[key] ? model[key] : model;
    r.fail(at, transformer ? "model.transformer" : "model.hidden",
           fmt::format("the run needs about {} of memory (host parameters with gradients and "
                       "optimizer state {}, blueprint arenas {}, activations {}, data {}) but "
                       "this machine has {}",
                       gib(m.total_bytes), gib(m.host_bytes), gib(m.arena_bytes),
                       gib(m.activation_bytes), gib(m.data_bytes), gib(double(memory_bytes))));
}

Config read_root(const Reader& r, const YAML::Node& root, uint64_t memory_bytes) {
    Config c;
    // An empty or comment-only file is almost always a mistake (the wrong file, a truncated
    // write): refused. `{}` asks for every default explicitly.
    if (!root.IsDefined() || root.IsNull())
        r.fail(root, "(top level)",
               "the config is empty (no keys); write `{}` for every default, or drop --config");
    refuse_duplicate_keys(r, root, "");
    r.section(root, "",
              {"run", "data", "model", "optimizer", "blueprints", "lifecycle", "governor", "faults",
               "tamiyo"});
    if (auto s = r.child_map(root, "", "run")) read_run(r, *s, c.run);
    if (auto s = r.child_map(root, "", "data")) read_data(r, *s, c.data);
    if (auto s = r.child_map(root, "", "model"))
        read_model(r, *s, c.model);
    else
        read_model(r, YAML::Node(YAML::NodeType::Map), c.model);
    if (auto s = r.child_map(root, "", "optimizer")) read_optimizer(r, *s, c.optimizer);
    if (auto s = r.child_map(root, "", "blueprints")) read_blueprints(r, *s, c.blueprints);
    if (auto s = r.child_map(root, "", "lifecycle")) read_lifecycle(r, *s, c.lifecycle);
    if (auto s = r.child_map(root, "", "governor")) read_governor(r, *s, c.governor);
    if (auto s = r.child_map(root, "", "faults")) read_faults(r, *s, c.faults);
    // The transformer reads bytes, and bytes need the transformer.
    const bool transformer = c.model.kind == ModelKind::kTransformer;
    if (transformer != (c.data.dataset == "text")) {
        const YAML::Node where = transformer ? root["data"] : root["model"];
        r.fail(where ? r.at(where, transformer ? "dataset" : "kind") : root,
               transformer ? "data.dataset" : "model.kind",
               transformer ? "model.kind: transformer reads bytes: set data.dataset: text"
                           : "data.dataset: text needs model.kind: transformer");
    }
    // MLP widening (mlp_units) seeds need room to fold into, and run on the CPU only.
    if (!transformer && c.model.widening_seeds > 0) {
        const YAML::Node model = root["model"];
        if (c.model.max_extra_units < c.blueprints.mlp_units.units)
            r.fail(model && model["max_extra_units"] ? r.at(model, "max_extra_units") : model,
                   "model.max_extra_units",
                   fmt::format("{} leaves no room for one mlp_units seed of {} units "
                               "(blueprints.mlp_units.units): a FOSSILIZED seed could never fold "
                               "into the host",
                               c.model.max_extra_units, c.blueprints.mlp_units.units));
        if (c.run.device == "cuda")
            r.fail(root["run"] ? r.at(root["run"], "device") : root, "run.device",
                   "cuda does not run the MLP's mlp_units seeds (model.widening_seeds > 0) yet; "
                   "use run.device: cpu or auto");
    }
    // GradMax places mlp_units seeds' units; without widening sites it would do nothing.
    const int64_t sites = transformer ? c.model.transformer.widening_seeds : c.model.widening_seeds;
    if (c.blueprints.init == BlueprintInit::kGradmax && sites == 0)
        r.fail(r.at(root["blueprints"], "init"), "blueprints.init",
               transformer ? "gradmax places mlp_units seeds' units, and this transformer has no "
                             "widening site for them: set model.transformer.widening_seeds"
                           : "gradmax places mlp_units seeds' units, and this MLP has no widening "
                             "site for them: set model.widening_seeds (and max_extra_units)");
    refuse_what_cannot_fit(r, root, c, memory_bytes);
    return c;
}

}  // namespace

SeedManagerConfig seed_manager_config(const Config& config) {
    SeedManagerConfig c;
    c.lifecycle = config.lifecycle;
    c.blueprints = config.blueprints;
    c.run_seed = config.run.seed;
    c.seeds_per_layer = config.model.seeds_per_layer;
    return c;
}

namespace {

// The offset of the first byte that does not belong to well-formed UTF-8 (RFC 3629), or npos.
size_t invalid_utf8_at(std::string_view s) {
    for (size_t i = 0; i < s.size();) {
        const auto c = static_cast<unsigned char>(s[i]);
        const size_t n = c < 0x80                 ? 0
                         : c >= 0xC2 && c <= 0xDF ? 1
                         : c >= 0xE0 && c <= 0xEF ? 2
                         : c >= 0xF0 && c <= 0xF4 ? 3
                                                  : 4;
        if (n > 3 || s.size() - i <= n) return i;
        if (n > 0) {  // the second byte's range excludes overlongs, surrogates, > U+10FFFF
            const auto c1 = static_cast<unsigned char>(s[i + 1]);
            const unsigned lo = c == 0xE0 ? 0xA0 : c == 0xF0 ? 0x90 : 0x80;
            const unsigned hi = c == 0xED ? 0x9F : c == 0xF4 ? 0x8F : 0xBF;
            if (c1 < lo || c1 > hi) return i;
        }
        for (size_t k = 2; k <= n; ++k)
            if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return i;
        i += n + 1;
    }
    return std::string_view::npos;
}

}  // namespace

Config parse_config(std::string_view yaml_text, std::string_view source_name,
                    uint64_t memory_bytes) {
    Reader r(source_name);
    // YAML is Unicode text; yaml-cpp reads other bytes as they come, and its writer cannot write
    // them back (a path of bytes 0xFF 0x1F read back as another path: found by fuzz_config).
    if (const size_t at = invalid_utf8_at(yaml_text); at != std::string_view::npos) {
        const auto line = std::count(yaml_text.begin(), yaml_text.begin() + at, '\n') + 1;
        ESPER_THROW(kInvalidInput, source_name, ":", line, ": (yaml): not UTF-8 text (byte 0x",
                    fmt::format("{:02X}", static_cast<unsigned char>(yaml_text[at])), ")");
    }
    YAML::Node root;
    try {
        root = YAML::Load(std::string(yaml_text));
    } catch (const YAML::Exception& e) {
        ESPER_THROW(kInvalidInput, source_name, ":", e.mark.line + 1, ": (yaml): ", e.msg);
    }
    return read_root(r, root, memory_bytes);
}

Config parse_config(std::string_view yaml_text, std::string_view source_name) {
    return parse_config(yaml_text, source_name, physical_memory_bytes());
}

Config load_config(const std::string& path) {
    // A directory opens as a stream on Linux and reads as empty: refused by name.
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec))
        ESPER_THROW(kInvalidInput, path, ":0: (file): is a directory, not a config file");
    std::ifstream in(path, std::ios::binary);
    if (!in) ESPER_THROW(kInvalidInput, path, ":0: (file): cannot open the config file");
    std::ostringstream os;
    os << in.rdbuf();
    if (in.bad()) ESPER_THROW(kInvalidInput, path, ":0: (file): cannot read the config file");
    return parse_config(os.str(), path);
}

// ---- effective config ----

namespace {

// A mapping built key by key: every value goes through YAML::Emitter (quoting, escaping), and
// doubles as the shortest text that reads back to the same value (0.05, not
// 0.050000000000000003), which the emitter's fixed precision would not give.
class YamlMap {
public:
    explicit YamlMap(YAML::Emitter& out, bool flow = false) : out_(out) {
        if (flow) out_ << YAML::Flow;
        out_ << YAML::BeginMap;
    }
    ~YamlMap() { out_ << YAML::EndMap; }
    YamlMap(const YamlMap&) = delete;
    YamlMap& operator=(const YamlMap&) = delete;

    YamlMap& put(const char* key, int64_t v) { return value(key, v); }
    YamlMap& put(const char* key, uint64_t v) { return value(key, v); }
    YamlMap& put(const char* key, bool v) { return value(key, v); }
    YamlMap& put(const char* key, double v) { return value(key, fmt::format("{}", v)); }
    YamlMap& put(const char* key, std::string_view v) { return value(key, std::string(v)); }
    YamlMap& put(const char* key, const std::string& v) { return value(key, v); }
    YAML::Emitter& key(const char* key) { return out_ << YAML::Key << key << YAML::Value; }

private:
    template <typename T>
    YamlMap& value(const char* key, const T& v) {
        out_ << YAML::Key << key << YAML::Value << v;
        return *this;
    }
    YAML::Emitter& out_;
};

// The whole config as one mapping (the root map closes when this returns).
void emit_config(YAML::Emitter& out, const Config& c) {
    YamlMap root(out);
    {
        root.key("run");
        YamlMap m(out);
        m.put("seed", c.run.seed)
            .put("device", c.run.device)
            .put("precision", c.run.precision)
            .put("cuda_graph", c.run.cuda_graph)
            .put("epochs", c.run.epochs)
            .put("max_steps", c.run.max_steps)
            .put("checkpoint_every_steps", c.run.checkpoint_every_steps)
            .put("telemetry_interval_steps", c.run.telemetry_interval_steps)
            .put("eval_every_steps", c.run.eval_every_steps)
            .put("digest_every_steps", c.run.digest_every_steps);
    }
    {
        root.key("data");
        YamlMap m(out);
        m.put("dataset", c.data.dataset)
            .put("path", c.data.path)
            .put("batch_size", c.data.batch_size);
        {
            m.key("text");
            YamlMap(out)
                .put("validation_fraction", c.data.text.validation_fraction)
                .put("eval_windows", c.data.text.eval_windows);
        }
        {
            m.key("teacher");
            YamlMap t(out);
            const TeacherConfig& tc = c.data.teacher;
            t.put("train_samples", tc.train_samples)
                .put("test_samples", tc.test_samples)
                .put("features", tc.features)
                .put("classes", tc.classes)
                .put("hidden", tc.hidden)
                .put("noise", tc.noise);
        }
        {
            m.key("npy");
            YamlMap n(out);
            n.put("train_features", c.data.npy.train_features)
                .put("train_labels", c.data.npy.train_labels)
                .put("test_features", c.data.npy.test_features)
                .put("test_labels", c.data.npy.test_labels);
        }
    }
    {
        root.key("model");
        YamlMap m(out);
        m.put("kind", model_kind_name(c.model.kind));
        m.key("hidden") << YAML::Flow << c.model.hidden;
        m.put("activation", activation_name(c.model.activation))
            .put("seeds_per_layer", c.model.seeds_per_layer)
            .put("widening_seeds", c.model.widening_seeds)
            .put("max_extra_units", c.model.max_extra_units);
        {
            const TransformerConfig& t = c.model.transformer;
            m.key("transformer");
            YamlMap tm(out);
            tm.put("n_layer", t.n_layer)
                .put("n_head", t.n_head)
                .put("d_model", t.d_model)
                .put("context", t.context)
                .put("tie_embeddings", t.tie_embeddings)
                .put("widening_seeds", t.widening_seeds)
                .put("max_extra_units", t.max_extra_units)
                .put("max_extra_heads", t.max_extra_heads)
                .put("initial_extra_units", t.initial_extra_units)
                .put("initial_extra_heads", t.initial_extra_heads);
            if (t.grow_depth.blocks > 0) {
                tm.key("grow_depth");
                YamlMap(out, true)
                    .put("blocks", t.grow_depth.blocks)
                    .put("at_step", t.grow_depth.at_step)
                    .put("init", depth_init_name(t.grow_depth.init))
                    .put("warmup_steps", t.grow_depth.warmup_steps);
            }
            if (t.grow_width.units > 0 || t.grow_width.heads > 0) {
                tm.key("grow_width");
                YamlMap(out, true)
                    .put("units", t.grow_width.units)
                    .put("heads", t.grow_width.heads)
                    .put("at_step", t.grow_width.at_step)
                    .put("init", width_init_name(t.grow_width.init));
            }
        }
    }
    {
        const OptimizerConfig& op = c.optimizer;
        root.key("optimizer");
        YamlMap m(out);
        m.put("kind", optimizer_kind_name(op.kind))
            .put("lr", op.lr)
            .put("momentum", op.momentum)
            .put("beta1", op.beta1)
            .put("beta2", op.beta2)
            .put("eps", op.eps)
            .put("weight_decay", op.weight_decay)
            .put("schedule", lr_schedule_name(op.schedule))
            .put("warmup_steps", op.warmup_steps)
            .put("step_size", op.step_size)
            .put("gamma", op.gamma)
            .put("grad_clip", op.grad_clip)
            .put("blueprint_lr", op.blueprint_lr);
    }
    {
        const BlueprintsConfig& b = c.blueprints;
        root.key("blueprints");
        YamlMap m(out);
        {
            m.key("residual_mlp");
            YamlMap(out, true)
                .put("expansion", b.residual_mlp.expansion)
                .put("slots", b.residual_mlp.slots);
        }
        {
            m.key("lowrank");
            YamlMap(out, true).put("rank", b.lowrank.rank).put("slots", b.lowrank.slots);
        }
        {
            m.key("scale_shift");
            YamlMap(out, true).put("slots", b.scale_shift.slots);
        }
        {
            m.key("mlp_units");
            YamlMap(out, true).put("units", b.mlp_units.units).put("slots", b.mlp_units.slots);
        }
        {
            m.key("attention_head");
            YamlMap(out, true).put("slots", b.attention_head.slots);
        }
        {
            m.key("lora");
            YamlMap(out, true).put("rank", b.lora.rank).put("slots", b.lora.slots);
        }
        m.put("max_params_per_layer", b.max_params_per_layer)
            .put("input", blueprint_input_name(b.input))
            .put("init", blueprint_init_name(b.init));
    }
    {
        const LifecycleConfig& l = c.lifecycle;
        root.key("lifecycle");
        YamlMap m(out);
        m.put("training_steps", l.training_steps)
            .put("stabilization_steps", l.stabilization_steps)
            .put("evaluation_steps", l.evaluation_steps)
            .put("fine_tuning_steps", l.fine_tuning_steps)
            .put("embargo_steps", l.embargo_steps)
            .put("max_training_per_layer", l.max_training_per_layer)
            .put("max_active_per_layer", l.max_active_per_layer)
            .put("auto_gates", l.auto_gates)
            .put("decision_timeout_steps", l.decision_timeout_steps)
            .put("contribution", contribution_measure_name(l.contribution))
            .put("ablation_batches", l.ablation_batches);
        {
            const GraftingConfig& g = l.grafting;
            m.key("grafting");
            YamlMap(out)
                .put("strategy", grafting_strategy_name(g.strategy))
                .put("ramp_steps", g.ramp_steps)
                .put("steepness", g.steepness)
                .put("momentum", g.momentum)
                .put("momentum_gain", g.momentum_gain)
                .put("drift_threshold", g.drift_threshold)
                .put("drift_ema", g.drift_ema)
                .put("stability_threshold", g.stability_threshold)
                .put("stability_patience", g.stability_patience)
                .put("adaptive_window", g.adaptive_window);
        }
        {
            const GatesConfig& g = l.gates;
            m.key("gates");
            YamlMap(out)
                .put("min_gradient_health", g.min_gradient_health)
                .put("min_contribution", g.min_contribution)
                .put("cull_contribution", g.cull_contribution)
                .put("min_improvement", g.min_improvement)
                .put("max_error_rate", g.max_error_rate)
                .put("min_stability", g.min_stability);
        }
    }
    {
        const GovernorConfig& g = c.governor;
        root.key("governor");
        YamlMap(out)
            .put("enabled", g.enabled)
            .put("divergence_factor", g.divergence_factor)
            .put("window", g.window)
            .put("snapshot_every_steps", g.snapshot_every_steps)
            .put("max_consecutive_trips", g.max_consecutive_trips);
    }
    {
        const FaultInjection& f = c.faults;
        root.key("faults");
        YamlMap(out)
            .put("nan_at_step", f.nan_at_step)
            .put("corrupt_digest_rank", f.corrupt_digest_rank)
            .put("checkpoint_crash_after_files", f.checkpoint_crash_after_files);
    }
}

}  // namespace

std::string config_to_yaml(const Config& c) {
    YAML::Emitter out;
    out.SetBoolFormat(YAML::TrueFalseBool);
    emit_config(out, c);
    return std::string(out.c_str()) + "\n";
}

namespace {

// Depth-first walk of two emitted YAML trees; returns the first differing key path.
std::string first_difference(const YAML::Node& a, const YAML::Node& b, const std::string& path) {
    if (a.IsMap() && b.IsMap()) {
        for (const auto& kv : a) {
            const std::string key = kv.first.as<std::string>();
            const std::string d = first_difference(kv.second, b[key], path + "." + key);
            if (!d.empty()) return d;
        }
        return "";
    }
    const std::string sa = YAML::Dump(a), sb = YAML::Dump(b);
    return sa == sb ? ""
                    : fmt::format("{} is {} in this config, {} in the checkpoint", path, sa, sb);
}

}  // namespace

std::string model_difference(const Config& config, const Config& written) {
    const YAML::Node a = YAML::Load(config_to_yaml(config));
    const YAML::Node b = YAML::Load(config_to_yaml(written));
    return first_difference(a["model"], b["model"], "model");
}

}  // namespace esper::kasmina
