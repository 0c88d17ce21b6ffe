// MLP host network on the CPU (see mlp.h).
#include "kasmina/model/mlp.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/check.h"
#include "core/error.h"
#include "kasmina/model/blueprints.h"
#include "kernels/softmax_xent.h"

namespace esper::kasmina {

namespace {
// y[n, out] = beta·y + alpha · x[n, in] · W[out, in]ᵀ
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
// dx[n, in] = beta·dx + alpha · dy[n, out] · W[out, in]
void linear_dx(const float* dy, const float* w, float* dx, int32_t n, int32_t in, int32_t out,
               float beta = 0.0f, float alpha = 1.0f) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, in, out, alpha, dy, out, w, in, beta,
                dx, in);
}
double dot(const float* a, const float* b, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
    return s;
}
}  // namespace

kernels::Activation kernel_activation(Activation a) {
    return a == Activation::kGelu ? kernels::Activation::kGeluTanh : kernels::Activation::kRelu;
}

// ---- LinearLayer ----

LinearLayer::LinearLayer(std::string name, int64_t in, int64_t out, kernels::Activation act,
                         Rng& rng)
    : name_(std::move(name)),
      in_(in),
      out_(out),
      act_(act),
      w_({out, in}),
      b_({out}),
      dw_({out, in}),
      db_({out}) {
    const float bound = 1.0f / std::sqrt(static_cast<float>(in));
    for (int64_t i = 0; i < w_.numel(); ++i) w_[i] = rng.uniform(-bound, bound);
    for (int64_t i = 0; i < b_.numel(); ++i) b_[i] = rng.uniform(-bound, bound);
}

void LinearLayer::forward(const float* x, int32_t batch, float* y) {
    forward_linear(x, batch);
    forward_act(batch, y);
}

void LinearLayer::forward_linear(const float* x, int32_t batch) {
    const size_t n = size_t(batch) * size_t(out_);
    if (z_.size() < n) z_.resize(n);
    // z[B, out] = x[B, in] · Wᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, int(out_), int(in_), 1.0f, x,
                int(in_), w_.data(), int(in_), 0.0f, z_.data(), int(out_));
}

void LinearLayer::forward_act(int32_t batch, float* y) {
    kernels::bias_act_forward_reference(z_.data(), b_.data(), y, batch, int32_t(out_), act_);
}

void LinearLayer::backward(const float* x, const float* dy, int32_t batch, float* dx) {
    const size_t n = size_t(batch) * size_t(out_);
    if (dz_.size() < n) dz_.resize(n);
    kernels::bias_act_backward_reference(dy, z_.data(), dz_.data(), db_.data(), batch,
                                         int32_t(out_), act_);
    // dW[out, in] = dzᵀ · x
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(out_), int(in_), batch, 1.0f,
                dz_.data(), int(out_), x, int(in_), 0.0f, dw_.data(), int(in_));
    if (dx != nullptr)  // dx[B, in] = dz · W
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, int(in_), int(out_), 1.0f,
                    dz_.data(), int(out_), w_.data(), int(in_), 0.0f, dx, int(in_));
}

void LinearLayer::collect_params(std::vector<ParamRef>& out) {
    out.push_back({name_ + ".weight", &w_, &dw_});
    out.push_back({name_ + ".bias", &b_, &db_});
}

// ---- MlpModel ----

