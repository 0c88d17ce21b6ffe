// The lifecycle engine. Every stage change goes through transition() (validator + bookkeeping +
// one event) except germination, which also takes and initialises an arena slot. A batch runs on
// the live state after a full copy and is undone from the copy when an item is rejected.
#include "kasmina/lifecycle/seed_manager.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include "core/check.h"
#include "core/error.h"

namespace esper::kasmina {

namespace {

constexpr size_t kLossWindow = 20;

// A measured value in an event reason (6 significant digits), or "unmeasured".
std::string measured(std::optional<double> v) {
    return v ? fmt::format("{:g}", *v) : std::string("unmeasured");
}

std::string with_reason(std::string base, const std::string& why) {
    return why.empty() ? base : base + ": " + why;
}

SeedStage target_of(const Command& c) {
    if (std::holds_alternative<CullCommand>(c.body)) return SeedStage::kCulled;
    if (std::holds_alternative<CancelCommand>(c.body)) return SeedStage::kCancelled;
    if (std::holds_alternative<RollbackCommand>(c.body)) return SeedStage::kRolledBack;
    return std::get<TransitionCommand>(c.body).to;
}

}  // namespace

namespace {
std::vector<SeedSite> chunk_sites(const std::vector<int64_t>& widths,
                                  const std::vector<int64_t>& inputs) {
    std::vector<SeedSite> sites;
    for (size_t i = 0; i < widths.size(); ++i)
        sites.push_back({widths[i], i < inputs.size() ? inputs[i] : 0, SiteKind::kChunk, 0});
    return sites;
}
}  // namespace

SeedManager::SeedManager(const SeedManagerConfig& config, std::vector<int64_t> layer_widths,
                         EventSink* events, std::vector<int64_t> layer_inputs)
    : SeedManager(config, chunk_sites(layer_widths, layer_inputs), events) {
    const bool layer_input = config.blueprints.input == BlueprintInput::kLayer;
    ESPER_CHECK_INPUT(!layer_input || layer_inputs.size() == layer_widths.size(),
                      "blueprints.input: layer needs the input width of every seed layer");
}

SeedManager::SeedManager(const SeedManagerConfig& config, std::span<const SeedSite> sites,
                         EventSink* events)
    : lifecycle_(config.lifecycle),
      blueprints_cfg_(config.blueprints),
      run_seed_(config.run_seed),
      log_(events) {
    tables_.reserve(sites.size());
    arenas_.reserve(sites.size());
    const bool layer_input = config.blueprints.input == BlueprintInput::kLayer;
    for (size_t i = 0; i < sites.size(); ++i) {
        const SeedSite& site = sites[i];
        site_kinds_.push_back(site.kind);
        if (site.kind == SiteKind::kWidening) {
            tables_.emplace_back(static_cast<int32_t>(i), site.width, site.width);
            arenas_.push_back(BlueprintArenas::widening(site.input_width, site.head_dim,
                                                        blueprints_cfg_, site.output_width));
        } else {
            tables_.emplace_back(static_cast<int32_t>(i), site.width, config.seeds_per_layer);
            arenas_.emplace_back(tables_.back().max_chunk_width(), blueprints_cfg_,
                                 layer_input ? site.input_width : 0);
        }
        extra_.emplace_back(static_cast<size_t>(tables_.back().num_seeds()));
    }
}

kernels::SeedLayerView SeedManager::view(int32_t layer, int32_t batch) {
    ESPER_REQUIRE(layer >= 0 && layer < num_layers(), "layer=", layer);
    const SeedTable& t = tables_[layer];
    kernels::SeedLayerView v;
    v.batch = batch;
    v.width = t.width();
    v.num_seeds = t.num_seeds();
    v.chunk_offset = t.chunk_offset_data();
    v.stage = t.stage_data();
    v.kind = t.kind_data();
    v.slot = t.slot_data();
    v.alpha = t.alpha_data();
    for (int k = 0; k < kNumBlueprintKinds; ++k) {
        v.arenas[k] = arenas_[layer].view(static_cast<BlueprintKind>(k));
    }
    v.input_width = arenas_[layer].in_width();  // the model sets v.input per batch
    return v;
}

std::string SeedManager::check_seed(SeedRef s) const {
    if (s.layer < 0 || s.layer >= num_layers()) {
        return fmt::format("unknown layer {} (the run has {} seed layers)", s.layer, num_layers());
    }
    if (s.seed < 0 || s.seed >= tables_[s.layer].num_seeds()) {
        return fmt::format("unknown seed {} in layer {} (the layer has {} seeds)", s.seed, s.layer,
                           tables_[s.layer].num_seeds());
    }
    return {};
}

int64_t SeedManager::blueprint_params_in_layer(int32_t layer) const {
    const SeedTable& t = tables_[layer];
    int64_t n = 0;
    for (int32_t s = 0; s < t.num_seeds(); ++s) {
        n += seed_blueprint_params({layer, s});
    }
    return n;
}

int64_t SeedManager::seed_blueprint_params(SeedRef s) const {
    const SeedTable& t = tables_[s.layer];
    if (!stage_holds_slot(t.stage(s.seed)) || t.slot(s.seed) < 0) return 0;
    return germination_params(s, t.kind(s.seed));
}

int64_t SeedManager::germination_params(SeedRef s, BlueprintKind kind) const {
    const BlueprintArenas& a = arenas_[s.layer];
    if (!a.serves(kind)) return -1;
    return a.params_for(kind, tables_[s.layer].chunk_width(s.seed));
}

bool SeedManager::release_folded(SeedRef s) {
    if (!check_seed(s).empty()) return false;
    SeedTable& t = tables_[s.layer];
    SeedRow r = t.row(s.seed);
    if (r.stage != SeedStage::kFossilized || r.slot < 0 || !blueprint_is_widening(r.kind))
        return false;
    arenas_[s.layer].release(r.kind, r.slot);
    r.slot = -1;
    t.set_row(s.seed, r);
    return true;
}

SeedRow SeedManager::mute(SeedRef s) {
    ESPER_REQUIRE(check_seed(s).empty(), check_seed(s));
    SeedTable& t = tables_[s.layer];
    const SeedRow saved = t.row(s.seed);
    SeedRow muted = saved;
    muted.stage = SeedStage::kGrafting;
    muted.alpha = 0.0f;
    t.set_row(s.seed, muted);
    return saved;
}

void SeedManager::unmute(SeedRef s, const SeedRow& saved) {
    ESPER_REQUIRE(check_seed(s).empty(), check_seed(s));
    tables_[s.layer].set_row(s.seed, saved);
}

std::optional<double> SeedManager::gradient_health(SeedRef s) const {
    if (!check_seed(s).empty()) return std::nullopt;
    return extra_[s.layer][s.seed].gradient_health;
}

TransitionFacts SeedManager::facts(SeedRef s, SeedStage to,
                                   std::optional<BlueprintKind> kind) const {
    const SeedTable& t = tables_[s.layer];
    TransitionFacts f;
    f.from = t.stage(s.seed);
    f.steps_in_stage = t.steps_in_stage(s.seed);
    f.step = next_step_;
    f.embargo_until_step = t.embargo_until_step(s.seed);
    f.alpha = t.alpha(s.seed);
    f.gradient_health = extra_[s.layer][s.seed].gradient_health;
    f.active_in_layer = t.count_active();
    f.training_in_layer = t.count_in_stage(SeedStage::kTraining);
    if (to == SeedStage::kGerminated && kind) {
        f.blueprint_name = std::string(blueprint_kind_name(*kind));
        f.arena_slot_free = arenas_[s.layer].free_slots(*kind) > 0;
        const int64_t add = germination_params(s, *kind);
        f.param_budget_ok =
            blueprint_params_in_layer(s.layer) + add <= blueprints_cfg_.max_params_per_layer;
    }
    return f;
}

void SeedManager::emit(LifecycleEvent e) {
    if (buffering_) {
        batch_events_.push_back(std::move(e));
        return;
    }
    if (log_) log_->write(e);
    ++events_total_;
    pending_events_.push_back(std::move(e));
}

std::vector<LifecycleEvent> SeedManager::drain_events() {
    std::vector<LifecycleEvent> out;
    out.swap(pending_events_);
    return out;
}

std::string SeedManager::transition(SeedRef s, SeedStage to, TransitionOrigin origin,
                                    const std::string& why, int64_t stamp) {
    if (auto bad = check_seed(s); !bad.empty()) return bad;
    TransitionFacts f = facts(s, to, std::nullopt);
    f.step = stamp;
    if (auto reason = validate_transition(to, f, lifecycle_); !reason.empty()) return reason;

    SeedTable& t = tables_[s.layer];
    SeedRow r = t.row(s.seed);
    const SeedStage from = r.stage;
    r.stage = to;
    r.steps_in_stage = 0;
    if (stage_holds_slot(from) && !stage_holds_slot(to)) {
        if (r.slot >= 0) arenas_[s.layer].release(r.kind, r.slot);
        r.slot = -1;
        r.alpha = 0.0f;
        const int32_t ramp = r.graft.ramp_steps;
        r.graft = GraftState{};
        r.graft.ramp_steps = ramp;
    }
    if (to == SeedStage::kCulled || to == SeedStage::kRolledBack) {
        const int64_t until = stamp + lifecycle_.embargo_steps;
        r.embargo_until_step = static_cast<uint32_t>(
            std::clamp<int64_t>(until, 0, std::numeric_limits<uint32_t>::max()));
    }
    if (to == SeedStage::kGrafting) {
        r.alpha = 0.0f;
        const int32_t ramp = r.graft.ramp_steps;
        r.graft = GraftState{};
        r.graft.ramp_steps = ramp;
    }
    if (to == SeedStage::kStabilization) r.alpha = 1.0f;
    // The TRAINING gate judges the blueprint's own learning signal: start its average afresh.
    if (to == SeedStage::kTraining) extra_[s.layer][s.seed].gradient_health.reset();
    if (to == SeedStage::kFossilized && r.slot >= 0) {
        // Fossilized seeds are frozen: their optimizer state is freed (zeroed in the arena).
        std::ranges::fill(arenas_[s.layer].opt_m(r.kind, r.slot), 0.0f);
        std::ranges::fill(arenas_[s.layer].opt_v(r.kind, r.slot), 0.0f);
    }
    if (to == SeedStage::kDormant) {
        r.flags = 0;
        r.error_count = 0;
        r.graft = GraftState{};
        extra_[s.layer][s.seed] = SeedMeasurements{};
    }
    t.set_row(s.seed, r);
    emit(LifecycleEvent{stamp, s.layer, s.seed, from, to, why, origin});
    return {};
}

uint64_t SeedManager::init_seed_for(SeedRef s, int64_t stamp) const {
    uint64_t h = run_seed_ * 0x9E3779B97F4A7C15ull;
    h ^= (static_cast<uint64_t>(s.layer) + 1) * 0xC2B2AE3D27D4EB4Full;
    h ^= (static_cast<uint64_t>(s.seed) + 1) * 0x165667B19E3779F9ull;
    h ^= (static_cast<uint64_t>(stamp) + 1) * 0x27D4EB2F165667C5ull;
    return h;
}

std::string SeedManager::germinate(const GerminateCommand& c, TransitionOrigin origin,
                                   const std::string& why, int64_t stamp) {
    const SeedRef s = c.target;
    if (auto bad = check_seed(s); !bad.empty()) return bad;
    if (static_cast<int>(c.kind) >= kNumBlueprintKinds) return "unknown blueprint kind";
    if (!arenas_[s.layer].serves(c.kind))
        return fmt::format("blueprint {} is not available on layer {} (a {} site)",
                           blueprint_kind_name(c.kind), s.layer,
                           enum_name(site_kinds_[s.layer], kSiteKindNames));
    if (c.strategy && static_cast<int>(*c.strategy) >= kNumGraftingStrategies) {
        return "unknown grafting strategy";
    }
    TransitionFacts f = facts(s, SeedStage::kGerminated, c.kind);
    f.step = stamp;
    if (auto reason = validate_transition(SeedStage::kGerminated, f, lifecycle_); !reason.empty()) {
        return reason;
    }
    SeedTable& t = tables_[s.layer];
    BlueprintArenas& a = arenas_[s.layer];
    const std::optional<int32_t> slot = a.acquire(c.kind);
    ESPER_ASSERT(slot.has_value(), "validator saw a free slot");
    a.init_slot(c.kind, *slot, t.chunk_width(s.seed), init_seed_for(s, stamp));

    SeedRow r = t.row(s.seed);
    const SeedStage from = r.stage;
    r.stage = SeedStage::kGerminated;
    r.kind = c.kind;
    r.strategy = c.strategy.value_or(lifecycle_.grafting.strategy);
    r.flags = 0;
    r.slot = *slot;
    r.alpha = 0.0f;
    r.steps_in_stage = 0;
    r.error_count = 0;
    r.graft = GraftState{};
    t.set_row(s.seed, r);
    SeedMeasurements& x = extra_[s.layer][s.seed];
    x = SeedMeasurements{};
    x.loss_at_germination = has_loss_ema_ ? loss_ema_ : 0.0;
    emit(LifecycleEvent{stamp, s.layer, s.seed, from, SeedStage::kGerminated,
                        with_reason("germinate " + std::string(blueprint_kind_name(c.kind)), why),
                        origin});
    return {};
}

std::string SeedManager::apply_one(const Command& c, int64_t stamp) {
    if (const auto* g = std::get_if<GerminateCommand>(&c.body)) {
        return germinate(*g, c.origin, c.reason, stamp);
    }
    if (const auto* b = std::get_if<BatchCommand>(&c.body)) {
        for (size_t i = 0; i < b->commands.size(); ++i) {
            if (auto r = apply_one(b->commands[i], stamp); !r.empty()) {
                return fmt::format("batch item {}: {}", i, r);
            }
        }
        return {};
    }
    if (const auto* a = std::get_if<SetAlphaScheduleCommand>(&c.body)) {
        if (auto bad = check_seed(a->target); !bad.empty()) return bad;
        if (static_cast<int>(a->strategy) >= kNumGraftingStrategies) return "unknown strategy";
        SeedTable& t = tables_[a->target.layer];
        SeedRow r = t.row(a->target.seed);
        if (r.stage != SeedStage::kGerminated && r.stage != SeedStage::kTraining &&
            r.stage != SeedStage::kGrafting) {
            return fmt::format(
                "set_alpha_schedule: seed is {} (allowed in GERMINATED, TRAINING, "
                "GRAFTING)",
                stage_name(r.stage));
        }
        if (a->ramp_steps && (*a->ramp_steps < 1 || *a->ramp_steps > (int64_t{1} << 30))) {
            return fmt::format("set_alpha_schedule: ramp_steps must be in [1, 2^30], got {}",
                               *a->ramp_steps);
        }
        r.strategy = a->strategy;
        if (a->ramp_steps) r.graft.ramp_steps = static_cast<int32_t>(*a->ramp_steps);
        t.set_row(a->target.seed, r);
        return {};
    }
    const SeedRef target = std::visit(
        [](const auto& v) -> SeedRef {
            if constexpr (requires { v.target; }) {
                return v.target;
            } else {
                return SeedRef{};
            }
        },
        c.body);
    const SeedStage to = target_of(c);
    if (to == SeedStage::kGerminated) {
        // Germination takes and initialises a blueprint slot: only GerminateCommand does that.
        return "transition to GERMINATED needs a germinate command (with a blueprint kind)";
    }
    std::string base = c.origin == TransitionOrigin::kOperator ? "operator" : "controller";
    if (std::holds_alternative<CullCommand>(c.body))
        base += " cull";
    else if (std::holds_alternative<CancelCommand>(c.body))
        base += " cancel";
    else if (std::holds_alternative<RollbackCommand>(c.body))
        base += " rollback";
    else
        base += " decision";
    return transition(target, to, c.origin, with_reason(base, c.reason), stamp);
}

Outcome SeedManager::apply(const Command& command) {
    const int64_t stamp = next_step_;
    if (!std::holds_alternative<BatchCommand>(command.body)) {
        auto reason = apply_one(command, stamp);
        if (reason.empty()) {
            ++applied_commands_;
            return Outcome{};
        }
        return Outcome{OutcomeStatus::kRejected, std::move(reason)};
    }
    // All or nothing: keep a copy, run, undo on the first rejection.
    const std::vector<SeedTable> tables = tables_;
    const std::vector<BlueprintArenas> arenas = arenas_;
    const auto extra = extra_;
    buffering_ = true;
    batch_events_.clear();
    // The items one by one here (not through apply_one) so the outcome names the refused one.
    const auto& items = std::get<BatchCommand>(command.body).commands;
    std::string reason;
    int32_t failed = -1;
    for (size_t i = 0; i < items.size() && reason.empty(); ++i) {
        if (auto r = apply_one(items[i], stamp); !r.empty()) {
            reason = fmt::format("batch item {}: {}", i, r);
            failed = static_cast<int32_t>(i);
        }
    }
    buffering_ = false;
    if (!reason.empty()) {
        tables_ = tables;
        arenas_ = arenas;
        extra_ = extra;
        batch_events_.clear();
        return Outcome{OutcomeStatus::kRejected, std::move(reason), failed};
    }
    std::vector<LifecycleEvent> events;
    events.swap(batch_events_);
    for (auto& e : events) emit(std::move(e));
    ++applied_commands_;
    return Outcome{};
}

GraftMetrics SeedManager::graft_metrics(SeedRef s) const {
    GraftMetrics m;
    m.loss_delta = last_loss_delta_;
    const SeedTable& t = tables_[s.layer];
    if (t.slot(s.seed) >= 0)
        m.weight_norm = arenas_[s.layer].param_norm(t.kind(s.seed), t.slot(s.seed));
    if (loss_window_.size() >= 2) {
        double mean = 0.0;
        for (double v : loss_window_) mean += v;
        mean /= static_cast<double>(loss_window_.size());
        double var = 0.0;
        for (double v : loss_window_) var += (v - mean) * (v - mean);
        var /= static_cast<double>(loss_window_.size());
        m.loss_variance = mean != 0.0 ? var / (mean * mean) : 0.0;
    }
    return m;
}

void SeedManager::run_gate(SeedRef s, int64_t step) {
    const SeedTable& t = tables_[s.layer];
    const SeedStage st = t.stage(s.seed);
    const int64_t due = gate_due_steps(st, lifecycle_);
    const int64_t steps = t.steps_in_stage(s.seed);
    if (steps < due) return;
    const int64_t waiting = steps - due;
    const bool timed_out = waiting > lifecycle_.decision_timeout_steps;
    const GatesConfig& g = lifecycle_.gates;
    const SeedMeasurements& x = extra_[s.layer][s.seed];
    const auto auto_ = TransitionOrigin::kAuto;

    if (!lifecycle_.auto_gates) {
        if (timed_out) {
            transition(s, SeedStage::kCulled, auto_,
                       fmt::format("decision timeout: no controller decision within {} steps "
                                   "(safe default: cull)",
                                   lifecycle_.decision_timeout_steps),
                       step);
        }
        return;
    }
    if (st == SeedStage::kTraining) {
        if (x.gradient_health && *x.gradient_health >= g.min_gradient_health) {
            transition(s, SeedStage::kGrafting, auto_,
                       fmt::format("auto gate: gradient health {:g} >= {:g}", *x.gradient_health,
                                   g.min_gradient_health),
                       step);
        } else if (timed_out) {
            transition(
                s, SeedStage::kCulled, auto_,
                fmt::format("auto gate: gradient health {} after {} steps (safe default: cull)",
                            measured(x.gradient_health), waiting),
                step);
        }
        return;
    }
    if (st == SeedStage::kEvaluating) {
        const double error_rate = static_cast<double>(t.error_count(s.seed)) /
                                  static_cast<double>(std::max<int64_t>(1, steps));
        const bool stable = x.stability ? *x.stability >= g.min_stability : g.min_stability <= 0.0;
        if (error_rate > g.max_error_rate) {
            transition(
                s, SeedStage::kCulled, auto_,
                fmt::format("auto gate: error rate {:g} > {:g}", error_rate, g.max_error_rate),
                step);
        } else if (x.contribution && *x.contribution < -g.cull_contribution) {
            transition(s, SeedStage::kCulled, auto_,
                       fmt::format("auto gate: contribution {:g} < {:g}", *x.contribution,
                                   -g.cull_contribution),
                       step);
        } else if (x.contribution && *x.contribution > g.min_contribution && stable) {
            transition(s, SeedStage::kFineTuning, auto_,
                       fmt::format("auto gate: contribution {:g} > {:g}", *x.contribution,
                                   g.min_contribution),
                       step);
        } else if (timed_out) {
            transition(
                s, SeedStage::kCulled, auto_,
                fmt::format("auto gate: no proven contribution after {} steps (safe default: "
                            "cull)",
                            waiting),
                step);
        }
        return;
    }
    if (st == SeedStage::kFineTuning) {
        std::optional<double> improvement = x.improvement;
        if (!improvement && has_loss_ema_) improvement = x.loss_at_germination - loss_ema_;
        if (improvement && *improvement >= g.min_improvement) {
            transition(
                s, SeedStage::kFossilized, auto_,
                fmt::format("auto gate: improvement {:g} >= {:g}", *improvement, g.min_improvement),
                step);
        } else {
            transition(s, SeedStage::kCulled, auto_,
                       fmt::format("auto gate: improvement {} < {:g}", measured(improvement),
                                   g.min_improvement),
                       step);
        }
    }
}

void SeedManager::on_step_end(int64_t step, const StepMetrics& metrics) {
    // Run-level loss history (finite losses only; the governor handles the others).
    if (std::isfinite(metrics.loss)) {
        last_loss_delta_ = last_loss_ ? *last_loss_ - metrics.loss : 0.0;
        last_loss_ = metrics.loss;
        loss_ema_ = has_loss_ema_ ? 0.9 * loss_ema_ + 0.1 * metrics.loss : metrics.loss;
        has_loss_ema_ = true;
        loss_window_.push_back(metrics.loss);
        if (loss_window_.size() > kLossWindow) loss_window_.erase(loss_window_.begin());
    }
    // Measured seed metrics (a value replaces the last one; absent keeps it).
    for (int32_t l = 0; l < num_layers() && l < static_cast<int32_t>(metrics.seeds.size()); ++l) {
        SeedTable& t = tables_[l];
        const auto& ms = metrics.seeds[l];
        for (int32_t s = 0; s < t.num_seeds() && s < static_cast<int32_t>(ms.size()); ++s) {
            SeedMeasurements& x = extra_[l][s];
            const SeedMetrics& m = ms[s];
            SeedRow r = t.row(s);
            if (m.gradient_health) {
                // Exponential average of the per-step verdicts (kasmina/telemetry.cpp).
                constexpr double kHealthEma = 0.1;
                x.gradient_health = x.gradient_health ? (1 - kHealthEma) * *x.gradient_health +
                                                            kHealthEma * *m.gradient_health
                                                      : *m.gradient_health;
                r.flags |= kSeedFlagHealthMeasured;
            }
            if (m.contribution) x.contribution = m.contribution;
            if (m.stability) x.stability = m.stability;
            if (m.improvement) x.improvement = m.improvement;
            if (m.error && r.error_count < std::numeric_limits<uint16_t>::max()) ++r.error_count;
            t.set_row(s, r);
        }
    }
    // Time passes for everyone.
    for (SeedTable& t : tables_) {
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            SeedRow r = t.row(s);
            if (r.steps_in_stage < std::numeric_limits<uint32_t>::max()) ++r.steps_in_stage;
            t.set_row(s, r);
        }
    }
    // α schedules and automatic transitions, at most one transition per seed per step.
    const auto auto_ = TransitionOrigin::kAuto;
    for (int32_t l = 0; l < num_layers(); ++l) {
        for (int32_t s = 0; s < tables_[l].num_seeds(); ++s) {
            const SeedRef ref{l, s};
            SeedTable& t = tables_[l];
            switch (t.stage(s)) {
                case SeedStage::kGrafting: {
                    SeedRow r = t.row(s);
                    const GraftResult g = graft_step(r.strategy, lifecycle_.grafting, r.graft,
                                                     r.alpha, graft_metrics(ref));
                    r.alpha = g.alpha;
                    r.graft = g.state;
                    t.set_row(s, r);
                    if (r.alpha >= 1.0f) {
                        transition(ref, SeedStage::kStabilization, auto_, "alpha reached 1", step);
                    }
                    break;
                }
                case SeedStage::kStabilization:
                    if (t.steps_in_stage(s) >= lifecycle_.stabilization_steps) {
                        transition(ref, SeedStage::kEvaluating, auto_, "stabilization complete",
                                   step);
                    }
                    break;
                case SeedStage::kCulled:
                case SeedStage::kRolledBack:
                    if (t.steps_in_stage(s) >= lifecycle_.embargo_steps) {
                        transition(ref, SeedStage::kDormant, auto_, "embargo over", step);
                    }
                    break;
                case SeedStage::kCancelled:
                    transition(ref, SeedStage::kDormant, auto_, "cancelled", step);
                    break;
                case SeedStage::kGerminated:
                    // Silently waits while the layer's training slots are full.
                    transition(ref, SeedStage::kTraining, auto_, "training slot free", step);
                    break;
                case SeedStage::kTraining:
                case SeedStage::kEvaluating:
                case SeedStage::kFineTuning:
                    run_gate(ref, step);
                    break;
                default:
                    break;
            }
        }
    }
    next_step_ = step + 1;
}

