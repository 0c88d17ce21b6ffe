// Fused SGD-momentum and AdamW steps: one elementwise pass over params/grads/state, with the
// hyper-parameters read from device memory so a captured graph follows lr schedules.
#include "kernels/optimizer.h"

namespace esper::kernels {

namespace {

__global__ void sgd_kernel(float* __restrict__ p, const float* __restrict__ g,
                           float* __restrict__ buf, int64_t n, const SgdHyper* hyper) {
    const SgdHyper hp = *hyper;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float pi = p[i];
        const float gi = g[i] + hp.weight_decay * pi;
        const float b = hp.momentum * buf[i] + gi;
        buf[i] = b;
        p[i] = pi - hp.lr * b;
    }
}

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g,
                             float* __restrict__ m, float* __restrict__ v, int64_t n,
                             const AdamwHyper* hyper) {
    const AdamwHyper hp = *hyper;
    const double bc1 = 1.0 - pow(double(hp.beta1), double(hp.step));
    const double bc2 = 1.0 - pow(double(hp.beta2), double(hp.step));
    const float step_size = float(hp.lr / bc1);
    const float bc2_sqrt = float(sqrt(bc2));
    const float decay = 1.0f - hp.lr * hp.weight_decay;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float gi = g[i];
        const float mi = hp.beta1 * m[i] + (1.0f - hp.beta1) * gi;
        const float vi = hp.beta2 * v[i] + (1.0f - hp.beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + hp.eps);
    }
}

// grid (chunks, count): blockIdx.y picks the tensor, x strides over it.
__global__ void adamw_multi_kernel(const AdamwTensor* __restrict__ tensors,
                                   const AdamwHyper* hyper) {
    const AdamwHyper hp = *hyper;
    const AdamwTensor t = tensors[blockIdx.y];
    const double bc1 = 1.0 - pow(double(hp.beta1), double(hp.step));
    const double bc2 = 1.0 - pow(double(hp.beta2), double(hp.step));
    const float step_size = float(hp.lr / bc1);
    const float bc2_sqrt = float(sqrt(bc2));
    const float decay = 1.0f - hp.lr * hp.weight_decay;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < t.n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const float gi = t.grads[i];
        const float mi = hp.beta1 * t.m[i] + (1.0f - hp.beta1) * gi;
        const float vi = hp.beta2 * t.v[i] + (1.0f - hp.beta2) * gi * gi;
        t.m[i] = mi;
        t.v[i] = vi;
        t.params[i] = t.params[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + hp.eps);
    }
}

int grid_for(int64_t n) {
    const int64_t blocks = (n + 255) / 256;
    return int(blocks < 8192 ? (blocks < 1 ? 1 : blocks) : 8192);
}

}  // namespace

cudaError_t launch_adamw_multi_step(const AdamwTensor* tensors, int32_t count, int64_t max_n,
                                    const AdamwHyper* hyper, cudaStream_t stream) {
    if (count <= 0 || max_n <= 0) return cudaSuccess;
    if (count > 65535) return cudaErrorInvalidValue;
    const int64_t chunks = (max_n + 1023) / 1024;
    adamw_multi_kernel<<<dim3(unsigned(chunks < 1024 ? chunks : 1024), unsigned(count)), 256, 0,
                         stream>>>(tensors, hyper);
    return cudaGetLastError();
}

cudaError_t launch_sgd_momentum_step(float* params, const float* grads, float* momentum_buf,
                                     int64_t n, const SgdHyper* hyper, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    sgd_kernel<<<grid_for(n), 256, 0, stream>>>(params, grads, momentum_buf, n, hyper);
    return cudaGetLastError();
}

cudaError_t launch_adamw_step(float* params, const float* grads, float* m, float* v, int64_t n,
                              const AdamwHyper* hyper, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    adamw_kernel<<<grid_for(n), 256, 0, stream>>>(params, grads, m, v, n, hyper);
    return cudaGetLastError();
}

}  // namespace esper::kernels
