// Gradient-norm helpers of the training step: a sum of squares into a double and a clip-by-norm
// scale that reads that sum (from device memory on the GPU, so clipping stays inside a captured
// graph). The CPU references define the math; kasmina's clip_grad_norm runs them, and the CUDA
// backend runs the launchers. Launchers take a stream and never allocate or sync.
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// Σ x[i]² in double. x: [n].
double sum_squares_reference(const float* x, int64_t n);
// x *= max_norm / (√sumsq + 1e-6) when √sumsq > max_norm and finite; else unchanged. x: [n].
void clip_scale_reference(float* x, int64_t n, double sumsq, double max_norm);

#if ESPER_HAVE_CUDA
// *sumsq += Σ x[i]² (double atomics; zero *sumsq first). x: [n] device floats.
[[nodiscard]] cudaError_t launch_sum_squares(const float* x, int64_t n, double* sumsq,
                                             cudaStream_t stream);
// The reference's clip with the sum of squares read from device memory.
[[nodiscard]] cudaError_t launch_clip_scale(float* x, int64_t n, const double* sumsq,
                                            float max_norm, cudaStream_t stream);
#endif

}  // namespace esper::kernels
