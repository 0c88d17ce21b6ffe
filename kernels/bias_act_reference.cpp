// CPU reference of the bias + activation epilogue (GELU is the tanh approximation, as in
// PyTorch's gelu(approximate="tanh")).
#include <cmath>
#include <vector>

#include "kernels/bias_act.h"

namespace esper::kernels {

namespace {

constexpr double kGeluC = 0.7978845608028654;  // sqrt(2/pi)
constexpr double kGeluK = 0.044715;

double act_value(double z, Activation act) {
    switch (act) {
        case Activation::kRelu:
            return z > 0.0 ? z : 0.0;
        case Activation::kGeluTanh:
            return 0.5 * z * (1.0 + std::tanh(kGeluC * (z + kGeluK * z * z * z)));
        case Activation::kIdentity:
            break;
    }
    return z;
}

double act_derivative(double z, Activation act) {
    switch (act) {
        case Activation::kRelu:
            return z > 0.0 ? 1.0 : 0.0;
        case Activation::kGeluTanh: {
            const double t = std::tanh(kGeluC * (z + kGeluK * z * z * z));
            return 0.5 * (1.0 + t) +
                   0.5 * z * (1.0 - t * t) * kGeluC * (1.0 + 3.0 * kGeluK * z * z);
        }
        case Activation::kIdentity:
            break;
    }
    return 1.0;
}

}  // namespace

void bias_act_forward_reference(float* z, const float* bias, float* a, int32_t rows, int32_t cols,
                                Activation act) {
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const int64_t k = r * cols + c;
            const float zv = bias ? z[k] + bias[c] : z[k];
            z[k] = zv;
            a[k] = static_cast<float>(act_value(zv, act));
        }
}

void bias_act_backward_reference(const float* da, const float* z, float* dz, float* dbias,
                                 int32_t rows, int32_t cols, Activation act) {
    std::vector<double> acc(dbias ? static_cast<size_t>(cols) : 0, 0.0);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) {
            const int64_t k = r * cols + c;
            const double g = double(da[k]) * act_derivative(z[k], act);
            dz[k] = static_cast<float>(g);
            if (dbias) acc[c] += g;
        }
    if (dbias)
        for (int32_t c = 0; c < cols; ++c) dbias[c] = static_cast<float>(acc[c]);
}

}  // namespace esper::kernels
