// CPU reference of the embedding gather and its scatter-add backward (see embedding.h).
#include "kernels/embedding.h"

namespace esper::kernels {

void embedding_forward_reference(const int32_t* tokens, const float* wte, const float* wpe,
                                 float* x, int32_t batch, int32_t seq, int32_t channels) {
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t t = 0; t < seq; ++t) {
            const int64_t r = int64_t(b) * seq + t;
            const float* e = wte + int64_t(tokens[r]) * channels;
            const float* p = wpe + int64_t(t) * channels;
            float* out = x + r * channels;
            for (int32_t c = 0; c < channels; ++c) out[c] = e[c] + p[c];
        }
}

void embedding_backward_reference(const int32_t* tokens, const float* dx, float* dwte, float* dwpe,
                                  int32_t batch, int32_t seq, int32_t channels) {
    for (int32_t b = 0; b < batch; ++b)
        for (int32_t t = 0; t < seq; ++t) {
            const int64_t r = int64_t(b) * seq + t;
            const float* g = dx + r * channels;
            float* e = dwte + int64_t(tokens[r]) * channels;
            float* p = dwpe + int64_t(t) * channels;
            for (int32_t c = 0; c < channels; ++c) {
                e[c] += g[c];
                p[c] += g[c];
            }
        }
}

}  // namespace esper::kernels
