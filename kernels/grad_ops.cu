// Gradient-norm kernels (see grad_ops.h; CPU references in grad_ops_reference.cpp).
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdint>

#include "kernels/grad_ops.h"
#include "kernels/seed_layer.h"

namespace esper::kernels {

namespace {

constexpr int kThreads = 256;

// Block-wide sum of acc added into *out by thread 0 of each block.
__device__ void block_add_one(double acc, double* out) {
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
    __shared__ double warp_sums[kThreads / 32];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    if (lane == 0) warp_sums[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, off);
        if (lane == 0) atomicAdd(out, acc);
    }
}

__global__ void sum_squares_kernel(const float* __restrict__ x, int64_t n, double* sumsq) {
    double acc = 0.0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const double v = x[i];
        acc += v * v;
    }
    block_add_one(acc, sumsq);
}

__global__ void scale_sum_squares_kernel(float* __restrict__ x, int64_t n, float scale,
                                         double* sumsq) {
    double acc = 0.0;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float v = scale == 0.0f ? 0.0f : x[i] * scale;
        x[i] = v;
        acc += double(v) * double(v);
    }
    block_add_one(acc, sumsq);
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

// Element i of a float or bf16 array as a double.
__device__ __forceinline__ double load_as_double(const void* x, bool bf16, int64_t i) {
    if (bf16) {
        const uint16_t bits = static_cast<const uint16_t*>(x)[i];
        return double(__uint_as_float(uint32_t(bits) << 16));
    }
    return double(static_cast<const float*>(x)[i]);
}

// Block-wide sums of K doubles, added into out[0..K) by thread 0 of each block.
template <int K>
__device__ void block_add(double (&acc)[K], double* out) {
    __shared__ double warp_sums[kThreads / 32][K];
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int k = 0; k < K; ++k) {
        for (int off = 16; off > 0; off >>= 1) acc[k] += __shfl_down_sync(0xffffffffu, acc[k], off);
        if (lane == 0) warp_sums[warp][k] = acc[k];
    }
    __syncthreads();
    if (warp != 0) return;
    for (int k = 0; k < K; ++k) {
        double v = lane < kThreads / 32 ? warp_sums[lane][k] : 0.0;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
        if (lane == 0) atomicAdd(out + k, v);
    }
}

__global__ void dot_kernel(const void* a, bool a_bf16, const void* b, bool b_bf16, int64_t n,
                           double* out) {
    double acc[1] = {0.0};
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        acc[0] += load_as_double(a, a_bf16, i) * load_as_double(b, b_bf16, i);
    block_add(acc, out);
}

__global__ void moments_kernel(const void* x, bool x_bf16, int64_t n, double* out) {
    double acc[3] = {0.0, 0.0, 0.0};
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const double v = load_as_double(x, x_bf16, i);
        acc[0] += v;
        acc[1] += v * v;
        acc[2] += fabs(v) < double(kDeadThreshold) ? 1.0 : 0.0;
    }
    block_add(acc, out);
}

// Block x covers columns [256·x, 256·x + 256), block y rows y, y + gridDim.y, ...: each thread
// sums its column, the block merges its columns per chunk in shared memory (a tile meets at most
// 256 chunks), then one double atomic per chunk and sum.
__global__ void chunk_moments_kernel(const void* x, bool x_bf16, int64_t rows, int32_t width,
                                     const int32_t* __restrict__ offsets, int32_t chunks,
                                     double* out) {
    __shared__ double sums[kThreads][3];
    const int32_t first = int32_t(blockIdx.x) * kThreads;
    const int32_t c = first + int32_t(threadIdx.x);
    const int32_t last = min(first + kThreads, width) - 1;
    // The chunk holding column col: the last chunk whose first column is <= col.
    auto chunk_of = [&](int32_t col) {
        int32_t lo = 0, hi = chunks - 1;
        while (lo < hi) {
            const int32_t mid = (lo + hi + 1) / 2;
            if (offsets[mid] <= col)
                lo = mid;
            else
                hi = mid - 1;
        }
        return lo;
    };
    const int32_t base = chunk_of(first);
    const int32_t span = chunk_of(last) - base + 1;
    for (int k = 0; k < 3; ++k) sums[threadIdx.x][k] = 0.0;
    __syncthreads();
    if (c < width) {
        double acc[3] = {0.0, 0.0, 0.0};
        for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
            const double v = load_as_double(x, x_bf16, r * width + c);
            acc[0] += v;
            acc[1] += v * v;
            acc[2] += fabs(v) < double(kDeadThreshold) ? 1.0 : 0.0;
        }
        const int32_t local = chunk_of(c) - base;
        for (int k = 0; k < 3; ++k) atomicAdd(&sums[local][k], acc[k]);
    }
    __syncthreads();
    if (int32_t(threadIdx.x) < span)
        for (int k = 0; k < 3; ++k)
            atomicAdd(out + 3 * (base + int32_t(threadIdx.x)) + k, sums[threadIdx.x][k]);
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

cudaError_t launch_scale_sum_squares(float* x, int64_t n, float scale, double* sumsq,
                                     cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    scale_sum_squares_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, scale, sumsq);
    return cudaGetLastError();
}

cudaError_t launch_clip_scale(float* x, int64_t n, const double* sumsq, float max_norm,
                              cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    clip_scale_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, n, sumsq, max_norm);
    return cudaGetLastError();
}

cudaError_t launch_dot(const void* a, bool a_bf16, const void* b, bool b_bf16, int64_t n,
                       double* out, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    dot_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, a_bf16, b, b_bf16, n, out);
    return cudaGetLastError();
}

cudaError_t launch_moments(const void* x, bool x_bf16, int64_t n, double* out,
                           cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    moments_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, x_bf16, n, out);
    return cudaGetLastError();
}

cudaError_t launch_chunk_moments(const void* x, bool x_bf16, int64_t rows, int32_t width,
                                 const int32_t* offsets, int32_t chunks, double* out,
                                 cudaStream_t stream) {
    if (rows <= 0 || width <= 0 || chunks <= 0) return cudaSuccess;
    const dim3 grid(unsigned((width + kThreads - 1) / kThreads),
                    unsigned(std::clamp<int64_t>(rows / 64, 1, 128)));
    chunk_moments_kernel<<<grid, kThreads, 0, stream>>>(x, x_bf16, rows, width, offsets, chunks,
                                                        out);
    return cudaGetLastError();
}

}  // namespace esper::kernels
