// The host-network interface (DESIGN §4.1): what the trainer, the optimizer, the step backends,
// the data-parallel sync and checkpoints need of a model — its parameters in a fixed order, its
// seed sites, forward + loss + backward of a training batch and forward + loss of an evaluation
// batch. The MLP implements it (mlp.h); the transformer host (DESIGN §14) implements it next.
// Convention: a Batch has `rows` rows for the seed layers and the loss — one per sample for the
// MLP, one per token position (samples · context) for a language model.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kasmina/model/config.h"
#include "kasmina/model/tensor.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

// One trainable tensor and its gradient (both owned by the model).
struct ParamRef {
    std::string name;
    Tensor* value = nullptr;
    Tensor* grad = nullptr;
};

// One batch as a host network reads it (host memory, not owned). The MLP reads `features`
// [samples, in_features] and one target class per sample; a language model reads `tokens`
// [samples, context] (int32 bytes) and one next-token target per position.
struct Batch {
    int32_t samples = 0;
    const float* features = nullptr;   // [samples, in_features], or null
    const int32_t* tokens = nullptr;   // [samples, context], or null
    const int32_t* targets = nullptr;  // [rows]
    int32_t rows = 0;                  // rows of every seed layer and of the loss
};

// A batch of `samples` feature rows and their classes (rows = samples).
inline Batch features_batch(const float* features, const int32_t* targets, int32_t samples) {
    return Batch{samples, features, nullptr, targets, samples};
}

// Mean loss over the batch's rows and how many rows were predicted right.
struct BatchResult {
    double loss = 0.0;
    int32_t correct = 0;
    int32_t rows = 0;
};

// What a seed layer watches: a chunked host activation (the residual_mlp/lowrank/scale_shift
// kinds), or a transformer block's widening site (mlp_units/attention_head/lora, DESIGN §14).
enum class SiteKind : uint8_t { kChunk = 0, kWidening = 1 };
inline constexpr std::array<std::string_view, 2> kSiteKindNames = {"chunk", "widening"};

// Where seed layers sit: one per site, in the order of the seed tables.
struct SeedSite {
    int64_t width = 0;        // chunk: D, the features the chunks split; widening: the site's seeds
    int64_t input_width = 0;  // input features of the host layer (widening: d_model)
    SiteKind kind = SiteKind::kChunk;
    int64_t head_dim = 0;  // widening: the block's head dimension (attention_head slots)
    // widening: the features mlp_units seeds write (0: input_width, the transformer's residual
    // stream); the MLP's next layer's width. head_dim 0 and output_width > 0: an MLP site
    // where only mlp_units germinate.
    int64_t output_width = 0;
};

class Model {
public:
    virtual ~Model() = default;

    virtual std::string_view kind() const = 0;
    // Every host parameter, in a fixed order (optimizer state and checkpoints follow it).
    virtual const std::vector<ParamRef>& params() const = 0;
    virtual const std::vector<SeedSite>& seed_sites() const = 0;
    // Forward, loss and backward of one batch: parameter gradients are overwritten, the blueprint
    // arenas' gradients accumulated. views[l] describes seed layer l for this batch (rows =
    // batch.rows; an empty span = no seed layers, the bare host); tel[l] may be null.
    virtual BatchResult train_batch(const Batch& batch,
                                    std::span<const kernels::SeedLayerView> views,
                                    std::span<kernels::SeedTelemetryAccum* const> tel) = 0;
    // Forward and loss only (no gradients, no telemetry).
    virtual BatchResult eval_batch(const Batch& batch,
                                   std::span<const kernels::SeedLayerView> views) = 0;

    // Host parameters (blueprints not included); a host with reserved room (the transformer's
    // extra units and heads) counts only what is in use.
    virtual int64_t param_count() const;
    // Training FLOPs (forward + backward) of one batch of `samples` samples and `rows` rows
    // through the host as it is now, blueprints not included: 6 · param_count · rows (2 forward,
    // 4 backward per weight and row), the dense-layer count; the transformer adds attention.
    virtual double train_flops(int32_t samples, int32_t rows) const;
    // A FOSSILIZED widening seed (mlp_units, attention_head, lora) of seed layer `layer`: its
    // blueprint parameters (the arena slot) become host parameters. False when the host has no
    // room left (the seed then stays a frozen blueprint) or does not fold.
    virtual bool fold_widening(int32_t /*layer*/, BlueprintKind /*kind*/,
                               std::span<const float> /*params*/) {
        return false;
    }
    // Whether fold_widening of a seed of `kind` at `layer` (a slot of `floats` parameters) would
    // succeed now (room left); true where the model cannot tell before trying. A device backend
    // downloads the host parameters before a fold, and skips that for fossils that stay frozen.
    virtual bool can_fold_widening(int32_t /*layer*/, BlueprintKind /*kind*/,
                                   int64_t /*floats*/) const {
        return true;
    }
    // GradMax's G (kasmina/model/gradmax.h) for the mlp_units of widening site `layer`:
    // g [out, in] += Σ_rows δ·xᵀ over `batch`, x what the units read (in features), δ the loss
    // gradient where they write (out features), for the host alone (live seeds left out).
    // Overwrites the host's gradients as any train_batch does. False: no such site here.
    virtual bool widening_gradient(int32_t /*layer*/, const Batch& /*batch*/,
                                   std::span<float> /*g*/) {
        return false;
    }
    // Host growth on a schedule (the transformer's model.transformer.grow_depth), called at the
    // start of every training step: true when the host changed shape at `step` (its parameters
    // are already in place, its structure() says so). Every rank calls it with the same step.
    virtual bool grow_host(int64_t /*step*/) { return false; }
    // Whether grow_host(step) would change the host: a device backend downloads the trained
    // parameters first, since the grown blocks are made from them.
    virtual bool host_growth_due(int64_t /*step*/) const { return false; }
    // Parameters whose learning rate is scaled at `step` (the transformer's grown blocks during
    // grow_depth.warmup_steps): params()[begin, end) take scale × the schedule's rate.
    struct LrRamp {
        std::size_t begin = 0, end = 0;
        double scale = 1.0;
    };
    virtual LrRamp host_lr_ramp(int64_t /*step*/) const { return {}; }
    // What a checkpoint must keep beyond the parameters to rebuild the host's shape (the
    // transformer: extra units and heads in use per block); empty for a fixed host.
    virtual std::vector<int64_t> structure() const { return {}; }
    // Throws esper::Error(kIntegrity) when `s` does not fit this host.
    virtual void set_structure(std::span<const int64_t> s);
    int32_t num_seed_layers() const { return static_cast<int32_t>(seed_sites().size()); }
    std::vector<int64_t> seed_layer_widths() const;
    std::vector<int64_t> seed_layer_inputs() const;
};

// The configured host network. in_features/classes come from the data; deterministic in `seed`.
std::unique_ptr<Model> make_model(const ModelConfig& config, int64_t in_features, int64_t classes,
                                  uint64_t seed);

}  // namespace esper::kasmina
