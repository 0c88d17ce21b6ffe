// The transformer host on the CPU (DESIGN §14), one implementation of Model (model.h): a
// decoder-only byte-level language model with pre-LayerNorm blocks
//   x = wte[token] + wpe[t]
//   qkv = qkv(LN1(x)) (+ lora seeds' B·A·a)
//   x += proj(attention(qkv)) (+ extra heads, + attention_head seeds)
//   x += fc2(seed_layer(gelu(fc1(LN2(x))))) (+ extra units, + mlp_units seeds)
//   logits = LNf(x) · wteᵀ (tied) or · headᵀ;  loss = mean cross-entropy over all B·T positions
// Seed layers: per block a chunk site over the 4·d_model MLP hidden units (seed layer 2·l) and,
// when model.transformer.widening_seeds > 0, a widening site (seed layer 2·l + 1) where
// mlp_units, attention_head and lora blueprints germinate with a zero output side, graft with α
// and, once FOSSILIZED, fold into the host (fold_widening): units and heads into the block's
// reserved room (max_extra_units, max_extra_heads), a LoRA adapter into the qkv weights.
// GEMMs through OpenBLAS; LayerNorm, attention, GELU, embeddings, the chunk seed layer and the
// loss through the kernels/ CPU references (the CUDA issue checks its kernels against these).
// A Batch has `samples` sequences of up to `context` tokens and rows = samples · seq targets.
// Parameter gradients are overwritten by every backward; the blueprint arenas' accumulated.
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
    // Reads batch.tokens [samples, seq] and batch.targets [rows]; rows = samples · seq.
    BatchResult train_batch(const Batch& batch, std::span<const kernels::SeedLayerView> views,
                            std::span<kernels::SeedTelemetryAccum* const> tel) override;
    BatchResult eval_batch(const Batch& batch,
                           std::span<const kernels::SeedLayerView> views) override;
    int64_t param_count() const override;
    // Dense layers (position embeddings excluded: a lookup) plus causal attention's two T×T
    // products per head and sequence (QKᵀ and PV, full T² as the kernels compute it).
    double train_flops(int32_t samples, int32_t rows) const override;
    bool fold_widening(int32_t layer, BlueprintKind kind, std::span<const float> params) override;
    bool can_fold_widening(int32_t layer, BlueprintKind kind, int64_t floats) const override;
    // Seed layer `layer` is block l's widening site: mlp_units read LN2's output and write into
    // the residual stream after the block.
    bool widening_gradient(int32_t layer, const Batch& batch, std::span<float> g) override;
    // model.transformer.grow_depth: at its step, the grown blocks join the top of the stack;
    // model.transformer.grow_width: at its step, every live block puts more of its room in use.
    bool grow_host(int64_t step) override;
    bool host_growth_due(int64_t step) const override;
    LrRamp host_lr_ramp(int64_t step) const override;
    // Per block of n_layer: extra units in use, extra heads in use; with grow_depth, one more
    // value: the grown blocks in use (0 or grow_depth.blocks), then the grown blocks' pairs;
    // with grow_width, a last value: whether the width grew (0 or 1).
    std::vector<int64_t> structure() const override;
    void set_structure(std::span<const int64_t> s) override;

    const TransformerConfig& shape() const { return cfg_; }
    int32_t context() const { return T_; }
    // Blocks computed now: n_layer, plus grow_depth.blocks once they joined.
    int32_t n_layer() const { return live_; }
    // Seed layer of block l's chunk site and of its widening site (-1 when it has none).
    int32_t chunk_layer(int32_t l) const { return blocks_[size_t(l)].chunk_layer; }
    int32_t widening_layer(int32_t l) const { return blocks_[size_t(l)].widening_layer; }
    int32_t extra_units(int32_t l) const { return blocks_[size_t(l)].units_active; }
    int32_t extra_heads(int32_t l) const { return blocks_[size_t(l)].heads_active; }
    // Logits [rows, 256] of the last forward (tests, uncached generation).
    std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }
    // Forward only of `samples` sequences of `seq` <= context tokens; returns the logits
    // [samples · seq, 256] (views: one per seed layer with batch = samples · seq, or empty).
    std::span<const float> forward_logits(const int32_t* tokens, int32_t samples, int32_t seq,
                                          std::span<const kernels::SeedLayerView> views);

    // ---- autoregressive inference with a KV cache (esper generate) ----
    // Keys and values of every head of every block (host, extra, and live attention_head seeds
    // in the order of the views) for the positions fed so far; one sequence.
    struct KvCache {
        std::vector<std::vector<float>> k, v;  // per block [context, heads · D]
        int32_t length = 0;                    // positions cached
    };
    KvCache new_cache() const;
    // Feeds `token` at position cache.length and returns the logits [256] for the next byte.
    // views: seed layers with batch = 1 (or empty); the same views for every step of a cache.
    // Precondition: cache.length < context.
    std::span<const float> decode_step(KvCache& cache, int32_t token,
                                       std::span<const kernels::SeedLayerView> views);