MlpModel::MlpModel(const ModelConfig& config, int64_t in_features, int64_t classes, uint64_t seed)
    : in_features_(in_features), classes_(classes) {
    ESPER_CHECK_INPUT(!config.hidden.empty(), "model.hidden: at least one hidden layer is needed");
    ESPER_CHECK_INPUT(in_features > 0 && classes > 1, "data: ", in_features, " features and ",
                      classes, " classes cannot train a classifier");
    ESPER_CHECK_INPUT(config.widening_seeds >= 0 && config.max_extra_units >= 0,
                      "model.widening_seeds and model.max_extra_units cannot be negative");
    Rng rng(mix_seed(seed, 0x40de1));
    act_ = kernel_activation(config.activation);
    max_extra_ = config.max_extra_units;
    int64_t prev = in_features;
    for (size_t l = 0; l < config.hidden.size(); ++l) {
        hidden_.push_back(std::make_unique<LinearLayer>("hidden" + std::to_string(l), prev,
                                                        config.hidden[l], act_, rng));
        prev = config.hidden[l];
    }
    head_ =
        std::make_unique<LinearLayer>("head", prev, classes, kernels::Activation::kIdentity, rng);
    for (auto& layer : hidden_) layer->collect_params(params_);
    head_->collect_params(params_);
    // The reserved room after every fixed parameter, so the order of those (the CUDA backend's
    // and older checkpoints') does not change; zero and unused until a fold.
    extras_.resize(hidden_.size());
    for (size_t l = 0; l < hidden_.size() && max_extra_ > 0; ++l) {
        Extra& e = extras_[l];
        const int64_t in = hidden_[l]->in_features(), out = out_next(l);
        e.v = Tensor({max_extra_, in});
        e.c = Tensor({max_extra_});
        e.u = Tensor({max_extra_, out});
        e.dv = Tensor({max_extra_, in});
        e.dc = Tensor({max_extra_});
        e.du = Tensor({max_extra_, out});
        const std::string p = "hidden" + std::to_string(l) + ".extra";
        params_.push_back({p + ".weight", &e.v, &e.dv});
        params_.push_back({p + ".bias", &e.c, &e.dc});
        params_.push_back({p + ".out.weight_t", &e.u, &e.du});
    }
    for (const auto& layer : hidden_)
        sites_.push_back({layer->out_features(), layer->in_features()});
    widening_layer_.assign(hidden_.size(), -1);
    for (size_t l = 0; l < hidden_.size() && config.widening_seeds > 0; ++l) {
        widening_layer_[l] = int32_t(sites_.size());
        sites_.push_back({config.widening_seeds, hidden_[l]->in_features(), SiteKind::kWidening, 0,
                          out_next(l)});
    }
    h_.resize(hidden_.size());
    y_.resize(hidden_.size());
    dh_.resize(hidden_.size());
    dy_.resize(hidden_.size());
}

int64_t MlpModel::out_next(size_t l) const {
    return l + 1 < hidden_.size() ? hidden_[l + 1]->out_features() : head_->out_features();
}

int64_t MlpModel::param_count() const {
    int64_t n = Model::param_count();
    for (size_t l = 0; l < extras_.size() && max_extra_ > 0; ++l)
        n -= (max_extra_ - extras_[l].active) * (hidden_[l]->in_features() + 1 + out_next(l));
    return n;
}

std::vector<int64_t> MlpModel::structure() const {
    std::vector<int64_t> s;
    if (max_extra_ == 0) return s;  // a fixed host: checkpoints as before
    for (const Extra& e : extras_) s.push_back(e.active);
    return s;
}

void MlpModel::set_structure(std::span<const int64_t> s) {
    if (max_extra_ == 0) return Model::set_structure(s);
    if (s.size() != extras_.size())
        ESPER_THROW(kIntegrity, "checkpoint: host structure of ", s.size(), " values, this ",
                    extras_.size(), "-layer MLP keeps ", extras_.size());
    for (size_t l = 0; l < s.size(); ++l)
        if (s[l] < 0 || s[l] > max_extra_)
            ESPER_THROW(kIntegrity, "checkpoint: hidden layer ", l, " uses ", s[l],
                        " extra units; this model reserves ", max_extra_,
                        " (model.max_extra_units)");
    for (size_t l = 0; l < s.size(); ++l) extras_[l].active = int32_t(s[l]);
}

bool MlpModel::fold_widening(int32_t layer, BlueprintKind kind, std::span<const float> params) {
    const auto it = std::find(widening_layer_.begin(), widening_layer_.end(), layer);
    if (it == widening_layer_.end() || kind != BlueprintKind::kMlpUnits) return false;
    const auto l = size_t(it - widening_layer_.begin());
    Extra& e = extras_[l];
    const int64_t in = hidden_[l]->in_features(), out = out_next(l);
    const int64_t k = int64_t(params.size()) / (in + 1 + out);
    const WideningOffsets o = widening_offsets(kind, in, k, out);
    ESPER_REQUIRE(o.floats == int64_t(params.size()), "mlp_units slot of ", params.size());
    if (e.active + k > max_extra_) return false;
    for (int64_t j = 0; j < k; ++j) {
        const int64_t row = e.active + j;
        std::copy_n(params.data() + o.in_w + j * in, in, e.v.data() + row * in);
        e.c[row] = params[size_t(o.in_b + j)];
        for (int64_t i = 0; i < out; ++i)  // U [out, k]: column j is the unit's output
            e.u[row * out + i] = params[size_t(o.out_w + i * k + j)];
    }
    e.active += int32_t(k);
    return true;
}

