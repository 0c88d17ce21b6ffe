// Transformer host on the CPU (see transformer.h). Row-major throughout; n = samples · seq rows.
// Widening blueprints follow the seed kernels' stage rules (kernels/seed_layer.h): the forward
// adds a_fwd·r, parameter gradients are scaled by a_grad (TRAINING learns as if α = 1), and the
// gradient into the block reaches it with a_in (0 while isolated).
#include "kasmina/model/transformer.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/error.h"
#include "kasmina/model/blueprints.h"
#include "kernels/attention.h"
#include "kernels/bias_act.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/softmax_xent.h"

namespace esper::kasmina {

namespace {

constexpr float kLnEps = 1e-5f;
constexpr auto kGelu = kernels::Activation::kGeluTanh;

// y[n, out] = alpha · x[n, in] · W[out, in]ᵀ + beta · y
void linear(const float* x, const float* w, float* y, int32_t n, int32_t in, int32_t out,
            float beta = 0.0f, float alpha = 1.0f) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, alpha, x, in, w, in, beta, y,
                out);
}
// dW[out, in] += alpha · dy[n, out]ᵀ · x[n, in]
void linear_dw(const float* x, const float* dy, float* dw, int32_t n, int32_t in, int32_t out,
               float alpha = 1.0f) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, alpha, dy, out, x, in, 1.0f,
                dw, in);
}
// dx[n, in] = alpha · dy[n, out] · W[out, in] + beta · dx
void linear_dx(const float* dy, const float* w, float* dx, int32_t n, int32_t in, int32_t out,
               float beta = 0.0f, float alpha = 1.0f) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, alpha, dy, out, w, in, beta,
                dx, in);
}
void add_bias(float* y, const float* b, int32_t n, int32_t cols) {
    for (int32_t r = 0; r < n; ++r)
        for (int32_t c = 0; c < cols; ++c) y[int64_t(r) * cols + c] += b[c];
}
// db[cols] += alpha · Σ_r dy[r, :]
void bias_grad(const float* dy, float* db, int32_t n, int32_t cols, float alpha = 1.0f) {
    for (int32_t c = 0; c < cols; ++c) {
        double s = 0.0;
        for (int32_t r = 0; r < n; ++r) s += dy[int64_t(r) * cols + c];
        db[c] += float(alpha * s);
    }
}
double dot(const float* a, const float* b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
    return s;
}
void normal_init(Tensor& t, Rng& rng, float std) {
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.normal() * std;
}
kernels::AttentionShape attention_shape(int32_t samples, int32_t seq, int32_t heads, int32_t d,
                                        int64_t ld_qkv, int64_t ld_out) {
    kernels::AttentionShape s;
    s.batch = samples;
    s.seq = seq;
    s.heads = heads;
    s.head_dim = d;
    s.ld_qkv = ld_qkv;
    s.ld_out = ld_out;
    s.scale = 1.0f / std::sqrt(float(d));
    return s;
}

}  // namespace

TransformerModel::TransformerModel(const ModelConfig& config, uint64_t seed)
    : cfg_(config.transformer) {
    const TransformerConfig& c = cfg_;
    ESPER_CHECK_INPUT(c.n_layer >= 1 && c.n_head >= 1 && c.d_model >= 1 && c.context >= 1,
                      "model.transformer: n_layer, n_head, d_model and context must be >= 1");
    ESPER_CHECK_INPUT(c.d_model % c.n_head == 0, "model.transformer.d_model: ", c.d_model,
                      " is not a multiple of n_head ", c.n_head);
    C_ = int32_t(c.d_model);
    H_ = int32_t(c.n_head);
    Dh_ = C_ / H_;
    F_ = 4 * C_;
    T_ = int32_t(c.context);
    Umax_ = int32_t(c.max_extra_units);
    Hmax_ = int32_t(c.max_extra_heads);
    head_floats_ = int32_t(widening_offsets(BlueprintKind::kAttentionHead, C_, Dh_).floats);
    ESPER_CHECK_INPUT(config.seeds_per_layer <= F_,
                      "model.seeds_per_layer: ", config.seeds_per_layer, " exceeds the ", F_,
                      " MLP hidden units of a block (S > D)");
    Rng rng(mix_seed(seed, 0x7f3a));
    const float proj_std = 0.02f / std::sqrt(2.0f * float(c.n_layer));
    auto param = [this](const std::string& name, Tensor& t, Tensor& g, std::vector<int64_t> shape) {
        t = Tensor(shape);
        g = Tensor(std::move(shape));
        params_.push_back({name, &t, &g});
    };
    param("wte", wte_, d_wte_, {kByteVocab, C_});
    param("wpe", wpe_, d_wpe_, {T_, C_});
    normal_init(wte_, rng, 0.02f);
    normal_init(wpe_, rng, 0.02f);
    ESPER_CHECK_INPUT(c.grow_depth.blocks == 0 || c.grow_depth.at_step >= 1,
                      "model.transformer.grow_depth.at_step: ", c.grow_depth.at_step,
                      " (growing blocks needs the step they join at, >= 1)");
    n_base_ = live_ = int32_t(c.n_layer);
    // Sized once (params_ points into the blocks); the grown blocks wait at the end.
    blocks_.resize(size_t(c.n_layer + c.grow_depth.blocks));
    for (size_t l = 0; l < blocks_.size(); ++l) {
        Block& b = blocks_[l];
        const std::string p = "block" + std::to_string(l) + ".";
        const size_t first = params_.size();
        param(p + "ln1.weight", b.ln1_w, b.d_ln1_w, {C_});
        param(p + "ln1.bias", b.ln1_b, b.d_ln1_b, {C_});
        param(p + "attn.qkv.weight", b.qkv_w, b.d_qkv_w, {3 * C_, C_});
        param(p + "attn.qkv.bias", b.qkv_b, b.d_qkv_b, {3 * C_});
        param(p + "attn.proj.weight", b.proj_w, b.d_proj_w, {C_, C_});
        param(p + "attn.proj.bias", b.proj_b, b.d_proj_b, {C_});
        param(p + "ln2.weight", b.ln2_w, b.d_ln2_w, {C_});
        param(p + "ln2.bias", b.ln2_b, b.d_ln2_b, {C_});
        param(p + "mlp.fc.weight", b.fc_w, b.d_fc_w, {F_, C_});
        param(p + "mlp.fc.bias", b.fc_b, b.d_fc_b, {F_});
        param(p + "mlp.proj.weight", b.fc2_w, b.d_fc2_w, {C_, F_});
        param(p + "mlp.proj.bias", b.fc2_b, b.d_fc2_b, {C_});
        if (Umax_ > 0) {
            param(p + "mlp.extra.fc.weight", b.xu_v, b.d_xu_v, {Umax_, C_});
            param(p + "mlp.extra.fc.bias", b.xu_c, b.d_xu_c, {Umax_});
            param(p + "mlp.extra.proj.weight_t", b.xu_u, b.d_xu_u, {Umax_, C_});
        }
        if (Hmax_ > 0) param(p + "attn.extra_heads", b.xh, b.d_xh, {Hmax_, head_floats_});
        if (l == 0)  // every block has the same tensors
            for (size_t i = first; i < params_.size(); ++i)
                block_floats_ += params_[i].value->numel();
        if (int32_t(l) >= n_base_) continue;  // a grown block: filled when it joins (grow_host)
        b.ln1_w.fill(1.0f);
        b.ln2_w.fill(1.0f);
        normal_init(b.qkv_w, rng, 0.02f);
        normal_init(b.proj_w, rng, proj_std);
        normal_init(b.fc_w, rng, 0.02f);
        normal_init(b.fc2_w, rng, proj_std);
        b.chunk_layer = int32_t(sites_.size());
        sites_.push_back({F_, C_, SiteKind::kChunk, 0});
        if (c.widening_seeds > 0) {
            b.widening_layer = int32_t(sites_.size());
            sites_.push_back({c.widening_seeds, C_, SiteKind::kWidening, Dh_});
        }
    }
    param("lnf.weight", lnf_w_, d_lnf_w_, {C_});
    param("lnf.bias", lnf_b_, d_lnf_b_, {C_});
    lnf_w_.fill(1.0f);
    if (!c.tie_embeddings) {
        param("head.weight", head_w_, d_head_w_, {kByteVocab, C_});
        normal_init(head_w_, rng, 0.02f);
    }
    init_initial_room(mix_seed(seed, 0x9e11), proj_std);
    width_seed_ = mix_seed(seed, 0x9e12);
    const GrowWidthConfig& w = c.grow_width;
    ESPER_CHECK_INPUT(
        w.units >= 0 && w.heads >= 0 && c.initial_extra_units + w.units <= c.max_extra_units &&
            c.initial_extra_heads + w.heads <= c.max_extra_heads,
        "model.transformer.grow_width: ", w.units, " units and ", w.heads,
        " heads do not fit the room: initial_extra_units ", c.initial_extra_units,
        " + units must be <= max_extra_units ", c.max_extra_units, ", initial_extra_heads ",
        c.initial_extra_heads, " + heads <= max_extra_heads ", c.max_extra_heads);
    ESPER_CHECK_INPUT((w.units == 0 && w.heads == 0) || w.at_step >= 1,
                      "model.transformer.grow_width.at_step: ", w.at_step,
                      " (growing width needs the step it happens at, >= 1)");
}

