// The decision loop (tamiyo/controller.h).
#include "tamiyo/controller.h"

#include <fmt/format.h>

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <set>

#include "core/check.h"
#include "core/clock.h"
#include "core/log.h"

namespace esper::tamiyo {
namespace {

Logger& log_policy() { return logger("tamiyo.policy"); }
Logger& log_decision() { return logger("tamiyo.decision"); }

}  // namespace

std::string_view policy_action_name(PolicyAction a) {
    switch (a) {
        case PolicyAction::kLoad:
            return "load";
        case PolicyAction::kRollback:
            return "rollback";
        case PolicyAction::kDisabled:
            return "disabled";
        case PolicyAction::kFailed:
            return "failed";
    }
    return "invalid";
}

Controller::Controller(ControllerConfig config, PolicyPtr initial)
    : config_(std::move(config)), budget_(config_.budget) {
    ESPER_REQUIRE(initial != nullptr, "controller needs an initial policy");
    load(std::move(initial), "initial policy");
}

void Controller::load(PolicyPtr policy, std::string reason, uint64_t step) {
    ESPER_REQUIRE(policy != nullptr);
    const std::string affected = policy->name();
    stack_.push_back(std::move(policy));
    const Policy& p = *stack_.back();
    history_.push_back({wall_time_ns(), step, PolicyAction::kLoad, p.name(), p.kind(), p.source(),
                        affected, std::move(reason)});
    ESPER_LOG_INFO(log_policy(), "action=load policy=", p.name(), " kind=", p.kind(),
                   " source=", p.source());
}

void Controller::rollback(std::string reason, uint64_t step) {
    if (stack_.size() < 2)
        ESPER_THROW(kInvalidInput,
                    "policy rollback: no previous policy (active: ", stack_.back()->name(), ")");
    const std::string affected = stack_.back()->name();
    stack_.pop_back();
    const Policy& p = *stack_.back();
    history_.push_back({wall_time_ns(), step, PolicyAction::kRollback, p.name(), p.kind(),
                        p.source(), affected, std::move(reason)});
    ESPER_LOG_INFO(log_policy(), "action=rollback from=", affected, " to=", p.name());
}

void Controller::disable_active(std::string reason, uint64_t step) {
    const std::string affected = stack_.back()->name();
    if (stack_.size() < 2) {
        // Nothing to restore: the policy stays active, the failure is recorded.
        const Policy& p = *stack_.back();
        history_.push_back({wall_time_ns(), step, PolicyAction::kFailed, p.name(), p.kind(),
                            p.source(), affected, reason});
        ESPER_LOG_WARN(log_policy(), "action=failed policy=", affected, " reason=\"", reason,
                       "\" (no previous policy to restore)");
        return;
    }
    stack_.pop_back();
    const Policy& p = *stack_.back();
    history_.push_back({wall_time_ns(), step, PolicyAction::kDisabled, p.name(), p.kind(),
                        p.source(), affected, reason});
    ESPER_LOG_WARN(log_policy(), "action=disabled policy=", affected, " reason=\"", reason,
                   "\" restored=", p.name());
}

void Controller::record(uint64_t step, const Decision& d, bool accepted, std::string refusal) {
    if (accepted)
        ESPER_LOG_INFO(log_decision(), "step=", step, " ", to_string(d));
    else
        ESPER_LOG_DEBUG(log_decision(), "step=", step, " refused=\"", refusal, "\" ", to_string(d));
    journal_.push_back({step, wall_time_ns(), d, accepted, std::move(refusal)});
    while (journal_.size() > config_.journal_size) journal_.pop_front();
}

std::optional<std::string> Controller::sanity(Decision& d, const View& view) const {
    const SeedView* sv = view.seed(d.layer, d.seed);
    if (sv == nullptr) return fmt::format("unknown seed {}/{}", d.layer, d.seed);
    if (pending_.count({d.layer, d.seed}))
        return fmt::format("a command for seed {}/{} is still pending", d.layer, d.seed);
    const SeedStage s = sv->stage;
    // "needs a seed in A, B or C": the wanted stages in the vocabulary's spelling.
    auto wrong_stage = [&](std::initializer_list<SeedStage> wanted) {
        std::string list;
        size_t i = 0;
        for (SeedStage w : wanted) {
            list += i == 0 ? "" : (i + 1 == wanted.size() ? " or " : ", ");
            list += stage_name(w);
            ++i;
        }
        return fmt::format("{} needs a seed in {}, seed {}/{} is {}", decision_kind_name(d.kind),
                           list, d.layer, d.seed, stage_name(s));
    };
    using S = SeedStage;
    switch (d.kind) {
        case DecisionKind::kGerminate:
            if (s != SeedStage::kDormant) return wrong_stage({S::kDormant});
            if (!parse_grafting_strategy(d.strategy))
                return fmt::format("unknown grafting strategy '{}'", d.strategy);
            d.to_stage = SeedStage::kGerminated;
            break;
        case DecisionKind::kApprove:
        case DecisionKind::kDeny: {
            auto next = gate_next_stage(s);
            if (!next) return wrong_stage({S::kTraining, S::kEvaluating, S::kFineTuning});
            d.to_stage = d.kind == DecisionKind::kApprove ? *next : s;
            break;
        }
        case DecisionKind::kFossilize:
            if (s != SeedStage::kFineTuning) return wrong_stage({S::kFineTuning});
            d.to_stage = SeedStage::kFossilized;
            break;
        case DecisionKind::kCull:
            if (s != SeedStage::kTraining && s != SeedStage::kEvaluating &&
                s != SeedStage::kFineTuning)
                return wrong_stage({S::kTraining, S::kEvaluating, S::kFineTuning});
            d.to_stage = SeedStage::kCulled;
            break;
        case DecisionKind::kCancel:
            if (s != SeedStage::kGerminated && s != SeedStage::kTraining)
                return wrong_stage({S::kGerminated, S::kTraining});
            d.to_stage = SeedStage::kCancelled;
            break;
        case DecisionKind::kRollback:
            if (s < SeedStage::kGrafting || s > SeedStage::kFineTuning)
                return wrong_stage(
                    {S::kGrafting, S::kStabilization, S::kEvaluating, S::kFineTuning});
            d.to_stage = SeedStage::kRolledBack;
            break;
        default:
            return "unknown decision kind";
    }
    return std::nullopt;
}

namespace {

// Seeds of `kind` in `layer` that hold an arena slot, as the view knows them.
uint32_t held_slots(const View& view, uint32_t layer, BlueprintKind kind) {
    const LayerView* lv = view.layer(layer);
    if (lv == nullptr) return 0;
    uint32_t n = 0;
    for (const SeedView& s : lv->seeds)
        if (s.known && stage_holds_slot(s.stage) && s.blueprint == kind) ++n;
    return n;
}

}  // namespace

void Controller::germination_answered(const Decision& d, bool applied, const View& view,
                                      uint64_t step) {
    if (d.kind != DecisionKind::kGerminate) return;
    const auto key = std::make_pair(d.layer, d.blueprint);
    if (applied) {
        backoff_.erase(key);
        return;
    }
    Backoff& b = backoff_[key];
    // More answers to commands sent before the back-off began: one rejection, not several.
    if (b.steps != 0 && step < b.until_step) return;
    const uint64_t base = std::max<uint64_t>(1, config_.rejection_backoff_steps);
    b.steps = b.steps == 0 ? base : std::min(b.steps * 2, base * 16);
    b.until_step = step + b.steps;
    b.held_slots = held_slots(view, d.layer, d.blueprint);
    ESPER_LOG_INFO(log_decision(), "step=", step, " layer=", d.layer,
                   " blueprint=", blueprint_kind_name(d.blueprint),
                   " germination rejected; backing off until step ", b.until_step);
}

std::optional<std::string> Controller::backed_off(const Decision& d, const View& view,
                                                  uint64_t step) {
    if (d.kind != DecisionKind::kGerminate) return std::nullopt;
    auto it = backoff_.find({d.layer, d.blueprint});
    if (it == backoff_.end()) return std::nullopt;
    const Backoff& b = it->second;
    // A slot of this kind was freed since: the arena has room again. The doubling is kept until
    // a germination of the kind is applied.
    if (step >= b.until_step || held_slots(view, d.layer, d.blueprint) < b.held_slots) {
        it->second.until_step = step;
        return std::nullopt;
    }
    return fmt::format(
        "germinations of {} in layer {} back off until step {} (the executor "
        "rejected one; its arena may be full)",
        blueprint_kind_name(d.blueprint), d.layer, b.until_step);
}

void Controller::expire_pending(const View& view, uint64_t step) {
    for (auto it = pending_.begin(); it != pending_.end();) {
        const SeedView* sv = view.seed(it->first.first, it->first.second);
        const bool confirmed = sv == nullptr || sv->stage != it->second.from;
        const bool expired = step >= it->second.step + config_.pending_timeout_steps;
        it = (confirmed || expired) ? pending_.erase(it) : std::next(it);
    }
}

std::vector<Decision> Controller::decide(const View& view, uint64_t step) {
    expire_pending(view, step);
    Policy& policy = *stack_.back();
    const std::string policy_name = policy.name();

    std::vector<Decision> proposed;
    Stopwatch sw;
    try {
        proposed = policy.decide(view, step);
    } catch (const std::exception& e) {
        disable_active(fmt::format("threw: {}", e.what()), step);
        return {};
    }
    const double elapsed_ms = static_cast<double>(sw.elapsed_ns()) * 1e-6;
    if (elapsed_ms > config_.policy_time_budget_ms) {
        disable_active(fmt::format("time budget exceeded: {:g} ms > {:g} ms", elapsed_ms,
                                   config_.policy_time_budget_ms),
                       step);
        return {};
    }

    std::vector<PendingGermination> pending_germinations;
    for (const auto& [key, p] : pending_)
        if (p.germinate)
            pending_germinations.push_back({key.first, key.second, p.step, p.blueprint_params});
    budget_.begin(view, step, pending_germinations);

    std::vector<Decision> accepted;
    std::set<std::pair<uint32_t, uint32_t>> seen;
    for (Decision& d : proposed) {
        d.policy = policy_name;
        if (!seen.insert({d.layer, d.seed}).second) {
            record(step, d, false, "duplicate decision for this seed in one round");
            continue;
        }
        if (auto why = sanity(d, view)) {
            record(step, d, false, *why);
            continue;
        }
        if (auto why = backed_off(d, view, step)) {
            record(step, d, false, *why);
            continue;
        }
        if (auto why = budget_.admit(d, view)) {
            record(step, d, false, *why);
            continue;
        }
        record(step, d, true, {});
        if (d.kind != DecisionKind::kDeny) {
            const int64_t params =
                d.kind == DecisionKind::kGerminate
                    ? germination_price(view, d.layer, d.seed, d.blueprint).value_or(0)
                    : 0;
            pending_[{d.layer, d.seed}] = {view.seed(d.layer, d.seed)->stage, step, params,
                                           d.kind == DecisionKind::kGerminate};
        }
        accepted.push_back(std::move(d));
    }
    return accepted;
}

}  // namespace esper::tamiyo
