// CPU reference of LayerNorm forward and backward (see layernorm.h).
#include <cmath>

#include "kernels/layernorm.h"

namespace esper::kernels {

void layernorm_forward_reference(const float* x, const float* gamma, const float* beta, float* y,
                                 float* mean, float* rstd, int32_t rows, int32_t cols, float eps) {
    for (int32_t r = 0; r < rows; ++r) {
        const float* xr = x + int64_t(r) * cols;
        double m = 0.0;
        for (int32_t c = 0; c < cols; ++c) m += xr[c];
        m /= cols;
        double var = 0.0;
        for (int32_t c = 0; c < cols; ++c) var += (xr[c] - m) * (xr[c] - m);
        var /= cols;
        const double s = 1.0 / std::sqrt(var + double(eps));
        float* yr = y + int64_t(r) * cols;
        for (int32_t c = 0; c < cols; ++c) yr[c] = float((xr[c] - m) * s * gamma[c] + beta[c]);
        mean[r] = float(m);
        rstd[r] = float(s);
    }
}

void layernorm_backward_reference(const float* dy, const float* x, const float* gamma,
                                  const float* mean, const float* rstd, float* dx, float* dgamma,
                                  float* dbeta, int32_t rows, int32_t cols) {
    for (int32_t r = 0; r < rows; ++r) {
        const float* xr = x + int64_t(r) * cols;
        const float* dyr = dy + int64_t(r) * cols;
        const double m = mean[r], s = rstd[r];
        // dx = s·(g − mean(g) − x̂·mean(g·x̂)) with g = dy·γ and x̂ = (x − m)·s.
        double g_mean = 0.0, gx_mean = 0.0;
        for (int32_t c = 0; c < cols; ++c) {
            const double xhat = (xr[c] - m) * s;
            const double g = double(dyr[c]) * gamma[c];
            g_mean += g;
            gx_mean += g * xhat;
            dgamma[c] += float(double(dyr[c]) * xhat);
            dbeta[c] += dyr[c];
        }
        g_mean /= cols;
        gx_mean /= cols;
        float* dxr = dx + int64_t(r) * cols;
        for (int32_t c = 0; c < cols; ++c) {
            const double xhat = (xr[c] - m) * s;
            const double g = double(dyr[c]) * gamma[c];
            dxr[c] = float(s * (g - g_mean - xhat * gx_mean));
        }
    }
}

}  // namespace esper::kernels