void TransformerModel::init_initial_room(uint64_t seed, float proj_std) {
    const TransformerConfig& c = cfg_;
    ESPER_CHECK_INPUT(c.initial_extra_units >= 0 && c.initial_extra_units <= Umax_,
                      "model.transformer.initial_extra_units: ", c.initial_extra_units,
                      " is not within max_extra_units ", Umax_);
    ESPER_CHECK_INPUT(c.initial_extra_heads >= 0 && c.initial_extra_heads <= Hmax_,
                      "model.transformer.initial_extra_heads: ", c.initial_extra_heads,
                      " is not within max_extra_heads ", Hmax_);
    // Its own stream, so a host without initial room draws exactly what it drew before.
    Rng rng(seed);
    const int64_t C = C_;
    const WideningOffsets ho = widening_offsets(BlueprintKind::kAttentionHead, C, Dh_);
    for (Block& b : live_blocks()) {
        b.units_active = int32_t(c.initial_extra_units);
        b.heads_active = int32_t(c.initial_extra_heads);
        // Units as the block's own MLP: fc rows N(0, 0.02), zero bias, projection N(0, proj_std).
        for (int64_t i = 0; i < int64_t(b.units_active) * C; ++i) {
            b.xu_v[i] = rng.normal() * 0.02f;
            b.xu_u[i] = rng.normal() * proj_std;
        }
        // Heads as the block's own attention: Wq, Wk, Wv N(0, 0.02), zero biases, Wo N(0,
        // proj_std).
        for (int32_t h = 0; h < b.heads_active; ++h) {
            float* w = b.xh.data() + int64_t(h) * head_floats_;
            for (int64_t i = 0; i < ho.in_b; ++i) w[ho.in_w + i] = rng.normal() * 0.02f;
            for (int64_t i = ho.out_w; i < ho.floats; ++i) w[i] = rng.normal() * proj_std;
        }
    }
}

int64_t TransformerModel::param_count() const {
    int64_t n = Model::param_count();
    for (const Block& b : live_blocks()) {  // the reserved room counts only where it is used
        n -= int64_t(Umax_ - b.units_active) * (2 * C_ + 1);
        n -= int64_t(Hmax_ - b.heads_active) * head_floats_;
    }
    // Grown blocks that have not joined yet count for nothing.
    return n - int64_t(blocks_.size() - size_t(live_)) * block_floats_;
}

double TransformerModel::train_flops(int32_t samples, int32_t rows) const {
    const double dense = 6.0 * double(param_count() - wpe_.numel()) * double(rows);
    const double seq = samples > 0 ? double(rows) / double(samples) : 0.0;
    double heads = 0.0;
    for (const Block& b : live_blocks()) heads += double(H_ + b.heads_active);
    // Per head and sequence: forward 2·(2·seq²·Dh), backward twice that.
    return dense + 12.0 * seq * seq * double(Dh_) * heads * double(samples);
}

std::vector<int64_t> TransformerModel::structure() const {
    std::vector<int64_t> s;
    auto room = [&](size_t l) {
        s.push_back(blocks_[l].units_active);
        s.push_back(blocks_[l].heads_active);
    };
    for (size_t l = 0; l < size_t(n_base_); ++l) room(l);
    if (cfg_.grow_depth.blocks == 0) return s;
    s.push_back(live_ - n_base_);
    for (size_t l = size_t(n_base_); l < blocks_.size(); ++l) room(l);
    if (cfg_.grow_width.units > 0 || cfg_.grow_width.heads > 0) s.push_back(width_grown_ ? 1 : 0);
    return s;
}

