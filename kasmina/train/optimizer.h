// Optimizers over host parameters and blueprint arenas: SGD with momentum and AdamW (the
// kernels/ CPU references), weight decay, constant/cosine/step LR schedules with linear warmup,
// and gradient clipping. Clipping norms are computed separately for the host parameters and for
// each blueprint seed, so a seed in TRAINING never changes the host's update (straight-through).
// Blueprint optimizer state lives in the arenas (m, v per slot, zeroed when a slot is released);
// only seeds whose stage trains the blueprint (TRAINING, GRAFTING, FINE_TUNING) are stepped.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kasmina/io/checkpoint.h"
#include "kasmina/io/config.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/model/model.h"
#include "kasmina/model/tensor.h"

namespace esper::kasmina {

// Learning rate of 0-based step `step` out of `total_steps` for a base rate `base_lr`.
double scheduled_lr(const OptimizerConfig& c, double base_lr, int64_t step, int64_t total_steps);

// Scales `grads` so their joint L2 norm is at most max_norm (no-op when max_norm <= 0). Returns
// the norm before clipping.
double clip_grad_norm(std::span<const std::span<float>> grads, double max_norm);

class Optimizer {
public:
    Optimizer(const OptimizerConfig& config, const std::vector<ParamRef>& params,
              std::vector<int64_t> seed_layer_widths);

    // One update of the host parameters with learning rate lr (lr × ramp.scale for
    // params[ramp.begin, ramp.end)).
    void step_host(double lr, const Model::LrRamp& ramp = {});
    // One update of every training blueprint (blueprint_lr scaled like the host schedule).
    void step_blueprints(SeedManager& seeds, double lr);
    int64_t host_steps() const { return host_steps_; }

    // Moments as tensors `opt.m.<param>`, `opt.v.<param>`, counters in `optimizer`; load throws
    // Error(kIntegrity) when they do not fit this optimizer (another model or optimizer kind).
    void save(CheckpointData& out) const;
    void load(const CheckpointData& in);

private:
    friend class CudaBackend;             // mirrors m_/v_ and the step counters on the device
    friend class CudaTransformerBackend;  // likewise for the transformer host
    void update(float* p, const float* g, float* m, float* v, int64_t n, double lr,
                int64_t t) const;
    // Sizes layer l's slot_steps_ / slot_owner_ to its arenas on first use.
    void size_slot_counts(const BlueprintArenas& arenas, int32_t l);

    OptimizerConfig config_;
    std::vector<ParamRef> params_;
    std::vector<AlignedVector<float>> m_, v_;  // per host param (v only for AdamW)
    int64_t host_steps_ = 0;
    // Per layer, kind, slot: updates taken by the seed holding the slot (AdamW bias correction)
    // and the seed that held it at the last update (a new owner restarts the count).
    std::vector<std::vector<std::vector<int64_t>>> slot_steps_, slot_owner_;
};

}  // namespace esper::kasmina
