// The MLP host network on the CPU (DESIGN §4.1), one implementation of Model (model.h):
//   input → [Linear → act → SeedLayer] × L → Linear → softmax cross-entropy.
// Host layers implement HostLayer. GEMMs run through OpenBLAS; bias/act, softmax and the seed
// layer itself run through the kernels/ CPU references. Gradients are overwritten (not
// accumulated) by every backward; the blueprint arenas' grads are accumulated (+=) by the seed
// reference. The CUDA backend mirrors this network (params() order: hidden0.weight, hidden0.bias,
// ..., head.weight, head.bias).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kasmina/model/config.h"
#include "kasmina/model/model.h"
#include "kasmina/model/tensor.h"
#include "kasmina/model/widening.h"
#include "kernels/bias_act.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

class HostLayer {
public:
    virtual ~HostLayer() = default;
    virtual int64_t in_features() const = 0;
    virtual int64_t out_features() const = 0;
    // x: [B, in] → y: [B, out]. Keeps what backward needs (valid until the next forward).
    virtual void forward(const float* x, int32_t batch, float* y) = 0;
    // Given the forward's x and dy: writes parameter grads and dx ([B, in]; null = not needed).
    virtual void backward(const float* x, const float* dy, int32_t batch, float* dx) = 0;
    virtual void collect_params(std::vector<ParamRef>& out) = 0;
};

// y = act(x·Wᵀ + b), W [out, in], b [out]; PyTorch-style U(±1/√in) initialisation.
class LinearLayer final : public HostLayer {
public:
    LinearLayer(std::string name, int64_t in, int64_t out, kernels::Activation act, Rng& rng);
    int64_t in_features() const override { return in_; }
    int64_t out_features() const override { return out_; }
    void forward(const float* x, int32_t batch, float* y) override;
    void backward(const float* x, const float* dy, int32_t batch, float* dx) override;
    void collect_params(std::vector<ParamRef>& out) override;

private:
    std::string name_;
    int64_t in_, out_;
    kernels::Activation act_;
    Tensor w_, b_, dw_, db_;
    AlignedVector<float> z_, dz_;  // pre-activation and its gradient [B, out]
};

class MlpModel final : public Model {
public:
    // in_features/classes come from the data; widths, activation from config. Deterministic in
    // `seed`.
    MlpModel(const ModelConfig& config, int64_t in_features, int64_t classes, uint64_t seed);

    std::string_view kind() const override { return "mlp"; }
    const std::vector<ParamRef>& params() const override { return params_; }
    const std::vector<SeedSite>& seed_sites() const override { return sites_; }
    // Reads batch.features and batch.targets; batch.rows must equal batch.samples.
    BatchResult train_batch(const Batch& batch, std::span<const kernels::SeedLayerView> views,
                            std::span<kernels::SeedTelemetryAccum* const> tel) override;
    BatchResult eval_batch(const Batch& batch,
                           std::span<const kernels::SeedLayerView> views) override;

    int64_t in_features() const { return in_features_; }
    int64_t classes() const { return classes_; }

    // Activations of the last forward, for tests: h[l] (host layer output, seed input) and
    // y[l] (seed layer output), [B, D_l].
    std::span<const float> hidden_output(int32_t l) const;
    std::span<const float> seed_output(int32_t l) const;
    std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }

private:
    void forward(const float* x, int32_t batch, std::span<const kernels::SeedLayerView> views,
                 std::span<kernels::SeedTelemetryAccum* const> tel);
    void ensure_batch(int32_t batch);

    int64_t in_features_, classes_;
    std::vector<std::unique_ptr<HostLayer>> hidden_;
    std::unique_ptr<HostLayer> head_;
    std::vector<ParamRef> params_;
    std::vector<SeedSite> sites_;
    int32_t capacity_ = 0;
    std::vector<AlignedVector<float>> h_, y_, dh_, dy_;  // per seed layer [B, D]
    AlignedVector<float> logits_, dlogits_;
    std::vector<float> din_;  // layer-input blueprints' gradient into a layer's input [B, in]
    std::vector<WideningPath> widening_;  // per seed layer: layer-input blueprints (BLAS)
};

kernels::Activation kernel_activation(Activation a);

}  // namespace esper::kasmina
