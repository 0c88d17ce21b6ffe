// CPU reference of the cuBLASLt matrix products (see gemm.h): plain loops accumulating in double.
#include <cmath>
#include <vector>

#include "kernels/gemm.h"

namespace esper::kernels {

void gemm_reference(const GemmSpec& s, const float* a, const float* b, float* d, float* aux) {
    constexpr double kC = 0.7978845608028654, kK = 0.044715;
    for (int32_t i = 0; i < s.m; ++i)
        for (int32_t j = 0; j < s.n; ++j) {
            double acc = 0.0;
            for (int32_t p = 0; p < s.k; ++p) {
                const double av = s.trans_a ? a[int64_t(p) * s.lda + i] : a[int64_t(i) * s.lda + p];
                const double bv = s.trans_b ? b[int64_t(j) * s.ldb + p] : b[int64_t(p) * s.ldb + j];
                acc += av * bv;
            }
            float& out = d[int64_t(i) * s.ldd + j];
            const float cv = s.c ? static_cast<const float*>(s.c)[int64_t(i) * s.ldd + j] : out;
            double v = s.alpha * acc + (s.beta != 0.0f ? double(s.beta) * cv : 0.0);
            if (s.epilogue != GemmEpilogue::kNone) v += static_cast<const float*>(s.bias)[j];
            if (s.epilogue == GemmEpilogue::kBiasGelu) {
                if (aux) aux[int64_t(i) * s.ld_aux + j] = float(v);
                v = 0.5 * v * (1.0 + std::tanh(kC * (v + kK * v * v * v)));
            }
            out = float(v);
        }
}

}  // namespace esper::kernels
