// Generation on the GPU (esper generate --device cuda, DESIGN §14, issue 13 item 4): the
// transformer host of a checkpoint — with its folded units and heads, merged into wider qkv/proj
// and fc/fc2 matrices — uploaded once in bf16 (LayerNorm parameters, biases and embeddings in
// fp32), a bf16 KV cache for `batch` sequences on the device, a prefill of the window, then one
// decode step per byte replayed from a CUDA graph (positions and the step counter live on the
// device; the graph is captured again only for another batch, pick or output buffer). The next
// byte is picked on the device; only the picked bytes and their log-probabilities come back,
// written by the pick kernel into mapped pinned memory. Same window rule as the CPU generator.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kasmina/model/transformer.h"
#include "kasmina/train/generate.h"

namespace esper::kasmina {

// Timing and traffic of the last CudaDecoder::generate (the benchmark's figures).
struct CudaDecodeStats {
    int64_t decode_steps = 0;    // graph replays (each gives `batch` bytes)
    double prefill_s = 0.0;      // the first prefill and its pick
    double decode_s = 0.0;       // everything after it, to the last byte on the host
    int64_t weight_bytes = 0;    // device bytes of the host's parameters read by one step
    double kv_bytes_read = 0.0;  // KV-cache bytes the decode steps' attention read, summed
};

// Why the GPU decoder cannot run this host ("" when it can): a head size the decode attention
// does not take (> 128 or not a multiple of 8). The same in builds without CUDA.
inline std::string cuda_decoder_refusal(const TransformerModel& model) {
    const int64_t d = model.shape().d_model / model.shape().n_head;
    if (d > 128 || d % 8 != 0)
        return "head size " + std::to_string(d) +
               " (d_model / n_head): the GPU decode attention takes multiples of 8 up to 128";
    return "";
}

// The host's parameters as the GPU decoder holds them (fp32 here; the matrices go up in bf16):
// per block the folded extra heads appended to the attention (qkv rows [Q host; Q extra; K host;
// K extra; V host; V extra], proj columns [host | extra Wo]) and the folded units to the MLP (fc
// rows [fc; V extra; 0], fc2 columns [fc2 | U extraᵀ | 0], padded to a multiple of 8 units: zero
// units add gelu(0) · 0 = 0). Row-major Linear weights W[out, in]. Host logic: builds (and is
// tested) without CUDA.
struct DecodeWeights {
    struct Layer {
        int32_t heads = 0;  // H': host heads + folded heads
        int32_t fc = 0;     // MLP units: 4C + folded units, padded
        std::vector<float> ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b,
            fc2_w, fc2_b;
    };
    std::vector<Layer> layers;
    std::vector<float> wte, wpe, lnf_w, lnf_b, head;  // head: wte when tied
};
DecodeWeights decode_weights(const TransformerModel& model);

// How the decoder runs its linear layers. kFused: steps of at most kernels::kDecodeLinearMaxRows
// rows through kernels::launch_decode_linear — a GEMV per output with the LayerNorms, biases,
// GELU, residual adds and the bf16 cast folded in (7 launches per block instead of 11) — and the
// decode kernels launched with programmatic dependent launch, so each starts (and issues its
// first weight loads) while its predecessor finishes; longer steps through cuBLASLt.
// kFusedSerial: the same kernels launched one after the other. kGemm: cuBLASLt for every product
// (the earlier path). kAuto (the default): kFused for steps of at most kCudaDecodeFusedRows rows,
// kGemm above — the GEMV reads every row's activations once per output and loses to cuBLASLt's
// tensor cores from a few rows up (docs/benchmarks.md, "Generation on the GPU").
enum class CudaDecodePath : uint8_t { kAuto, kFused, kFusedSerial, kGemm };
inline constexpr int32_t kCudaDecodeFusedRows = 1;

class CudaDecoder {
public:
    // Uploads the host's parameters; caches for `batch` >= 1 sequences. Throws esper::Error
    // kUnimplemented in a build without CUDA, kInvalidInput for cuda_decoder_refusal's reasons,
    // kFailed for a CUDA error.
    CudaDecoder(const TransformerModel& model, int32_t batch,
                CudaDecodePath path = CudaDecodePath::kAuto);
    ~CudaDecoder();
    CudaDecoder(const CudaDecoder&) = delete;
    CudaDecoder& operator=(const CudaDecoder&) = delete;
    int32_t batch() const;
    // `batch` samples continuing `prompt` (1..context bytes, checked by the caller), o.tokens
    // bytes each. Temperature 0 is greedy; otherwise the device RNG of kernels/decode.h seeded
    // with o.seed (each sample its own row of draws; not the CPU generator's stream).
    std::vector<Generated> generate(std::span<const uint8_t> prompt, const GenerateOptions& o);
    const CudaDecodeStats& last_stats() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace esper::kasmina