void MlpModel::collect_units(int32_t l, std::span<const kernels::SeedLayerView> views) {
    Extra& e = extras_[size_t(l)];
    const int64_t in = hidden_[size_t(l)]->in_features(), out = out_next(size_t(l));
    e.units.resize(e.active > 0 ? 1 : 0);
    if (e.active > 0) {
        Units& u = e.units[0];
        u.seed = -1;
        u.a_fwd = u.a_grad = u.a_in = 1.0f;
        u.v = e.v.data();
        u.c = e.c.data();
        u.u = e.u.data();
        u.gv = e.dv.data();
        u.gc = e.dc.data();
        u.gu = e.du.data();
        u.k = e.active;
    }
    const int32_t wl = widening_layer_[size_t(l)];
    if (views.empty() || wl < 0) return;
    const kernels::SeedLayerView& v = views[size_t(wl)];
    for (int32_t s = 0; s < v.num_seeds; ++s) {
        const auto stage = SeedStage(v.stage[s]);
        if (!kernels::stage_runs_blueprint(stage) || v.slot[s] < 0) continue;
        const auto kind = BlueprintKind(v.kind[s]);
        if (kind != BlueprintKind::kMlpUnits) continue;
        const kernels::BlueprintArena& a = v.arenas[int(kind)];
        const WideningOffsets o = widening_offsets(kind, in, a.hidden, out);
        Units& u = e.units.emplace_back();
        u.seed = s;
        u.a_fwd = kernels::stage_forward_alpha(stage, v.alpha[s]);
        u.a_grad = kernels::stage_blueprint_grad_scale(stage, v.alpha[s]);
        u.a_in = kernels::stage_input_grad_alpha(stage, v.alpha[s]);
        const float* p = a.params + int64_t(v.slot[s]) * a.stride;
        float* g = a.grads == nullptr ? nullptr : a.grads + int64_t(v.slot[s]) * a.stride;
        u.v = p + o.in_w;
        u.c = p + o.in_b;
        u.u = p + o.out_w;
        u.gv = g == nullptr ? nullptr : g + o.in_w;
        u.gc = g == nullptr ? nullptr : g + o.in_b;
        u.gu = g == nullptr ? nullptr : g + o.out_w;
        u.k = a.hidden;
    }
}

void MlpModel::units_forward(int32_t l, const float* x, int32_t batch, float* z) {
    const auto in = int32_t(hidden_[size_t(l)]->in_features());
    const auto out = int32_t(out_next(size_t(l)));
    for (Units& u : extras_[size_t(l)].units) {
        u.pre.resize(size_t(batch) * size_t(u.k));
        u.act.resize(size_t(batch) * size_t(u.k));
        linear(x, u.v, u.pre.data(), batch, in, u.k);
        kernels::bias_act_forward_reference(u.pre.data(), u.c, u.act.data(), batch, u.k, act_);
        if (u.seed < 0)  // folded: z += act · u[k, out]
            linear_dx(u.act.data(), u.u, z, batch, out, u.k, 1.0f);
        else if (u.a_fwd != 0.0f)  // seed: z += a · act · U[out, k]ᵀ
            linear(u.act.data(), u.u, z, batch, u.k, out, 1.0f, u.a_fwd);
    }
}

void MlpModel::units_backward(int32_t l, const float* x, int32_t batch, const float* dz, float* dx,
                              kernels::SeedTelemetryAccum* tel) {
    Extra& e = extras_[size_t(l)];
    const auto in = int32_t(hidden_[size_t(l)]->in_features());
    const auto out = int32_t(out_next(size_t(l)));
    if (max_extra_ > 0) {  // gradients are overwritten: the unused room's stay zero
        e.dv.fill(0.0f);
        e.dc.fill(0.0f);
        e.du.fill(0.0f);
    }
    std::vector<float> g1;
    for (Units& u : e.units) {
        g1.resize(size_t(batch) * size_t(u.k));
        gb_.assign(size_t(u.k), 0.0f);
        if (u.seed < 0) {
            linear(dz, u.u, g1.data(), batch, out, u.k);  // ∂L/∂act
            linear_dw(dz, u.act.data(), u.gu, batch, out, u.k);
        } else {
            linear_dx(dz, u.u, g1.data(), batch, u.k, out);  // ∂L/∂act as if α = 1
            if (tel != nullptr) {
                tel->contribution[u.seed] -=
                    u.a_fwd * dot(u.act.data(), g1.data(), int64_t(batch) * u.k);
                tel->grad_sq[u.seed] += dot(g1.data(), g1.data(), int64_t(batch) * u.k);
            }
            if (u.gu != nullptr && u.a_grad != 0.0f)
                linear_dw(u.act.data(), dz, u.gu, batch, u.k, out, u.a_grad);
        }
        kernels::bias_act_backward_reference(g1.data(), u.pre.data(), g1.data(), gb_.data(), batch,
                                             u.k, act_);
        const float a_grad = u.seed < 0 ? 1.0f : u.a_grad;
        if (u.gv != nullptr && a_grad != 0.0f) {
            for (int32_t j = 0; j < u.k; ++j) u.gc[j] += a_grad * gb_[size_t(j)];
            linear_dw(x, g1.data(), u.gv, batch, in, u.k, a_grad);
        }
        const float a_in = u.seed < 0 ? 1.0f : u.a_in;
        if (dx != nullptr && a_in != 0.0f)
            linear_dx(g1.data(), u.v, dx, batch, in, u.k, 1.0f, a_in);
    }
}

