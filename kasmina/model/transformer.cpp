// Transformer host on the CPU (see transformer.h). Row-major throughout; rows = samples · seq.
#include "kasmina/model/transformer.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/error.h"
#include "kernels/attention.h"
#include "kernels/bias_act.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "kernels/softmax_xent.h"

namespace esper::kasmina {

namespace {

constexpr float kLnEps = 1e-5f;

// y[n, out] = x[n, in] · W[out, in]ᵀ + beta · y
void linear(const float* x, const float* w, float* y, int32_t n, int32_t in, int32_t out,
            float beta = 0.0f) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, w, in, beta, y,
                out);
}
// dW[out, in] += dy[n, out]ᵀ · x[n, in]
void linear_dw(const float* x, const float* dy, float* dw, int32_t n, int32_t in, int32_t out) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, n, 1.0f, dy, out, x, in, 1.0f,
                dw, in);
}
// dx[n, in] = dy[n, out] · W[out, in] + beta · dx
void linear_dx(const float* dy, const float* w, float* dx, int32_t n, int32_t in, int32_t out,
               float beta = 0.0f) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, 1.0f, dy, out, w, in, beta,
                dx, in);
}
void add_bias(float* y, const float* b, int32_t n, int32_t cols) {
    for (int32_t r = 0; r < n; ++r)
        for (int32_t c = 0; c < cols; ++c) y[int64_t(r) * cols + c] += b[c];
}
// db[cols] += Σ_r dy[r, :]
void bias_grad(const float* dy, float* db, int32_t n, int32_t cols) {
    for (int32_t r = 0; r < n; ++r)
        for (int32_t c = 0; c < cols; ++c) db[c] += dy[int64_t(r) * cols + c];
}

void normal_init(Tensor& t, Rng& rng, float std) {
    for (int64_t i = 0; i < t.numel(); ++i) t[i] = rng.normal() * std;
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
    ESPER_CHECK_INPUT(config.seeds_per_layer <= F_, "model.seeds_per_layer: ",
                      config.seeds_per_layer, " exceeds the ", F_,
                      " MLP hidden units of a block (S > D)");
    Rng rng(mix_seed(seed, 0x7f3a));
    const float proj_std = 0.02f / std::sqrt(2.0f * float(c.n_layer));
    auto param = [](Tensor& t, Tensor& g, std::vector<int64_t> shape) {
        t = Tensor(shape);
        g = Tensor(std::move(shape));
    };
    param(wte_, d_wte_, {kByteVocab, C_});
    param(wpe_, d_wpe_, {T_, C_});
    normal_init(wte_, rng, 0.02f);
    normal_init(wpe_, rng, 0.02f);
    params_.push_back({"wte", &wte_, &d_wte_});
    params_.push_back({"wpe", &wpe_, &d_wpe_});
    blocks_.resize(size_t(c.n_layer));
    for (size_t l = 0; l < blocks_.size(); ++l) {
        Block& b = blocks_[l];
        const std::string p = "block" + std::to_string(l) + ".";
        param(b.ln1_w, b.d_ln1_w, {C_});
        param(b.ln1_b, b.d_ln1_b, {C_});
        param(b.qkv_w, b.d_qkv_w, {3 * C_, C_});
        param(b.qkv_b, b.d_qkv_b, {3 * C_});
        param(b.proj_w, b.d_proj_w, {C_, C_});
        param(b.proj_b, b.d_proj_b, {C_});
        param(b.ln2_w, b.d_ln2_w, {C_});
        param(b.ln2_b, b.d_ln2_b, {C_});
        param(b.fc_w, b.d_fc_w, {F_, C_});
        param(b.fc_b, b.d_fc_b, {F_});
        param(b.fc2_w, b.d_fc2_w, {C_, F_});
        param(b.fc2_b, b.d_fc2_b, {C_});
        b.ln1_w.fill(1.0f);
        b.ln2_w.fill(1.0f);
        normal_init(b.qkv_w, rng, 0.02f);
        normal_init(b.proj_w, rng, proj_std);
        normal_init(b.fc_w, rng, 0.02f);
        normal_init(b.fc2_w, rng, proj_std);
        params_.push_back({p + "ln1.weight", &b.ln1_w, &b.d_ln1_w});
        params_.push_back({p + "ln1.bias", &b.ln1_b, &b.d_ln1_b});
        params_.push_back({p + "attn.qkv.weight", &b.qkv_w, &b.d_qkv_w});
        params_.push_back({p + "attn.qkv.bias", &b.qkv_b, &b.d_qkv_b});
        params_.push_back({p + "attn.proj.weight", &b.proj_w, &b.d_proj_w});
        params_.push_back({p + "attn.proj.bias", &b.proj_b, &b.d_proj_b});
        params_.push_back({p + "ln2.weight", &b.ln2_w, &b.d_ln2_w});
        params_.push_back({p + "ln2.bias", &b.ln2_b, &b.d_ln2_b});
        params_.push_back({p + "mlp.fc.weight", &b.fc_w, &b.d_fc_w});
        params_.push_back({p + "mlp.fc.bias", &b.fc_b, &b.d_fc_b});
        params_.push_back({p + "mlp.proj.weight", &b.fc2_w, &b.d_fc2_w});
        params_.push_back({p + "mlp.proj.bias", &b.fc2_b, &b.d_fc2_b});
        sites_.push_back({F_, C_});  // the seed layer over the block's MLP hidden units
    }
    param(lnf_w_, d_lnf_w_, {C_});
    param(lnf_b_, d_lnf_b_, {C_});
    lnf_w_.fill(1.0f);
    params_.push_back({"lnf.weight", &lnf_w_, &d_lnf_w_});
    params_.push_back({"lnf.bias", &lnf_b_, &d_lnf_b_});
    if (!c.tie_embeddings) {
        param(head_w_, d_head_w_, {kByteVocab, C_});
        normal_init(head_w_, rng, 0.02f);
        params_.push_back({"head.weight", &head_w_, &d_head_w_});
    }
}

