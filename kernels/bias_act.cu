// Bias + activation epilogue kernels. The backward writes dz elementwise and reduces dbias in two
// deterministic passes: per 64-row block partial column sums, then one sum per column.
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

__global__ void forward_kernel(float* z, const float* __restrict__ bias, float* a, int32_t rows,
                               int32_t cols, Activation act) {
    const int64_t n = int64_t(rows) * cols;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        float v = z[i];
        if (bias) {
            v += bias[i % cols];
            z[i] = v;
        }
        a[i] = act_value(v, act);
    }
}

// grid (ceil(cols/32), ceil(rows/64)), block (32, 8)
__global__ void backward_kernel(const float* da, const float* __restrict__ z, float* dz,
                                float* partial, int32_t rows, int32_t cols, Activation act) {
    __shared__ float red[8][33];
    const int32_t c = blockIdx.x * 32 + threadIdx.x;
    const int32_t r0 = blockIdx.y * kRowsPerPartial;
    const int32_t r1 = min(rows, r0 + kRowsPerPartial);
    float t = 0.0f;
    if (c < cols)
        for (int32_t r = r0 + threadIdx.y; r < r1; r += 8) {
            const int64_t i = int64_t(r) * cols + c;
            const float g = da[i] * act_derivative(z[i], act);
            dz[i] = g;
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

}  // namespace

cudaError_t launch_bias_act_forward(float* z, const float* bias, float* a, int32_t rows,
                                    int32_t cols, Activation act, cudaStream_t stream) {
    const int64_t n = int64_t(rows) * cols;
    if (n <= 0) return cudaSuccess;
    const int64_t blocks = (n + 255) / 256;
    forward_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(z, bias, a, rows, cols,
                                                                           act);
    return cudaGetLastError();
}

size_t bias_act_backward_workspace_bytes(int32_t rows, int32_t cols) {
    return size_t((rows + kRowsPerPartial - 1) / kRowsPerPartial) * size_t(cols) * sizeof(float);
}

cudaError_t launch_bias_act_backward(const float* da, const float* z, float* dz, float* dbias,
                                     int32_t rows, int32_t cols, Activation act, void* workspace,
                                     size_t workspace_bytes, cudaStream_t stream) {
    if (rows <= 0 || cols <= 0) return cudaSuccess;
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

}  // namespace esper::kernels
