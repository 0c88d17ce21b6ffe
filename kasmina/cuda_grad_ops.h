// Small device helpers the CUDA training backend needs next to the kernels/ launchers: a sum of
// squares into a device double (grad norms, finiteness) and a clip-by-norm scale that reads that
// sum from device memory, so clipping stays inside a captured graph. The CPU reference of both
// is kasmina::clip_grad_norm (optimizer.h). Launchers take a stream, never allocate or sync.
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>

namespace esper::kasmina {

// *sumsq += Σ x[i]² (double atomics; zero *sumsq first). x: [n] device floats.
[[nodiscard]] cudaError_t launch_sum_squares(const float* x, int64_t n, double* sumsq,
                                             cudaStream_t stream);
// x *= max_norm / (√*sumsq + 1e-6) when √*sumsq > max_norm and finite; else unchanged.
[[nodiscard]] cudaError_t launch_clip_scale(float* x, int64_t n, const double* sumsq,
                                            float max_norm, cudaStream_t stream);

}  // namespace esper::kasmina
#endif
