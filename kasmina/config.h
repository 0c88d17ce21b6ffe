// kasmina::Config: the typed run configuration and its YAML loader (docs/kasmina.md).
// Every key is optional with the default written here; unknown keys, wrong types and
// out-of-range values are refused with esper::Error(kInvalidInput) as `file:line: field: reason`
// (field is the dotted path, e.g. `lifecycle.grafting.ramp_steps`). Only agents/ reads files;
// the library takes a Config value.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace esper::kasmina {

// ---- enums with their YAML spellings ----

enum class Activation : uint8_t { kRelu = 0, kGelu = 1 };
enum class OptimizerKind : uint8_t { kSgd = 0, kAdamw = 1 };
enum class LrSchedule : uint8_t { kConstant = 0, kCosine = 1, kStep = 2 };
// What residual_mlp / lowrank blueprints read: their chunk of h (DESIGN §4.5) or the host layer's
// whole input ("widening" blueprints, CPU only; docs/kasmina.md).
enum class BlueprintInput : uint8_t { kChunk = 0, kLayer = 1 };
// Values are stored in the seed table's `strategy` column and in checkpoints: never renumber.
enum class GraftingStrategy : uint8_t {
    kLinear = 0,
    kCosine = 1,
    kSigmoid = 2,
    kDriftControlled = 3,
    kMomentum = 4,
    kStability = 5,
    kAdaptive = 6,
};
inline constexpr int kNumGraftingStrategies = 7;

std::string_view activation_name(Activation a);
std::string_view optimizer_kind_name(OptimizerKind k);
std::string_view lr_schedule_name(LrSchedule s);
std::string_view grafting_strategy_name(GraftingStrategy s);
std::string_view blueprint_input_name(BlueprintInput i);
std::optional<Activation> parse_activation(std::string_view name);
std::optional<OptimizerKind> parse_optimizer_kind(std::string_view name);
std::optional<LrSchedule> parse_lr_schedule(std::string_view name);
std::optional<GraftingStrategy> parse_grafting_strategy(std::string_view name);

// ---- sections ----

struct RunConfig {
    uint64_t seed = 42;
    std::string device = "auto";            // auto | cpu | cuda
    int64_t epochs = 2;                     // >= 0; max_steps > 0 wins
    int64_t max_steps = 0;                  // 0 = run `epochs` epochs
    int64_t checkpoint_every_steps = 0;     // 0 = never
    int64_t telemetry_interval_steps = 50;  // >= 1
    int64_t eval_every_steps = 0;           // 0 = evaluate at the end of each epoch only
    int64_t digest_every_steps = 100;       // world > 1: compare seed tables/params (0 = never)
    int64_t test_corrupt_digest_rank = -1;  // tests only: this rank perturbs its seed table
    bool operator==(const RunConfig&) const = default;
};

struct TeacherConfig {
    int64_t train_samples = 8192;
    int64_t test_samples = 2048;
    int64_t features = 64;
    int64_t classes = 10;
    int64_t hidden = 128;
    double noise = 0.0;  // >= 0
    bool operator==(const TeacherConfig&) const = default;
};

struct NpyConfig {
    std::string train_features;
    std::string train_labels;
    std::string test_features;
    std::string test_labels;
    bool operator==(const NpyConfig&) const = default;
};

struct DataConfig {
    std::string dataset = "fashion_mnist";  // fashion_mnist | teacher | npy
    std::string path = "/usr/share/datasets/fashion-mnist";
    int64_t batch_size = 128;
    TeacherConfig teacher;
    NpyConfig npy;
    bool operator==(const DataConfig&) const = default;
};

struct ModelConfig {
    std::vector<int64_t> hidden{128, 128};  // one seed layer per entry; each >= seeds_per_layer
    Activation activation = Activation::kRelu;
    int64_t seeds_per_layer = 16;  // >= 1 (0 is refused: S = 0)
    bool operator==(const ModelConfig&) const = default;
};

struct OptimizerConfig {
    OptimizerKind kind = OptimizerKind::kSgd;
    double lr = 0.05;
    double momentum = 0.9;  // sgd
    double beta1 = 0.9;     // adamw
    double beta2 = 0.999;   // adamw
    double eps = 1e-8;      // adamw
    double weight_decay = 0.0;
    LrSchedule schedule = LrSchedule::kConstant;
    int64_t warmup_steps = 0;
    int64_t step_size = 1000;  // step schedule: multiply by gamma every step_size
    double gamma = 0.1;
    double grad_clip = 0.0;  // global L2 norm; 0 = off
    double blueprint_lr = 0.05;
    bool operator==(const OptimizerConfig&) const = default;
};

