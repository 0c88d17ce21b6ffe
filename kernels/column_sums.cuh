// The second pass of the deterministic column reductions (bias and LayerNorm gradients): per
// column c, the sum over p < parts of partial[p · stride + c], in a fixed order — thread row y of
// a (32, kColumnSumRows) block adds p = y, y + kColumnSumRows, ...; then row 0 adds the rows'
// sums in order. One block per 32 columns, so a narrow layer's few columns still spread over
// kColumnSumRows · 32 threads (one thread per column summed all parts one load at a time before).
#pragma once

#include <cstdint>

namespace esper::kernels {

constexpr int kColumnSumRows = 32;

// Call from every thread of the block (it synchronizes); the result is valid in threadIdx.y == 0.
__device__ inline float column_sum_block(const float* partial, int32_t parts, int64_t stride,
                                         int32_t c, int32_t cols) {
    __shared__ float red[kColumnSumRows][33];
    float s = 0.0f;
    if (c < cols)
        for (int32_t p = threadIdx.y; p < parts; p += kColumnSumRows)
            s += partial[int64_t(p) * stride + c];
    red[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    float t = 0.0f;
    if (threadIdx.y == 0)
        for (int k = 0; k < kColumnSumRows; ++k) t += red[k][threadIdx.x];
    __syncthreads();  // red is reused by the block's next call
    return t;
}

}  // namespace esper::kernels