void TransformerModel::ensure_rows(int32_t samples, int32_t seq) {
    samples_ = samples;
    seq_ = seq;
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

void TransformerModel::forward(const int32_t* tokens, int32_t samples, int32_t seq,
                               std::span<const kernels::SeedLayerView> views,
                               std::span<kernels::SeedTelemetryAccum* const> tel) {
    ESPER_REQUIRE(views.empty() || views.size() == blocks_.size(), "views=", views.size());
    ensure_rows(samples, seq);
    const int32_t n = samples * seq;
    kernels::embedding_forward_reference(tokens, wte_.data(), wpe_.data(), blocks_[0].x_in.data(),
                                         samples, seq, C_);
    kernels::AttentionShape shape;
    shape.batch = samples;
    shape.seq = seq;
    shape.heads = H_;
    shape.head_dim = Dh_;
    shape.ld_qkv = 3 * C_;
    shape.ld_out = C_;
    shape.scale = 1.0f / std::sqrt(float(Dh_));
    for (size_t l = 0; l < blocks_.size(); ++l) {
        Block& b = blocks_[l];
        kernels::layernorm_forward_reference(b.x_in.data(), b.ln1_w.data(), b.ln1_b.data(),
                                             b.a.data(), b.mean1.data(), b.rstd1.data(), n, C_,
                                             kLnEps);
        linear(b.a.data(), b.qkv_w.data(), b.qkv.data(), n, C_, 3 * C_);
        add_bias(b.qkv.data(), b.qkv_b.data(), n, 3 * C_);
        kernels::attention_forward_reference(shape, b.qkv.data(), b.qkv.data() + C_,
                                             b.qkv.data() + 2 * C_, b.att.data(), b.lse.data());
        std::memcpy(b.x_mid.data(), b.x_in.data(), size_t(n) * C_ * sizeof(float));
        add_bias(b.x_mid.data(), b.proj_b.data(), n, C_);
        linear(b.att.data(), b.proj_w.data(), b.x_mid.data(), n, C_, C_, 1.0f);
        kernels::layernorm_forward_reference(b.x_mid.data(), b.ln2_w.data(), b.ln2_b.data(),
                                             b.m.data(), b.mean2.data(), b.rstd2.data(), n, C_,
                                             kLnEps);
        linear(b.m.data(), b.fc_w.data(), b.f.data(), n, C_, F_);
        kernels::bias_act_forward_reference(b.f.data(), b.fc_b.data(), b.h.data(), n, F_,
                                            kernels::Activation::kGeluTanh);
        if (views.empty()) {
            std::memcpy(b.hs.data(), b.h.data(), size_t(n) * F_ * sizeof(float));
        } else {
            ESPER_REQUIRE(views[l].batch == n && views[l].width == F_, "block ", l,
                          " view batch=", views[l].batch, " width=", views[l].width);
            kernels::seed_forward_reference(views[l], b.h.data(), b.hs.data(),
                                            tel.empty() ? nullptr : tel[l]);
        }
        float* out = l + 1 < blocks_.size() ? blocks_[l + 1].x_in.data() : x_out_.data();
        std::memcpy(out, b.x_mid.data(), size_t(n) * C_ * sizeof(float));
        add_bias(out, b.fc2_b.data(), n, C_);
        linear(b.hs.data(), b.fc2_w.data(), out, n, F_, C_, 1.0f);
    }
    kernels::layernorm_forward_reference(x_out_.data(), lnf_w_.data(), lnf_b_.data(), xf_.data(),
                                         meanf_.data(), rstdf_.data(), n, C_, kLnEps);
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    linear(xf_.data(), head.data(), logits_.data(), n, C_, kByteVocab);
}

BatchResult TransformerModel::loss(const int32_t* targets, int32_t rows, bool /*with_grad*/) {
    BatchResult r;
    r.rows = rows;
    float l = 0.0f;
    kernels::softmax_xent_reference(logits_.data(), targets, rows, kByteVocab, &l,
                                    dlogits_.data(), &r.correct);
    r.loss = l;
    return r;
}

void TransformerModel::backward(const int32_t* tokens, int32_t samples, int32_t seq,
                                std::span<const kernels::SeedLayerView> views,
                                std::span<kernels::SeedTelemetryAccum* const> tel) {
    const int32_t n = samples * seq;
    for (const ParamRef& p : params_) p.grad->fill(0.0f);
    Tensor& d_head = cfg_.tie_embeddings ? d_wte_ : d_head_w_;
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    float* dxf = dtmp2_.data();
    linear_dx(dlogits_.data(), head.data(), dxf, n, C_, kByteVocab);
    linear_dw(xf_.data(), dlogits_.data(), d_head.data(), n, C_, kByteVocab);
    kernels::layernorm_backward_reference(dxf, x_out_.data(), lnf_w_.data(), meanf_.data(),
                                          rstdf_.data(), dx_.data(), d_lnf_w_.data(),
                                          d_lnf_b_.data(), n, C_);
    kernels::AttentionShape shape;
    shape.batch = samples;
    shape.seq = seq;
    shape.heads = H_;
    shape.head_dim = Dh_;
    shape.ld_qkv = 3 * C_;
    shape.ld_out = C_;
    shape.scale = 1.0f / std::sqrt(float(Dh_));
    float* dhs = dbig_.data();
    float* dh = dbig_.data() + size_t(n) * F_;
    for (size_t l = blocks_.size(); l-- > 0;) {
        Block& b = blocks_[l];
        // ---- MLP: out = x_mid + fc2(hs) ----
        linear_dw(b.hs.data(), dx_.data(), b.d_fc2_w.data(), n, F_, C_);
        bias_grad(dx_.data(), b.d_fc2_b.data(), n, C_);
        linear_dx(dx_.data(), b.fc2_w.data(), dhs, n, F_, C_);
        if (views.empty()) {
            std::memcpy(dh, dhs, size_t(n) * F_ * sizeof(float));
        } else {
            kernels::seed_backward_reference(views[l], b.h.data(), dhs, dh,
                                             tel.empty() ? nullptr : tel[l]);
        }
        // b.f holds fc(m) + bias (the pre-activation); dh becomes its gradient in place.
        kernels::bias_act_backward_reference(dh, b.f.data(), dh, b.d_fc_b.data(), n, F_,
                                             kernels::Activation::kGeluTanh);
        linear_dw(b.m.data(), dh, b.d_fc_w.data(), n, C_, F_);
        float* dm = dtmp2_.data();
        linear_dx(dh, b.fc_w.data(), dm, n, C_, F_);
        float* dln = dtmp_.data();
        kernels::layernorm_backward_reference(dm, b.x_mid.data(), b.ln2_w.data(), b.mean2.data(),
                                              b.rstd2.data(), dln, b.d_ln2_w.data(),
                                              b.d_ln2_b.data(), n, C_);
        for (int64_t i = 0; i < int64_t(n) * C_; ++i) dx_[size_t(i)] += dln[i];
        // ---- attention: x_mid = x_in + proj(att) ----
        linear_dw(b.att.data(), dx_.data(), b.d_proj_w.data(), n, C_, C_);
        bias_grad(dx_.data(), b.d_proj_b.data(), n, C_);
        float* datt = dtmp2_.data();
        linear_dx(dx_.data(), b.proj_w.data(), datt, n, C_, C_);
        float* dqkv = dtmp_.data();
        kernels::attention_backward_reference(shape, b.qkv.data(), b.qkv.data() + C_,
                                              b.qkv.data() + 2 * C_, b.att.data(), datt,
                                              b.lse.data(), dqkv, dqkv + C_, dqkv + 2 * C_);
        linear_dw(b.a.data(), dqkv, b.d_qkv_w.data(), n, C_, 3 * C_);
        bias_grad(dqkv, b.d_qkv_b.data(), n, 3 * C_);
        float* da = dtmp2_.data();
        linear_dx(dqkv, b.qkv_w.data(), da, n, C_, 3 * C_);
        kernels::layernorm_backward_reference(da, b.x_in.data(), b.ln1_w.data(), b.mean1.data(),
                                              b.rstd1.data(), dh, b.d_ln1_w.data(),
                                              b.d_ln1_b.data(), n, C_);
        for (int64_t i = 0; i < int64_t(n) * C_; ++i) dx_[size_t(i)] += dh[i];
    }
    kernels::embedding_backward_reference(tokens, dx_.data(), d_wte_.data(), d_wpe_.data(),
                                          samples, seq, C_);
}

BatchResult TransformerModel::train_batch(const Batch& batch,
                                          std::span<const kernels::SeedLayerView> views,
                                          std::span<kernels::SeedTelemetryAccum* const> tel) {
    check_batch(batch);
    const int32_t seq = batch.rows / batch.samples;
    forward(batch.tokens, batch.samples, seq, views, tel);
    const BatchResult r = loss(batch.targets, batch.rows, true);
    backward(batch.tokens, batch.samples, seq, views, tel);
    return r;
}

BatchResult TransformerModel::eval_batch(const Batch& batch,
                                         std::span<const kernels::SeedLayerView> views) {
    check_batch(batch);
    forward(batch.tokens, batch.samples, batch.rows / batch.samples, views, {});
    return loss(batch.targets, batch.rows, false);
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
    KvCache c;
    c.k.assign(blocks_.size(), std::vector<float>(size_t(T_) * C_));
    c.v.assign(blocks_.size(), std::vector<float>(size_t(T_) * C_));
    return c;
}

std::span<const float> TransformerModel::decode_step(KvCache& cache, int32_t token,
                                                     std::span<const kernels::SeedLayerView> views) {
    ESPER_REQUIRE(cache.length < T_, "KV cache full: context ", T_);
    ESPER_REQUIRE(token >= 0 && token < kByteVocab, "token ", token);
    ESPER_REQUIRE(views.empty() || views.size() == blocks_.size(), "views=", views.size());
    const int32_t pos = cache.length;
    // One row of every activation: x, a, qkv, att, m, f, h, hs, and the LN statistics.
    step_scratch_.resize(size_t(C_) * 5 + size_t(3 * C_) + size_t(F_) * 3 + kByteVocab + 8);
    float* x = step_scratch_.data();
    float* a = x + C_;
    float* att = a + C_;
    float* m = att + C_;
    float* xf = m + C_;
    float* qkv = xf + C_;
    float* f = qkv + 3 * C_;
    float* h = f + F_;
    float* hs = h + F_;
    float* logits = hs + F_;
    float* stats = logits + kByteVocab;
    kernels::embedding_forward_reference(&token, wte_.data(), wpe_.data() + int64_t(pos) * C_, x,
                                         1, 1, C_);
    const float fscale = 1.0f / std::sqrt(float(Dh_));
    std::vector<double> score(static_cast<size_t>(pos) + 1), acc(static_cast<size_t>(Dh_));
    for (size_t l = 0; l < blocks_.size(); ++l) {
        Block& b = blocks_[l];
        kernels::layernorm_forward_reference(x, b.ln1_w.data(), b.ln1_b.data(), a, stats,
                                             stats + 1, 1, C_, kLnEps);
        linear(a, b.qkv_w.data(), qkv, 1, C_, 3 * C_);
        add_bias(qkv, b.qkv_b.data(), 1, 3 * C_);
        std::memcpy(cache.k[l].data() + int64_t(pos) * C_, qkv + C_, size_t(C_) * sizeof(float));
        std::memcpy(cache.v[l].data() + int64_t(pos) * C_, qkv + 2 * C_,
                    size_t(C_) * sizeof(float));
        // The reference's arithmetic for the last query row (attention_reference.cpp).
        for (int32_t hd = 0; hd < H_; ++hd) {
            const float* q = qkv + hd * Dh_;
            double mx = -INFINITY;
            for (int32_t j = 0; j <= pos; ++j) {
                const float* k = cache.k[l].data() + int64_t(j) * C_ + hd * Dh_;
                double d = 0.0;
                for (int32_t i = 0; i < Dh_; ++i) d += double(q[i]) * double(k[i]);
                score[size_t(j)] = d * fscale;
                mx = std::max(mx, score[size_t(j)]);
            }
            double sum = 0.0;
            for (int32_t j = 0; j <= pos; ++j) sum += std::exp(score[size_t(j)] - mx);
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int32_t j = 0; j <= pos; ++j) {
                const double p = std::exp(score[size_t(j)] - mx) / sum;
                const float* v = cache.v[l].data() + int64_t(j) * C_ + hd * Dh_;
                for (int32_t i = 0; i < Dh_; ++i) acc[size_t(i)] += p * v[i];
            }
            for (int32_t i = 0; i < Dh_; ++i) att[hd * Dh_ + i] = float(acc[size_t(i)]);
        }
        add_bias(x, b.proj_b.data(), 1, C_);
        linear(att, b.proj_w.data(), x, 1, C_, C_, 1.0f);
        kernels::layernorm_forward_reference(x, b.ln2_w.data(), b.ln2_b.data(), m, stats + 2,
                                             stats + 3, 1, C_, kLnEps);
        linear(m, b.fc_w.data(), f, 1, C_, F_);
        kernels::bias_act_forward_reference(f, b.fc_b.data(), h, 1, F_,
                                            kernels::Activation::kGeluTanh);
        if (views.empty()) {
            std::memcpy(hs, h, size_t(F_) * sizeof(float));
        } else {
            ESPER_REQUIRE(views[l].batch == 1 && views[l].width == F_, "decode view batch=",
                          views[l].batch);
            kernels::seed_forward_reference(views[l], h, hs, nullptr);
        }
        add_bias(x, b.fc2_b.data(), 1, C_);
        linear(hs, b.fc2_w.data(), x, 1, F_, C_, 1.0f);
    }
    kernels::layernorm_forward_reference(x, lnf_w_.data(), lnf_b_.data(), xf, stats + 4,
                                         stats + 5, 1, C_, kLnEps);
    const Tensor& head = cfg_.tie_embeddings ? wte_ : head_w_;
    linear(xf, head.data(), logits, 1, C_, kByteVocab);
    cache.length = pos + 1;
    return {logits, size_t(kByteVocab)};
}

}  // namespace esper::kasmina
