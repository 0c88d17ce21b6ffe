// The seed layer's data contract, shared by the CPU references, the CUDA kernels and kasmina.
// Host-only header (no CUDA types): the launchers live in kernels/seed_forward.h etc.
//
// A seed layer takes a host layer's activated output h[B, D] (row-major, leading dim D), cuts
// the D features into S contiguous chunks (chunk_offset[s] .. chunk_offset[s+1]) and writes
//   y[:, chunk] = h[:, chunk] + a_eff(stage, alpha) · r(h[:, chunk])
// where r is the seed's blueprint (zero at birth). Stage semantics are DESIGN.md §4.3 and are
// spelled out once, below, as constexpr functions every implementation must call.
#pragma once

#include <cstdint>

#include "kernels/vocabulary.h"

namespace esper::kernels {

// The vocabulary lives in kernels/vocabulary.h (namespace esper); these make it visible as
// kernels:: for code that names the kernels' contract explicitly.
using esper::blueprint_param_count;
using esper::blueprint_reads_layer_input;
using esper::BlueprintKind;
using esper::kNumBlueprintKinds;
using esper::kNumChunkBlueprintKinds;
using esper::kNumSeedStages;
using esper::SeedStage;

// ---- stage semantics (DESIGN.md §4.3) ----

// The blueprint is evaluated (forward) in TRAINING..FOSSILIZED.
ESPER_HD constexpr bool stage_runs_blueprint(SeedStage s) {
    return s >= SeedStage::kTraining && s <= SeedStage::kFossilized;
}
// The blend factor applied in the forward value: TRAINING is straight-through (value exactly h),
// GRAFTING uses the seed's α, STABILIZATION..FOSSILIZED use 1, every other stage 0.
ESPER_HD constexpr float stage_forward_alpha(SeedStage s, float alpha) {
    if (s == SeedStage::kGrafting) return alpha;
    if (s >= SeedStage::kStabilization && s <= SeedStage::kFossilized) return 1.0f;
    return 0.0f;
}
// Isolation: the seed's input is detached (no gradient flows into h through r).
ESPER_HD constexpr bool stage_isolated(SeedStage s) {
    return s == SeedStage::kTraining || s == SeedStage::kGrafting;
}
// Scale of ∂L/∂y that reaches the blueprint's parameters: TRAINING learns as if α = 1
// (straight-through), GRAFTING gets the true gradient α·∂L/∂y, FINE_TUNING 1; frozen stages 0.
ESPER_HD constexpr float stage_blueprint_grad_scale(SeedStage s, float alpha) {
    if (s == SeedStage::kTraining || s == SeedStage::kFineTuning) return 1.0f;
    if (s == SeedStage::kGrafting) return alpha;
    return 0.0f;
}
// Factor of J_rᵀ·∂L/∂y added to ∂L/∂h: 0 when isolated, else the forward α.
ESPER_HD constexpr float stage_input_grad_alpha(SeedStage s, float alpha) {
    return stage_isolated(s) ? 0.0f : stage_forward_alpha(s, alpha);
}

// ---- blueprint arenas ----
// One arena per kind per layer, pre-allocated: `capacity` slots of `stride` floats each.
// Slot layout for kResidualMlp and kLowrank (chunk width w <= max_width, H = hidden, and
// N = the blueprint's input width: max_width for chunk input, in_width for layer input):
//   V  [H, N]           row j holds the weights into hidden unit j (columns >= w unused)
//   b1 [H]
//   U  [max_width, H]   row i produces output feature i (rows >= w unused)
//   b2 [max_width]
//   r(x) = U·act(V·x + b1) + b2 with act = relu for kResidualMlp, identity for kLowrank.
// kScaleShift: s [max_width], b [max_width]; r(x) = s⊙x + b.
// At birth U, b2 (and s, b) are zero so r ≡ 0 and a new seed changes nothing.
//
// Input of the blueprint: by default x = h[:, chunk] (DESIGN §4.5). An arena with in_width > 0
// holds *layer-input* blueprints (docs/kasmina.md, "Widening blueprints"): x is the host layer's
// whole input row (SeedLayerView::input, in_width features), so a seed adds `hidden` new units
// that see everything the host layer sees and write into its chunk: the layer grows wider, not
// deeper. kScaleShift always reads its chunk. The fused CUDA seed kernels assume in_width == 0:
// the CUDA backend hides layer-input seeds from them (slot −1) and runs those as cuBLAS GEMMs
// around kernels/widening.h, as kasmina/model/widening.h does with BLAS on the CPU.
struct BlueprintArena {
    float* params = nullptr;  // [capacity, stride]
    float* grads = nullptr;   // [capacity, stride]; backward accumulates (+=), the owner zeroes
    int32_t capacity = 0;
    int32_t stride = 0;  // == blueprint_slot_floats(kind, max_width, hidden, in_width)
    int32_t hidden = 0;  // residual_mlp: expansion·max_width; lowrank: rank; scale_shift: 0
    int32_t max_width = 0;
    int32_t in_width = 0;  // 0: the blueprint reads its chunk; > 0: the layer input row
};

ESPER_HD constexpr int64_t blueprint_slot_floats(BlueprintKind k, int64_t max_width, int64_t hidden,
                                                 int64_t in_width = 0) {
    const int64_t n = blueprint_reads_layer_input(k, in_width) ? in_width : max_width;
    return k == BlueprintKind::kScaleShift ? 2 * max_width
                                           : hidden * n + hidden + max_width * hidden + max_width;
}
// Offsets of the tensors inside a slot (floats from the slot start).
struct MlpSlotOffsets {
    int64_t v, b1, u, b2;
};
ESPER_HD constexpr MlpSlotOffsets mlp_slot_offsets(int64_t max_width, int64_t hidden,
                                                   int64_t in_width = 0) {
    const int64_t n = in_width > 0 ? in_width : max_width;
    return {0, hidden * n, hidden * n + hidden, hidden * n + hidden + max_width * hidden};
}

// ---- the layer view: raw pointers, host or device, never owning ----
struct SeedLayerView {
    int32_t batch = 0;                      // B
    int32_t width = 0;                      // D
    int32_t num_seeds = 0;                  // S
    const int32_t* chunk_offset = nullptr;  // [S + 1], chunk_offset[S] == D
    const uint8_t* stage = nullptr;         // [S] SeedStage
    const uint8_t* kind = nullptr;          // [S] BlueprintKind, meaningful where slot >= 0
    const int32_t* slot = nullptr;          // [S] arena row, -1 when none
    const float* alpha = nullptr;           // [S] current blend factor
    BlueprintArena arenas[kNumBlueprintKinds];
    // The host layer's input [B, input_width] for layer-input arenas (in_width > 0); ignored
    // otherwise. input_width must equal those arenas' in_width.
    const float* input = nullptr;
    int32_t input_width = 0;
};

// Per-seed telemetry accumulators ([S] each), merged across steps until the owner reads and
// resets them. Activation statistics are over the chunk's input values h (B·w samples per
// forward), merged with Welford/Chan so m2 is never negative.
struct SeedTelemetryAccum {
    double* count = nullptr;         // activation samples merged so far
    double* mean = nullptr;          // their mean
    double* m2 = nullptr;            // Σ (x − mean)²
    double* dead = nullptr;          // samples with |h| < kDeadThreshold
    double* grad_sq = nullptr;       // Σ (∂L/∂y)² over the chunk (backward)
    double* contribution = nullptr;  // Σ −⟨∂L/∂y, a_eff·r(h)⟩ over the chunk (backward)
};
inline constexpr float kDeadThreshold = 1e-6f;

// ---- CPU references (kernels/seed_forward_reference.cpp, seed_backward_reference.cpp) ----
// They define the math; kasmina's CPU backend runs them and every CUDA kernel is tested
// against them.

// y[B, D] = seed layer of h[B, D]; y must not alias h. `tel` may be null.
void seed_forward_reference(const SeedLayerView& view, const float* h, float* y,
                            SeedTelemetryAccum* tel);

// Given h (the forward input) and dy = ∂L/∂y, writes dh = ∂L/∂h (overwrites), accumulates
// blueprint gradients into the arenas' grads (+=), and, when `tel` is non-null, grad_sq and
// contribution. r is recomputed from h (no saved activations). Layer-input blueprints add their
// input gradient into d_input [B, input_width] (+=) when it is non-null.
void seed_backward_reference(const SeedLayerView& view, const float* h, const float* dy, float* dh,
                             SeedTelemetryAccum* tel, float* d_input = nullptr);

}  // namespace esper::kernels
