// CPU reference of the seed-layer backward: dh = dy + a_in·J_rᵀdy (a_in = 0 when isolated),
// blueprint grads += scale·J_θᵀdy for stages with a positive blueprint-grad scale (TRAINING is
// straight-through: scale 1 although the forward value is h), and grad_sq / contribution telemetry.
#include "kernels/seed_layer.h"

#include <vector>

#include "kernels/blueprint_reference.h"

namespace esper::kernels {

void seed_backward_reference(const SeedLayerView& view, const float* h, const float* dy, float* dh,
                             SeedTelemetryAccum* tel) {
    const int64_t ld = view.width;
    std::vector<double> r, pre, dx, gacc;
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
        for (int32_t b = 0; b < view.batch; ++b) {
            const float* hrow = h + b * ld + c0;
            const float* grow = dy + b * ld + c0;
            float* dhrow = dh + b * ld + c0;
            for (int64_t i = 0; i < w; ++i) {
                dx[i] = grow[i];
                grad_sq += double(grow[i]) * double(grow[i]);
            }
            if (tel != nullptr && a_fwd != 0.0) {
                detail::blueprint_eval(bp, hrow, w, r.data(), pre);
                for (int64_t i = 0; i < w; ++i) contribution -= double(grow[i]) * a_fwd * r[i];
            }
            if (param_grads || a_in != 0.0)
                detail::blueprint_vjp(bp, hrow, w, grow, g_scale, param_grads ? gacc.data() : nullptr,
                                      a_in, a_in != 0.0 ? dx.data() : nullptr);
            for (int64_t i = 0; i < w; ++i) dhrow[i] = static_cast<float>(dx[i]);
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
