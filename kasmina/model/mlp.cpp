// MLP host network on the CPU (see mlp.h).
#include "kasmina/model/mlp.h"

#include <cblas.h>

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "kernels/softmax_xent.h"

namespace esper::kasmina {

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
    const size_t n = size_t(batch) * size_t(out_);
    if (z_.size() < n) z_.resize(n);
    // z[B, out] = x[B, in] · Wᵀ
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, int(out_), int(in_), 1.0f, x,
                int(in_), w_.data(), int(in_), 0.0f, z_.data(), int(out_));
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
    Rng rng(mix_seed(seed, 0x40de1));
    int64_t prev = in_features;
    for (size_t l = 0; l < config.hidden.size(); ++l) {
        hidden_.push_back(std::make_unique<LinearLayer>("hidden" + std::to_string(l), prev,
                                                        config.hidden[l],
                                                        kernel_activation(config.activation), rng));
        prev = config.hidden[l];
    }
    head_ =
        std::make_unique<LinearLayer>("head", prev, classes, kernels::Activation::kIdentity, rng);
    for (auto& layer : hidden_) layer->collect_params(params_);
    head_->collect_params(params_);
    for (const auto& layer : hidden_)
        sites_.push_back({layer->out_features(), layer->in_features()});
    h_.resize(hidden_.size());
    y_.resize(hidden_.size());
    dh_.resize(hidden_.size());
    dy_.resize(hidden_.size());
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
    ESPER_REQUIRE(views.empty() || views.size() == hidden_.size(), "views=", views.size());
    ensure_batch(batch);
    const float* in = x;
    for (size_t l = 0; l < hidden_.size(); ++l) {
        hidden_[l]->forward(in, batch, h_[l].data());
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
        in = y_[l].data();
    }
    head_->forward(in, batch, logits_.data());
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
        if (seed_din) {
            float* d = dy_[l - 1].data();
            for (size_t i = 0; i < din_.size(); ++i) d[i] += din_[i];
        }
    }
    return r;
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
