// Per-seed telemetry windows and records (see telemetry.h).
#include "kasmina/lifecycle/telemetry.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"

namespace esper::kasmina {

void TelemetryBuffers::resize(size_t s) {
    for (auto* v : {&count, &mean, &m2, &dead, &grad_sq, &contribution, &bp_grad_sq})
        v->assign(s, 0.0);
    backward_seen.assign(s, 0);
    ablated.assign(s, 0);
}

void TelemetryBuffers::clear() { resize(count.size()); }

kernels::SeedTelemetryAccum TelemetryBuffers::accum() {
    return {count.data(), mean.data(), m2.data(), dead.data(), grad_sq.data(), contribution.data()};
}

void chan_merge(double& n_a, double& mean_a, double& m2_a, double n_b, double mean_b, double m2_b) {
    if (n_b <= 0) return;
    const double n = n_a + n_b;
    const double delta = mean_b - mean_a;
    mean_a += delta * (n_b / n);
    m2_a += m2_b + delta * delta * (n_a * n_b / n);
    if (m2_a < 0) m2_a = 0;
    n_a = n;
}

double seed_health(double variance, double var_ref, double dead_fraction) {
    const double v = var_ref > 0 ? std::min(1.0, std::max(0.0, variance) / var_ref) : 0.0;
    return 0.5 * v + 0.5 * (1.0 - dead_fraction);
}

Telemetry::Telemetry(std::vector<int32_t> seeds_per_layer) {
    const size_t L = seeds_per_layer.size();
    step_.resize(L);
    window_.resize(L);
    for (size_t l = 0; l < L; ++l) {
        step_[l].resize(size_t(seeds_per_layer[l]));
        window_[l].resize(size_t(seeds_per_layer[l]));
        step_views_.push_back(step_[l].accum());
    }
    for (auto& v : step_views_) step_ptrs_.push_back(&v);
}

void Telemetry::begin_step() {
    for (auto& b : step_) b.clear();
}

void Telemetry::set_ablated(int32_t layer, int32_t seed, double contribution) {
    ESPER_REQUIRE(ablation_, "set_ablated without lifecycle.contribution: ablation");
    TelemetryBuffers& b = step_[size_t(layer)];
    b.contribution[size_t(seed)] = contribution;
    b.ablated[size_t(seed)] = 1;
}

void Telemetry::record_blueprint_grads(SeedManager& seeds) {
    for (int32_t l = 0; l < seeds.num_layers(); ++l) {
        const SeedTable& t = seeds.table(l);
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            if (t.slot(s) < 0 || step_[l].backward_seen[s]) continue;
            double sq = 0.0;
            for (float g : seeds.arenas(l).grads(t.kind(s), t.slot(s))) sq += double(g) * g;
            step_[l].bp_grad_sq[s] = sq;
            step_[l].backward_seen[s] = 1;
        }
    }
}

void Telemetry::set_blueprint_grad_sq(int32_t layer, int32_t seed, double sq) {
    TelemetryBuffers& b = step_[size_t(layer)];
    b.bp_grad_sq[size_t(seed)] = sq;
    b.backward_seen[size_t(seed)] = 1;
}

namespace {
// Pooled variance of a layer (the health reference).
double pooled_variance(const TelemetryBuffers& b) {
    double n = 0, mean = 0, m2 = 0;
    for (size_t s = 0; s < b.count.size(); ++s)
        chan_merge(n, mean, m2, b.count[s], b.mean[s], b.m2[s]);
    return n > 0 ? m2 / n : 0.0;
}
}  // namespace

StepMetrics Telemetry::end_step(double loss, const SeedManager& seeds) {
    StepMetrics m;
    m.loss = loss;
    m.seeds.resize(step_.size());
    for (size_t l = 0; l < step_.size(); ++l) {
        TelemetryBuffers& st = step_[l];
        TelemetryBuffers& w = window_[l];
        const SeedTable& table = seeds.table(int32_t(l));
        m.seeds[l].resize(st.count.size());
        for (size_t s = 0; s < st.count.size(); ++s) {
            SeedMetrics& sm = m.seeds[l][s];
            if (st.count[s] > 0 && (!std::isfinite(st.mean[s]) || !std::isfinite(st.m2[s])))
                sm.error = true;
            // Gradient health (the TRAINING → GRAFTING gate): did the blueprint get a usable
            // learning signal this step — finite and not vanishing? The seed manager averages
            // the per-step verdicts (EMA), so health 0.7 means ~70 % of recent steps were usable.
            // Measured only for seeds whose blueprint is trained in this stage.
            const auto stage = static_cast<kernels::SeedStage>(table.stage(int32_t(s)));
            if (st.backward_seen[s] &&
                kernels::stage_blueprint_grad_scale(stage, table.alpha(int32_t(s))) > 0) {
                const bool usable = std::isfinite(st.bp_grad_sq[s]) && st.bp_grad_sq[s] > 1e-30 &&
                                    std::isfinite(st.grad_sq[s]);
                sm.gradient_health = usable ? 1.0 : 0.0;
            }
            const bool contributed = ablation_ ? st.ablated[s] != 0 : table.slot(int32_t(s)) >= 0;
            if (contributed) {
                sm.contribution = st.contribution[s];
                if (!std::isfinite(st.contribution[s])) sm.error = true;
            }
            if (table.slot(int32_t(s)) >= 0 && !std::isfinite(st.bp_grad_sq[s])) sm.error = true;
            chan_merge(w.count[s], w.mean[s], w.m2[s], st.count[s], st.mean[s], st.m2[s]);
            w.dead[s] += st.dead[s];
            w.grad_sq[s] += st.grad_sq[s];
            if (!ablation_ || st.ablated[s]) w.contribution[s] += st.contribution[s];
            w.ablated[s] |= st.ablated[s];
            w.bp_grad_sq[s] += st.bp_grad_sq[s];
            w.backward_seen[s] |= st.backward_seen[s];
        }
    }
    ++window_steps_;
    return m;
}

std::vector<SeedTelemetryRecord> Telemetry::collect(const SeedManager& seeds) {
    std::vector<SeedTelemetryRecord> out;
    for (size_t l = 0; l < window_.size(); ++l) {
        TelemetryBuffers& w = window_[l];
        const double var_ref = pooled_variance(w);
        const SeedTable& t = seeds.table(int32_t(l));
        for (size_t s = 0; s < w.count.size(); ++s) {
            SeedTelemetryRecord r;
            r.layer = int32_t(l);
            r.seed = int32_t(s);
            r.stage = t.stage(int32_t(s));
            r.alpha = t.alpha(int32_t(s));
            r.steps_in_stage = t.steps_in_stage(int32_t(s));
            r.samples = int64_t(w.count[s]);
            if (w.count[s] > 0 && window_steps_ > 0) {
                r.mean = w.mean[s];
                r.variance = std::max(0.0, w.m2[s] / w.count[s]);
                r.dead_fraction = w.dead[s] / w.count[s];
                r.grad_norm = std::sqrt(w.grad_sq[s]);
                r.health = seed_health(*r.variance, var_ref, *r.dead_fraction);
            }
            if (t.slot(int32_t(s)) >= 0 && w.backward_seen[s]) {
                r.blueprint_grad_norm = std::sqrt(w.bp_grad_sq[s]);
                if (!ablation_) r.contribution = w.contribution[s];
            }
            if (ablation_ && w.ablated[s]) r.contribution = w.contribution[s];
            out.push_back(r);
        }
        w.clear();
    }
    window_steps_ = 0;
    return out;
}

}  // namespace esper::kasmina
