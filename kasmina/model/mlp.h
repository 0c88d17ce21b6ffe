// The MLP host network on the CPU (DESIGN §4.1), one implementation of Model (model.h):
//   input → [Linear → act → SeedLayer] × L → Linear → softmax cross-entropy.
// With model.widening_seeds > 0 each hidden layer l also has a widening site (seed layer L + l)
// where mlp_units seeds add k units act(V·x + c) reading the layer's input x and writing U·act
// into the next layer's pre-activation (the head's for the last layer); once FOSSILIZED they fold
// into the layer's reserved room (model.max_extra_units: extra rows of the layer, extra columns
// of the next layer), so a grown 784-64-10 + 128 units computes what a 784-192-10 does.
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
    // forward() in two halves, so that widening units can add to the pre-activation between
    // them: z = x·Wᵀ (preact(), [B, out]), then y = act(z + b).
    void forward_linear(const float* x, int32_t batch);
    void forward_act(int32_t batch, float* y);
    float* preact() { return z_.data(); }
    // ∂L/∂z of the last backward [B, out] (what widening units writing into z need).
    const float* preact_grad() const { return dz_.data(); }

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

    int64_t param_count() const override;  // the reserved room counts only where it is used
    bool fold_widening(int32_t layer, BlueprintKind kind, std::span<const float> params) override;
    // Per hidden layer: extra units in use (empty without reserved room).
    std::vector<int64_t> structure() const override;
    void set_structure(std::span<const int64_t> s) override;

    int64_t in_features() const { return in_features_; }
    int64_t classes() const { return classes_; }
    int32_t num_hidden() const { return int32_t(hidden_.size()); }
    // Seed layer of hidden layer l's widening site (-1 when the host has none).
    int32_t widening_layer(int32_t l) const { return widening_layer_[size_t(l)]; }
    int32_t extra_units(int32_t l) const { return extras_[size_t(l)].active; }

    // Activations of the last forward, for tests: h[l] (host layer output, seed input) and
    // y[l] (seed layer output), [B, D_l].
    std::span<const float> hidden_output(int32_t l) const;
    std::span<const float> seed_output(int32_t l) const;
    std::span<const float> logits() const { return {logits_.data(), logits_.size()}; }

    // Seed layer `layer` is hidden layer l's widening site: its units read the layer's input and
    // write into the next layer's pre-activation (the head's for the last layer).
    bool widening_gradient(int32_t layer, const Batch& batch, std::span<float> g) override;

private:
    // Units of hidden layer l beside its Linear: the folded ones (reserved room, host parameters)
    // and the live mlp_units seeds of its widening site, as they ran in the last forward.
    struct Units {
        int32_t seed = -1;                               // -1: the folded units
        float a_fwd = 1.0f, a_grad = 1.0f, a_in = 1.0f;  // kernels/seed_layer.h stage factors
        const float* v = nullptr;                        // [k, in]
        const float* c = nullptr;                        // [k]
        const float* u = nullptr;                        // seeds: U [out, k]; folded: [k, out]
        float* gv = nullptr;                             // gradients, same layouts (or null)
        float* gc = nullptr;
        float* gu = nullptr;
        int32_t k = 0;
        AlignedVector<float> pre, act;  // [B, k]
    };
    struct Extra {
        Tensor v, c, u, dv, dc, du;  // v [max, in], c [max], u [max, out_next]; rows past active 0
        int32_t active = 0;
        std::vector<Units> units;  // in forward order
    };
    void forward(const float* x, int32_t batch, std::span<const kernels::SeedLayerView> views,
                 std::span<kernels::SeedTelemetryAccum* const> tel);
    void ensure_batch(int32_t batch);
    void collect_units(int32_t l, std::span<const kernels::SeedLayerView> views);
    // z [B, out_next] += what hidden layer l's extra units and seeds write, from its input x.
    void units_forward(int32_t l, const float* x, int32_t batch, float* z);
    // dz: ∂L/∂z of the next layer; dx (+=, may be null): ∂L/∂x of layer l's input.
    void units_backward(int32_t l, const float* x, int32_t batch, const float* dz, float* dx,
                        kernels::SeedTelemetryAccum* tel);
    int64_t out_next(size_t l) const;

    int64_t in_features_, classes_;
    kernels::Activation act_ = kernels::Activation::kRelu;
    int64_t max_extra_ = 0;
    std::vector<std::unique_ptr<LinearLayer>> hidden_;
    std::unique_ptr<LinearLayer> head_;
    std::vector<Extra> extras_;  // per hidden layer
    std::vector<int32_t> widening_layer_;
    std::vector<float> gb_;
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
