// Token and position embedding of the transformer host (DESIGN §14): row (b, t) of the residual
// stream starts as wte[token[b, t]] + wpe[t]. The backward scatters into both tables.
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// tokens: [B, T], each in [0, vocab) (the caller's precondition); wte: [vocab, C];
// wpe: [>= T, C]; x: [B, T, C] (overwritten).
void embedding_forward_reference(const int32_t* tokens, const float* wte, const float* wpe,
                                 float* x, int32_t batch, int32_t seq, int32_t channels);
// dwte[token[b, t]] += dx[b, t]; dwpe[t] += dx[b, t] (both accumulated).
void embedding_backward_reference(const int32_t* tokens, const float* dx, float* dwte, float* dwpe,
                                  int32_t batch, int32_t seq, int32_t channels);

#if ESPER_HAVE_CUDA
// Device pointers, the references' contracts. The backward is deterministic (no atomics): dwpe
// sums over the batch in order; each vocabulary row of dwte (vocab rows) is one block that scans
// the tokens in order.
[[nodiscard]] cudaError_t launch_embedding_forward(const int32_t* tokens, const float* wte,
                                                   const float* wpe, float* x, int32_t batch,
                                                   int32_t seq, int32_t channels,
                                                   cudaStream_t stream);
[[nodiscard]] cudaError_t launch_embedding_backward(const int32_t* tokens, const float* dx,
                                                    float* dwte, float* dwpe, int32_t batch,
                                                    int32_t seq, int32_t channels, int32_t vocab,
                                                    cudaStream_t stream);
#endif

}  // namespace esper::kernels
