// CPU references of the gradient-norm helpers (see grad_ops.h).
#include <cmath>

#include "kernels/grad_ops.h"
#include "kernels/seed_layer.h"

namespace esper::kernels {

double sum_squares_reference(const float* x, int64_t n) {
    double sq = 0.0;
    for (int64_t i = 0; i < n; ++i) sq += double(x[i]) * double(x[i]);
    return sq;
}

void clip_scale_reference(float* x, int64_t n, double sumsq, double max_norm) {
    const double norm = std::sqrt(sumsq);
    if (!(max_norm > 0.0 && norm > max_norm) || !std::isfinite(norm)) return;
    const float scale = float(max_norm / (norm + 1e-6));
    for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

double scale_sum_squares_reference(float* x, int64_t n, float scale) {
    double sq = 0.0;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = scale == 0.0f ? 0.0f : x[i] * scale;
        sq += double(x[i]) * double(x[i]);
    }
    return sq;
}

double dot_reference(const float* a, const float* b, int64_t n) {
    double acc = 0.0;
    for (int64_t i = 0; i < n; ++i) acc += double(a[i]) * double(b[i]);
    return acc;
}

void moments_reference(const float* x, int64_t n, double out[3]) {
    for (int64_t i = 0; i < n; ++i) {
        const double v = x[i];
        out[0] += v;
        out[1] += v * v;
        out[2] += std::fabs(x[i]) < kDeadThreshold ? 1.0 : 0.0;
    }
}

void chunk_moments_reference(const float* x, int64_t rows, int32_t width, const int32_t* offsets,
                             int32_t chunks, double* out) {
    for (int32_t c = 0; c < chunks; ++c)
        for (int64_t r = 0; r < rows; ++r)
            moments_reference(x + r * width + offsets[c], offsets[c + 1] - offsets[c], out + 3 * c);
}

}  // namespace esper::kernels
