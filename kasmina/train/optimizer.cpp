// Optimizers and LR schedules (see optimizer.h).
#include "kasmina/train/optimizer.h"

#include <cmath>

#include "core/check.h"
#include "core/error.h"
#include "kernels/grad_ops.h"
#include "kernels/optimizer.h"

namespace esper::kasmina {

double scheduled_lr(const OptimizerConfig& c, double base_lr, int64_t step, int64_t total_steps) {
    if (c.warmup_steps > 0 && step < c.warmup_steps)
        return base_lr * double(step + 1) / double(c.warmup_steps);
    const int64_t t = step - c.warmup_steps;
    switch (c.schedule) {
        case LrSchedule::kConstant:
            return base_lr;
        case LrSchedule::kCosine: {
            const int64_t span = std::max<int64_t>(1, total_steps - c.warmup_steps);
            const double frac = std::min(1.0, double(t) / double(span));
            return base_lr * 0.5 * (1.0 + std::cos(M_PI * frac));
        }
        case LrSchedule::kStep:
            return base_lr * std::pow(c.gamma, double(t / std::max<int64_t>(1, c.step_size)));
    }
    return base_lr;
}

double clip_grad_norm(std::span<const std::span<float>> grads, double max_norm) {
    double sq = 0.0;
    for (const auto& g : grads) sq += kernels::sum_squares_reference(g.data(), int64_t(g.size()));
    for (const auto& g : grads)
        kernels::clip_scale_reference(g.data(), int64_t(g.size()), sq, max_norm);
    return std::sqrt(sq);
}

Optimizer::Optimizer(const OptimizerConfig& config, const std::vector<ParamRef>& params,
                     std::vector<int64_t> seed_layer_widths)
    : config_(config), params_(params) {
    for (const ParamRef& p : params_) {
        m_.emplace_back(size_t(p.value->numel()), 0.0f);
        v_.emplace_back(config_.kind == OptimizerKind::kAdamw ? size_t(p.value->numel()) : 0, 0.0f);
    }
    slot_steps_.resize(seed_layer_widths.size());
    slot_owner_.resize(seed_layer_widths.size());
}

void Optimizer::update(float* p, const float* g, float* m, float* v, int64_t n, double lr,
                       int64_t t) const {
    if (config_.kind == OptimizerKind::kSgd) {
        kernels::sgd_momentum_step_reference(p, g, m, n, float(lr), float(config_.momentum),
                                             float(config_.weight_decay));
    } else {
        kernels::adamw_step_reference(p, g, m, v, n, float(lr), float(config_.beta1),
                                      float(config_.beta2), float(config_.eps),
                                      float(config_.weight_decay), t);
    }
}

void Optimizer::step_host(double lr, const Model::LrRamp& ramp) {
    if (config_.grad_clip > 0.0) {
        std::vector<std::span<float>> gs;
        for (const ParamRef& p : params_) gs.push_back(p.grad->span());
        clip_grad_norm(gs, config_.grad_clip);
    }
    ++host_steps_;
    for (size_t i = 0; i < params_.size(); ++i)
        update(params_[i].value->data(), params_[i].grad->data(), m_[i].data(), v_[i].data(),
               params_[i].value->numel(), i >= ramp.begin && i < ramp.end ? lr * ramp.scale : lr,
               host_steps_);
}

void Optimizer::size_slot_counts(const BlueprintArenas& arenas, int32_t l) {
    auto& steps = slot_steps_[size_t(l)];
    auto& owner = slot_owner_[size_t(l)];
    if (!steps.empty()) return;
    steps.resize(kNumBlueprintKinds);
    owner.resize(kNumBlueprintKinds);
    for (int k = 0; k < kNumBlueprintKinds; ++k) {
        steps[size_t(k)].assign(size_t(arenas.capacity(BlueprintKind(k))), 0);
        owner[size_t(k)].assign(size_t(arenas.capacity(BlueprintKind(k))), -1);
    }
}

void Optimizer::step_blueprints(SeedManager& seeds, double lr) {
    ESPER_REQUIRE(seeds.num_layers() == int32_t(slot_steps_.size()));
    for (int32_t l = 0; l < seeds.num_layers(); ++l) {
        const SeedTable& table = seeds.table(l);
        BlueprintArenas& arenas = seeds.arenas(l);
        size_slot_counts(arenas, l);
        auto& steps = slot_steps_[l];
        auto& owner = slot_owner_[l];
        for (int32_t s = 0; s < table.num_seeds(); ++s) {
            const SeedStage st = table.stage(s);
            const int32_t slot = table.slot(s);
            if (slot < 0 || kernels::stage_blueprint_grad_scale(st, 1.0f) == 0.0f) continue;
            const BlueprintKind k = table.kind(s);
            const int ki = static_cast<int>(k);
            if (owner[ki][slot] != s) {
                owner[ki][slot] = s;
                steps[ki][slot] = 0;
            }
            std::span<float> g = arenas.grads(k, slot);
            if (config_.grad_clip > 0.0) {
                std::span<float> one[1] = {g};
                clip_grad_norm(one, config_.grad_clip);
            }
            const int64_t t = ++steps[ki][slot];
            update(arenas.params(k, slot).data(), g.data(), arenas.opt_m(k, slot).data(),
                   arenas.opt_v(k, slot).data(), int64_t(g.size()), lr, t);
        }
    }
}

void Optimizer::save(CheckpointData& out) const {
    out.optimizer.host_steps = host_steps_;
    out.optimizer.slot_steps = slot_steps_;
    out.optimizer.slot_owner = slot_owner_;
    // v is empty under SGD: an empty tensor, so a checkpoint of the other kind is refused.
    for (size_t i = 0; i < params_.size(); ++i) {
        out.put_floats("opt.m." + params_[i].name, m_[i]);
        out.put_floats("opt.v." + params_[i].name, v_[i]);
    }
}

void Optimizer::load(const CheckpointData& in) {
    const OptimizerScalars& o = in.optimizer;
    // Checked before anything changes.
    if (o.slot_steps.size() != slot_steps_.size() || o.slot_owner.size() != slot_owner_.size())
        ESPER_THROW(kIntegrity, "checkpoint optimizer state: seed layer count differs");
    for (size_t l = 0; l < o.slot_steps.size(); ++l) {
        const size_t kinds = o.slot_steps[l].size();
        if ((kinds != 0 && kinds != size_t(kNumBlueprintKinds)) || o.slot_owner[l].size() != kinds)
            ESPER_THROW(kIntegrity, "checkpoint optimizer state: bad blueprint kind count");
        for (size_t k = 0; k < kinds; ++k)
            if (o.slot_steps[l][k].size() != o.slot_owner[l][k].size())
                ESPER_THROW(kIntegrity, "checkpoint optimizer state: slot table sizes differ");
    }
    for (size_t i = 0; i < params_.size(); ++i) {
        in.floats_into("opt.m." + params_[i].name, m_[i]);
        in.floats_into("opt.v." + params_[i].name, v_[i]);
    }
    host_steps_ = o.host_steps;
    slot_steps_ = o.slot_steps;
    slot_owner_ = o.slot_owner;
}

}  // namespace esper::kasmina
