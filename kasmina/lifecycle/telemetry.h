// Per-seed telemetry (DESIGN §4.6): owns the SeedTelemetryAccum buffers the seed-layer forward
// and backward fill, merges each step's values into a window (Welford/Chan, so the variance is
// never negative), and turns the window into records. "Not measured" is std::nullopt, never 0.
// health = 0.5·min(1, var/var_ref) + 0.5·(1 − dead_fraction), var_ref = the layer's pooled
// activation variance over the same window. contribution c = −Σ⟨∂L/∂y, α·r(h)⟩ summed over the
// window's steps (the loss is a batch mean, so c is the first-order change of the mean loss if
// the seed were removed: positive = the seed helps); with lifecycle.contribution: ablation it is
// the measured loss change instead (set_ablated).
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "kasmina/lifecycle/lifecycle.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

struct SeedTelemetryRecord {
    int32_t layer = 0;
    int32_t seed = 0;
    SeedStage stage = SeedStage::kDormant;
    float alpha = 0.0f;
    uint32_t steps_in_stage = 0;
    int64_t samples = 0;  // activation samples in the window
    std::optional<double> mean, variance, dead_fraction;
    std::optional<double> grad_norm;  // ‖∂L/∂y‖₂ over the chunk (root of summed squares)
    std::optional<double> blueprint_grad_norm;  // ‖∂L/∂θ‖₂ of the blueprint (seeds with a slot)
    std::optional<double> contribution;
    std::optional<double> health;
};

// One layer's raw sums: the accumulator layout of kernels/seed_layer.h, owned.
struct TelemetryBuffers {
    std::vector<double> count, mean, m2, dead, grad_sq, contribution;
    // Blueprint gradient Σ g² (a device backend's set_blueprint_grad_sq, else
    // record_blueprint_grads).
    std::vector<double> bp_grad_sq;
    std::vector<uint8_t> backward_seen;
    std::vector<uint8_t> ablated;  // contribution measured by ablation (set_ablated)
    void resize(size_t s);
    void clear();
    kernels::SeedTelemetryAccum accum();
};

// Chan's parallel merge of (n_b, mean_b, m2_b) into (n_a, mean_a, m2_a).
void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b, double m2_b);

class Telemetry {
public:
    explicit Telemetry(std::vector<int32_t> seeds_per_layer);

    // Accumulators for this step's forward/backward of layer l (zeroed by begin_step).
    kernels::SeedTelemetryAccum* step_accum(int32_t l) { return &step_views_[l]; }
    std::span<kernels::SeedTelemetryAccum* const> step_accums() { return step_ptrs_; }
    void begin_step();
    // Blueprint gradient Σg² of every seed holding a slot (read from the arenas' grads), except
    // those a backend already recorded this step with set_blueprint_grad_sq.
    void record_blueprint_grads(SeedManager& seeds);
    // Σg² of seed `seed`'s blueprint gradient this step, measured where the gradient lives (the
    // GPU transformer keeps its seeds' gradients on the device).
    void set_blueprint_grad_sq(int32_t layer, int32_t seed, double sq);
    // Merges this step into the window and returns the per-seed metrics of this step for the
    // seed manager (gradient health, contribution; nullopt where nothing was measured).
    StepMetrics end_step(double loss, const SeedManager& seeds);
    // Records for the window so far, then starts a new window.
    std::vector<SeedTelemetryRecord> collect(const SeedManager& seeds);
    int64_t window_steps() const { return window_steps_; }

    // lifecycle.contribution: ablation. The backward's first-order contributions are then
    // ignored; a seed's contribution is what set_ablated wrote this step (nullopt on the steps
    // and for the seeds it did not write). Call set_ablated after begin_step and before end_step.
    void set_ablation(bool on) { ablation_ = on; }
    bool ablation() const { return ablation_; }
    void set_ablated(int32_t layer, int32_t seed, double contribution);

private:
    std::vector<TelemetryBuffers> step_, window_;
    std::vector<kernels::SeedTelemetryAccum> step_views_;
    std::vector<kernels::SeedTelemetryAccum*> step_ptrs_;
    int64_t window_steps_ = 0;
    bool ablation_ = false;
};

// Health from a variance, its reference and the dead fraction (the §4.6 formula).
double seed_health(double variance, double var_ref, double dead_fraction);

}  // namespace esper::kasmina
