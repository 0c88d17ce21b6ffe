// Blueprint registry and per-layer arenas (DESIGN §4.5, kernels/seed_layer.h slot layout).
// One arena per kind, pre-allocated from the config: params, grads and two optimizer-state
// buffers (m, v) of `capacity × stride` floats. Germination takes the lowest free slot and
// initialises it (V kaiming-uniform over its fan-in from a seeded RNG, b1 0, U/b2 0; scale_shift
// all 0), so a
// new seed is the identity; release zeroes the slot's grads and optimizer state.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "kasmina/model/config.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

// Hidden width of a kind's slot for chunks up to `max_width` features (0 for scale_shift).
int64_t blueprint_hidden(BlueprintKind k, int64_t max_width, const BlueprintsConfig& cfg);
// Arena capacity (slots per layer) of a kind.
int64_t blueprint_capacity(BlueprintKind k, const BlueprintsConfig& cfg);
// Parameters a seed of chunk width w really uses; in_width > 0 for layer-input arenas.
int64_t blueprint_params(BlueprintKind k, int64_t w, int64_t max_width, const BlueprintsConfig& cfg,
                         int64_t in_width = 0);

// Slot layouts of the widening kinds (C = d_model, D = head dim; floats from the slot start):
//   mlp_units       V [k, C] | c [k] | U [O, k]                 r(m) = U·gelu(V·m + c)
// (O = out_width: C on the transformer; on the MLP host C is the hidden layer's input width and
// O the next layer's width, and the MLP's activation replaces gelu.)
//   attention_head  Wq, Wk, Wv [D, C] | bq, bk, bv [D] | Wo [C, D]  r(a) = Wo·attention(q, k, v)
//   lora            A [r, C] | B [3C, r]                         Δqkv = B·A·a
// The output side (U, Wo, B) is zero at birth, so a germination leaves the function unchanged.
struct WideningOffsets {
    int64_t in_w = 0;    // V, Wq (Wk, Wv follow at +D·C each), A
    int64_t in_b = 0;    // c, bq (bk, bv follow at +D each); lora: none
    int64_t out_w = 0;   // U, Wo, B
    int64_t floats = 0;  // the slot's stride
};
WideningOffsets widening_offsets(BlueprintKind k, int64_t d_model, int64_t hidden,
                                 int64_t out_width = 0);

class BlueprintArenas {
public:
    // A chunk seed layer's arenas (the widening kinds get no slots). in_width > 0: residual_mlp
    // and lowrank slots read the layer's input of that many features (blueprints.input: layer);
    // 0: they read their chunk.
    BlueprintArenas(int64_t max_width, const BlueprintsConfig& cfg, int64_t in_width = 0);
    // A transformer block's widening site: only the widening kinds get slots. head_dim 0 with
    // out_width > 0: an MLP hidden layer's widening site (input d_model features, output into
    // out_width): only mlp_units get slots.
    static BlueprintArenas widening(int64_t d_model, int64_t head_dim, const BlueprintsConfig& cfg,
                                    int64_t out_width = 0);
    // Whether kind k can be germinated here (it has an arena of this site's type).
    bool serves(BlueprintKind k) const { return arena(k).serves; }
    // Parameters a germination of kind k on a seed of chunk width w would use here.
    int64_t params_for(BlueprintKind k, int64_t w) const;

    int32_t capacity(BlueprintKind k) const { return arena(k).capacity; }
    int32_t stride(BlueprintKind k) const { return arena(k).stride; }
    int32_t hidden(BlueprintKind k) const { return arena(k).hidden; }
    int32_t max_width() const { return max_width_; }
    int32_t in_width() const { return in_width_; }
    int32_t free_slots(BlueprintKind k) const;
    bool slot_in_use(BlueprintKind k, int32_t slot) const;

    // Lowest free slot, marked used; nullopt when full. Does not initialise.
    std::optional<int32_t> acquire(BlueprintKind k);
    // Marks the slot free and zeroes its grads and optimizer state.
    void release(BlueprintKind k, int32_t slot);
    // Marks a slot used/free without touching data (restoring from a seed table).
    void set_in_use(BlueprintKind k, int32_t slot, bool in_use);
    // Identity-at-birth initialisation for a chunk of `width` features; deterministic in rng_seed.
    void init_slot(BlueprintKind k, int32_t slot, int32_t width, uint64_t rng_seed);

    std::span<float> params(BlueprintKind k, int32_t slot);
    std::span<const float> params(BlueprintKind k, int32_t slot) const;
    std::span<float> grads(BlueprintKind k, int32_t slot);
    std::span<float> opt_m(BlueprintKind k, int32_t slot);
    std::span<float> opt_v(BlueprintKind k, int32_t slot);
    // Whole-arena buffers [capacity × stride] (optimizer sweeps, checkpoints).
    std::span<float> all_params(BlueprintKind k);
    std::span<float> all_grads(BlueprintKind k);
    std::span<float> all_opt_m(BlueprintKind k);
    std::span<float> all_opt_v(BlueprintKind k);
    std::span<const float> all_params(BlueprintKind k) const;
    std::span<const float> all_opt_m(BlueprintKind k) const;
    std::span<const float> all_opt_v(BlueprintKind k) const;
    void zero_grads();

    // L2 norm of a slot's parameters (drift_controlled metric).
    double param_norm(BlueprintKind k, int32_t slot) const;
    // The kernels' view of one arena (pointers into this object).
    kernels::BlueprintArena view(BlueprintKind k);

private:
    BlueprintArenas() = default;
    struct Arena {
        bool serves = false;
        int32_t capacity = 0;
        int32_t stride = 0;
        int32_t hidden = 0;
        std::vector<float> params, grads, m, v;
        std::vector<uint8_t> used;
    };
    Arena& arena(BlueprintKind k) { return arenas_[static_cast<int>(k)]; }
    const Arena& arena(BlueprintKind k) const { return arenas_[static_cast<int>(k)]; }

    int32_t max_width_ = 0;
    int32_t in_width_ = 0;
    Arena arenas_[kNumBlueprintKinds];
};

// Merges n values of v (mean and m2 by Welford in double, the dead count) into seed `seed`'s
// activation accumulators (Chan's merge): the telemetry of widening seeds, MLP and transformer.
void merge_activation_stats(kernels::SeedTelemetryAccum* t, int32_t seed, const float* v,
                            int64_t n);
// The same merge from sums of n values (a device's kernels::launch_moments): sum = Σv, sum_sq =
// Σv², dead = the dead count; mean and m2 follow in double (m2 = Σv² − (Σv)²/n, at least 0).
void merge_activation_sums(kernels::SeedTelemetryAccum* t, int32_t seed, double n, double sum,
                           double sum_sq, double dead);
// The same merge from a summary of n values: their mean, m2 = Σ(v − mean)² and dead count (a
// device's seed-layer telemetry, merged over one step).
void merge_activation_summary(kernels::SeedTelemetryAccum* t, int32_t seed, double n, double mean,
                              double m2, double dead);

}  // namespace esper::kasmina
