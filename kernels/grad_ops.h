// Gradient-norm helpers of the training step: a sum of squares into a double and a clip-by-norm
// scale that reads that sum (from device memory on the GPU, so clipping stays inside a captured
// graph). The CPU references define the math; kasmina's clip_grad_norm runs them, and the CUDA
// backend runs the launchers. Launchers take a stream and never allocate or sync.
// Also the sums behind a seed's telemetry on the GPU (DESIGN §4.6): a dot product and an
// activation's moments (Σx, Σx², dead count) in double, over fp32 or bf16 inputs.
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
// x[i] *= scale (exactly 0 where scale == 0, whatever x[i] was), then returns Σ x[i]² of the
// result in double. x: [n]. A seed's blueprint gradient at its stage's factor (kasmina).
double scale_sum_squares_reference(float* x, int64_t n, float scale);
// Σ a[i]·b[i] in double. a, b: [n].
double dot_reference(const float* a, const float* b, int64_t n);
// out[0] += Σ x[i], out[1] += Σ x[i]², out[2] += #{i : |x[i]| < kDeadThreshold} (seed_layer.h).
void moments_reference(const float* x, int64_t n, double out[3]);
// The same three sums per column chunk of x [rows, width] (row-major): chunk c holds columns
// offsets[c] .. offsets[c + 1] (offsets: [chunks + 1], ascending, from 0 to width); its sums go
// to out[3c .. 3c + 2] (+=). A seed layer's telemetry per seed (seed_layer.h's chunks).
void chunk_moments_reference(const float* x, int64_t rows, int32_t width, const int32_t* offsets,
                             int32_t chunks, double* out);

#if ESPER_HAVE_CUDA
// *sumsq += Σ x[i]² (double atomics; zero *sumsq first). x: [n] device floats.
[[nodiscard]] cudaError_t launch_sum_squares(const float* x, int64_t n, double* sumsq,
                                             cudaStream_t stream);
// The reference's clip with the sum of squares read from device memory.
[[nodiscard]] cudaError_t launch_clip_scale(float* x, int64_t n, const double* sumsq,
                                            float max_norm, cudaStream_t stream);
// The scale_sum_squares reference on the device: x scaled in place, *sumsq += Σ x[i]² of the
// result (double atomics; zero *sumsq first).
[[nodiscard]] cudaError_t launch_scale_sum_squares(float* x, int64_t n, float scale, double* sumsq,
                                                   cudaStream_t stream);
// *out += Σ a[i]·b[i] (double atomics); a, b: [n] device values, bf16 where *_bf16 (uint16_t
// bits), else float.
[[nodiscard]] cudaError_t launch_dot(const void* a, bool a_bf16, const void* b, bool b_bf16,
                                     int64_t n, double* out, cudaStream_t stream);
// The moments reference's three sums added into out[0..2] (double atomics); x: [n], bf16 where
// x_bf16.
[[nodiscard]] cudaError_t launch_moments(const void* x, bool x_bf16, int64_t n, double* out,
                                         cudaStream_t stream);
// The chunk_moments reference on the device (double atomics into out[3·chunks]); x: [rows, width]
// device values, bf16 where x_bf16; offsets: device int32 [chunks + 1].
[[nodiscard]] cudaError_t launch_chunk_moments(const void* x, bool x_bf16, int64_t rows,
                                               int32_t width, const int32_t* offsets,
                                               int32_t chunks, double* out, cudaStream_t stream);
#endif

}  // namespace esper::kernels