std::vector<PendingGate> SeedManager::pending_gates() const {
    std::vector<PendingGate> out;
    for (const SeedTable& t : tables_) {
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            const SeedStage st = t.stage(s);
            if (!stage_has_gate(st)) continue;
            const int64_t due = gate_due_steps(st, lifecycle_);
            const int64_t steps = t.steps_in_stage(s);
            if (steps < due) continue;
            PendingGate p;
            p.seed = SeedRef{t.layer(), s};
            p.stage = st;
            p.waiting_steps = steps - due;
            p.timeout_in_steps =
                std::max<int64_t>(0, lifecycle_.decision_timeout_steps + 1 - p.waiting_steps);
            out.push_back(p);
        }
    }
    return out;
}

uint64_t SeedManager::digest() const {
    uint64_t h = 1469598103934665603ull;
    auto mix = [&h](uint64_t v) {
        for (int i = 0; i < 8; ++i) {
            h ^= (v >> (8 * i)) & 0xFF;
            h *= 1099511628211ull;
        }
    };
    mix(static_cast<uint64_t>(next_step_));
    for (const SeedTable& t : tables_) mix(t.digest());
    return h;
}

// ---- snapshots ----

SeedManagerSnapshot SeedManager::snapshot() const {
    SeedManagerSnapshot snap;
    snap.next_step = next_step_;
    for (int32_t l = 0; l < num_layers(); ++l) {
        const SeedTable& t = tables_[l];
        SeedLayerState& layer = snap.layers.emplace_back();
        layer.layer = t.layer();
        layer.width = t.width();
        for (int32_t s = 0; s < t.num_seeds(); ++s) layer.rows.push_back(t.row(s));
        layer.measured = extra_[l];
    }
    snap.loss_window = loss_window_;
    snap.last_loss = last_loss_;
    snap.last_loss_delta = last_loss_delta_;
    if (has_loss_ema_) snap.loss_ema = loss_ema_;
    return snap;
}