void TransformerModel::set_structure(std::span<const int64_t> s) {
    const int64_t grow = cfg_.grow_depth.blocks;
    const bool widens = cfg_.grow_width.units > 0 || cfg_.grow_width.heads > 0;
    const size_t want = 2 * blocks_.size() + (grow > 0 ? 1 : 0) + (widens ? 1 : 0);
    if (s.size() != want)
        ESPER_THROW(kIntegrity, "checkpoint: host structure of ", s.size(), " values, this ",
                    n_base_, "-block transformer", grow > 0 ? " with grow_depth" : "",
                    widens ? " with grow_width" : "", " keeps ", want);
    if (widens && s.back() != 0 && s.back() != 1)
        ESPER_THROW(kIntegrity, "checkpoint: width grown = ", s.back(), " (0 or 1)");
    const int64_t grown = grow > 0 ? s[2 * size_t(n_base_)] : 0;
    if (grown != 0 && grown != grow)
        ESPER_THROW(kIntegrity, "checkpoint: ", grown, " grown blocks in use; this model grows ",
                    grow, " (model.transformer.grow_depth.blocks)");
    // Values per block, the grown-block count skipped.
    auto at = [&](size_t l, size_t k) { return s[2 * l + k + (l >= size_t(n_base_) ? 1 : 0)]; };
    for (size_t l = 0; l < blocks_.size(); ++l)
        if (at(l, 0) < 0 || at(l, 0) > Umax_ || at(l, 1) < 0 || at(l, 1) > Hmax_)
            ESPER_THROW(kIntegrity, "checkpoint: block ", l, " uses ", at(l, 0),
                        " extra units and ", at(l, 1), " extra heads; this model reserves ", Umax_,
                        " and ", Hmax_);
    for (size_t l = 0; l < blocks_.size(); ++l) {
        blocks_[l].units_active = int32_t(at(l, 0));
        blocks_[l].heads_active = int32_t(at(l, 1));
    }
    live_ = n_base_ + int32_t(grown);
    width_grown_ = widens && s.back() == 1;
}

bool TransformerModel::depth_growth_due(int64_t step) const {
    const GrowDepthConfig& g = cfg_.grow_depth;
    return g.blocks > 0 && live_ == n_base_ && step >= g.at_step;
}

bool TransformerModel::width_growth_due(int64_t step) const {
    const GrowWidthConfig& w = cfg_.grow_width;
    return (w.units > 0 || w.heads > 0) && !width_grown_ && step >= w.at_step;
}

bool TransformerModel::host_growth_due(int64_t step) const {
    return depth_growth_due(step) || width_growth_due(step);
}

void TransformerModel::grow_width() {
    const GrowWidthConfig& w = cfg_.grow_width;
    const int64_t C = C_;
    const WideningOffsets ho = widening_offsets(BlueprintKind::kAttentionHead, C, Dh_);
    Rng rng(width_seed_);
    for (Block& b : live_blocks()) {
        ESPER_REQUIRE(b.units_active + w.units <= Umax_ && b.heads_active + w.heads <= Hmax_,
                      "grow_width: the room is full");
        const bool split = w.init == WidthInit::kSplit;
        // New units. zero_out: V rows N(0, 0.02), c = 0, U rows 0 (as a germinated mlp_units
        // seed). split: new unit t copies host unit t mod F (fc row and bias) and takes half of
        // its fc2 column, which keeps the other half.
        for (int64_t t = 0; t < w.units; ++t) {
            const int64_t j = b.units_active + t, src = t % F_;
            for (int64_t i = 0; i < C; ++i) {
                b.xu_v[j * C + i] = split ? b.fc_w[src * C + i] : rng.normal() * 0.02f;
                float& out = b.fc2_w[i * F_ + src];
                if (split) out *= 0.5f;
                b.xu_u[j * C + i] = split ? out : 0.0f;
            }
            b.xu_c[j] = split ? b.fc_b[src] : 0.0f;
        }
        // New heads. zero_out: Wq, Wk, Wv N(0, 0.02), zero biases, Wo 0. split: new head t
        // copies host head t mod H (its q, k, v rows and biases) and takes half of its proj
        // columns, which keep the other half.
        for (int64_t t = 0; t < w.heads; ++t) {
            float* slot = b.xh.data() + (b.heads_active + t) * head_floats_;
            std::fill_n(slot, ho.floats, 0.0f);
            if (!split) {
                for (int64_t i = 0; i < ho.in_b; ++i) slot[ho.in_w + i] = rng.normal() * 0.02f;
                continue;
            }
            const int64_t src = t % H_, D = Dh_;
            for (int64_t part = 0; part < 3; ++part) {  // Wq, Wk, Wv [D, C]; bq, bk, bv [D]
                std::copy_n(b.qkv_w.data() + (part * C + src * D) * C, D * C,
                            slot + ho.in_w + part * D * C);
                std::copy_n(b.qkv_b.data() + part * C + src * D, D, slot + ho.in_b + part * D);
            }
            for (int64_t i = 0; i < C; ++i)  // Wo [C, D]: half of proj's columns of the head
                for (int64_t e = 0; e < D; ++e) {
                    float& out = b.proj_w[i * C + src * D + e];
                    out *= 0.5f;
                    slot[ho.out_w + i * D + e] = out;
                }
        }
        b.units_active += int32_t(w.units);
        b.heads_active += int32_t(w.heads);
    }
    width_grown_ = true;
}

Model::LrRamp TransformerModel::host_lr_ramp(int64_t step) const {
    const GrowDepthConfig& g = cfg_.grow_depth;
    LrRamp r;
    if (live_ == n_base_ || g.warmup_steps <= 0) return r;
    // The grown blocks' tensors: from block n_base's first to the final LayerNorm's.
    const std::string first = "block" + std::to_string(n_base_) + ".";
    bool found = false;
    for (std::size_t i = 0; i < params_.size(); ++i) {
        if (!found && params_[i].name.rfind(first, 0) == 0) {
            r.begin = i;
            found = true;
        }
        if (params_[i].name == "lnf.weight") r.end = i;
    }
    ESPER_REQUIRE(found && r.end > r.begin, "grown blocks' parameters not found");
    r.scale = std::min(1.0, double(step - g.at_step + 1) / double(g.warmup_steps));
    return r;
}

bool TransformerModel::grow_host(int64_t step) {
    const GrowDepthConfig& g = cfg_.grow_depth;
    if (!host_growth_due(step)) return false;
    // Width first when both are due: grown blocks copy the room in use.
    if (width_growth_due(step)) grow_width();
    if (!depth_growth_due(step)) return true;
    // Block n_layer + i repeats block i mod n_layer: the trained stack, repeated in order.
    for (size_t i = 0; i < size_t(g.blocks); ++i) {
        const Block& src = blocks_[i % size_t(n_base_)];
        Block& dst = blocks_[size_t(n_base_) + i];
        for (auto t :
             {&Block::ln1_w, &Block::ln1_b, &Block::qkv_w, &Block::qkv_b, &Block::proj_w,
              &Block::proj_b, &Block::ln2_w, &Block::ln2_b, &Block::fc_w, &Block::fc_b,
              &Block::fc2_w, &Block::fc2_b, &Block::xu_v, &Block::xu_c, &Block::xu_u, &Block::xh})
            std::copy_n((src.*t).data(), (src.*t).numel(), (dst.*t).data());
        dst.units_active = src.units_active;
        dst.heads_active = src.heads_active;
        if (g.init != DepthInit::kZeroOut) continue;
        // What writes the residual stream starts at zero: the block computes the identity.
        for (auto t : {&Block::proj_w, &Block::proj_b, &Block::fc2_w, &Block::fc2_b, &Block::xu_u})
            (dst.*t).fill(0.0f);
        const WideningOffsets ho = widening_offsets(BlueprintKind::kAttentionHead, C_, Dh_);
        for (int32_t h = 0; h < Hmax_; ++h)
            std::fill_n(dst.xh.data() + int64_t(h) * head_floats_ + ho.out_w, ho.floats - ho.out_w,
                        0.0f);
    }
    live_ = n_base_ + int32_t(g.blocks);
    return true;
}

