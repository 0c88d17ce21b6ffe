// The controller's view (tamiyo/view.h): ingestion rules and per-layer aggregates.
#include "tamiyo/view.h"

#include <fmt/format.h>

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

std::string_view drop_name(Drop d) {
    switch (d) {
        case Drop::kOutOfShape:
            return "out_of_shape";
        case Drop::kStepBeyondRun:
            return "step_beyond_run";
        case Drop::kStepJump:
            return "step_jump";
        case Drop::kStale:
            return "stale";
    }
    return "unknown";
}

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

std::optional<std::string> View::announce(RunShape shape) {
    const auto& n = shape.seeds_per_layer;
    if (n.empty()) return std::string("announced shape has no seed layer");
    if (n.size() > config_.max_layers)
        return fmt::format("announced shape has {} layers > max_layers {}", n.size(),
                           config_.max_layers);
    uint64_t total = 0;
    for (size_t l = 0; l < n.size(); ++l) {
        if (n[l] > config_.max_seeds_per_layer)
            return fmt::format("announced layer {} has {} seeds > max_seeds_per_layer {}", l, n[l],
                               config_.max_seeds_per_layer);
        total += n[l];
    }
    if (total > config_.max_seeds)
        return fmt::format("announced shape has {} seeds > max_seeds {}", total, config_.max_seeds);
    // Forget what lies outside the new shape, so memory stays within it.
    for (auto it = layers_.begin(); it != layers_.end();) {
        if (it->first >= n.size()) {
            it = layers_.erase(it);
            continue;
        }
        LayerView& lv = it->second;
        for (size_t i = n[it->first]; i < lv.seeds.size(); ++i)
            if (lv.seeds[i].known) --lv.stage_counts[static_cast<size_t>(lv.seeds[i].stage)];
        if (lv.seeds.size() > n[it->first]) {
            lv.seeds.resize(n[it->first]);
            lv.seeds.shrink_to_fit();
        }
        ++it;
    }
    shape_ = std::move(shape);
    return std::nullopt;
}

std::optional<Drop> View::count(std::optional<Drop> d) {
    if (d) ++drops_[static_cast<size_t>(*d)];
    return d;
}

std::optional<Drop> View::check_step(uint64_t step) {
    if (shape_ && shape_->total_steps > 0 && step > shape_->total_steps)
        return Drop::kStepBeyondRun;
    if (has_step_ && step > step_ && step - step_ > config_.max_step_jump) {
        // Consecutive messages that agree on a new position move the baseline; one alone
        // (a forged or corrupted step) does not.
        if (jump_votes_ > 0 && step >= jump_step_ && step - jump_step_ <= config_.max_step_jump) {
            ++jump_votes_;
        } else {
            jump_step_ = step;
            jump_votes_ = 1;
        }
        if (jump_votes_ < config_.resync_messages) return Drop::kStepJump;
    }
    jump_votes_ = 0;
    has_step_ = true;
    if (step > step_) step_ = step;
    return std::nullopt;
}

SeedView* View::seed_slot(uint32_t layer, uint32_t seed) {
    if (!in_shape(layer, seed)) return nullptr;
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

bool View::in_shape(uint32_t layer, uint32_t seed) const {
    return shape_ ? layer < shape_->seeds_per_layer.size() && seed < shape_->seeds_per_layer[layer]
                  : layer < config_.max_layers && seed < config_.max_seeds_per_layer;
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

std::optional<Drop> View::ingest_telemetry(const SeedTelemetry& t) {
    if (!in_shape(t.layer, t.seed)) return count(Drop::kOutOfShape);
    if (auto d = check_step(t.step)) return count(d);
    SeedView& sv = *seed_slot(t.layer, t.seed);
    LayerView& lv = layers_[t.layer];
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
    return std::nullopt;
}

std::optional<Drop> View::ingest_transition(const TransitionEvent& e) {
    if (!in_shape(e.layer, e.seed)) return count(Drop::kOutOfShape);
    if (auto d = check_step(e.step)) return count(d);
    SeedView& sv = *seed_slot(e.layer, e.seed);
    LayerView& lv = layers_[e.layer];
    // An older event than what we already know: taken (it is consistent), changes nothing.
    if (e.step < sv.stage_step) return std::nullopt;
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
    return std::nullopt;
}

std::optional<Drop> View::ingest_run_status(const RunStatus& s) {
    if (auto d = check_step(s.step)) return count(d);
    if (run_.has_status && s.step < run_.step) return count(Drop::kStale);
    run_.has_status = true;
    run_.step = s.step;
    run_.epoch = s.epoch;
    run_.latest = s;
    if (!s.loss || !std::isfinite(*s.loss)) return std::nullopt;
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
    return std::nullopt;
}

}  // namespace esper::tamiyo
