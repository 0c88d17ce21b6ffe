// Token and position embedding of the transformer host (DESIGN §14): row (b, t) of the residual
// stream starts as wte[token[b, t]] + wpe[t]. The backward scatters into both tables.
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
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
// sums over the batch in order; dwte is onehot(tokens)ᵀ · dx, one fp32 cuBLASLt product (no
// TF32) over a one-hot matrix built in `workspace` (embedding_backward_workspace_bytes) with
// `gemm_workspace` as cuBLASLt's scratch (launch_gemm). Tokens must be in [0, vocab).
[[nodiscard]] cudaError_t launch_embedding_forward(const int32_t* tokens, const float* wte,
                                                   const float* wpe, float* x, int32_t batch,
                                                   int32_t seq, int32_t channels,
                                                   cudaStream_t stream);
size_t embedding_backward_workspace_bytes(int32_t batch, int32_t seq, int32_t vocab);
[[nodiscard]] cudaError_t launch_embedding_backward(
    cublasLtHandle_t lt, const int32_t* tokens, const float* dx, float* dwte, float* dwpe,
    int32_t batch, int32_t seq, int32_t channels, int32_t vocab, void* workspace,
    size_t workspace_bytes, void* gemm_workspace, size_t gemm_workspace_bytes, cudaStream_t stream);
#endif

}  // namespace esper::kernels
