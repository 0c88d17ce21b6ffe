// The transformer host on the CPU (DESIGN §14), one implementation of Model (model.h): a
// decoder-only byte-level language model with pre-LayerNorm blocks
//   x = wte[token] + wpe[t]
//   x += proj(attention(qkv(LN1(x))))            causal, n_head heads of d_model / n_head
//   x += fc2(seed_layer(gelu(fc1(LN2(x)))))      4·d_model hidden units, cut into seeds
//   logits = LNf(x) · wteᵀ (tied) or · headᵀ;   loss = mean cross-entropy over all B·T positions
// GEMMs through OpenBLAS; LayerNorm, attention, GELU, embeddings, the seed layer and the loss
// through the kernels/ CPU references (the CUDA issue checks its kernels against these). A
// Batch has `samples` sequences of `context` tokens and rows = samples · context targets.
// Gradients are overwritten by every backward; the blueprint arenas' are accumulated.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kasmina/model/config.h"
#include "kasmina/model/model.h"
#include "kasmina/model/tensor.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

inline constexpr int32_t kByteVocab = 256;

class TransformerModel final : public Model {
public:
    // Throws esper::Error(kInvalidInput) for an impossible shape (d_model % n_head != 0, ...).
    TransformerModel(const ModelConfig& config, uint64_t seed);

    std::string_view kind() const override { return "transformer"; }
    const std::vector<ParamRef>& params() const override { return params_; }
    const std::vector<SeedSite>& seed_sites() const override { return sites_; }
    // Reads batch.tokens [samples, context] and batch.targets [rows]; rows = samples · context.
    BatchResult train_batch(const Batch& batch, std::span<const kernels::SeedLayerView> views,
                            std::span<kernels::SeedTelemetryAccum* const> tel) override;
    BatchResult eval_batch(const Batch& batch,
                           std::span<const kernels::SeedLayerView> views) override;

    const TransformerConfig& shape() const { return cfg_; }
    int32_t context() const { return int32_t(cfg_.context); }
    // Logits [rows, 256] of the last forward (tests, uncached generation).
    std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }
    // Forward only of `samples` sequences of `seq` <= context tokens; returns the logits
    // [samples · seq, 256] (views: one per seed layer with batch = samples · seq, or empty).
    std::span<const float> forward_logits(const int32_t* tokens, int32_t samples, int32_t seq,
                                          std::span<const kernels::SeedLayerView> views);

    // ---- autoregressive inference with a KV cache (esper generate) ----
    // Keys and values of every block for positions fed so far; one sequence.
    struct KvCache {
        std::vector<std::vector<float>> k, v;  // per block [context, d_model]
        int32_t length = 0;                    // positions cached
    };
    KvCache new_cache() const;
    // Feeds `token` at position cache.length and returns the logits [256] for the next byte.
    // views: seed layers with batch = 1 (or empty). Precondition: cache.length < context.
    std::span<const float> decode_step(KvCache& cache, int32_t token,
                                       std::span<const kernels::SeedLayerView> views);

private:
    struct Block {
        Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
        Tensor d_ln1_w, d_ln1_b, d_qkv_w, d_qkv_b, d_proj_w, d_proj_b, d_ln2_w, d_ln2_b, d_fc_w,
            d_fc_b, d_fc2_w, d_fc2_b;
        // Activations of the last forward (rows = samples · seq).
        AlignedVector<float> x_in, a, qkv, att, x_mid, m, f, h, hs;
        std::vector<float> mean1, rstd1, mean2, rstd2, lse;
    };

    void ensure_rows(int32_t samples, int32_t seq);
    void forward(const int32_t* tokens, int32_t samples, int32_t seq,
                 std::span<const kernels::SeedLayerView> views,
                 std::span<kernels::SeedTelemetryAccum* const> tel);
    BatchResult loss(const int32_t* targets, int32_t rows, bool with_grad);
    void backward(const int32_t* tokens, int32_t samples, int32_t seq,
                  std::span<const kernels::SeedLayerView> views,
                  std::span<kernels::SeedTelemetryAccum* const> tel);
    void check_batch(const Batch& batch) const;

    TransformerConfig cfg_;
    int32_t C_ = 0, H_ = 0, Dh_ = 0, F_ = 0, T_ = 0;
    Tensor wte_, wpe_, lnf_w_, lnf_b_, head_w_;
    Tensor d_wte_, d_wpe_, d_lnf_w_, d_lnf_b_, d_head_w_;
    std::vector<Block> blocks_;
    std::vector<ParamRef> params_;
    std::vector<SeedSite> sites_;
    int32_t rows_cap_ = 0, samples_ = 0, seq_ = 0;
    AlignedVector<float> x_out_, xf_, logits_, dlogits_, dx_, dtmp_, dtmp2_, dbig_;
    std::vector<float> meanf_, rstdf_;
    std::vector<float> step_scratch_;  // decode_step's working rows
};

}  // namespace esper::kasmina