void SeedManager::restore(const SeedManagerSnapshot& snap) {
    // Everything is checked before anything changes, so a refused snapshot leaves this untouched.
    if (static_cast<int32_t>(snap.layers.size()) != num_layers()) {
        ESPER_THROW(kIntegrity, "seed manager state has ", snap.layers.size(),
                    " layers; this run has ", num_layers());
    }
    if (snap.loss_window.size() > kLossWindow)
        ESPER_THROW(kIntegrity, "seed manager state: loss window too long");
    // Slot bookkeeping, per layer and kind: which arena slots the rows hold.
    std::vector<std::vector<std::vector<uint8_t>>> used(tables_.size());
    for (int32_t l = 0; l < num_layers(); ++l) {
        const SeedTable& t = tables_[l];
        const SeedLayerState& layer = snap.layers[l];
        const auto seeds = static_cast<int32_t>(layer.rows.size());
        if (layer.layer != t.layer() || layer.width != t.width() || seeds != t.num_seeds() ||
            layer.measured.size() != layer.rows.size()) {
            ESPER_THROW(kIntegrity, "seed table image is for layer ", layer.layer, " width ",
                        layer.width, " seeds ", seeds, "; this table is layer ", t.layer(),
                        " width ", t.width(), " seeds ", t.num_seeds());
        }
        used[l].resize(kNumBlueprintKinds);
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            used[l][k].assign(
                static_cast<size_t>(arenas_[l].capacity(static_cast<BlueprintKind>(k))), 0);
        }
        for (int32_t s = 0; s < seeds; ++s) {
            const SeedRow& r = layer.rows[s];
            if (static_cast<int>(r.stage) >= kNumSeedStages ||
                static_cast<int>(r.kind) >= kNumBlueprintKinds ||
                static_cast<int>(r.strategy) >= kNumGraftingStrategies) {
                ESPER_THROW(kIntegrity, "seed manager state: layer ", l, " seed ", s,
                            ": value out of range");
            }
            // A fossilized widening seed the host folded in holds no slot (release_folded).
            const bool folded =
                r.stage == SeedStage::kFossilized && blueprint_is_widening(r.kind) && r.slot < 0;
            const bool holds = stage_holds_slot(r.stage) && !folded;
            if (holds != (r.slot >= 0))
                ESPER_THROW(kIntegrity, "seed manager state: slot/stage mismatch");
            if (!holds) continue;
            auto& u = used[l][static_cast<int>(r.kind)];
            if (r.slot >= static_cast<int32_t>(u.size()) || u[r.slot])
                ESPER_THROW(kIntegrity, "seed manager state: bad or shared arena slot ", r.slot);
            u[r.slot] = 1;
        }
    }
    for (int32_t l = 0; l < num_layers(); ++l) {
        const SeedLayerState& layer = snap.layers[l];
        for (int32_t s = 0; s < tables_[l].num_seeds(); ++s) tables_[l].set_row(s, layer.rows[s]);
        extra_[l] = layer.measured;
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            for (size_t s = 0; s < used[l][k].size(); ++s) {
                arenas_[l].set_in_use(static_cast<BlueprintKind>(k), static_cast<int32_t>(s),
                                      used[l][k][s]);
            }
        }
    }
    next_step_ = snap.next_step;
    loss_window_ = snap.loss_window;
    last_loss_ = snap.last_loss;
    last_loss_delta_ = snap.last_loss_delta;
    loss_ema_ = snap.loss_ema.value_or(0.0);
    has_loss_ema_ = snap.loss_ema.has_value();
}

