// The host network on the CPU backend (DESIGN §4.1):
//   input → [Linear → act → SeedLayer] × L → Linear → softmax cross-entropy.
// Host layers implement HostLayer (a transformer block can later implement the same interface
// without touching seed layers). GEMMs run through OpenBLAS; bias/act, softmax and the seed layer
// itself run through the kernels/ CPU references. Gradients are overwritten (not accumulated) by
// every backward; the blueprint arenas' grads are accumulated (+=) by the seed reference.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kasmina/model/config.h"
#include "kasmina/model/tensor.h"
#include "kasmina/model/widening.h"
#include "kernels/bias_act.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

// One trainable tensor and its gradient (both owned by the layer).
struct ParamRef {
    std::string name;
    Tensor* value = nullptr;
    Tensor* grad = nullptr;
};

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

struct BatchResult {
    double loss = 0.0;
    int32_t correct = 0;
    int32_t batch = 0;
};

class Model {
public:
    // in_features/classes come from the data; widths, activation from config. Deterministic in
    // `seed`.
    Model(const ModelConfig& config, int64_t in_features, int64_t classes, uint64_t seed);

    int32_t num_seed_layers() const { return static_cast<int32_t>(hidden_.size()); }
    std::vector<int64_t> seed_layer_widths() const;
    // Input features of each seed layer's host layer (what widening blueprints read).
    std::vector<int64_t> seed_layer_inputs() const;
    int64_t in_features() const { return in_features_; }
    int64_t classes() const { return classes_; }
    // Every host parameter, in a fixed order (optimizer state and checkpoints follow it).
    const std::vector<ParamRef>& params() const { return params_; }
    int64_t param_count() const;

    // Forward, loss and backward of one batch. views[l] describes seed layer l for this batch
    // (empty span = no seed layers, i.e. the bare host); tel[l] may be null.
    BatchResult train_batch(const float* x, const int32_t* y, int32_t batch,
                            std::span<const kernels::SeedLayerView> views,
                            std::span<kernels::SeedTelemetryAccum* const> tel = {});
    // Forward and loss only (no gradients, no telemetry).
    BatchResult eval_batch(const float* x, const int32_t* y, int32_t batch,
                           std::span<const kernels::SeedLayerView> views);

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
    int32_t capacity_ = 0;
    std::vector<AlignedVector<float>> h_, y_, dh_, dy_;  // per seed layer [B, D]
    AlignedVector<float> logits_, dlogits_;
    std::vector<float> din_;  // layer-input blueprints' gradient into a layer's input [B, in]
    std::vector<WideningPath> widening_;  // per seed layer: layer-input blueprints (BLAS)
};

kernels::Activation kernel_activation(Activation a);

}  // namespace esper::kasmina
