// CPU references of the fused optimizer steps (PyTorch torch.optim.SGD / AdamW semantics).
#include <cmath>

#include "kernels/optimizer.h"

namespace esper::kernels {

void sgd_momentum_step_reference(float* params, const float* grads, float* momentum_buf, int64_t n,
                                 float lr, float momentum, float weight_decay) {
    for (int64_t i = 0; i < n; ++i) {
        const float g = grads[i] + weight_decay * params[i];
        const float buf = momentum * momentum_buf[i] + g;
        momentum_buf[i] = buf;
        params[i] -= lr * buf;
    }
}

void adamw_step_reference(float* params, const float* grads, float* m, float* v, int64_t n,
                          float lr, float beta1, float beta2, float eps, float weight_decay,
                          int64_t step) {
    const double bc1 = 1.0 - std::pow(double(beta1), double(step));
    const double bc2 = 1.0 - std::pow(double(beta2), double(step));
    const float step_size = static_cast<float>(lr / bc1);
    const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
    for (int64_t i = 0; i < n; ++i) {
        const float g = grads[i];
        float p = params[i] * (1.0f - lr * weight_decay);
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= step_size * mi / (std::sqrt(vi) / bc2_sqrt + eps);
        params[i] = p;
    }
}

}  // namespace esper::kernels