private:
    // Puts model.transformer.initial_extra_{units,heads} of every block's reserved room in use.
    void init_initial_room(uint64_t seed, float proj_std);
    bool depth_growth_due(int64_t step) const;
    bool width_growth_due(int64_t step) const;
    // grow_width: `units` and `heads` more of each live block's room in use, output side zero.
    void grow_width();

    // A widening blueprint (or an extra unit group / extra head of the host) active in the last
    // forward: where its parameters are and the activations its backward needs.
    struct Widening {
        int32_t seed = -1;  // -1: a host extra (trained by the host optimizer)
        BlueprintKind kind = BlueprintKind::kMlpUnits;
        float a_fwd = 1.0f, a_grad = 1.0f, a_in = 1.0f;  // kernels/seed_layer.h stage factors
        const float* p = nullptr;  // slot layout (blueprints.h widening_offsets)
        float* g = nullptr;        // gradients in the same layout
        int64_t hidden = 0;        // k units, D, or r
        AlignedVector<float> act,
            pre;  // units: gelu out / pre-activation; head: qkv, out; lora: mid
        std::vector<float> lse;
    };
    struct Block {
        Tensor ln1_w, ln1_b, qkv_w, qkv_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b;
        Tensor d_ln1_w, d_ln1_b, d_qkv_w, d_qkv_b, d_proj_w, d_proj_b, d_ln2_w, d_ln2_b, d_fc_w,
            d_fc_b, d_fc2_w, d_fc2_b;
        // Reserved room for folded widening seeds: units (rows: v [C], c, u [C]) and heads (the
        // attention_head slot layout each). Rows past the *_active counts are zero and unused.
        Tensor xu_v, xu_c, xu_u, xh, d_xu_v, d_xu_c, d_xu_u, d_xh;
        int32_t units_active = 0, heads_active = 0;
        int32_t chunk_layer = -1, widening_layer = -1;
        // Activations of the last forward (rows = samples · seq).
        AlignedVector<float> x_in, a, qkv, att, x_mid, m, f, h, hs, xu_pre, xu_act;
        std::vector<float> mean1, rstd1, mean2, rstd2, lse;
        std::vector<Widening> heads, units, loras;  // in forward order
    };
    std::span<Block> live_blocks() { return {blocks_.data(), size_t(live_)}; }
    std::span<const Block> live_blocks() const { return {blocks_.data(), size_t(live_)}; }

    void ensure_rows(int32_t samples, int32_t seq);
    void collect_widening(Block& b, std::span<const kernels::SeedLayerView> views);
    void forward(const int32_t* tokens, int32_t samples, int32_t seq,
                 std::span<const kernels::SeedLayerView> views,
                 std::span<kernels::SeedTelemetryAccum* const> tel);
    BatchResult loss(const int32_t* targets, int32_t rows);
    void backward(const int32_t* tokens, int32_t samples, int32_t seq,
                  std::span<const kernels::SeedLayerView> views,
                  std::span<kernels::SeedTelemetryAccum* const> tel);
    void widening_telemetry(const Block& b, int32_t n, kernels::SeedTelemetryAccum* tel,
                            const kernels::SeedLayerView& view);
    void check_batch(const Batch& batch) const;

    TransformerConfig cfg_;
    int32_t C_ = 0, H_ = 0, Dh_ = 0, F_ = 0, T_ = 0, Umax_ = 0, Hmax_ = 0, head_floats_ = 0;
    // blocks_ holds n_layer + grow_depth.blocks blocks; the first live_ are computed. Grown
    // blocks have no seed sites.
    int32_t n_base_ = 0, live_ = 0;
    bool width_grown_ = false;
    uint64_t width_seed_ = 0;   // grow_width's draws
    int64_t block_floats_ = 0;  // the floats of one block's parameters (room included)
    Tensor wte_, wpe_, lnf_w_, lnf_b_, head_w_;
    Tensor d_wte_, d_wpe_, d_lnf_w_, d_lnf_b_, d_head_w_;
    std::vector<Block> blocks_;
    std::vector<ParamRef> params_;
    std::vector<SeedSite> sites_;
    int32_t rows_cap_ = 0;
    AlignedVector<float> x_out_, xf_, logits_, dlogits_, dx_, dtmp_, dtmp2_, dbig_, dsmall_;
    std::vector<float> meanf_, rstdf_;
    std::vector<float> step_scratch_;  // decode_step's working rows
    // widening_gradient's target: backward adds ∂L/∂(block output)ᵀ · LN2 output there.
    int32_t gradmax_block_ = -1;
    float* gradmax_g_ = nullptr;
};

}  // namespace esper::kasmina
