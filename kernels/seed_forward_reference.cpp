// CPU reference of the seed-layer forward (the math every seed_forward kernel is tested against):
// y = h + a_eff·r(x) per chunk (x = the chunk of h, or the layer input for layer-input
// blueprints), plus per-seed activation telemetry merged with Chan's formula.
// Blueprint math runs in double and rounds once to float; a seed without a slot has r ≡ 0.
#include <cmath>
#include <vector>

#include "kernels/blueprint_reference.h"
#include "kernels/seed_layer.h"

namespace esper::kernels {

namespace {

void merge_activation_stats(SeedTelemetryAccum& tel, int32_t s, const float* h, int64_t ld,
                            int32_t batch, int32_t c0, int32_t c1) {
    const int64_t w = c1 - c0;
    const double n_b = static_cast<double>(batch) * static_cast<double>(w);
    if (n_b == 0.0) return;
    double sum = 0.0, dead = 0.0;
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t c = c0; c < c1; ++c) {
            const float v = h[b * ld + c];
            sum += v;
            if (std::fabs(v) < kDeadThreshold) dead += 1.0;
        }
    const double mean_b = sum / n_b;
    double m2_b = 0.0;
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t c = c0; c < c1; ++c) {
            const double d = double(h[b * ld + c]) - mean_b;
            m2_b += d * d;
        }
    const double n_a = tel.count[s];
    const double n = n_a + n_b;
    const double delta = mean_b - tel.mean[s];
    tel.mean[s] += delta * (n_b / n);
    tel.m2[s] += m2_b + delta * delta * (n_a * n_b / n);
    tel.count[s] = n;
    tel.dead[s] += dead;
}

}  // namespace

void seed_forward_reference(const SeedLayerView& view, const float* h, float* y,
                            SeedTelemetryAccum* tel) {
    const int64_t ld = view.width;
    std::vector<double> r, pre;
    for (int32_t s = 0; s < view.num_seeds; ++s) {
        const int32_t c0 = view.chunk_offset[s], c1 = view.chunk_offset[s + 1];
        const int64_t w = c1 - c0;
        const auto stage = static_cast<SeedStage>(view.stage[s]);
        const float a = stage_forward_alpha(stage, view.alpha[s]);
        const detail::BlueprintRef bp = detail::blueprint_of(view, s);
        const bool blend = stage_runs_blueprint(stage) && a != 0.0f && bp.params != nullptr;
        r.resize(static_cast<size_t>(w));
        for (int32_t b = 0; b < view.batch; ++b) {
            const float* hrow = h + b * ld + c0;
            float* yrow = y + b * ld + c0;
            if (!blend) {
                for (int64_t i = 0; i < w; ++i) yrow[i] = hrow[i];
                continue;
            }
            const float* xrow =
                bp.reads_layer_input() ? view.input + int64_t(b) * view.input_width : hrow;
            detail::blueprint_eval(bp, xrow, w, r.data(), pre);
            for (int64_t i = 0; i < w; ++i)
                yrow[i] = static_cast<float>(double(hrow[i]) + double(a) * r[i]);
        }
        if (tel != nullptr) merge_activation_stats(*tel, s, h, ld, view.batch, c0, c1);
    }
}

}  // namespace esper::kernels