bool TransformerModel::can_fold_widening(int32_t layer, BlueprintKind kind, int64_t floats) const {
    auto it = std::find_if(blocks_.begin(), blocks_.end(),
                           [layer](const Block& b) { return b.widening_layer == layer; });
    if (it == blocks_.end()) return false;
    switch (kind) {
        case BlueprintKind::kMlpUnits:
            return it->units_active + floats / (2 * int64_t(C_) + 1) <= Umax_;
        case BlueprintKind::kAttentionHead:
            return it->heads_active < Hmax_;
        case BlueprintKind::kLora:
            return true;
        default:
            return false;
    }
}

bool TransformerModel::fold_widening(int32_t layer, BlueprintKind kind,
                                     std::span<const float> params) {
    auto it = std::find_if(blocks_.begin(), blocks_.end(),
                           [layer](const Block& b) { return b.widening_layer == layer; });
    if (it == blocks_.end()) return false;
    Block& b = *it;
    const int64_t C = C_;
    switch (kind) {
        case BlueprintKind::kMlpUnits: {
            const int64_t k = int64_t(params.size() - 0) / (2 * C + 1);
            const WideningOffsets o = widening_offsets(kind, C, k);
            ESPER_REQUIRE(o.floats == int64_t(params.size()), "mlp_units slot of ", params.size());
            if (b.units_active + k > Umax_) return false;
            for (int64_t j = 0; j < k; ++j) {
                const int64_t row = b.units_active + j;
                std::copy_n(params.data() + o.in_w + j * C, C, b.xu_v.data() + row * C);
                b.xu_c[row] = params[size_t(o.in_b + j)];
                for (int64_t i = 0; i < C; ++i)  // U [C, k]: column j is the unit's output
                    b.xu_u[row * C + i] = params[size_t(o.out_w + i * k + j)];
            }
            b.units_active += int32_t(k);
            return true;
        }
        case BlueprintKind::kAttentionHead:
            ESPER_REQUIRE(int64_t(params.size()) == head_floats_, "head slot of ", params.size());
            if (b.heads_active >= Hmax_) return false;
            std::copy(params.begin(), params.end(),
                      b.xh.data() + int64_t(b.heads_active) * head_floats_);
            ++b.heads_active;
            return true;
        case BlueprintKind::kLora: {
            const int64_t r = int64_t(params.size()) / (4 * C);
            const WideningOffsets o = widening_offsets(kind, C, r);
            ESPER_REQUIRE(o.floats == int64_t(params.size()), "lora slot of ", params.size());
            // qkv_w [3C, C] += B [3C, r] · A [r, C]: the adapter at α = 1, exactly.
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(3 * C), int(C), int(r), 1.0f,
                        params.data() + o.out_w, int(r), params.data() + o.in_w, int(C), 1.0f,
                        b.qkv_w.data(), int(C));
            return true;
        }
        default:
            return false;
    }
}

void TransformerModel::ensure_rows(int32_t samples, int32_t seq) {
    const int32_t n = samples * seq;
    if (n <= rows_cap_) return;
    const auto rows = size_t(n);
    for (Block& b : blocks_) {
        b.x_in.resize(rows * C_);
        b.a.resize(rows * C_);
        b.qkv.resize(rows * 3 * C_);
        b.att.resize(rows * C_);
        b.x_mid.resize(rows * C_);
        b.m.resize(rows * C_);
        b.f.resize(rows * F_);
        b.h.resize(rows * F_);
        b.hs.resize(rows * F_);
        b.xu_pre.resize(rows * std::max(Umax_, 1));
        b.xu_act.resize(rows * std::max(Umax_, 1));
        b.mean1.resize(rows);
        b.rstd1.resize(rows);
        b.mean2.resize(rows);
        b.rstd2.resize(rows);
        b.lse.resize(rows * H_);
    }
    x_out_.resize(rows * C_);
    xf_.resize(rows * C_);
    logits_.resize(rows * kByteVocab);
    dlogits_.resize(rows * kByteVocab);
    dx_.resize(rows * C_);
    dtmp_.resize(rows * 3 * C_);
    dtmp2_.resize(rows * C_);
    dbig_.resize(rows * F_ * 2);
    meanf_.resize(rows);
    rstdf_.resize(rows);
    rows_cap_ = n;
}

void TransformerModel::check_batch(const Batch& batch) const {
    ESPER_REQUIRE(batch.tokens != nullptr && batch.targets != nullptr && batch.samples > 0 &&
                      batch.rows % batch.samples == 0,
                  "transformer batch: samples=", batch.samples, " rows=", batch.rows);
    const int32_t seq = batch.rows / batch.samples;
    ESPER_REQUIRE(seq >= 1 && seq <= T_, "transformer batch: ", seq,
                  " positions per sample, context ", T_);
}

// The block's widening work of this forward: its extra heads, then the live seeds of its
// widening site (TRAINING..FOSSILIZED with a slot) in seed order.
void TransformerModel::collect_widening(Block& b, std::span<const kernels::SeedLayerView> views) {
    b.heads.resize(size_t(b.heads_active));
    for (int32_t h = 0; h < b.heads_active; ++h) {
        Widening& w = b.heads[size_t(h)];
        w.seed = -1;
        w.kind = BlueprintKind::kAttentionHead;
        w.a_fwd = w.a_grad = w.a_in = 1.0f;
        w.p = b.xh.data() + int64_t(h) * head_floats_;
        w.g = b.d_xh.data() + int64_t(h) * head_floats_;
        w.hidden = Dh_;
    }
    b.units.clear();
    b.loras.clear();
    if (views.empty() || b.widening_layer < 0) return;
    const kernels::SeedLayerView& v = views[size_t(b.widening_layer)];
    for (int32_t s = 0; s < v.num_seeds; ++s) {
        const auto stage = SeedStage(v.stage[s]);
        if (!kernels::stage_runs_blueprint(stage) || v.slot[s] < 0) continue;
        const auto kind = BlueprintKind(v.kind[s]);
        const kernels::BlueprintArena& a = v.arenas[int(kind)];
        Widening w;
        w.seed = s;
        w.kind = kind;
        w.a_fwd = kernels::stage_forward_alpha(stage, v.alpha[s]);
        w.a_grad = kernels::stage_blueprint_grad_scale(stage, v.alpha[s]);
        w.a_in = kernels::stage_input_grad_alpha(stage, v.alpha[s]);
        w.p = a.params + int64_t(v.slot[s]) * a.stride;
        w.g = a.grads == nullptr ? nullptr : a.grads + int64_t(v.slot[s]) * a.stride;
        w.hidden = a.hidden;
        if (kind == BlueprintKind::kAttentionHead)
            b.heads.push_back(std::move(w));
        else if (kind == BlueprintKind::kMlpUnits)
            b.units.push_back(std::move(w));
        else if (kind == BlueprintKind::kLora)
            b.loras.push_back(std::move(w));
    }
}

