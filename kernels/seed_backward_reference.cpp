// CPU reference of the seed-layer backward: dh = dy + a_in·J_rᵀdy (a_in = 0 when isolated; for
// layer-input blueprints the a_in·J_rᵀdy term goes to d_input instead),
// blueprint grads += scale·J_θᵀdy for stages with a positive blueprint-grad scale (TRAINING is
// straight-through: scale 1 although the forward value is h), and grad_sq / contribution telemetry.
#include <algorithm>
#include <vector>

#include "kernels/blueprint_reference.h"
#include "kernels/seed_layer.h"

namespace esper::kernels {

void seed_backward_reference(const SeedLayerView& view, const float* h, const float* dy, float* dh,
                             SeedTelemetryAccum* tel, float* d_input) {
    const int64_t ld = view.width;
    std::vector<double> r, pre, dx, dxin, gacc;
    for (int32_t s = 0; s < view.num_seeds; ++s) {
        const int32_t c0 = view.chunk_offset[s], c1 = view.chunk_offset[s + 1];
        const int64_t w = c1 - c0;
        const auto stage = static_cast<SeedStage>(view.stage[s]);
        const float alpha = view.alpha[s];
        const detail::BlueprintRef bp = detail::blueprint_of(view, s);
        const bool runs = stage_runs_blueprint(stage) && bp.params != nullptr;
        const double a_fwd = runs ? stage_forward_alpha(stage, alpha) : 0.0f;
        const double a_in = runs ? stage_input_grad_alpha(stage, alpha) : 0.0f;
        const double g_scale = runs ? stage_blueprint_grad_scale(stage, alpha) : 0.0f;
        const bool param_grads = g_scale > 0.0 && bp.grads != nullptr;
        if (param_grads) {
            const BlueprintArena& arena = view.arenas[static_cast<int>(bp.kind)];
            gacc.assign(static_cast<size_t>(arena.stride), 0.0);
        }
        r.resize(static_cast<size_t>(w));
        dx.resize(static_cast<size_t>(w));
        double grad_sq = 0.0, contribution = 0.0;
        // Layer-input blueprints send their input gradient to d_input, not to dh.
        const bool layer_in = bp.reads_layer_input();
        const int64_t n_in = detail::input_width(bp, w);
        const bool want_dx = a_in != 0.0 && (!layer_in || d_input != nullptr);
        dxin.resize(static_cast<size_t>(n_in));
        for (int32_t b = 0; b < view.batch; ++b) {
            const float* hrow = h + b * ld + c0;
            const float* grow = dy + b * ld + c0;
            float* dhrow = dh + b * ld + c0;
            const float* xrow = layer_in ? view.input + int64_t(b) * view.input_width : hrow;
            for (int64_t i = 0; i < w; ++i) {
                dx[i] = grow[i];
                grad_sq += double(grow[i]) * double(grow[i]);
            }
            if (tel != nullptr && a_fwd != 0.0) {
                detail::blueprint_eval(bp, xrow, w, r.data(), pre);
                for (int64_t i = 0; i < w; ++i) contribution -= double(grow[i]) * a_fwd * r[i];
            }
            double* dxp = !want_dx ? nullptr : layer_in ? dxin.data() : dx.data();
            if (layer_in) std::fill(dxin.begin(), dxin.end(), 0.0);
            if (param_grads || dxp != nullptr)
                detail::blueprint_vjp(bp, xrow, w, grow, g_scale,
                                      param_grads ? gacc.data() : nullptr, a_in, dxp);
            for (int64_t i = 0; i < w; ++i) dhrow[i] = static_cast<float>(dx[i]);
            if (layer_in && want_dx) {
                float* dinrow = d_input + int64_t(b) * view.input_width;
                for (int64_t i = 0; i < n_in; ++i) dinrow[i] += static_cast<float>(dxin[i]);
            }
        }
        if (param_grads)
            for (size_t k = 0; k < gacc.size(); ++k) bp.grads[k] += static_cast<float>(gacc[k]);
        if (tel != nullptr) {
            tel->grad_sq[s] += grad_sq;
            tel->contribution[s] += contribution;
        }
    }
}

}  // namespace esper::kernels