void MlpModel::ensure_batch(int32_t batch) {
    if (batch <= capacity_) return;
    widening_.resize(hidden_.size());
    for (size_t l = 0; l < hidden_.size(); ++l) {
        const size_t n = size_t(batch) * size_t(hidden_[l]->out_features());
        h_[l].resize(n);
        y_[l].resize(n);
        dh_[l].resize(n);
        dy_[l].resize(n);
    }
    logits_.resize(size_t(batch) * size_t(classes_));
    dlogits_.resize(size_t(batch) * size_t(classes_));
    capacity_ = batch;
}

std::span<const float> MlpModel::hidden_output(int32_t l) const {
    return {h_[l].data(), h_[l].size()};
}
std::span<const float> MlpModel::seed_output(int32_t l) const {
    return {y_[l].data(), y_[l].size()};
}

void MlpModel::forward(const float* x, int32_t batch, std::span<const kernels::SeedLayerView> views,
                       std::span<kernels::SeedTelemetryAccum* const> tel) {
    ESPER_REQUIRE(views.empty() || views.size() == sites_.size(), "views=", views.size());
    ensure_batch(batch);
    const float* in = x;
    const float* prev_in = nullptr;  // the input of hidden layer l - 1 (its units read it)
    for (size_t l = 0; l < hidden_.size(); ++l) {
        collect_units(int32_t(l), views);
        hidden_[l]->forward_linear(in, batch);
        if (l > 0) units_forward(int32_t(l - 1), prev_in, batch, hidden_[l]->preact());
        hidden_[l]->forward_act(batch, h_[l].data());
        if (views.empty()) {
            std::memcpy(y_[l].data(), h_[l].data(),
                        size_t(batch) * size_t(hidden_[l]->out_features()) * sizeof(float));
        } else {
            ESPER_REQUIRE(views[l].batch == batch && views[l].width == hidden_[l]->out_features(),
                          "layer ", l, " view batch=", views[l].batch, " width=", views[l].width);
            kernels::SeedLayerView v = views[l];
            if (v.input_width > 0) {
                ESPER_REQUIRE(v.input_width == hidden_[l]->in_features(), "layer ", l,
                              " input_width=", v.input_width);
                v.input = in;  // layer-input (widening) blueprints read what the layer reads
            }
            kernels::seed_forward_reference(widening_[l].mask(v), h_[l].data(), y_[l].data(),
                                            tel.empty() ? nullptr : tel[l]);
            widening_[l].forward(v, y_[l].data());
        }
        prev_in = in;
        in = y_[l].data();
    }
    head_->forward_linear(in, batch);
    units_forward(int32_t(hidden_.size() - 1), prev_in, batch, head_->preact());
    head_->forward_act(batch, logits_.data());
    // Widening sites' activation telemetry: live seeds measure their units, the others the
    // layer's hidden units (what a germination there would see).
    for (size_t l = 0; l < hidden_.size() && !tel.empty(); ++l) {
        const int32_t wl = widening_layer_[l];
        if (wl < 0 || tel[size_t(wl)] == nullptr) continue;
        const int32_t n = views.empty() ? 0 : views[size_t(wl)].num_seeds;
        std::vector<uint8_t> live(size_t(n), 0);
        for (const Units& u : extras_[l].units) {
            if (u.seed < 0) continue;
            live[size_t(u.seed)] = 1;
            merge_activation_stats(tel[size_t(wl)], u.seed, u.act.data(), int64_t(u.act.size()));
        }
        for (int32_t s = 0; s < n; ++s)
            if (!live[size_t(s)])
                merge_activation_stats(tel[size_t(wl)], s, h_[l].data(),
                                       int64_t(batch) * hidden_[l]->out_features());
    }
}

