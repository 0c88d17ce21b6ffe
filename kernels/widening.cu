// CUDA launchers of the widening blueprints' elementwise pieces (see widening.h). The tensors are
// small next to the GEMMs around them ([batch, w] and [batch, hidden]), so the column sums use
// one thread per column looping over the rows: coalesced across a warp, no atomics, a fixed
// order; the contribution is reduced in one block.
#include <cuda_runtime.h>

#include "kernels/widening.h"

namespace esper::kernels {

namespace {

constexpr int kThreads = 256;

__device__ inline SeedStage stage_at(const WideningSeedRef& s) {
    return static_cast<SeedStage>(s.stage[s.seed]);
}

__global__ void output_forward_kernel(WideningSeedRef s, const float* __restrict__ b2,
                                      float* __restrict__ r, float* __restrict__ y, int32_t rows,
                                      int32_t w, int32_t ld_y, int32_t c0) {
    const float a_fwd = stage_forward_alpha(stage_at(s), s.alpha[s.seed]);
    const int64_t n = int64_t(rows) * w;
    for (int64_t k = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; k < n;
         k += int64_t(gridDim.x) * blockDim.x) {
        const int32_t b = int32_t(k / w), i = int32_t(k % w);
        const float v = r[k] + b2[i];
        r[k] = v;
        if (a_fwd != 0.0f) y[int64_t(b) * ld_y + c0 + i] += a_fwd * v;
    }
}

// One block: thread t owns columns t, t + blockDim, ...
__global__ void output_backward_kernel(WideningSeedRef s, const float* __restrict__ dy,
                                       int32_t ld_dy, int32_t c0, const float* __restrict__ r,
                                       int32_t rows, int32_t w, float* __restrict__ g,
                                       float* __restrict__ gs, float* __restrict__ db2,
                                       double* __restrict__ contribution) {
    __shared__ double partial[kThreads];
    const SeedStage stage = stage_at(s);
    const float alpha = s.alpha[s.seed];
    const float a_fwd = stage_forward_alpha(stage, alpha);
    const float g_scale = stage_blueprint_grad_scale(stage, alpha);
    double c = 0.0;
    for (int32_t i = int32_t(threadIdx.x); i < w; i += int32_t(blockDim.x)) {
        float col = 0.0f;
        for (int32_t b = 0; b < rows; ++b) {
            const float v = dy[int64_t(b) * ld_dy + c0 + i];
            const int64_t k = int64_t(b) * w + i;
            g[k] = v;
            const float vs = g_scale * v;
            if (gs != nullptr) gs[k] = vs;
            col += vs;
            c -= double(v) * a_fwd * r[k];
        }
        if (db2 != nullptr) db2[i] += col;
    }
    partial[threadIdx.x] = c;
    __syncthreads();
    for (int stride = int(blockDim.x) / 2; stride > 0; stride >>= 1) {
        if (int(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0 && contribution != nullptr && a_fwd != 0.0f) *contribution += partial[0];
}

__global__ void hidden_backward_kernel(WideningSeedRef s, bool relu, const float* __restrict__ da,
                                       const float* __restrict__ z, int32_t rows, int32_t hidden,
                                       float* __restrict__ dzs, float* __restrict__ db1,
                                       float* __restrict__ dzi) {
    const int32_t j = int32_t(blockIdx.x * blockDim.x + threadIdx.x);
    if (j >= hidden) return;
    const SeedStage stage = stage_at(s);
    const float alpha = s.alpha[s.seed];
    const float g_scale = stage_blueprint_grad_scale(stage, alpha);
    const float a_in = stage_input_grad_alpha(stage, alpha);
    float col = 0.0f;
    for (int32_t b = 0; b < rows; ++b) {
        const int64_t k = int64_t(b) * hidden + j;
        const float d = relu && !(z[k] > 0.0f) ? 0.0f : da[k];
        const float ds = g_scale * d;
        if (dzs != nullptr) dzs[k] = ds;
        if (dzi != nullptr) dzi[k] = a_in * d;
        col += ds;
    }
    if (db1 != nullptr && dzs != nullptr) db1[j] += col;
}

bool valid(const WideningSeedRef& s, int32_t rows, int32_t cols) {
    return s.stage != nullptr && s.alpha != nullptr && s.seed >= 0 && rows >= 0 && cols >= 0;
}

}  // namespace

cudaError_t launch_widening_output_forward(WideningSeedRef s, const float* b2, float* r, float* y,
                                           int32_t rows, int32_t w, int32_t ld_y, int32_t c0,
                                           cudaStream_t stream) {
    if (!valid(s, rows, w) || b2 == nullptr || r == nullptr || y == nullptr || c0 < 0 ||
        c0 + w > ld_y)
        return cudaErrorInvalidValue;
    const int64_t n = int64_t(rows) * w;
    if (n == 0) return cudaSuccess;
    const int64_t want = (n + kThreads - 1) / kThreads;
    const int blocks = int(want < 1024 ? want : 1024);
    output_forward_kernel<<<blocks, kThreads, 0, stream>>>(s, b2, r, y, rows, w, ld_y, c0);
    return cudaGetLastError();
}

cudaError_t launch_widening_output_backward(WideningSeedRef s, const float* dy, int32_t ld_dy,
                                            int32_t c0, const float* r, int32_t rows, int32_t w,
                                            float* g, float* gs, float* db2, double* contribution,
                                            cudaStream_t stream) {
    if (!valid(s, rows, w) || dy == nullptr || r == nullptr || g == nullptr || c0 < 0 ||
        c0 + w > ld_dy)
        return cudaErrorInvalidValue;
    if (w == 0) return cudaSuccess;
    output_backward_kernel<<<1, kThreads, 0, stream>>>(s, dy, ld_dy, c0, r, rows, w, g, gs, db2,
                                                       contribution);
    return cudaGetLastError();
}

cudaError_t launch_widening_hidden_backward(WideningSeedRef s, BlueprintKind kind, const float* da,
                                            const float* z, int32_t rows, int32_t hidden,
                                            float* dzs, float* db1, float* dzi,
                                            cudaStream_t stream) {
    if (!valid(s, rows, hidden) || da == nullptr || z == nullptr ||
        (db1 != nullptr && dzs == nullptr))
        return cudaErrorInvalidValue;
    if (hidden == 0) return cudaSuccess;
    const int blocks = (hidden + kThreads - 1) / kThreads;
    hidden_backward_kernel<<<blocks, kThreads, 0, stream>>>(s, kind == BlueprintKind::kResidualMlp,
                                                            da, z, rows, hidden, dzs, db1, dzi);
    return cudaGetLastError();
}

}  // namespace esper::kernels
