// LayerNorm over the last axis (the transformer host's pre-norm, DESIGN §14):
//   y = (x − mean)·rstd·γ + β,   rstd = 1/√(var + eps), var biased (PyTorch's LayerNorm).
// The forward saves mean and rstd per row for the backward. References accumulate in double.
#pragma once

#include <cstdint>

namespace esper::kernels {

// x, y: [rows, cols] row-major (y may not alias x); gamma, beta: [cols]; mean, rstd: [rows].
void layernorm_forward_reference(const float* x, const float* gamma, const float* beta, float* y,
                                 float* mean, float* rstd, int32_t rows, int32_t cols, float eps);
// Given the forward's x, mean, rstd and dy = ∂L/∂y: writes dx [rows, cols] (overwritten) and
// accumulates dgamma, dbeta [cols] (+=).
void layernorm_backward_reference(const float* dy, const float* x, const float* gamma,
                                  const float* mean, const float* rstd, float* dx, float* dgamma,
                                  float* dbeta, int32_t rows, int32_t cols);

}  // namespace esper::kernels
