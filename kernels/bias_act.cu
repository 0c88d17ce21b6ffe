// Bias + activation epilogue kernels. The backward writes dz elementwise and reduces dbias in two
// deterministic passes: per 64-row block partial column sums, then one sum per column. The bf16
// forms are the same kernels with other element types at their ends (templates), so they round
// and sum exactly as the fp32 kernels followed by a cast would.
#include <cuda_bf16.h>

#include "kernels/bias_act.h"

namespace esper::kernels {

namespace {

constexpr int kRowsPerPartial = 64;
constexpr float kGeluC = 0.7978845608028654f;
constexpr float kGeluK = 0.044715f;

__device__ inline float act_value(float z, Activation act) {
    if (act == Activation::kRelu) return z > 0.0f ? z : 0.0f;
    if (act == Activation::kGeluTanh)
        return 0.5f * z * (1.0f + tanhf(kGeluC * (z + kGeluK * z * z * z)));
    return z;
}

__device__ inline float act_derivative(float z, Activation act) {
    if (act == Activation::kRelu) return z > 0.0f ? 1.0f : 0.0f;
    if (act == Activation::kGeluTanh) {
        const float t = tanhf(kGeluC * (z + kGeluK * z * z * z));
        return 0.5f * (1.0f + t) +
               0.5f * z * (1.0f - t * t) * kGeluC * (1.0f + 3.0f * kGeluK * z * z);
    }
    return 1.0f;
}

__device__ inline float load_value(const float* p, int64_t i) { return p[i]; }
__device__ inline float load_value(const __nv_bfloat16* p, int64_t i) {
    return __bfloat162float(p[i]);
}
__device__ inline void store_value(float* p, int64_t i, float v) { p[i] = v; }
__device__ inline void store_value(__nv_bfloat16* p, int64_t i, float v) {
    p[i] = __float2bfloat16(v);
}
// v as a T holds it: itself for float, rounded to the nearest bf16 for bf16.
template <typename T>
__device__ inline float held_as(float v) {
    if constexpr (sizeof(T) == 2) return __bfloat162float(__float2bfloat16(v));
    return v;
}

// The activation reads z as stored (a bf16 z: after its rounding), as the backward will.
template <typename Z, typename Out>
__global__ void forward_kernel(Z* z, const float* __restrict__ bias, Out* a, int32_t rows,
                               int32_t cols, Activation act) {
    const int64_t n = int64_t(rows) * cols;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        float v = load_value(z, i);
        if (bias) {
            v = held_as<Z>(v + bias[i % cols]);
            store_value(z, i, v);
        }
        store_value(a, i, act_value(v, act));
    }
}

// grid (ceil(cols/32), ceil(rows/64)), block (32, 8). z may be null for kIdentity, dz null
// when only dbias is wanted.
template <typename In, typename Z, typename Out>
__global__ void backward_kernel(const In* da, const Z* __restrict__ z, Out* dz, float* partial,
                                int32_t rows, int32_t cols, Activation act) {
    __shared__ float red[8][33];
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const int32_t r0 = blockIdx.y * kRowsPerPartial;
    const int32_t r1 = min(rows, r0 + kRowsPerPartial);
    float t = 0.0f;
    if (c < cols)
        for (int32_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = int64_t(r) * cols + c;
            const float d = load_value(da, i);
            // __fmul_rn: no contraction into the sum below, so every instantiation (fp32 or
            // bf16 ends, with or without dz) gives the same bits.
            const float g = z != nullptr ? __fmul_rn(d, act_derivative(load_value(z, i), act)) : d;
            if (dz != nullptr) store_value(dz, i, g);
            t += g;
        }
    if (partial == nullptr) return;
    red[threadIdx.y][threadIdx.x] = t;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float s = 0.0f;
        for (int k = 0; k < 8; ++k) s += red[k][threadIdx.x];
        partial[int64_t(blockIdx.y) * cols + c] = s;
    }
}

