// The α schedules. All arithmetic is in double, stored as float in the seed table's state.
// Ramp strategies (linear, cosine, sigmoid, momentum, drift_controlled) never lower the current
// α; stability may, on purpose, when it reverts to the last stable α.
#include "kasmina/lifecycle/grafting.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace esper::kasmina {

namespace {

double clip01(double x) { return std::clamp(x, 0.0, 1.0); }

double ramp_of(const GraftingConfig& cfg, const GraftState& s) {
    return static_cast<double>(s.ramp_steps > 0 ? s.ramp_steps
                                                : std::max<int64_t>(1, cfg.ramp_steps));
}

double progress(const GraftingConfig& cfg, const GraftState& s) {
    return clip01(static_cast<double>(s.t) / ramp_of(cfg, s));
}

GraftResult ramp(const GraftState& in, float current, double target) {
    GraftResult r;
    r.state = in;
    r.state.t = in.t + 1.0f;
    r.alpha = static_cast<float>(std::max<double>(current, clip01(target)));
    return r;
}

double sigmoid_norm(double x, double k) {
    auto f = [k](double z) { return 1.0 / (1.0 + std::exp(-k * (z - 0.5))); };
    return (f(x) - f(0.0)) / (f(1.0) - f(0.0));
}

GraftResult step_plain(GraftingStrategy strategy, const GraftingConfig& cfg, const GraftState& s,
                       float current, const GraftMetrics& m) {
    const double x = progress(cfg, s);
    switch (strategy) {
        case GraftingStrategy::kLinear:
            return ramp(s, current, x);
        case GraftingStrategy::kCosine:
            return ramp(s, current, 0.5 * (1.0 - std::cos(std::numbers::pi * x)));
        case GraftingStrategy::kSigmoid:
            return ramp(s, current, sigmoid_norm(x, cfg.steepness));
        case GraftingStrategy::kMomentum: {
            GraftResult r;
            r.state = s;
            const double v =
                cfg.momentum * static_cast<double>(s.velocity) + cfg.momentum_gain * m.loss_delta;
            r.state.velocity = static_cast<float>(v);
            r.state.t = s.t + 1.0f;
            r.alpha = static_cast<float>(std::max<double>(current, clip01(x + v)));
            return r;
        }
        case GraftingStrategy::kDriftControlled: {
            GraftResult r;
            r.state = s;
            double drift = 0.0;
            if (!s.has_ema) {
                r.state.weight_ema = static_cast<float>(m.weight_norm);
                r.state.has_ema = 1;
            } else {
                const double ema = s.weight_ema;
                drift = std::abs(m.weight_norm - ema) / std::max(ema, 1e-12);
                r.state.weight_ema =
                    static_cast<float>(cfg.drift_ema * ema + (1.0 - cfg.drift_ema) * m.weight_norm);
            }
            if (drift > cfg.drift_threshold) {  // pause: α and progress hold
                r.alpha = current;
                return r;
            }
            r.state.t = s.t + 1.0f;
            r.alpha = static_cast<float>(std::max<double>(current, x));
            return r;
        }
        case GraftingStrategy::kStability: {
            GraftResult r;
            r.state = s;
            if (m.loss_variance > cfg.stability_threshold) {
                r.state.unstable_count = static_cast<uint16_t>(s.unstable_count + 1);
                if (r.state.unstable_count >= cfg.stability_patience) {
                    r.alpha = s.last_stable_alpha;
                    r.state.t = static_cast<float>(s.last_stable_alpha * ramp_of(cfg, s));
                    r.state.unstable_count = 0;
                    return r;
                }
                r.state.t = s.t + 0.5f;  // half rate while unstable
                r.alpha = static_cast<float>(std::max<double>(current, x));
                return r;
            }
            r.state.unstable_count = 0;
            r.state.t = s.t + 1.0f;
            r.alpha = static_cast<float>(std::max<double>(current, x));
            r.state.last_stable_alpha = r.alpha;  // reached on a calm step
            return r;
        }
        case GraftingStrategy::kAdaptive:
            break;  // handled by the caller
    }
    return ramp(s, current, x);
}

}  // namespace

GraftResult graft_step(GraftingStrategy strategy, const GraftingConfig& cfg,
                       const GraftState& state, float current_alpha, const GraftMetrics& metrics) {
    if (strategy != GraftingStrategy::kAdaptive) {
        return step_plain(strategy, cfg, state, current_alpha, metrics);
    }
    // adaptive: every adaptive_window steps pick stability when the loss is noisy, momentum when
    // it is improving, linear otherwise; then follow the pick with the shared state.
    GraftState s = state;
    s.loss_delta_ema = static_cast<float>(0.9 * state.loss_delta_ema + 0.1 * metrics.loss_delta);
    const auto whole = static_cast<int64_t>(std::floor(state.t));
    if (whole % std::max<int64_t>(1, cfg.adaptive_window) == 0) {
        GraftingStrategy pick = GraftingStrategy::kLinear;
        if (metrics.loss_variance > cfg.stability_threshold) {
            pick = GraftingStrategy::kStability;
        } else if (s.loss_delta_ema > 0.0f) {
            pick = GraftingStrategy::kMomentum;
        }
        s.adaptive_choice = static_cast<uint8_t>(pick);
    }
    GraftResult r = step_plain(static_cast<GraftingStrategy>(s.adaptive_choice), cfg, s,
                               current_alpha, metrics);
    return r;
}

}  // namespace esper::kasmina
