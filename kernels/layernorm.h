// LayerNorm over the last axis (the transformer host's pre-norm, DESIGN §14):
//   y = (x − mean)·rstd·γ + β,   rstd = 1/√(var + eps), var biased (PyTorch's LayerNorm).
// The forward saves mean and rstd per row for the backward. References accumulate in double.
#pragma once

#include <cstddef>
#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// x, y: [rows, cols] row-major (y may not alias x); gamma, beta: [cols]; mean, rstd: [rows].
void layernorm_forward_reference(const float* x, const float* gamma, const float* beta, float* y,
                                 float* mean, float* rstd, int32_t rows, int32_t cols, float eps);
// Given the forward's x, mean, rstd and dy = ∂L/∂y: writes dx [rows, cols] (overwritten) and
// accumulates dgamma, dbeta [cols] (+=).
void layernorm_backward_reference(const float* dy, const float* x, const float* gamma,
                                  const float* mean, const float* rstd, float* dx, float* dgamma,
                                  float* dbeta, int32_t rows, int32_t cols);

#if ESPER_HAVE_CUDA
// Device pointers, the references' contracts, fp32 statistics. y (fp32) and y_bf16 (bf16, the
// operand of a following bf16 GEMM) are each written when not null; at least one must be given.
[[nodiscard]] cudaError_t launch_layernorm_forward(const float* x, const float* gamma,
                                                   const float* beta, float* y, void* y_bf16,
                                                   float* mean, float* rstd, int32_t rows,
                                                   int32_t cols, float eps, cudaStream_t stream);
// dx overwritten (accumulate_dx: dx += the reference's dx, for a residual stream's gradient),
// dgamma/dbeta accumulated (+=) without atomics: needs a workspace of
// layernorm_backward_workspace_bytes(rows, cols) bytes (contents irrelevant).
size_t layernorm_backward_workspace_bytes(int32_t rows, int32_t cols);
[[nodiscard]] cudaError_t launch_layernorm_backward(const float* dy, const float* x,
                                                    const float* gamma, const float* mean,
                                                    const float* rstd, float* dx, float* dgamma,
                                                    float* dbeta, int32_t rows, int32_t cols,
                                                    bool accumulate_dx, void* workspace,
                                                    size_t workspace_bytes, cudaStream_t stream);
#endif

}  // namespace esper::kernels
