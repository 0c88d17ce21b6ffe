// The built-in heuristic policy (tamiyo/heuristic_policy.h).
#include "tamiyo/heuristic_policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "core/error.h"

namespace esper::tamiyo {

double HeuristicPolicy::rent(const SeedView& s) const {
    return config_.rent_per_param * double(std::max<int64_t>(0, s.blueprint_params));
}

std::string HeuristicPolicy::rent_note(const SeedView& s) const {
    if (config_.rent_per_param <= 0) return {};
    return fmt::format(" (rent {:g} for {} parameters)", rent(s), s.blueprint_params);
}

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
                case SeedStage::kDormant: {
                    // Only where the executor offers the blueprint (a negative price: the kind
                    // is not available on this seed's layer, e.g. a chunk kind on a widening
                    // site of the transformer).
                    const auto& price = s.germination_params[size_t(config_.blueprint)];
                    if (price && *price < 0) continue;
                    // Unmeasured health sorts last: prefer seeds we know are weak.
                    dormant.push_back(
                        {m.health ? *m.health : std::numeric_limits<double>::infinity(), s.layer,
                         s.seed});
                    continue;
                }
                case SeedStage::kTraining:
                    if (in_stage < config_.training_steps) continue;
                    if (m.gradient_health && *m.gradient_health >= config_.min_gradient_health) {
                        d.kind = DecisionKind::kApprove;
                        d.reason = fmt::format("heuristic: gradient health {:g} >= {:g}",
                                               *m.gradient_health, config_.min_gradient_health);
                    } else if (in_stage >= config_.training_patience_steps) {
                        d.kind = DecisionKind::kCull;
                        d.reason =
                            m.gradient_health
                                ? fmt::format(
                                      "heuristic: gradient health {:g} < {:g} after {} steps",
                                      *m.gradient_health, config_.min_gradient_health, in_stage)
                                : fmt::format(
                                      "heuristic: gradient health unmeasured after {} steps",
                                      in_stage);
                    } else {
                        continue;
                    }
                    break;
                case SeedStage::kEvaluating: {
                    if (in_stage < config_.evaluation_steps || !m.contribution) continue;
                    const double bar = config_.min_benefit + rent(s);
                    if (*m.contribution > bar) {
                        d.kind = DecisionKind::kApprove;
                        d.reason = fmt::format("heuristic: contribution {:g} > {:g}{} (seed helps)",
                                               *m.contribution, bar, rent_note(s));
                    } else {
                        d.kind = DecisionKind::kCull;
                        d.reason = fmt::format(
                            "heuristic: contribution {:g} <= {:g}{} (seed does not help)",
                            *m.contribution, bar, rent_note(s));
                    }
                    break;
                }
                case SeedStage::kFineTuning: {
                    const double bar = config_.cull_contribution + rent(s);
                    if (m.contribution && *m.contribution < bar) {
                        d.kind = DecisionKind::kCull;
                        d.reason = fmt::format("heuristic: contribution {:g} < {:g}{} (seed {})",
                                               *m.contribution, bar, rent_note(s),
                                               rent(s) > 0 ? "does not pay its rent" : "hurts");
                    } else if (in_stage >= config_.fine_tuning_steps) {
                        d.kind = DecisionKind::kFossilize;
                        d.reason =
                            m.contribution
                                ? fmt::format("heuristic: fine-tuned {} steps, contribution {:g}",
                                              in_stage, *m.contribution)
                                : fmt::format("heuristic: fine-tuned {} steps", in_stage);
                    } else {
                        continue;
                    }
                    break;
                }
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
        d.reason = fmt::format(
            "heuristic: loss plateau since step {} (best {:g} at step {}), lowest-health dormant "
            "seed",
            view.run().plateau_since_step, view.run().best_loss.value_or(0.0),
            view.run().best_step);
        out.push_back(std::move(d));
    }
    return out;
}

std::string HeuristicPolicy::describe() const {
    const HeuristicConfig& c = config_;
    // Each line states decide()'s comparison with the same operator (contribution > 0 means the
    // seed helps: the loss would rise without it).
    return fmt::format(
        "  germinate: on a loss plateau, up to {} per layer and round, the lowest-health DORMANT "
        "seeds ({}/{} {})\n"
        "  TRAINING, after {} steps: approve if gradient health >= {:g}; cull once {} steps "
        "passed below it or unmeasured\n"
        "  EVALUATING, after {} steps: approve if contribution > {:g}, cull if contribution <= "
        "{:g}\n"
        "  FINE_TUNING: cull if contribution < {:g}; otherwise fossilize after {} steps\n"
        "{}"
        "  a seed whose deciding metric is unmeasured waits (the executor's decision timeout is "
        "the safe default)\n",
        c.germinations_per_round, blueprint_kind_name(c.blueprint), c.blueprint_size, c.strategy,
        c.training_steps, c.min_gradient_health, c.training_patience_steps, c.evaluation_steps,
        c.min_benefit, c.min_benefit, c.cull_contribution, c.fine_tuning_steps,
        c.rent_per_param > 0
            ? fmt::format("  rent: both contribution thresholds rise by {:g} per blueprint "
                          "parameter of the seed\n",
                          c.rent_per_param)
            : std::string());
}

}  // namespace esper::tamiyo
