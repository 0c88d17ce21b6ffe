// Bias + activation epilogue kernels. The backward writes dz elementwise and reduces dbias in two
// deterministic passes: per 64-row block partial column sums, then one sum per column. The bf16
// forms are the same kernels with other element types at their ends (templates), so they round
// and sum exactly as the fp32 kernels followed by a cast would.
#include <cuda_bf16.h>

#include <cstdint>

#include "kernels/bias_act.h"
#include "kernels/column_sums.cuh"

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

// Four consecutive elements (16-byte fp32 / 8-byte bf16 accesses), each converted as
// load_value / store_value convert one (__floats2bfloat162_rn rounds to nearest even too).
__device__ inline void load4(const float* p, int64_t i, float (&o)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(p + i);
    o[0] = v.x;
    o[1] = v.y;
    o[2] = v.z;
    o[3] = v.w;
}
__device__ inline void load4(const __nv_bfloat16* p, int64_t i, float (&o)[4]) {
    const uint2 u = *reinterpret_cast<const uint2*>(p + i);
    const __nv_bfloat162 lo = *reinterpret_cast<const __nv_bfloat162*>(&u.x);
    const __nv_bfloat162 hi = *reinterpret_cast<const __nv_bfloat162*>(&u.y);
    o[0] = __low2float(lo);
    o[1] = __high2float(lo);
    o[2] = __low2float(hi);
    o[3] = __high2float(hi);
}
__device__ inline void store4(float* p, int64_t i, const float (&v)[4]) {
    *reinterpret_cast<float4*>(p + i) = make_float4(v[0], v[1], v[2], v[3]);
}
__device__ inline void store4(__nv_bfloat16* p, int64_t i, const float (&v)[4]) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(v[0], v[1]);
    const __nv_bfloat162 hi = __floats2bfloat162_rn(v[2], v[3]);
    uint2 u;
    u.x = *reinterpret_cast<const uint32_t*>(&lo);
    u.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(p + i) = u;
}
template <typename T>
bool aligned4(const T* p) {
    return reinterpret_cast<uintptr_t>(p) % (4 * sizeof(T)) == 0;
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

// forward_kernel four elements at a time (cols % 4 == 0, 4-element-aligned pointers): the same
// arithmetic per element, so the same bits.
template <typename Z, typename Out>
__global__ void forward4_kernel(Z* z, const float* __restrict__ bias, Out* a, int32_t rows,
                                int32_t cols, Activation act) {
    const int64_t n4 = int64_t(rows) * cols / 4;
    for (int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; q < n4;
         q += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = q * 4;
        float v[4], y[4];
        load4(z, i, v);
        if (bias) {
            float b[4];
            load4(bias, i % cols, b);
            for (int k = 0; k < 4; ++k) v[k] = held_as<Z>(v[k] + b[k]);
            store4(z, i, v);
        }
        for (int k = 0; k < 4; ++k) y[k] = act_value(v[k], act);
        store4(a, i, y);
    }
}

// grid (ceil(cols/32), ceil(rows/64)), block (32, 8). z may be null for kIdentity, dz null
// when only dbias is wanted.
template <typename In, typename Z, typename Out>
__global__ void backward_kernel(const In* da, const Z* __restrict__ z, Out* dz, float* partial,
                                int32_t rows, int32_t cols, Activation act, Out* a_out) {
    __shared__ float red[8][33];
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const int32_t r0 = blockIdx.y * kRowsPerPartial;
    const int32_t r1 = min(rows, r0 + kRowsPerPartial);
    float t = 0.0f;
    if (c < cols)
        for (int32_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = int64_t(r) * cols + c;
            const float d = load_value(da, i);
            const float zi = z != nullptr ? load_value(z, i) : 0.0f;
            // __fmul_rn: no contraction into the sum below, so every instantiation (fp32 or
            // bf16 ends, with or without dz) gives the same bits.
            const float g = z != nullptr ? __fmul_rn(d, act_derivative(zi, act)) : d;
            if (dz != nullptr) store_value(dz, i, g);
            if (a_out != nullptr) store_value(a_out, i, act_value(zi, act));
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

// backward_kernel four columns per thread (cols % 4 == 0, aligned pointers): each column's rows
// are added in the same order (r0 + y, step 8, then the 8 row sums in order), so the same bits.
// grid (ceil(cols/128), ceil(rows/64)), block (32, 8).
template <typename In, typename Z, typename Out>
__global__ void backward4_kernel(const In* da, const Z* __restrict__ z, Out* dz, float* partial,
                                 int32_t rows, int32_t cols, Activation act, Out* a_out) {
    __shared__ float red[8][4 * 32 + 1];
    const int32_t c = (blockIdx.x * 32 + threadIdx.x) * 4;
    const int32_t r0 = blockIdx.y * kRowsPerPartial;
    const int32_t r1 = min(rows, r0 + kRowsPerPartial);
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (c < cols)
        for (int32_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = int64_t(r) * cols + c;
            float d[4], g[4];
            load4(da, i, d);
            if (z != nullptr) {
                float zv[4];
                load4(z, i, zv);
                for (int k = 0; k < 4; ++k) g[k] = __fmul_rn(d[k], act_derivative(zv[k], act));
                if (a_out != nullptr) {
                    float y[4];
                    for (int k = 0; k < 4; ++k) y[k] = act_value(zv[k], act);
                    store4(a_out, i, y);
                }
            } else {
                for (int k = 0; k < 4; ++k) g[k] = d[k];
            }
            if (dz != nullptr) store4(dz, i, g);
            for (int k = 0; k < 4; ++k) t[k] += g[k];
        }
    if (partial == nullptr) return;
    for (int k = 0; k < 4; ++k) red[threadIdx.y][threadIdx.x * 4 + k] = t[k];
    __syncthreads();
    if (threadIdx.y == 0 && c < cols)
        for (int k = 0; k < 4; ++k) {
            float s = 0.0f;
            for (int y = 0; y < 8; ++y) s += red[y][threadIdx.x * 4 + k];
            partial[int64_t(blockIdx.y) * cols + c + k] = s;
        }
}

// grid ceil(cols / 32), block (32, kColumnSumRows)
__global__ void dbias_kernel(const float* partial, int32_t parts, int32_t cols, float* dbias) {
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const float s = column_sum_block(partial, parts, cols, c, cols);
    if (threadIdx.y == 0 && c < cols) dbias[c] = s;
}

template <typename Z, typename Out>
cudaError_t forward(Z* z, const float* bias, Out* a, int32_t rows, int32_t cols, Activation act,
                    cudaStream_t stream) {
    const int64_t n = int64_t(rows) * cols;
    if (n <= 0) return cudaSuccess;
    if (cols % 4 == 0 && aligned4(z) && aligned4(a) && (bias == nullptr || aligned4(bias))) {
        const int64_t blocks = (n / 4 + 255) / 256;
        forward4_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(z, bias, a, rows,
                                                                                cols, act);
        return cudaGetLastError();
    }
    const int64_t blocks = (n + 255) / 256;
    forward_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(z, bias, a, rows, cols,
                                                                           act);
    return cudaGetLastError();
}

template <typename In, typename Z, typename Out>
cudaError_t backward(const In* da, const Z* z, Out* dz, float* dbias, int32_t rows, int32_t cols,
                     Activation act, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                     Out* a_out = nullptr) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
    if (z == nullptr && (act != Activation::kIdentity || a_out != nullptr))
        return cudaErrorInvalidValue;
    float* partial = nullptr;
    const int32_t parts = (rows + kRowsPerPartial - 1) / kRowsPerPartial;
    if (dbias != nullptr) {
        if (workspace == nullptr || workspace_bytes < bias_act_backward_workspace_bytes(rows, cols))
            return cudaErrorInvalidValue;
        partial = static_cast<float*>(workspace);
    }
    if (cols % 4 == 0 && aligned4(da) && (z == nullptr || aligned4(z)) &&
        (dz == nullptr || aligned4(dz)) && (partial == nullptr || aligned4(partial)) &&
        (a_out == nullptr || aligned4(a_out)))
        backward4_kernel<<<dim3((cols + 127) / 128, parts), dim3(32, 8), 0, stream>>>(
            da, z, dz, partial, rows, cols, act, a_out);
    else
        backward_kernel<<<dim3((cols + 31) / 32, parts), dim3(32, 8), 0, stream>>>(
            da, z, dz, partial, rows, cols, act, a_out);
    if (dbias != nullptr)
        dbias_kernel<<<(cols + 31) / 32, dim3(32, kColumnSumRows), 0, stream>>>(partial, parts,
                                                                                cols, dbias);
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
                                          cudaStream_t stream, void* a16) {
    if (da == nullptr || (dz16 == nullptr && dbias == nullptr)) return cudaErrorInvalidValue;
    using bf16 = __nv_bfloat16;
    auto* out = static_cast<bf16*>(dz16);
    auto* a_out = static_cast<bf16*>(a16);
    auto run = [&](auto* d) {
        if (z_bf16)
            return backward(d, static_cast<const bf16*>(z), out, dbias, rows, cols, act, workspace,
                            workspace_bytes, stream, a_out);
        return backward(d, static_cast<const float*>(z), out, dbias, rows, cols, act, workspace,
                        workspace_bytes, stream, a_out);
    };
    if (da_bf16) return run(static_cast<const bf16*>(da));
    return run(static_cast<const float*>(da));
}

}  // namespace esper::kernels
