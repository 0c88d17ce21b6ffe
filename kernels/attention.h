// Causal multi-head scaled-dot-product attention (the transformer host's attention core, DESIGN
// §14). Row (b, t) of q, k, v and out holds `heads` vectors of `head_dim` floats; rows are `ld`
// floats apart, so q, k and v can point into one packed qkv buffer [B, T, 3·H·D] (ld = 3·H·D,
// offsets 0, H·D, 2·H·D). Query t attends to keys 0..t. The forward saves the log-sum-exp of
// every softmax row, so the backward recomputes the probabilities instead of storing a T×T
// matrix (O(T) memory, as the fused GPU kernels do).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

struct AttentionShape {
    int32_t batch = 0;     // B
    int32_t seq = 0;       // T
    int32_t heads = 0;     // H
    int32_t head_dim = 0;  // D
    int64_t ld_qkv = 0;    // floats between rows (b, t) and (b, t + 1) of q, k, v, dq, dk, dv
    int64_t ld_out = 0;    // floats between rows of out and dout
    float scale = 0.0f;    // softmax(q·kᵀ·scale); usually 1/√D
};

// out: [B, T] rows of H·D; lse: [B, H, T] log-sum-exp of each scaled score row.
void attention_forward_reference(const AttentionShape& s, const float* q, const float* k,
                                 const float* v, float* out, float* lse);
// Given the forward's inputs, out, lse and dout = ∂L/∂out: writes dq, dk, dv (overwritten; same
// layout as q, k, v, so they may point into one packed dqkv buffer).
void attention_backward_reference(const AttentionShape& s, const float* q, const float* k,
                                  const float* v, const float* out, const float* dout,
                                  const float* lse, float* dq, float* dk, float* dv);

#if ESPER_HAVE_CUDA
// Element type of q, k, v, out, dout, dq, dk, dv on the device; lse and the workspace are fp32.
// The own kernels (kernels/attention.cu, FlashAttention-2 style) always multiply on bf16 tensor
// cores with fp32 accumulation and fp32 softmax statistics: fp32 inputs are rounded to bf16 as
// they are loaded, so kFloat32 saves the caller a conversion pass, not precision.
enum class AttentionDtype : uint8_t { kFloat32 = 0, kBfloat16 = 1 };

// Which implementation runs. kOwn: the kernels in attention.cu. kCudnn: cuDNN's fused
// flash-attention engines (kernels/attention_cudnn.*; bf16 only, loaded at run time), or
// cudaErrorNotSupported when cuDNN is absent, has no engine for the shape, or the plan for a new
// shape would have to be built inside a stream capture. kAuto: cuDNN for bf16 from
// kAttentionCudnnMinSeq positions up when it can run, otherwise the own kernels — the faster of
// the two at the shapes measured in docs/benchmarks.md ("Transformer on CUDA": cuDNN's fused
// attention behind the launcher).
enum class AttentionBackend : uint8_t { kAuto = 0, kOwn = 1, kCudnn = 2 };
inline constexpr int32_t kAttentionCudnnMinSeq = 128;
// Whether cuDNN could be loaded, and a line saying which one (or why not, and the last failure).
bool attention_cudnn_available();
std::string attention_cudnn_status();

// Device pointers, same layout and contracts as the references. head_dim must be 32, 64 or 128,
// ld_qkv and ld_out multiples of 8 and every pointer 16-byte aligned; otherwise (and for an empty
// shape) the launchers return cudaErrorInvalidValue without launching. O(T) memory: nothing of
// size T×T is stored. The own backward is deterministic (no atomics); cuDNN's accumulates dQ
// with atomics, so its bits may differ from run to run.
[[nodiscard]] cudaError_t launch_attention_forward(
    const AttentionShape& s, AttentionDtype dtype, const void* q, const void* k, const void* v,
    void* out, float* lse, cudaStream_t stream, AttentionBackend backend = AttentionBackend::kAuto);
// Workspace: attention_backward_workspace_bytes(s) bytes of device memory (Δ = dO·O per row).
// cuDNN's own workspace and fp32 dQ accumulator are allocated once per shape and kept.
size_t attention_backward_workspace_bytes(const AttentionShape& s);
[[nodiscard]] cudaError_t launch_attention_backward(
    const AttentionShape& s, AttentionDtype dtype, const void* q, const void* k, const void* v,
    const void* out, const void* dout, const float* lse, void* dq, void* dk, void* dv,
    void* workspace, size_t workspace_bytes, cudaStream_t stream,
    AttentionBackend backend = AttentionBackend::kAuto);
#endif

}  // namespace esper::kernels
