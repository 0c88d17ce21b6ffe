// The built-in heuristic policy (tamiyo/heuristic_policy.h).
#include "tamiyo/heuristic_policy.h"

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace esper::tamiyo {

std::vector<Decision> HeuristicPolicy::decide(const View& view, uint64_t step) {
    std::vector<Decision> out;
    struct Candidate {
        double health;
        uint32_t layer;
        uint32_t seed;
    };
    std::vector<Candidate> dormant;

    for (const auto& [layer_id, lv] : view.layers()) {
        for (const SeedView& s : lv.seeds) {
            if (!s.known) continue;
            const uint64_t in_stage = s.steps_in_stage(step);
            const SeedMetrics& m = s.latest;
            Decision d;
            d.layer = s.layer;
            d.seed = s.seed;
            switch (s.stage) {
                case SeedStage::kDormant:
                    // Unmeasured health sorts last: prefer seeds we know are weak.
                    dormant.push_back(
                        {m.health ? *m.health : std::numeric_limits<double>::infinity(), s.layer,
                         s.seed});
                    continue;
                case SeedStage::kTraining:
                    if (in_stage < config_.training_steps) continue;
                    if (m.gradient_health && *m.gradient_health >= config_.min_gradient_health) {
                        d.kind = DecisionKind::kApprove;
                        d.reason = detail::concat("heuristic: gradient health ", *m.gradient_health,
                                                  " >= ", config_.min_gradient_health);
                    } else if (in_stage >= config_.training_patience_steps) {
                        d.kind = DecisionKind::kCull;
                        d.reason =
                            m.gradient_health
                                ? detail::concat("heuristic: gradient health ", *m.gradient_health,
                                                 " < ", config_.min_gradient_health, " after ",
                                                 in_stage, " steps")
                                : detail::concat("heuristic: gradient health unmeasured after ",
                                                 in_stage, " steps");
                    } else {
                        continue;
                    }
                    break;
                case SeedStage::kEvaluating:
                    if (in_stage < config_.evaluation_steps || !m.contribution) continue;
                    if (*m.contribution > config_.min_benefit) {
                        d.kind = DecisionKind::kApprove;
                        d.reason = detail::concat("heuristic: contribution ", *m.contribution,
                                                  " > ", config_.min_benefit, " (seed helps)");
                    } else {
                        d.kind = DecisionKind::kCull;
                        d.reason =
                            detail::concat("heuristic: contribution ", *m.contribution,
                                           " <= ", config_.min_benefit, " (seed does not help)");
                    }
                    break;
                case SeedStage::kFineTuning:
                    if (m.contribution && *m.contribution < config_.cull_contribution) {
                        d.kind = DecisionKind::kCull;
                        d.reason =
                            detail::concat("heuristic: contribution ", *m.contribution, " < ",
                                           config_.cull_contribution, " (seed hurts)");
                    } else if (in_stage >= config_.fine_tuning_steps) {
                        d.kind = DecisionKind::kFossilize;
                        d.reason =
                            m.contribution
                                ? detail::concat("heuristic: fine-tuned ", in_stage,
                                                 " steps, contribution ", *m.contribution)
                                : detail::concat("heuristic: fine-tuned ", in_stage, " steps");
                    } else {
                        continue;
                    }
                    break;
                default:
                    continue;
            }
            out.push_back(std::move(d));
        }
    }

    if (!view.run().plateau || config_.germinations_per_round == 0) return out;
    // Lowest health first, per layer (so one full layer does not block the others).
    std::sort(dormant.begin(), dormant.end(), [](const Candidate& a, const Candidate& b) {
        if (a.layer != b.layer) return a.layer < b.layer;
        if (a.health != b.health) return a.health < b.health;
        return a.seed < b.seed;
    });
    uint32_t taken = 0;
    for (size_t i = 0; i < dormant.size(); ++i) {
        if (i > 0 && dormant[i].layer != dormant[i - 1].layer) taken = 0;
        if (taken >= config_.germinations_per_round) continue;
        ++taken;
        Decision d;
        d.kind = DecisionKind::kGerminate;
        d.layer = dormant[i].layer;
        d.seed = dormant[i].seed;
        d.blueprint = config_.blueprint;
        d.blueprint_size = config_.blueprint_size;
        d.strategy = config_.strategy;
        d.reason =
            detail::concat("heuristic: loss plateau since step ", view.run().plateau_since_step,
                           " (best ", view.run().best_loss.value_or(0.0), " at step ",
                           view.run().best_step, "), lowest-health dormant seed");
        out.push_back(std::move(d));
    }
    return out;
}

}  // namespace esper::tamiyo