void TransformerModel::forward(const int32_t* tokens, int32_t samples, int32_t seq,
                               std::span<const kernels::SeedLayerView> views,
                               std::span<kernels::SeedTelemetryAccum* const> tel) {
    ESPER_REQUIRE(views.empty() || views.size() == sites_.size(), "views=", views.size(),
                  " seed layers=", sites_.size());
    ensure_rows(samples, seq);
    const int32_t n = samples * seq;
    const int64_t C = C_, D = Dh_;
    kernels::embedding_forward_reference(tokens, wte_.data(), wpe_.data(), blocks_[0].x_in.data(),
                                         samples, seq, C_);
    const kernels::AttentionShape host = attention_shape(samples, seq, H_, Dh_, 3 * C, C);
    const kernels::AttentionShape one = attention_shape(samples, seq, 1, Dh_, 3 * D, D);
    for (size_t l = 0; l < size_t(live_); ++l) {
        Block& b = blocks_[l];
        collect_widening(b, views);
        // ---- attention ----
        kernels::layernorm_forward_reference(b.x_in.data(), b.ln1_w.data(), b.ln1_b.data(),
                                             b.a.data(), b.mean1.data(), b.rstd1.data(), n, C_,
                                             kLnEps);
        linear(b.a.data(), b.qkv_w.data(), b.qkv.data(), n, C_, 3 * C_);
        add_bias(b.qkv.data(), b.qkv_b.data(), n, 3 * C_);
        for (Widening& w : b.loras) {  // qkv += a_fwd · B·(A·a)
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            const auto r = int32_t(w.hidden);
            w.act.resize(size_t(n) * r);
            linear(b.a.data(), w.p + o.in_w, w.act.data(), n, C_, r);
            if (w.a_fwd != 0.0f)
                linear(w.act.data(), w.p + o.out_w, b.qkv.data(), n, r, 3 * C_, 1.0f, w.a_fwd);
        }
        kernels::attention_forward_reference(host, b.qkv.data(), b.qkv.data() + C,
                                             b.qkv.data() + 2 * C, b.att.data(), b.lse.data());
        std::memcpy(b.x_mid.data(), b.x_in.data(), size_t(n) * C * sizeof(float));
        add_bias(b.x_mid.data(), b.proj_b.data(), n, C_);
        linear(b.att.data(), b.proj_w.data(), b.x_mid.data(), n, C_, C_, 1.0f);
        for (Widening& w : b.heads) {  // x_mid += a_fwd · Wo·attention(q, k, v)
            const WideningOffsets o = widening_offsets(w.kind, C, D);
            w.pre.resize(size_t(n) * 3 * D);
            w.act.resize(size_t(n) * D);
            w.lse.resize(size_t(n));
            linear(b.a.data(), w.p + o.in_w, w.pre.data(), n, C_, int32_t(3 * D));
            add_bias(w.pre.data(), w.p + o.in_b, n, int32_t(3 * D));
            kernels::attention_forward_reference(one, w.pre.data(), w.pre.data() + D,
                                                 w.pre.data() + 2 * D, w.act.data(), w.lse.data());
            if (w.a_fwd != 0.0f)
                linear(w.act.data(), w.p + o.out_w, b.x_mid.data(), n, Dh_, C_, 1.0f, w.a_fwd);
        }
        // ---- MLP ----
        kernels::layernorm_forward_reference(b.x_mid.data(), b.ln2_w.data(), b.ln2_b.data(),
                                             b.m.data(), b.mean2.data(), b.rstd2.data(), n, C_,
                                             kLnEps);
        linear(b.m.data(), b.fc_w.data(), b.f.data(), n, C_, F_);
        kernels::bias_act_forward_reference(b.f.data(), b.fc_b.data(), b.h.data(), n, F_, kGelu);
        if (views.empty() || b.chunk_layer < 0) {
            std::memcpy(b.hs.data(), b.h.data(), size_t(n) * F_ * sizeof(float));
        } else {
            const kernels::SeedLayerView& v = views[size_t(b.chunk_layer)];
            ESPER_REQUIRE(v.batch == n && v.width == F_, "block ", l, " view batch=", v.batch,
                          " width=", v.width);
            kernels::seed_forward_reference(v, b.h.data(), b.hs.data(),
                                            tel.empty() ? nullptr : tel[size_t(b.chunk_layer)]);
        }
        float* out = l + 1 < size_t(live_) ? blocks_[l + 1].x_in.data() : x_out_.data();
        std::memcpy(out, b.x_mid.data(), size_t(n) * C * sizeof(float));
        add_bias(out, b.fc2_b.data(), n, C_);
        linear(b.hs.data(), b.fc2_w.data(), out, n, F_, C_, 1.0f);
        if (const int32_t u = b.units_active; u > 0) {  // folded units: out += gelu(m·Vᵀ + c)·U
            linear(b.m.data(), b.xu_v.data(), b.xu_pre.data(), n, C_, u);
            kernels::bias_act_forward_reference(b.xu_pre.data(), b.xu_c.data(), b.xu_act.data(), n,
                                                u, kGelu);
            linear_dx(b.xu_act.data(), b.xu_u.data(), out, n, C_, u, 1.0f);
        }
        for (Widening& w : b.units) {  // out += a_fwd · U·gelu(V·m + c)
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            const auto k = int32_t(w.hidden);
            w.pre.resize(size_t(n) * k);
            w.act.resize(size_t(n) * k);
            linear(b.m.data(), w.p + o.in_w, w.pre.data(), n, C_, k);
            kernels::bias_act_forward_reference(w.pre.data(), w.p + o.in_b, w.act.data(), n, k,
                                                kGelu);
            if (w.a_fwd != 0.0f) linear(w.act.data(), w.p + o.out_w, out, n, k, C_, 1.0f, w.a_fwd);
        }
    }
    kernels::layernorm_forward_reference(x_out_.data(), lnf_w_.data(), lnf_b_.data(), xf_.data(),
                                         meanf_.data(), rstdf_.data(), n, C_, kLnEps);
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    linear(xf_.data(), head.data(), logits_.data(), n, C_, kByteVocab);
}

BatchResult TransformerModel::loss(const int32_t* targets, int32_t rows) {
    BatchResult r;
    r.rows = rows;
    float l = 0.0f;
    kernels::softmax_xent_reference(logits_.data(), targets, rows, kByteVocab, &l, dlogits_.data(),
                                    &r.correct);
    r.loss = l;
    return r;
}

