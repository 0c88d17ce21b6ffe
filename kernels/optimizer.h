// Fused optimizer steps over flat float buffers (host parameters and blueprint arenas alike),
// PyTorch semantics: SGD adds weight decay to the gradient (no dampening, no Nesterov) and keeps
// a momentum buffer that starts at zero; AdamW decays decoupled and bias-corrects with `step` ≥ 1.
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// ---- CPU references (kernels/optimizer_reference.cpp) ----
// params, grads, momentum_buf: [n]
void sgd_momentum_step_reference(float* params, const float* grads, float* momentum_buf, int64_t n,
                                 float lr, float momentum, float weight_decay);
// params, grads, m, v: [n]; step is the 1-based index of this update (bias correction)
void adamw_step_reference(float* params, const float* grads, float* m, float* v, int64_t n,
                          float lr, float beta1, float beta2, float eps, float weight_decay,
                          int64_t step);

#if ESPER_HAVE_CUDA
// Hyper-parameters read from device memory at run time, so one captured CUDA graph keeps working
// while the owner updates lr / step (e.g. cudaMemcpyAsync from pinned memory before replay).
struct SgdHyper {
    float lr;
    float momentum;
    float weight_decay;
};
struct AdamwHyper {
    float lr;
    float beta1;
    float beta2;
    float eps;
    float weight_decay;
    int32_t step;  // 1-based
};
// All pointers device memory; buffers [n]; hyper: one struct in device memory.
[[nodiscard]] cudaError_t launch_sgd_momentum_step(float* params, const float* grads,
                                                   float* momentum_buf, int64_t n,
                                                   const SgdHyper* hyper, cudaStream_t stream);
[[nodiscard]] cudaError_t launch_adamw_step(float* params, const float* grads, float* m, float* v,
                                            int64_t n, const AdamwHyper* hyper,
                                            cudaStream_t stream);

// One tensor of a multi-tensor AdamW step (device pointers; n floats each).
struct AdamwTensor {
    float* params;
    const float* grads;
    float* m;
    float* v;
    int64_t n;
};
// AdamW over every tensor of `tensors` (a device array of `count` entries, uploaded once by the
// owner so a captured graph keeps it) in one launch: the same math as launch_adamw_step, one
// hyper-parameter struct for all. max_n: the largest n (sizes the grid).
[[nodiscard]] cudaError_t launch_adamw_multi_step(const AdamwTensor* tensors, int32_t count,
                                                  int64_t max_n, const AdamwHyper* hyper,
                                                  cudaStream_t stream);
#endif

}  // namespace esper::kernels
