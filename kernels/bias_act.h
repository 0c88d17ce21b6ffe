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
// bf16 ends for the bf16 GEMMs on either side (the transformer in run.precision: bf16): the same
// arithmetic in fp32 with bf16 loads and stores (round to nearest even, as launch_cast_to_bf16).
// Forward: z in bf16 (z_bf16: z + bias is stored rounded, and the activation reads the rounded
// value, as the backward will) or fp32; a16 = bf16(act(z)) instead of an fp32 a, so no separate
// cast pass.
[[nodiscard]] cudaError_t launch_bias_act_forward_bf16(void* z, bool z_bf16, const float* bias,
                                                       void* a16, int32_t rows, int32_t cols,
                                                       Activation act, cudaStream_t stream);
// Backward: da and z each in bf16 or fp32 (da_bf16, z_bf16); dz16 = bf16(dz), or null for the
// bias gradient alone; z may be null for kIdentity (then dz = da: a cast fused with the bias
// gradient's column sums). dbias, when not null, is the same sum in the same order as
// launch_bias_act_backward's of the fp32 dz. dz16 may be da itself (bf16, in place). a16, when
// not null (z required): the forward's activation written again, bf16(act(z)) — the same bits
// as launch_bias_act_forward_bf16 wrote — for a caller that did not keep it.
[[nodiscard]] cudaError_t launch_bias_act_backward_bf16(const void* da, bool da_bf16, const void* z,
                                                        bool z_bf16, void* dz16, float* dbias,
                                                        int32_t rows, int32_t cols, Activation act,
                                                        void* workspace, size_t workspace_bytes,
                                                        cudaStream_t stream, void* a16 = nullptr);
#endif

}  // namespace esper::kernels
