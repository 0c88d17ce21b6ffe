// cuDNN's fused scaled-dot-product attention behind the attention launchers (kernels/attention.h),
// internal to esper::kernels. cuDNN is loaded at run time (dlopen of libcudnn.so.9 from the
// toolkit or the node), never linked: a machine without it runs the own kernels. The graph is the
// causal flash-attention pattern cuDNN's runtime-compiled engines recognise (Q·Kᵀ, scale, causal
// select, softmax with stats, ·V; its backward with the fp32 dQ accumulator); one execution plan
// per shape, built on first use outside a stream capture and cached for the process.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

#include "kernels/attention.h"

namespace esper::kernels::detail {

// cudaSuccess when cuDNN ran; cudaErrorNotSupported when it cannot run this call (cuDNN not
// loadable, no engine for the shape, or no plan yet while `stream` is capturing) so the caller
// can use the own kernel; another error when the launch itself failed. bf16 tensors only.
cudaError_t cudnn_attention_forward(const AttentionShape& s, const void* q, const void* k,
                                    const void* v, void* out, float* lse, cudaStream_t stream);
// softmax_sum: B·H·T floats of device memory (the caller's attention workspace).
cudaError_t cudnn_attention_backward(const AttentionShape& s, const void* q, const void* k,
                                     const void* v, const void* out, const void* dout,
                                     const float* lse, void* dq, void* dk, void* dv,
                                     float* softmax_sum, cudaStream_t stream);
bool cudnn_attention_loadable();
std::string cudnn_attention_status();

}  // namespace esper::kernels::detail