// Widening seeds' telemetry (DESIGN §4.6 fields, from the seed's own activations): live seeds
// measure their hidden activations, the rest the block's MLP hidden units (what a germination
// there would see). grad_sq and contribution come from the backward (already accumulated).
void TransformerModel::widening_telemetry(const Block& b, int32_t n,
                                          kernels::SeedTelemetryAccum* tel,
                                          const kernels::SeedLayerView& view) {
    std::vector<uint8_t> live(size_t(view.num_seeds), 0);
    for (const auto* list : {&b.heads, &b.units, &b.loras})
        for (const Widening& w : *list) {
            if (w.seed < 0) continue;
            live[size_t(w.seed)] = 1;
            merge_activation_stats(tel, w.seed, w.act.data(), int64_t(w.act.size()));
        }
    for (int32_t s = 0; s < view.num_seeds; ++s)
        if (!live[size_t(s)]) merge_activation_stats(tel, s, b.h.data(), int64_t(n) * F_);
}

void TransformerModel::backward(const int32_t* tokens, int32_t samples, int32_t seq,
                                std::span<const kernels::SeedLayerView> views,
                                std::span<kernels::SeedTelemetryAccum* const> tel) {
    const int32_t n = samples * seq;
    const int64_t C = C_, D = Dh_;
    for (const ParamRef& p : params_) p.grad->fill(0.0f);
    Tensor& d_head = cfg_.tie_embeddings ? d_wte_ : d_head_w_;
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    float* dxf = dtmp2_.data();
    linear_dx(dlogits_.data(), head.data(), dxf, n, C_, kByteVocab);
    linear_dw(xf_.data(), dlogits_.data(), d_head.data(), n, C_, kByteVocab);
    kernels::layernorm_backward_reference(dxf, x_out_.data(), lnf_w_.data(), meanf_.data(),
                                          rstdf_.data(), dx_.data(), d_lnf_w_.data(),
                                          d_lnf_b_.data(), n, C_);
    const kernels::AttentionShape host = attention_shape(samples, seq, H_, Dh_, 3 * C, C);
    const kernels::AttentionShape one = attention_shape(samples, seq, 1, Dh_, 3 * D, D);
    float* dhs = dbig_.data();
    float* dh = dbig_.data() + size_t(n) * F_;
    int64_t small = 3 * D;
    for (const Block& b : live_blocks()) {
        small = std::max<int64_t>(small, b.units_active);
        for (const auto* list : {&b.units, &b.loras})
            for (const Widening& w : *list) small = std::max(small, w.hidden);
    }
    dsmall_.resize(size_t(n) * size_t(small) * 2 + size_t(small));
    float* g1 = dsmall_.data();                          // [n, small]
    float* g2 = dsmall_.data() + size_t(n) * small;      // [n, small]
    float* gb = dsmall_.data() + size_t(n) * small * 2;  // [small]
    for (size_t l = size_t(live_); l-- > 0;) {
        Block& b = blocks_[l];
        kernels::SeedTelemetryAccum* wtel =
            tel.empty() || b.widening_layer < 0 ? nullptr : tel[size_t(b.widening_layer)];
        // ---- MLP: out = x_mid + fc2(hs) + extra units + unit seeds; dx_ = ∂L/∂out ----
        if (int32_t(l) == gradmax_block_) linear_dw(b.m.data(), dx_.data(), gradmax_g_, n, C_, C_);
        linear_dw(b.hs.data(), dx_.data(), b.d_fc2_w.data(), n, F_, C_);
        bias_grad(dx_.data(), b.d_fc2_b.data(), n, C_);
        linear_dx(dx_.data(), b.fc2_w.data(), dhs, n, F_, C_);
        if (views.empty() || b.chunk_layer < 0) {
            std::memcpy(dh, dhs, size_t(n) * F_ * sizeof(float));
        } else {
            kernels::seed_backward_reference(views[size_t(b.chunk_layer)], b.h.data(), dhs, dh,
                                             tel.empty() ? nullptr : tel[size_t(b.chunk_layer)]);
        }
        // b.f holds fc(m) + bias (the pre-activation); dh becomes its gradient in place.
        kernels::bias_act_backward_reference(dh, b.f.data(), dh, b.d_fc_b.data(), n, F_, kGelu);
        linear_dw(b.m.data(), dh, b.d_fc_w.data(), n, C_, F_);
        float* dm = dtmp2_.data();
        linear_dx(dh, b.fc_w.data(), dm, n, C_, F_);
        if (const int32_t u = b.units_active; u > 0) {
            linear(dx_.data(), b.xu_u.data(), g1, n, C_, u);  // ∂L/∂act
            linear_dw(dx_.data(), b.xu_act.data(), b.d_xu_u.data(), n, C_, u);
            kernels::bias_act_backward_reference(g1, b.xu_pre.data(), g1, b.d_xu_c.data(), n, u,
                                                 kGelu);
            linear_dw(b.m.data(), g1, b.d_xu_v.data(), n, C_, u);
            linear_dx(g1, b.xu_v.data(), dm, n, C_, u, 1.0f);
        }
        for (Widening& w : b.units) {
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            const auto k = int32_t(w.hidden);
            linear_dx(dx_.data(), w.p + o.out_w, g1, n, k, C_);  // ∂L/∂act as if α = 1
            if (wtel != nullptr) {
                wtel->contribution[w.seed] -= w.a_fwd * dot(w.act.data(), g1, int64_t(n) * k);
                wtel->grad_sq[w.seed] += dot(g1, g1, int64_t(n) * k);
            }
            if (w.g != nullptr && w.a_grad != 0.0f)
                linear_dw(w.act.data(), dx_.data(), w.g + o.out_w, n, k, C_, w.a_grad);
            std::fill(gb, gb + k, 0.0f);
            kernels::bias_act_backward_reference(g1, w.pre.data(), g1, gb, n, k, kGelu);
            if (w.g != nullptr && w.a_grad != 0.0f) {
                for (int32_t j = 0; j < k; ++j) w.g[o.in_b + j] += w.a_grad * gb[j];
                linear_dw(b.m.data(), g1, w.g + o.in_w, n, C_, k, w.a_grad);
            }
            if (w.a_in != 0.0f) linear_dx(g1, w.p + o.in_w, dm, n, C_, k, 1.0f, w.a_in);
        }
        float* dln = dtmp_.data();
        kernels::layernorm_backward_reference(dm, b.x_mid.data(), b.ln2_w.data(), b.mean2.data(),
                                              b.rstd2.data(), dln, b.d_ln2_w.data(),
                                              b.d_ln2_b.data(), n, C_);
        for (int64_t i = 0; i < int64_t(n) * C; ++i) dx_[size_t(i)] += dln[i];
        // ---- attention: x_mid = x_in + proj(att) + heads; dx_ = ∂L/∂x_mid ----
        linear_dw(b.att.data(), dx_.data(), b.d_proj_w.data(), n, C_, C_);
        bias_grad(dx_.data(), b.d_proj_b.data(), n, C_);
        float* datt = dtmp2_.data();
        linear_dx(dx_.data(), b.proj_w.data(), datt, n, C_, C_);
        float* dqkv = dtmp_.data();
        kernels::attention_backward_reference(host, b.qkv.data(), b.qkv.data() + C,
                                              b.qkv.data() + 2 * C, b.att.data(), datt,
                                              b.lse.data(), dqkv, dqkv + C, dqkv + 2 * C);
        linear_dw(b.a.data(), dqkv, b.d_qkv_w.data(), n, C_, 3 * C_);
        bias_grad(dqkv, b.d_qkv_b.data(), n, 3 * C_);
        float* da = dtmp2_.data();
        linear_dx(dqkv, b.qkv_w.data(), da, n, C_, 3 * C_);
        for (Widening& w : b.loras) {
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            const auto r = int32_t(w.hidden);
            linear_dx(dqkv, w.p + o.out_w, g1, n, r, 3 * C_);  // ∂L/∂mid as if α = 1
            if (w.seed >= 0 && wtel != nullptr) {
                wtel->contribution[w.seed] -= w.a_fwd * dot(w.act.data(), g1, int64_t(n) * r);
                wtel->grad_sq[w.seed] += dot(g1, g1, int64_t(n) * r);
            }
            if (w.g != nullptr && w.a_grad != 0.0f) {
                linear_dw(w.act.data(), dqkv, w.g + o.out_w, n, r, 3 * C_, w.a_grad);
                linear_dw(b.a.data(), g1, w.g + o.in_w, n, C_, r, w.a_grad);
            }
            if (w.a_in != 0.0f) linear_dx(g1, w.p + o.in_w, da, n, C_, r, 1.0f, w.a_in);
        }
        for (Widening& w : b.heads) {
            const WideningOffsets o = widening_offsets(w.kind, C, D);
            float* dho = g1;                                        // [n, D]
            float* dhq = g2;                                        // [n, 3D]
            linear_dx(dx_.data(), w.p + o.out_w, dho, n, Dh_, C_);  // as if α = 1
            if (w.seed >= 0 && wtel != nullptr) {
                wtel->contribution[w.seed] -= w.a_fwd * dot(w.act.data(), dho, int64_t(n) * D);
                wtel->grad_sq[w.seed] += dot(dho, dho, int64_t(n) * D);
            }
            if (w.g == nullptr || (w.a_grad == 0.0f && w.a_in == 0.0f)) continue;
            kernels::attention_backward_reference(one, w.pre.data(), w.pre.data() + D,
                                                  w.pre.data() + 2 * D, w.act.data(), dho,
                                                  w.lse.data(), dhq, dhq + D, dhq + 2 * D);
            if (w.a_grad != 0.0f) {
                linear_dw(w.act.data(), dx_.data(), w.g + o.out_w, n, Dh_, C_, w.a_grad);
                linear_dw(b.a.data(), dhq, w.g + o.in_w, n, C_, int32_t(3 * D), w.a_grad);
                bias_grad(dhq, w.g + o.in_b, n, int32_t(3 * D), w.a_grad);
            }
            if (w.a_in != 0.0f)
                linear_dx(dhq, w.p + o.in_w, da, n, C_, int32_t(3 * D), 1.0f, w.a_in);
        }
        if (wtel != nullptr) widening_telemetry(b, n, wtel, views[size_t(b.widening_layer)]);
        kernels::layernorm_backward_reference(da, b.x_in.data(), b.ln1_w.data(), b.mean1.data(),
                                              b.rstd1.data(), dh, b.d_ln1_w.data(),
                                              b.d_ln1_b.data(), n, C_);
        for (int64_t i = 0; i < int64_t(n) * C; ++i) dx_[size_t(i)] += dh[i];
    }
    kernels::embedding_backward_reference(tokens, dx_.data(), d_wte_.data(), d_wpe_.data(), samples,
                                          seq, C_);
}