BatchResult MlpModel::train_batch(const Batch& data, std::span<const kernels::SeedLayerView> views,
                                  std::span<kernels::SeedTelemetryAccum* const> tel) {
    ESPER_REQUIRE(data.features != nullptr && data.targets != nullptr && data.rows == data.samples,
                  "mlp batch: samples=", data.samples, " rows=", data.rows);
    const float* x = data.features;
    const int32_t* y = data.targets;
    const int32_t batch = data.rows;
    forward(x, batch, views, tel);
    BatchResult r;
    r.rows = batch;
    float loss = 0.0f;
    kernels::softmax_xent_reference(logits_.data(), y, batch, int32_t(classes_), &loss,
                                    dlogits_.data(), &r.correct);
    r.loss = loss;
    const size_t L = hidden_.size();
    head_->backward(y_[L - 1].data(), dlogits_.data(), batch, dy_[L - 1].data());
    for (size_t l = L; l-- > 0;) {
        const float* in = l == 0 ? x : y_[l - 1].data();
        const float* dz_next = l + 1 < L ? hidden_[l + 1]->preact_grad() : head_->preact_grad();
        const int32_t wl = widening_layer_[l];
        kernels::SeedTelemetryAccum* wtel = tel.empty() || wl < 0 ? nullptr : tel[size_t(wl)];
        // Layer-input blueprints also send gradient to the layer's input (none for the data).
        const bool seed_din = !views.empty() && views[l].input_width > 0 && l > 0;
        if (views.empty()) {
            std::memcpy(dh_[l].data(), dy_[l].data(),
                        size_t(batch) * size_t(hidden_[l]->out_features()) * sizeof(float));
        } else {
            kernels::SeedLayerView v = views[l];
            if (v.input_width > 0) v.input = in;
            if (seed_din) din_.assign(size_t(batch) * size_t(v.input_width), 0.0f);
            kernels::seed_backward_reference(widening_[l].mask(v), h_[l].data(), dy_[l].data(),
                                             dh_[l].data(), tel.empty() ? nullptr : tel[l]);
            widening_[l].backward(v, dy_[l].data(), seed_din ? din_.data() : nullptr,
                                  tel.empty() ? nullptr : tel[l]);
        }
        hidden_[l]->backward(in, dh_[l].data(), batch, l == 0 ? nullptr : dy_[l - 1].data());
        units_backward(int32_t(l), in, batch, dz_next, l == 0 ? nullptr : dy_[l - 1].data(), wtel);
        if (seed_din) {
            float* d = dy_[l - 1].data();
            for (size_t i = 0; i < din_.size(); ++i) d[i] += din_[i];
        }
    }
    return r;
}

bool MlpModel::widening_gradient(int32_t layer, const Batch& batch, std::span<float> g) {
    const auto it = std::find(widening_layer_.begin(), widening_layer_.end(), layer);
    if (it == widening_layer_.end()) return false;
    const auto l = size_t(it - widening_layer_.begin());
    const int64_t in = hidden_[l]->in_features(), out = out_next(l);
    ESPER_REQUIRE(int64_t(g.size()) == out * in, "g=", g.size(), " out=", out, " in=", in);
    train_batch(batch, {}, {});
    const float* dz = l + 1 < hidden_.size() ? hidden_[l + 1]->preact_grad() : head_->preact_grad();
    const float* x = l == 0 ? batch.features : y_[l - 1].data();
    linear_dw(x, dz, g.data(), batch.rows, int32_t(in), int32_t(out));
    return true;
}

BatchResult MlpModel::eval_batch(const Batch& data, std::span<const kernels::SeedLayerView> views) {
    ESPER_REQUIRE(data.features != nullptr && data.targets != nullptr && data.rows == data.samples,
                  "mlp batch: samples=", data.samples, " rows=", data.rows);
    const float* x = data.features;
    const int32_t* y = data.targets;
    const int32_t batch = data.rows;
    forward(x, batch, views, {});
    BatchResult r;
    r.rows = batch;
    float loss = 0.0f;
    kernels::softmax_xent_reference(logits_.data(), y, batch, int32_t(classes_), &loss,
                                    dlogits_.data(), &r.correct);
    r.loss = loss;
    return r;
}

}  // namespace esper::kasmina
