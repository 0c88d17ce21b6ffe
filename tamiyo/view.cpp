// The controller's view (tamiyo/view.h): ingestion rules and per-layer aggregates.
#include "tamiyo/view.h"

#include <cmath>

namespace esper::tamiyo {
namespace {

// Non-finite values (and negative variances/fractions/norms) become "not measured".
void sanitize(std::optional<double>& v, bool non_negative, uint64_t& rejected) {
    if (!v) return;
    if (!std::isfinite(*v) || (non_negative && *v < 0.0)) {
        v.reset();
        ++rejected;
    }
}

}  // namespace

uint32_t LayerView::active_seeds() const {
    uint32_t n = 0;
    for (int s = 0; s < kNumSeedStages; ++s)
        if (stage_is_active(static_cast<SeedStage>(s))) n += stage_counts[static_cast<size_t>(s)];
    return n;
}

int64_t LayerView::blueprint_params() const {
    int64_t total = 0;
    for (const SeedView& s : seeds)
        if (s.known && stage_holds_slot(s.stage)) total += s.blueprint_params;
    return total;
}

std::optional<double> LayerView::mean_health() const {
    double sum = 0.0;
    size_t n = 0;
    for (const SeedView& s : seeds)
        if (s.known && s.latest.health) {
            sum += *s.latest.health;
            ++n;
        }
    if (n == 0) return std::nullopt;
    return sum / static_cast<double>(n);
}

std::optional<double> LayerView::mean_contribution() const {
    double sum = 0.0;
    size_t n = 0;
    for (const SeedView& s : seeds)
        if (s.known && s.latest.contribution) {
            sum += *s.latest.contribution;
            ++n;
        }
    if (n == 0) return std::nullopt;
    return sum / static_cast<double>(n);
}

View::View(ViewConfig config) : config_(config) {}

const LayerView* View::layer(uint32_t layer) const {
    auto it = layers_.find(layer);
    return it == layers_.end() ? nullptr : &it->second;
}

const SeedView* View::seed(uint32_t layer, uint32_t seed) const {
    const LayerView* lv = this->layer(layer);
    if (lv == nullptr || seed >= lv->seeds.size() || !lv->seeds[seed].known) return nullptr;
    return &lv->seeds[seed];
}

int64_t View::live_blueprint_params() const {
    int64_t total = 0;
    for (const auto& [id, lv] : layers_) total += lv.blueprint_params();
    return total;
}

SeedView* View::seed_slot(uint32_t layer, uint32_t seed) {
    if (seed >= config_.max_seeds_per_layer) {
        ++ignored_messages_;
        return nullptr;
    }
    LayerView& lv = layers_[layer];
    lv.layer = layer;
    if (seed >= lv.seeds.size()) {
        const size_t old = lv.seeds.size();
        lv.seeds.resize(seed + 1);
        for (size_t i = old; i < lv.seeds.size(); ++i) {
            lv.seeds[i].layer = layer;
            lv.seeds[i].seed = static_cast<uint32_t>(i);
        }
    }
    SeedView& sv = lv.seeds[seed];
    if (!sv.known) {
        sv.known = true;
        ++lv.stage_counts[static_cast<size_t>(sv.stage)];
    }
    return &sv;
}

void View::set_stage(LayerView& lv, SeedView& sv, SeedStage to) {
    if (sv.stage == to) return;
    --lv.stage_counts[static_cast<size_t>(sv.stage)];
    ++lv.stage_counts[static_cast<size_t>(to)];
    if (!stage_holds_slot(to)) {
        sv.blueprint_params = 0;
        sv.alpha = 0.0f;
    }
    sv.stage = to;
}

void View::ingest_telemetry(const SeedTelemetry& t) {
    SeedView* svp = seed_slot(t.layer, t.seed);
    if (svp == nullptr) return;
    SeedView& sv = *svp;
    LayerView& lv = layers_[t.layer];
    if (t.step > step_) step_ = t.step;
    if (t.chunk_width > 0) lv.chunk_width = t.chunk_width;

    SeedMetrics m = t.metrics;
    m.step = t.step;
    sanitize(m.act_mean, false, rejected_values_);
    sanitize(m.act_var, true, rejected_values_);
    sanitize(m.dead_fraction, true, rejected_values_);
    sanitize(m.grad_norm, true, rejected_values_);
    sanitize(m.blueprint_grad_norm, true, rejected_values_);
    sanitize(m.gradient_health, true, rejected_values_);
    sanitize(m.contribution, false, rejected_values_);
    sanitize(m.health, true, rejected_values_);

    // Only telemetry at or after the newest stage-setting message may change the stage.
    if (t.step >= sv.stage_step) {
        set_stage(lv, sv, t.stage);
        sv.stage_step = t.step;
        sv.alpha = std::isfinite(t.alpha) ? t.alpha : 0.0f;
        sv.stage_entered_step = t.step >= t.steps_in_stage ? t.step - t.steps_in_stage : 0;
        if (t.blueprint_params >= 0 && stage_holds_slot(t.stage))
            sv.blueprint_params = t.blueprint_params;
    }
    // A price depends only on the seed's chunk and the executor's arenas: any report updates it.
    for (size_t k = 0; k < t.germination_params.size(); ++k) {
        if (!t.germination_params[k]) continue;
        if (*t.germination_params[k] < 0)
            ++rejected_values_;
        else
            sv.germination_params[k] = t.germination_params[k];
    }
    if (!sv.has_telemetry || t.step >= sv.latest.step) sv.latest = m;
    sv.has_telemetry = true;
    sv.history.push_back(m);
    while (sv.history.size() > config_.seed_history) sv.history.pop_front();
}

void View::ingest_transition(const TransitionEvent& e) {
    SeedView* svp = seed_slot(e.layer, e.seed);
    if (svp == nullptr) return;
    SeedView& sv = *svp;
    LayerView& lv = layers_[e.layer];
    if (e.step > step_) step_ = e.step;
    if (e.step < sv.stage_step) return;  // an older event than what we already know
    set_stage(lv, sv, e.to);
    sv.stage_step = e.step;
    sv.stage_entered_step = e.step;
    if (e.to == SeedStage::kGerminated) {
        sv.blueprint = e.blueprint;
        sv.blueprint_size = e.blueprint_size;
        if (e.blueprint_params >= 0)
            sv.blueprint_params = e.blueprint_params;
        else if (e.blueprint)
            sv.blueprint_params =
                sv.germination_params[static_cast<size_t>(*e.blueprint)].value_or(0);
        sv.alpha = 0.0f;
        ++sv.germinations;
        ++lv.germinations;
        if (!lv.last_germination_step || e.step > *lv.last_germination_step)
            lv.last_germination_step = e.step;
    } else if (e.to == SeedStage::kCulled) {
        ++sv.culls;
    }
    if (e.to >= SeedStage::kStabilization && e.to <= SeedStage::kFossilized) sv.alpha = 1.0f;
}

void View::ingest_run_status(const RunStatus& s) {
    if (s.step > step_) step_ = s.step;
    if (run_.has_status && s.step < run_.step) return;  // stale
    run_.has_status = true;
    run_.step = s.step;
    run_.epoch = s.epoch;
    run_.latest = s;
    if (!s.loss || !std::isfinite(*s.loss)) return;
    const double loss = *s.loss;
    run_.loss_curve.push_back({s.step, loss});
    while (run_.loss_curve.size() > config_.loss_curve_points) run_.loss_curve.pop_front();

    if (!run_.best_loss || loss < *run_.best_loss - config_.plateau.min_delta) {
        run_.best_loss = loss;
        run_.best_step = s.step;
        run_.plateau = false;
    } else if (s.step - run_.best_step >= config_.plateau.patience_steps && !run_.plateau) {
        run_.plateau = true;
        run_.plateau_since_step = s.step;
        ++run_.plateaus;
    }
}

}  // namespace esper::tamiyo
