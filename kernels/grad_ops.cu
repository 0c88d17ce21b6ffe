// Gradient-norm kernels (see grad_ops.h; CPU references in grad_ops_reference.cpp).
#include <algorithm>

#include "kernels/grad_ops.h"

namespace esper::kernels {

namespace {

constexpr int kThreads = 256;

__global__ void sum_squares_kernel(const float* __restrict__ x, int64_t n, double* sumsq) {
    double acc = 0.0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const double v = x[i];
        acc += v * v;
    }
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    __shared__ double warp_sums[kThreads / 32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) atomicAdd(sumsq, acc);
    }
}

__global__ void clip_scale_kernel(float* __restrict__ x, int64_t n, const double* sumsq,
                                  float max_norm) {
    const double norm = sqrt(*sumsq);
    if (!(norm > double(max_norm)) || !isfinite(norm)) return;
    const float scale = float(double(max_norm) / (norm + 1e-6));
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        x[i] *= scale;
}

int blocks_for(int64_t n) {
    return int(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 1024));
}

}  // namespace

cudaError_t launch_sum_squares(const float* x, int64_t n, double* sumsq, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    sum_squares_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, sumsq);
    return cudaGetLastError();
}

cudaError_t launch_clip_scale(float* x, int64_t n, const double* sumsq, float max_norm,
                              cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    clip_scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, sumsq, max_norm);
    return cudaGetLastError();
}

}  // namespace esper::kernels