__global__ void dbias_kernel(const float* partial, int32_t parts, int32_t cols, float* dbias) {
    const int32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int32_t p = 0; p < parts; ++p) s += partial[int64_t(p) * cols + c];
    dbias[c] = s;
}

template <typename Z, typename Out>
cudaError_t forward(Z* z, const float* bias, Out* a, int32_t rows, int32_t cols, Activation act,
                    cudaStream_t stream) {
    const int64_t n = int64_t(rows) * cols;
    if (n <= 0) return cudaSuccess;
    const int64_t blocks = (n + 255) / 256;
    forward_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(z, bias, a, rows, cols,
                                                                           act);
    return cudaGetLastError();
}

template <typename In, typename Z, typename Out>
cudaError_t backward(const In* da, const Z* z, Out* dz, float* dbias, int32_t rows, int32_t cols,
                     Activation act, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (z == nullptr && act != Activation::kIdentity) return cudaErrorInvalidValue;
    float* partial = nullptr;
    const int32_t parts = (rows + kRowsPerPartial - 1) / kRowsPerPartial;
    if (dbias != nullptr) {
        if (workspace == nullptr || workspace_bytes < bias_act_backward_workspace_bytes(rows, cols))
            return cudaErrorInvalidValue;
        partial = static_cast<float*>(workspace);
    }
    backward_kernel<<<dim3((cols + 31) / 32, parts), dim3(32, 8), 0, stream>>>(da, z, dz, partial,
                                                                               rows, cols, act);
    if (dbias != nullptr)
        dbias_kernel<<<(cols + 255) / 256, 256, 0, stream>>>(partial, parts, cols, dbias);
    return cudaGetLastError();
}

}  // namespace

cudaError_t launch_bias_act_forward(float* z, const float* bias, float* a, int32_t rows,
                                    int32_t cols, Activation act, cudaStream_t stream) {
    return forward(z, bias, a, rows, cols, act, stream);
}

cudaError_t launch_bias_act_forward_bf16(void* z, bool z_bf16, const float* bias, void* a16,
                                         int32_t rows, int32_t cols, Activation act,
                                         cudaStream_t stream) {
    auto* out = static_cast<__nv_bfloat16*>(a16);
    if (z_bf16) return forward(static_cast<__nv_bfloat16*>(z), bias, out, rows, cols, act, stream);
    return forward(static_cast<float*>(z), bias, out, rows, cols, act, stream);
}

size_t bias_act_backward_workspace_bytes(int32_t rows, int32_t cols) {
    return size_t((rows + kRowsPerPartial - 1) / kRowsPerPartial) * size_t(cols) * sizeof(float);
}

cudaError_t launch_bias_act_backward(const float* da, const float* z, float* dz, float* dbias,
                                     int32_t rows, int32_t cols, Activation act, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream) {
    if (z == nullptr || dz == nullptr) return cudaErrorInvalidValue;
    return backward(da, z, dz, dbias, rows, cols, act, workspace, workspace_bytes, stream);
}

cudaError_t launch_bias_act_backward_bf16(const void* da, bool da_bf16, const void* z, bool z_bf16,
                                          void* dz16, float* dbias, int32_t rows, int32_t cols,
                                          Activation act, void* workspace, size_t workspace_bytes,
                                          cudaStream_t stream) {
    if (da == nullptr || (dz16 == nullptr && dbias == nullptr)) return cudaErrorInvalidValue;
    using bf16 = __nv_bfloat16;
    auto* out = static_cast<bf16*>(dz16);
    auto run = [&](auto* d) {
        if (z_bf16)
            return backward(d, static_cast<const bf16*>(z), out, dbias, rows, cols, act, workspace,
                            workspace_bytes, stream);
        return backward(d, static_cast<const float*>(z), out, dbias, rows, cols, act, workspace,
                        workspace_bytes, stream);
    };
    if (da_bf16) return run(static_cast<const bf16*>(da));
    return run(static_cast<const float*>(da));
}

}  // namespace esper::kernels