int64_t SeedManager::governor_rollback(const SeedManagerSnapshot& last_good,
                                       const std::string& reason) {
    ESPER_REQUIRE(static_cast<int32_t>(last_good.layers.size()) == num_layers());
    int64_t moved = 0;
    for (int32_t l = 0; l < num_layers(); ++l) {
        SeedTable& t = tables_[l];
        const std::vector<SeedRow>& rows = last_good.layers[l].rows;
        ESPER_REQUIRE(static_cast<int32_t>(rows.size()) == t.num_seeds());
        for (int32_t s = 0; s < t.num_seeds(); ++s) {
            const SeedRow now = t.row(s);
            const SeedRow& then = rows[s];
            const bool changed = now.stage != then.stage || now.kind != then.kind ||
                                 now.slot != then.slot || now.alpha != then.alpha;
            if (!changed || !stage_is_active(now.stage)) continue;
            const SeedStage to =
                (now.stage == SeedStage::kGerminated || now.stage == SeedStage::kTraining)
                    ? SeedStage::kCancelled
                    : SeedStage::kRolledBack;
            if (transition(SeedRef{l, s}, to, TransitionOrigin::kGovernor,
                           with_reason("governor rollback", reason), next_step_)
                    .empty()) {
                ++moved;
            }
        }
    }
    return moved;
}

}  // namespace esper::kasmina