struct ResidualMlpBlueprintConfig {
    int64_t expansion = 2;  // hidden = expansion · chunk width
    int64_t slots = 8;      // arena capacity per layer
    bool operator==(const ResidualMlpBlueprintConfig&) const = default;
};
struct LowrankBlueprintConfig {
    int64_t rank = 4;
    int64_t slots = 8;
    bool operator==(const LowrankBlueprintConfig&) const = default;
};
struct ScaleShiftBlueprintConfig {
    int64_t slots = 8;
    bool operator==(const ScaleShiftBlueprintConfig&) const = default;
};
struct BlueprintsConfig {
    ResidualMlpBlueprintConfig residual_mlp;
    LowrankBlueprintConfig lowrank;
    ScaleShiftBlueprintConfig scale_shift;
    int64_t max_params_per_layer = 1000000;  // budget over live blueprints of one layer
    BlueprintInput input = BlueprintInput::kChunk;
    bool operator==(const BlueprintsConfig&) const = default;
};

// Parameters of every strategy (DESIGN §4.4); each strategy reads only its own.
struct GraftingConfig {
    GraftingStrategy strategy = GraftingStrategy::kLinear;
    int64_t ramp_steps = 100;          // R: steps from α = 0 to α = 1 (>= 1)
    double steepness = 10.0;           // sigmoid k
    double momentum = 0.5;             // momentum m
    double momentum_gain = 0.01;       // momentum: v ← m·v + gain·Δloss
    double drift_threshold = 0.1;      // drift_controlled: pause while drift > threshold
    double drift_ema = 0.9;            // drift_controlled: EMA decay of the weight norm
    double stability_threshold = 0.1;  // stability: relative loss variance counted unstable
    int64_t stability_patience = 3;    // stability: unstable steps before reverting α
    int64_t adaptive_window = 10;      // adaptive: steps between strategy re-choices
    bool operator==(const GraftingConfig&) const = default;
};

struct GatesConfig {
    double min_gradient_health = 0.7;  // TRAINING → GRAFTING
    double min_contribution = 0.0;     // EVALUATING → FINE_TUNING needs benefit > this
    double cull_contribution = 0.0;    // EVALUATING → CULLED when benefit < −this
    double min_improvement = 0.0;      // FINE_TUNING → FOSSILIZED
    double max_error_rate = 0.1;       // EVALUATING → CULLED when error rate above
    double min_stability = 0.0;        // EVALUATING → FINE_TUNING
    bool operator==(const GatesConfig&) const = default;
};

struct LifecycleConfig {
    int64_t training_steps = 200;
    int64_t stabilization_steps = 100;
    int64_t evaluation_steps = 100;
    int64_t fine_tuning_steps = 200;
    int64_t embargo_steps = 500;
    int64_t max_training_per_layer = 2;    // concurrent seeds in TRAINING per layer
    int64_t max_active_per_layer = 4;      // seeds in GERMINATED..FINE_TUNING per layer
    bool auto_gates = true;                // evaluate the default gates in-process
    int64_t decision_timeout_steps = 500;  // auto_gates false: safe default after this wait
    GraftingConfig grafting;
    GatesConfig gates;
    bool operator==(const LifecycleConfig&) const = default;
};

struct GovernorConfig {
    bool enabled = true;
    double divergence_factor = 5.0;     // trip when loss > factor × recent mean
    int64_t window = 50;                // steps of loss history
    int64_t snapshot_every_steps = 50;  // last-known-good snapshot cadence
    int64_t inject_nan_at_step = -1;    // test-only: make the loss NaN at this step
    bool operator==(const GovernorConfig&) const = default;
};

struct Config {
    RunConfig run;
    DataConfig data;
    ModelConfig model;
    OptimizerConfig optimizer;
    BlueprintsConfig blueprints;
    LifecycleConfig lifecycle;
    GovernorConfig governor;
    bool operator==(const Config&) const = default;
};

// Reads and validates a YAML file; throws esper::Error(kInvalidInput) naming `path`.
Config load_config(const std::string& path);
// Same from text; `source_name` stands in for the file name in messages.
Config parse_config(std::string_view yaml_text, std::string_view source_name = "<config>");
// The effective config as YAML (every key, loadable by parse_config to an equal Config).
std::string config_to_yaml(const Config& config);

}  // namespace esper::kasmina