BatchResult TransformerModel::train_batch(const Batch& batch,
                                          std::span<const kernels::SeedLayerView> views,
                                          std::span<kernels::SeedTelemetryAccum* const> tel) {
    check_batch(batch);
    const int32_t seq = batch.rows / batch.samples;
    forward(batch.tokens, batch.samples, seq, views, tel);
    const BatchResult r = loss(batch.targets, batch.rows);
    backward(batch.tokens, batch.samples, seq, views, tel);
    return r;
}

bool TransformerModel::widening_gradient(int32_t layer, const Batch& batch, std::span<float> g) {
    int32_t l = 0;
    while (l < n_layer() && blocks_[size_t(l)].widening_layer != layer) ++l;
    if (l == n_layer()) return false;
    ESPER_REQUIRE(int64_t(g.size()) == int64_t(C_) * C_, "g=", g.size(), " d_model=", C_);
    gradmax_block_ = l;
    gradmax_g_ = g.data();
    train_batch(batch, {}, {});
    gradmax_block_ = -1;
    gradmax_g_ = nullptr;
    return true;
}

BatchResult TransformerModel::eval_batch(const Batch& batch,
                                         std::span<const kernels::SeedLayerView> views) {
    check_batch(batch);
    forward(batch.tokens, batch.samples, batch.rows / batch.samples, views, {});
    return loss(batch.targets, batch.rows);
}

std::span<const float> TransformerModel::forward_logits(
    const int32_t* tokens, int32_t samples, int32_t seq,
    std::span<const kernels::SeedLayerView> views) {
    ESPER_REQUIRE(samples > 0 && seq >= 1 && seq <= T_, "forward_logits seq=", seq);
    forward(tokens, samples, seq, views, {});
    return {logits_.data(), size_t(samples) * size_t(seq) * kByteVocab};
}

// ---- KV-cache decoding ----

TransformerModel::KvCache TransformerModel::new_cache() const {
    const int64_t width = C_ + int64_t(Hmax_ + cfg_.widening_seeds) * Dh_;
    KvCache c;
    c.k.assign(blocks_.size(), std::vector<float>(size_t(T_) * width));
    c.v.assign(blocks_.size(), std::vector<float>(size_t(T_) * width));
    return c;
}

