// LayerNorm forward and backward on the GPU: one warp per row with fp32 statistics (two passes
// over the row: mean, then the centred variance), dγ/dβ without atomics in two deterministic
// passes (per 64-row block partial column sums, then one sum per column).
#include <cuda_bf16.h>

#include "kernels/column_sums.cuh"
#include "kernels/layernorm.h"

namespace esper::kernels {

namespace {

constexpr int kRowsPerPartial = 64;

__global__ void ln_forward_kernel(const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float* y, __nv_bfloat16* y16,
                                  float* mean, float* rstd, int32_t rows, int32_t cols, float eps) {
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* xr = x + r * cols;
    float s = 0.0f;
    for (int c = lane; c < cols; c += 32) s += xr[c];
    for (int d = 16; d > 0; d >>= 1) s += __shfl_xor_sync(0xffffffffu, s, d);
    const float m = s / float(cols);
    float v = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        const float d = xr[c] - m;
        v += d * d;
    }
    for (int d = 16; d > 0; d >>= 1) v += __shfl_xor_sync(0xffffffffu, v, d);
    const float rs = rsqrtf(v / float(cols) + eps);
    for (int c = lane; c < cols; c += 32) {
        const float out = (xr[c] - m) * rs * gamma[c] + beta[c];
        if (y) y[r * cols + c] = out;
        if (y16) y16[r * cols + c] = __float2bfloat16(out);
    }
    if (lane == 0) {
        mean[r] = m;
        rstd[r] = rs;
    }
}

__global__ void ln_backward_dx_kernel(const float* __restrict__ dy, const float* __restrict__ x,
                                      const float* __restrict__ gamma,
                                      const float* __restrict__ mean,
                                      const float* __restrict__ rstd, float* dx, int32_t rows,
                                      int32_t cols, bool accumulate) {
    const int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    const float m = mean[r], s = rstd[r];
    float gm = 0.0f, gxm = 0.0f;
    for (int c = lane; c < cols; c += 32) {
        const float g = dyr[c] * gamma[c];
        gm += g;
        gxm += g * (xr[c] - m) * s;
    }
    for (int d = 16; d > 0; d >>= 1) {
        gm += __shfl_xor_sync(0xffffffffu, gm, d);
        gxm += __shfl_xor_sync(0xffffffffu, gxm, d);
    }
    gm /= float(cols);
    gxm /= float(cols);
    for (int c = lane; c < cols; c += 32) {
        const float xhat = (xr[c] - m) * s;
        const float v = s * (dyr[c] * gamma[c] - gm - xhat * gxm);
        dx[r * cols + c] = accumulate ? dx[r * cols + c] + v : v;
    }
}

// grid (ceil(cols/32), ceil(rows/64)), block (32, 8): partial[part][0|1][c].
__global__ void ln_backward_partial_kernel(const float* __restrict__ dy,
                                           const float* __restrict__ x,
                                           const float* __restrict__ mean,
                                           const float* __restrict__ rstd, float* partial,
                                           int32_t rows, int32_t cols) {
    __shared__ float red_g[8][33], red_b[8][33];
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const int32_t r0 = blockIdx.y * kRowsPerPartial;
    const int32_t r1 = min(rows, r0 + kRowsPerPartial);
    float tg = 0.0f, tb = 0.0f;
    if (c < cols)
        for (int32_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = int64_t(r) * cols + c;
            tg += dy[i] * (x[i] - mean[r]) * rstd[r];
            tb += dy[i];
        }
    red_g[threadIdx.y][threadIdx.x] = tg;
    red_b[threadIdx.y][threadIdx.x] = tb;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float sg = 0.0f, sb = 0.0f;
        for (int k = 0; k < 8; ++k) {
            sg += red_g[k][threadIdx.x];
            sb += red_b[k][threadIdx.x];
        }
        partial[(int64_t(blockIdx.y) * 2) * cols + c] = sg;
        partial[(int64_t(blockIdx.y) * 2 + 1) * cols + c] = sb;
    }
}

// grid ceil(cols / 32), block (32, kColumnSumRows)
__global__ void ln_backward_reduce_kernel(const float* partial, int32_t parts, int32_t cols,
                                          float* dgamma, float* dbeta) {
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const float sg = column_sum_block(partial, parts, 2 * int64_t(cols), c, cols);
    const float sb = column_sum_block(partial + cols, parts, 2 * int64_t(cols), c, cols);
    if (threadIdx.y == 0 && c < cols) {
        dgamma[c] += sg;
        dbeta[c] += sb;
    }
}

int warp_grid(int32_t rows) { return int((int64_t(rows) * 32 + 255) / 256); }

}  // namespace

cudaError_t launch_layernorm_forward(const float* x, const float* gamma, const float* beta,
                                     float* y, void* y_bf16, float* mean, float* rstd, int32_t rows,
                                     int32_t cols, float eps, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0 || (y == nullptr && y_bf16 == nullptr)) return cudaErrorInvalidValue;
    ln_forward_kernel<<<warp_grid(rows), 256, 0, stream>>>(
        x, gamma, beta, y, static_cast<__nv_bfloat16*>(y_bf16), mean, rstd, rows, cols, eps);
    return cudaGetLastError();
}

size_t layernorm_backward_workspace_bytes(int32_t rows, int32_t cols) {
    const int64_t parts = (int64_t(rows) + kRowsPerPartial - 1) / kRowsPerPartial;
    return size_t(parts) * 2 * size_t(cols) * sizeof(float);
}

cudaError_t launch_layernorm_backward(const float* dy, const float* x, const float* gamma,
                                      const float* mean, const float* rstd, float* dx,
                                      float* dgamma, float* dbeta, int32_t rows, int32_t cols,
                                      bool accumulate_dx, void* workspace, size_t workspace_bytes,
                                      cudaStream_t stream) {
    if (rows <= 0 || cols <= 0 || workspace == nullptr ||
        workspace_bytes < layernorm_backward_workspace_bytes(rows, cols))
        return cudaErrorInvalidValue;
    ln_backward_dx_kernel<<<warp_grid(rows), 256, 0, stream>>>(dy, x, gamma, mean, rstd, dx, rows,
                                                               cols, accumulate_dx);
    const int32_t parts = (rows + kRowsPerPartial - 1) / kRowsPerPartial;
    float* partial = static_cast<float*>(workspace);
    ln_backward_partial_kernel<<<dim3((cols + 31) / 32, parts), dim3(32, 8), 0, stream>>>(
        dy, x, mean, rstd, partial, rows, cols);
    ln_backward_reduce_kernel<<<(cols + 31) / 32, dim3(32, kColumnSumRows), 0, stream>>>(
        partial, parts, cols, dgamma, dbeta);
    return cudaGetLastError();
}

}  // namespace esper::kernels
