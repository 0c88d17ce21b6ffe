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

// Block x covers columns [512·x, 512·x + 512) as 64 threads of 8 columns each (one 16-byte
// load of bf16, two of fp32, where the rows allow it), over 4 rows at a time; block y takes rows
// 4·y.., stepping 4·gridDim.y. A thread whose 8 columns lie in one chunk sums them together;
// one that meets a chunk boundary (narrow chunks) sums column by column. The block merges its
// sums per chunk in shared memory (a tile meets at most 512 chunks), then one double atomic per
// chunk and sum.
constexpr int kChunkTx = 64, kChunkTy = 4, kChunkCols = 8;
constexpr int kChunkTile = kChunkTx * kChunkCols;

__device__ __forceinline__ float load_as_float(const void* x, bool bf16, int64_t i) {
    if (bf16) return __uint_as_float(uint32_t(static_cast<const uint16_t*>(x)[i]) << 16);
    return static_cast<const float*>(x)[i];
}

// The chunk holding column col: the last chunk whose first column is <= col.
__device__ int32_t chunk_of(const int32_t* __restrict__ offsets, int32_t chunks, int32_t col) {
    int32_t lo = 0, hi = chunks - 1;
    while (lo < hi) {
        const int32_t mid = (lo + hi + 1) / 2;
        if (offsets[mid] <= col)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

__global__ void chunk_moments_kernel(const void* x, bool x_bf16, int64_t rows, int32_t width,
                                     const int32_t* __restrict__ offsets, int32_t chunks, bool vec,
                                     double* out) {
    __shared__ double sums[kChunkTile][3];
    const int tid = int(threadIdx.y) * kChunkTx + int(threadIdx.x);
    const int32_t first = int32_t(blockIdx.x) * kChunkTile;
    const int32_t last = min(first + kChunkTile, width) - 1;
    const int32_t base = chunk_of(offsets, chunks, first);
    const int32_t span = chunk_of(offsets, chunks, last) - base + 1;
    for (int i = tid; i < span * 3; i += kChunkTx * kChunkTy) sums[i / 3][i % 3] = 0.0;
    __syncthreads();
    const int32_t c0 = first + int32_t(threadIdx.x) * kChunkCols;
    if (c0 < width) {
        const int32_t n = min(kChunkCols, width - c0);
        const int32_t k0 = chunk_of(offsets, chunks, c0);
        const int32_t row0 = int32_t(blockIdx.y) * kChunkTy + int32_t(threadIdx.y);
        const int64_t step = int64_t(gridDim.y) * kChunkTy;
        if (k0 == chunk_of(offsets, chunks, c0 + n - 1)) {
            double a0 = 0.0, a1 = 0.0, a2 = 0.0;
            for (int64_t r = row0; r < rows; r += step) {
                const int64_t at = r * width + c0;
                float v[kChunkCols];
                if (vec && x_bf16) {
                    const uint4 q =
                        *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(x) + at);
                    const uint32_t w[4] = {q.x, q.y, q.z, q.w};
                    for (int j = 0; j < 4; ++j) {
                        v[2 * j] = __uint_as_float(w[j] << 16);
                        v[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
                    }
                } else if (vec) {
                    const float4* p =
                        reinterpret_cast<const float4*>(static_cast<const float*>(x) + at);
                    const float4 lo = p[0], hi = p[1];
                    v[0] = lo.x, v[1] = lo.y, v[2] = lo.z, v[3] = lo.w;
                    v[4] = hi.x, v[5] = hi.y, v[6] = hi.z, v[7] = hi.w;
                } else {
                    for (int j = 0; j < kChunkCols; ++j)
                        v[j] = j < n ? load_as_float(x, x_bf16, at + j) : 0.0f;
                }
                for (int j = 0; j < kChunkCols; ++j) {
                    if (j >= n) break;
                    const double d = v[j];
                    a0 += d;
                    a1 += d * d;
                    a2 += fabsf(v[j]) < kDeadThreshold ? 1.0 : 0.0;
                }
            }
            atomicAdd(&sums[k0 - base][0], a0);
            atomicAdd(&sums[k0 - base][1], a1);
            atomicAdd(&sums[k0 - base][2], a2);
        } else {
            for (int32_t j = 0; j < n; ++j) {
                double a0 = 0.0, a1 = 0.0, a2 = 0.0;
                for (int64_t r = row0; r < rows; r += step) {
                    const float f = load_as_float(x, x_bf16, r * width + c0 + j);
                    const double d = f;
                    a0 += d;
                    a1 += d * d;
                    a2 += fabsf(f) < kDeadThreshold ? 1.0 : 0.0;
                }
                const int32_t k = chunk_of(offsets, chunks, c0 + j) - base;
                atomicAdd(&sums[k][0], a0);
                atomicAdd(&sums[k][1], a1);
                atomicAdd(&sums[k][2], a2);
            }
        }
    }
    __syncthreads();
    for (int i = tid; i < span * 3; i += kChunkTx * kChunkTy)
        atomicAdd(out + 3 * base + i, sums[i / 3][i % 3]);
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
    // 16-byte loads: every row's start 16-byte aligned and 8 columns a thread.
    const bool vec = width % kChunkCols == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0;
    const int64_t tiles = (width + kChunkTile - 1) / kChunkTile;
    // About 16 rows a thread, at most ~2048 blocks.
    const int64_t groups = std::clamp<int64_t>((rows + 16 * kChunkTy - 1) / (16 * kChunkTy), 1,
                                               std::max<int64_t>(1, 2048 / tiles));
    const dim3 grid(unsigned(tiles), unsigned(std::min<int64_t>(groups, 65535)));
    chunk_moments_kernel<<<grid, dim3(kChunkTx, kChunkTy), 0, stream>>>(x, x_bf16, rows, width,
                                                                        offsets, chunks, vec, out);
    return cudaGetLastError();
}

}  // namespace esper::kernels
