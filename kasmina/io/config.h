// kasmina::Config: the typed run configuration and its YAML loader (docs/kasmina.md). The
// sections of the rooms below io/ are declared there (model/config.h, lifecycle/config.h).
// Every key is optional with the default written here; unknown keys, wrong types and
// out-of-range values are refused with esper::Error(kInvalidInput) as `file:line: field: reason`
// (field is the dotted path, e.g. `lifecycle.grafting.ramp_steps`). Only agents/ reads files;
// the library takes a Config value.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kasmina/lifecycle/config.h"
#include "kasmina/lifecycle/faults.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/model/config.h"

namespace esper::kasmina {

// ---- enums with their YAML spellings ----

enum class OptimizerKind : uint8_t { kSgd = 0, kAdamw = 1 };
inline constexpr std::array<std::string_view, 2> kOptimizerKindNames = {"sgd", "adamw"};
constexpr std::string_view optimizer_kind_name(OptimizerKind k) {
    return enum_name(k, kOptimizerKindNames);
}
enum class LrSchedule : uint8_t { kConstant = 0, kCosine = 1, kStep = 2 };
inline constexpr std::array<std::string_view, 3> kLrScheduleNames = {"constant", "cosine", "step"};
constexpr std::string_view lr_schedule_name(LrSchedule s) { return enum_name(s, kLrScheduleNames); }

// ---- sections ----

struct RunConfig {
    uint64_t seed = 42;
    std::string device = "auto";            // auto | cpu | cuda
    std::string precision = "bf16";         // fp32 | bf16: GEMM operands on a GPU (transformer)
    bool cuda_graph = true;                 // GPU: the training step as one replayed CUDA graph
    int64_t epochs = 2;                     // >= 0; max_steps > 0 wins
    int64_t max_steps = 0;                  // 0 = run `epochs` epochs
    int64_t checkpoint_every_steps = 0;     // 0 = never
    int64_t telemetry_interval_steps = 50;  // >= 1
    int64_t eval_every_steps = 0;           // 0 = evaluate at the end of each epoch only
    int64_t digest_every_steps = 100;       // world > 1: compare seed tables/params (0 = never)
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

// The default text corpus: the King James Bible from Debian's bible-kjv, extracted to plain
// text by scripts/setup-deps.sh (docs/kasmina.md says why this text).
inline constexpr const char* kDefaultTextCorpus = "/usr/local/share/esper/kjv.txt";

// dataset: text (the transformer host): the last validation_fraction of the file is the
// validation split, evaluated on eval_windows fixed windows of context + 1 bytes.
struct TextConfig {
    double validation_fraction = 0.1;  // (0, 0.5]
    int64_t eval_windows = 64;
    bool operator==(const TextConfig&) const = default;
};

struct DataConfig {
    std::string dataset = "fashion_mnist";  // fashion_mnist | teacher | npy | text
    // fashion_mnist: the IDX directory; text: the byte file (default: the corpus setup-deps
    // extracts, kasmina/train/text_data.h).
    std::string path = "/usr/share/datasets/fashion-mnist";
    int64_t batch_size = 128;  // samples per step (text: sequences of model.transformer.context)
    TeacherConfig teacher;
    NpyConfig npy;
    TextConfig text;
    bool operator==(const DataConfig&) const = default;
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

struct Config {
    RunConfig run;
    DataConfig data;
    ModelConfig model;
    OptimizerConfig optimizer;
    BlueprintsConfig blueprints;
    LifecycleConfig lifecycle;
    GovernorConfig governor;
    FaultInjection faults;  // test-only hooks, all off by default
    bool operator==(const Config&) const = default;
};

// The parts of `config` the lifecycle engine reads.
SeedManagerConfig seed_manager_config(const Config& config);

// Reads and validates a YAML file; throws esper::Error(kInvalidInput) naming `path`. Refused as
// well as bad values: a directory, an empty or comment-only file (`{}` means every default), a
// key repeated in one mapping, and a config whose memory estimate exceeds this machine's memory.
Config load_config(const std::string& path);
// Same from text; `source_name` stands in for the file name in messages. The first form checks
// the estimate against physical_memory_bytes(), the second against `memory_bytes` (0 = no check).
Config parse_config(std::string_view yaml_text, std::string_view source_name = "<config>");
Config parse_config(std::string_view yaml_text, std::string_view source_name,
                    uint64_t memory_bytes);

// What a run of `config` needs in host memory, roughly (an estimate, not an accounting): host
// parameters with gradients and optimizer moments, blueprint arenas, activations, the dataset.
struct MemoryEstimate {
    double host_bytes = 0, arena_bytes = 0, activation_bytes = 0, data_bytes = 0;
    double total_bytes = 0;
};
MemoryEstimate estimate_memory(const Config& config);
// This machine's physical memory (0 when unknown).
uint64_t physical_memory_bytes();
// The effective config as YAML (every key, loadable by parse_config to an equal Config).
std::string config_to_yaml(const Config& config);
// The first `model.` key whose value differs, as "model.x is A in this config, B in the
// checkpoint", or "" when the model sections agree (a checkpoint resumes only into the model that
// wrote it).
std::string model_difference(const Config& config, const Config& written);

}  // namespace esper::kasmina
