// Bias + activation epilogue of a host Linear layer and its backward:
//   forward  z[r, c] += bias[c]; a = act(z)          (z is kept: the backward needs it)
//   backward dz = da ⊙ act'(z); dbias[c] = Σ_r dz[r, c] (overwritten, not accumulated)
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// Values are fixed (configs and checkpoints name them).
enum class Activation : uint8_t { kIdentity = 0, kRelu = 1, kGeluTanh = 2 };

// z: [rows, cols] row-major in/out; bias: [cols] (may be null: no bias); a: [rows, cols] (may
// alias z only for kIdentity).
void bias_act_forward_reference(float* z, const float* bias, float* a, int32_t rows, int32_t cols,
                                Activation act);
// da, z, dz: [rows, cols] (dz may alias da); dbias: [cols] or null.
void bias_act_backward_reference(const float* da, const float* z, float* dz, float* dbias,
                                 int32_t rows, int32_t cols, Activation act);

#if ESPER_HAVE_CUDA
// Same contracts on device pointers.
[[nodiscard]] cudaError_t launch_bias_act_forward(float* z, const float* bias, float* a,
                                                  int32_t rows, int32_t cols, Activation act,
                                                  cudaStream_t stream);
// dbias is computed without atomics by a column-reduction second pass, so it needs a workspace
// of bias_act_backward_workspace_bytes(rows, cols) bytes (contents irrelevant).
size_t bias_act_backward_workspace_bytes(int32_t rows, int32_t cols);
[[nodiscard]] cudaError_t launch_bias_act_backward(const float* da, const float* z, float* dz,
                                                   float* dbias, int32_t rows, int32_t cols,
                                                   Activation act, void* workspace,
                                                   size_t workspace_bytes, cudaStream_t stream);
#endif

}  // namespace esper::kernels
