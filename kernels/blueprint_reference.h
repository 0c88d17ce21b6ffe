// Internal helpers shared by the seed-layer CPU references: evaluate one blueprint on one row of
// a chunk in double precision, and its vector-Jacobian product. Not part of the public contract.
// Convention: outputs hold w entries (the chunk width); x (and dx) hold input_width(bp, w)
// entries: w for chunk-input blueprints, the arena's in_width for layer-input ones. Arena tensors
// use max_width (V's rows: v_stride(bp)).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kernels/seed_layer.h"

namespace esper::kernels::detail {

// The blueprint of one seed as the references see it: null `params` means "no blueprint" (r ≡ 0).
struct BlueprintRef {
    BlueprintKind kind = BlueprintKind::kResidualMlp;
    const float* params = nullptr;  // slot start
    float* grads = nullptr;         // slot start in the arena's grads (may be null)
    int64_t hidden = 0;
    int64_t max_width = 0;
    int64_t in_width = 0;  // > 0: reads the layer input (seed_layer.h)
    bool reads_layer_input() const { return blueprint_reads_layer_input(kind, in_width); }
};

// Entries of x the blueprint reads for a chunk of w features, and V's row stride.
inline int64_t input_width(const BlueprintRef& bp, int64_t w) {
    return bp.reads_layer_input() ? bp.in_width : w;
}
inline int64_t v_stride(const BlueprintRef& bp) {
    return bp.reads_layer_input() ? bp.in_width : bp.max_width;
}
inline MlpSlotOffsets slot_offsets(const BlueprintRef& bp) {
    return mlp_slot_offsets(bp.max_width, bp.hidden, bp.reads_layer_input() ? bp.in_width : 0);
}

inline BlueprintRef blueprint_of(const SeedLayerView& view, int32_t s) {
    BlueprintRef bp;
    if (view.slot == nullptr || view.kind == nullptr || view.slot[s] < 0) return bp;
    bp.kind = static_cast<BlueprintKind>(view.kind[s]);
    const BlueprintArena& arena = view.arenas[static_cast<int>(bp.kind)];
    if (arena.params == nullptr || view.slot[s] >= arena.capacity) return bp;
    bp.params = arena.params + static_cast<int64_t>(view.slot[s]) * arena.stride;
    bp.grads =
        arena.grads ? arena.grads + static_cast<int64_t>(view.slot[s]) * arena.stride : nullptr;
    bp.hidden = arena.hidden;
    bp.max_width = arena.max_width;
    bp.in_width = arena.in_width;
    return bp;
}

inline bool blueprint_uses_relu(BlueprintKind k) { return k == BlueprintKind::kResidualMlp; }

// r(x) for one row. `pre` receives the hidden pre-activations (hidden entries) for MLP kinds.
inline void blueprint_eval(const BlueprintRef& bp, const float* x, int64_t w, double* r,
                           std::vector<double>& pre) {
    if (bp.params == nullptr) {
        for (int64_t i = 0; i < w; ++i) r[i] = 0.0;
        return;
    }
    const float* p = bp.params;
    if (bp.kind == BlueprintKind::kScaleShift) {
        for (int64_t i = 0; i < w; ++i)
            r[i] = double(p[i]) * double(x[i]) + double(p[bp.max_width + i]);
        return;
    }
    const MlpSlotOffsets o = slot_offsets(bp);
    const int64_t n = input_width(bp, w), vs = v_stride(bp);
    const bool relu = blueprint_uses_relu(bp.kind);
    pre.assign(static_cast<size_t>(bp.hidden), 0.0);
    std::vector<double> act(static_cast<size_t>(bp.hidden));
    for (int64_t j = 0; j < bp.hidden; ++j) {
        double z = p[o.b1 + j];
        const float* vrow = p + o.v + j * vs;
        for (int64_t i = 0; i < n; ++i) z += double(vrow[i]) * double(x[i]);
        pre[j] = z;
        act[j] = relu ? (z > 0.0 ? z : 0.0) : z;
    }
    for (int64_t i = 0; i < w; ++i) {
        double acc = p[o.b2 + i];
        const float* urow = p + o.u + i * bp.hidden;
        for (int64_t j = 0; j < bp.hidden; ++j) acc += double(urow[j]) * act[j];
        r[i] = acc;
    }
}

// Vector-Jacobian product of r at x for the upstream gradient g (w entries):
//   gp != nullptr: gp += param_scale · ∂⟨g, r⟩/∂params (gp laid out like the slot, in double)
//   dx != nullptr: dx[i] += input_scale · ∂⟨g, r⟩/∂x_i
inline void blueprint_vjp(const BlueprintRef& bp, const float* x, int64_t w, const float* g,
                          double param_scale, double* gp, double input_scale, double* dx) {
    if (bp.params == nullptr) return;
    const float* p = bp.params;
    if (bp.kind == BlueprintKind::kScaleShift) {
        for (int64_t i = 0; i < w; ++i) {
            if (gp) {
                gp[i] += param_scale * double(g[i]) * double(x[i]);
                gp[bp.max_width + i] += param_scale * double(g[i]);
            }
            if (dx) dx[i] += input_scale * double(p[i]) * double(g[i]);
        }
        return;
    }
    const MlpSlotOffsets o = slot_offsets(bp);
    const int64_t n = input_width(bp, w), vs = v_stride(bp);
    const bool relu = blueprint_uses_relu(bp.kind);
    const int64_t hn = bp.hidden;
    std::vector<double> pre(static_cast<size_t>(hn)), act(static_cast<size_t>(hn));
    for (int64_t j = 0; j < hn; ++j) {
        double z = p[o.b1 + j];
        const float* vrow = p + o.v + j * vs;
        for (int64_t i = 0; i < n; ++i) z += double(vrow[i]) * double(x[i]);
        pre[j] = z;
        act[j] = relu ? (z > 0.0 ? z : 0.0) : z;
    }
    // dz_j = act'(z_j) · Σ_i U[i, j] g_i
    std::vector<double> dz(static_cast<size_t>(hn), 0.0);
    for (int64_t i = 0; i < w; ++i) {
        const float* urow = p + o.u + i * hn;
        for (int64_t j = 0; j < hn; ++j) dz[j] += double(urow[j]) * double(g[i]);
    }
    for (int64_t j = 0; j < hn; ++j)
        if (relu && !(pre[j] > 0.0)) dz[j] = 0.0;
    if (gp) {
        for (int64_t i = 0; i < w; ++i) {
            double* gurow = gp + o.u + i * hn;
            for (int64_t j = 0; j < hn; ++j) gurow[j] += param_scale * double(g[i]) * act[j];
            gp[o.b2 + i] += param_scale * double(g[i]);
        }
        for (int64_t j = 0; j < hn; ++j) {
            double* gvrow = gp + o.v + j * vs;
            for (int64_t i = 0; i < n; ++i) gvrow[i] += param_scale * dz[j] * double(x[i]);
            gp[o.b1 + j] += param_scale * dz[j];
        }
    }
    if (dx) {
        for (int64_t j = 0; j < hn; ++j) {
            if (dz[j] == 0.0) continue;
            const float* vrow = p + o.v + j * vs;
            for (int64_t i = 0; i < n; ++i) dx[i] += input_scale * dz[j] * double(vrow[i]);
        }
    }
}

}  // namespace esper::kernels::detail
