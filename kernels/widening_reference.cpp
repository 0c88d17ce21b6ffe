// CPU references of the widening blueprints' elementwise pieces (see widening.h).
#include "kernels/widening.h"

namespace esper::kernels {

namespace {

SeedStage stage_of(WideningSeedRef s) { return static_cast<SeedStage>(s.stage[s.seed]); }

}  // namespace

void widening_output_forward_reference(WideningSeedRef s, const float* b2, float* r, float* y,
                                       int32_t rows, int32_t w, int32_t ld_y, int32_t c0) {
    const float a_fwd = stage_forward_alpha(stage_of(s), s.alpha[s.seed]);
    for (int32_t b = 0; b < rows; ++b)
        for (int32_t i = 0; i < w; ++i) {
            float& v = r[int64_t(b) * w + i];
            v += b2[i];
            if (a_fwd != 0.0f) y[int64_t(b) * ld_y + c0 + i] += a_fwd * v;
        }
}

void widening_output_backward_reference(WideningSeedRef s, const float* dy, int32_t ld_dy,
                                        int32_t c0, const float* r, int32_t rows, int32_t w,
                                        float* g, float* gs, float* db2, double* contribution) {
    const SeedStage stage = stage_of(s);
    const float alpha = s.alpha[s.seed];
    const float a_fwd = stage_forward_alpha(stage, alpha);
    const float g_scale = stage_blueprint_grad_scale(stage, alpha);
    double c = 0.0;
    for (int32_t i = 0; i < w; ++i) {
        float col = 0.0f;
        for (int32_t b = 0; b < rows; ++b) {
            const float v = dy[int64_t(b) * ld_dy + c0 + i];
            const int64_t k = int64_t(b) * w + i;
            g[k] = v;
            const float vs = g_scale * v;
            if (gs != nullptr) gs[k] = vs;
            col += vs;
            c -= double(v) * a_fwd * r[k];
        }
        if (db2 != nullptr) db2[i] += col;
    }
    if (contribution != nullptr && a_fwd != 0.0f) *contribution += c;
}

void widening_hidden_backward_reference(WideningSeedRef s, BlueprintKind kind, const float* da,
                                        const float* z, int32_t rows, int32_t hidden, float* dzs,
                                        float* db1, float* dzi) {
    const SeedStage stage = stage_of(s);
    const float alpha = s.alpha[s.seed];
    const float g_scale = stage_blueprint_grad_scale(stage, alpha);
    const float a_in = stage_input_grad_alpha(stage, alpha);
    const bool relu = kind == BlueprintKind::kResidualMlp;
    for (int32_t j = 0; j < hidden; ++j) {
        float col = 0.0f;
        for (int32_t b = 0; b < rows; ++b) {
            const int64_t k = int64_t(b) * hidden + j;
            const float d = relu && !(z[k] > 0.0f) ? 0.0f : da[k];
            const float ds = g_scale * d;
            if (dzs != nullptr) dzs[k] = ds;
            if (dzi != nullptr) dzi[k] = a_in * d;
            col += ds;
        }
        if (db1 != nullptr && dzs != nullptr) db1[j] += col;
    }
}

}  // namespace esper::kernels