std::span<const float> TransformerModel::decode_step(
    KvCache& cache, int32_t token, std::span<const kernels::SeedLayerView> views) {
    ESPER_REQUIRE(cache.length < T_, "KV cache full: context ", T_);
    ESPER_REQUIRE(token >= 0 && token < kByteVocab, "token ", token);
    ESPER_REQUIRE(views.empty() || views.size() == sites_.size(), "views=", views.size());
    const int32_t pos = cache.length;
    const int64_t C = C_, D = Dh_;
    const int64_t width = C + int64_t(Hmax_ + cfg_.widening_seeds) * D;
    step_scratch_.resize(size_t(C) * 5 + size_t(3 * C) + size_t(F_) * 3 + kByteVocab + 8 +
                         size_t(Umax_) * 2);
    float* x = step_scratch_.data();
    float* a = x + C;
    float* att = a + C;
    float* m = att + C;
    float* xf = m + C;
    float* qkv = xf + C;
    float* f = qkv + 3 * C;
    float* h = f + F_;
    float* hs = h + F_;
    float* logits = hs + F_;
    float* stats = logits + kByteVocab;
    float* xu = stats + 8;
    kernels::embedding_forward_reference(&token, wte_.data(), wpe_.data() + int64_t(pos) * C, x, 1,
                                         1, C_);
    const float scale = 1.0f / std::sqrt(float(Dh_));
    std::vector<double> score(static_cast<size_t>(pos) + 1), acc(static_cast<size_t>(D));
    std::vector<float> tmp;
    // The reference's arithmetic (attention_reference.cpp) for the newest query of one head
    // whose keys/values sit at column `col` of the cache.
    auto attend = [&](const float* q, const std::vector<float>& kc, const std::vector<float>& vc,
                      int64_t col, float* out) {
        double mx = -INFINITY;
        for (int32_t j = 0; j <= pos; ++j) {
            score[size_t(j)] = dot(q, kc.data() + int64_t(j) * width + col, D) * scale;
            mx = std::max(mx, score[size_t(j)]);
        }
        double sum = 0.0;
        for (int32_t j = 0; j <= pos; ++j) sum += std::exp(score[size_t(j)] - mx);
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int32_t j = 0; j <= pos; ++j) {
            const double p = std::exp(score[size_t(j)] - mx) / sum;
            const float* v = vc.data() + int64_t(j) * width + col;
            for (int64_t i = 0; i < D; ++i) acc[size_t(i)] += p * v[i];
        }
        for (int64_t i = 0; i < D; ++i) out[i] = float(acc[size_t(i)]);
    };
    for (size_t l = 0; l < size_t(live_); ++l) {
        Block& b = blocks_[l];
        collect_widening(b, views);
        std::vector<float>& kc = cache.k[l];
        std::vector<float>& vc = cache.v[l];
        kernels::layernorm_forward_reference(x, b.ln1_w.data(), b.ln1_b.data(), a, stats, stats + 1,
                                             1, C_, kLnEps);
        linear(a, b.qkv_w.data(), qkv, 1, C_, 3 * C_);
        add_bias(qkv, b.qkv_b.data(), 1, 3 * C_);
        for (const Widening& w : b.loras) {
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            tmp.resize(size_t(w.hidden));
            linear(a, w.p + o.in_w, tmp.data(), 1, C_, int32_t(w.hidden));
            if (w.a_fwd != 0.0f)
                linear(tmp.data(), w.p + o.out_w, qkv, 1, int32_t(w.hidden), 3 * C_, 1.0f, w.a_fwd);
        }
        std::memcpy(kc.data() + int64_t(pos) * width, qkv + C, size_t(C) * sizeof(float));
        std::memcpy(vc.data() + int64_t(pos) * width, qkv + 2 * C, size_t(C) * sizeof(float));
        for (int32_t hd = 0; hd < H_; ++hd) attend(qkv + hd * D, kc, vc, hd * D, att + hd * D);
        add_bias(x, b.proj_b.data(), 1, C_);
        linear(att, b.proj_w.data(), x, 1, C_, C_, 1.0f);
        ESPER_REQUIRE(int64_t(b.heads.size()) <= Hmax_ + cfg_.widening_seeds, "heads");
        for (size_t j = 0; j < b.heads.size(); ++j) {
            const Widening& w = b.heads[j];
            const WideningOffsets o = widening_offsets(w.kind, C, D);
            tmp.resize(size_t(4 * D));
            linear(a, w.p + o.in_w, tmp.data(), 1, C_, int32_t(3 * D));
            add_bias(tmp.data(), w.p + o.in_b, 1, int32_t(3 * D));
            const int64_t col = C + int64_t(j) * D;
            std::memcpy(kc.data() + int64_t(pos) * width + col, tmp.data() + D,
                        size_t(D) * sizeof(float));
            std::memcpy(vc.data() + int64_t(pos) * width + col, tmp.data() + 2 * D,
                        size_t(D) * sizeof(float));
            attend(tmp.data(), kc, vc, col, tmp.data() + 3 * D);
            if (w.a_fwd != 0.0f)
                linear(tmp.data() + 3 * D, w.p + o.out_w, x, 1, Dh_, C_, 1.0f, w.a_fwd);
        }
        kernels::layernorm_forward_reference(x, b.ln2_w.data(), b.ln2_b.data(), m, stats + 2,
                                             stats + 3, 1, C_, kLnEps);
        linear(m, b.fc_w.data(), f, 1, C_, F_);
        kernels::bias_act_forward_reference(f, b.fc_b.data(), h, 1, F_, kGelu);
        if (views.empty() || b.chunk_layer < 0) {
            std::memcpy(hs, h, size_t(F_) * sizeof(float));
        } else {
            const kernels::SeedLayerView& v = views[size_t(b.chunk_layer)];
            ESPER_REQUIRE(v.batch == 1 && v.width == F_, "decode view batch=", v.batch);
            kernels::seed_forward_reference(v, h, hs, nullptr);
        }
        add_bias(x, b.fc2_b.data(), 1, C_);
        linear(hs, b.fc2_w.data(), x, 1, F_, C_, 1.0f);
        if (const int32_t u = b.units_active; u > 0) {
            linear(m, b.xu_v.data(), xu, 1, C_, u);
            kernels::bias_act_forward_reference(xu, b.xu_c.data(), xu + Umax_, 1, u, kGelu);
            linear_dx(xu + Umax_, b.xu_u.data(), x, 1, C_, u, 1.0f);
        }
        for (const Widening& w : b.units) {
            const WideningOffsets o = widening_offsets(w.kind, C, w.hidden);
            const auto k = int32_t(w.hidden);
            tmp.resize(size_t(2 * k));
            linear(m, w.p + o.in_w, tmp.data(), 1, C_, k);
            kernels::bias_act_forward_reference(tmp.data(), w.p + o.in_b, tmp.data() + k, 1, k,
                                                kGelu);
            if (w.a_fwd != 0.0f) linear(tmp.data() + k, w.p + o.out_w, x, 1, k, C_, 1.0f, w.a_fwd);
        }
    }
    kernels::layernorm_forward_reference(x, lnf_w_.data(), lnf_b_.data(), xf, stats + 4, stats + 5,
                                         1, C_, kLnEps);
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    linear(xf, head.data(), logits, 1, C_, kByteVocab);
    cache.length = pos + 1;
    return {logits, size_t(kByteVocab)};
}

}  // namespace esper::kasmina
