// The built-in policy (DESIGN §7.1): after a loss plateau, germinate the lowest-health dormant
// seeds; approve TRAINING → GRAFTING when gradient health ≥ min_gradient_health; at the
// EVALUATING gate keep seeds that help (contribution > min_benefit; positive = the loss would rise
// without the seed, §4.6) and cull the others; fossilize after fine-tuning unless the seed hurts;
// cull seeds that hurt. With rent_per_param > 0 both thresholds rise by the rent of the seed's
// parameters (a seed must help by more than it costs). Seeds with unmeasured metrics are left
// waiting (the executor's gate timeout is the safe default).
#pragma once

#include <cstdint>
#include <string>

#include "tamiyo/policy.h"

namespace esper::tamiyo {

struct HeuristicConfig {
    uint32_t germinations_per_round = 1;  // per layer and decision, while on a plateau
    BlueprintKind blueprint = BlueprintKind::kResidualMlp;
    uint32_t blueprint_size = 0;  // 0 = executor default
    std::string strategy = "linear";
    // The three gate times are the executor's (lifecycle.*_steps); the agent copies them in
    // (set_executor_settings in tamiyo/config.h), they have no tamiyo.* key.
    uint64_t training_steps = 200;  // TRAINING gate due
    double min_gradient_health = 0.7;
    uint64_t training_patience_steps = 600;  // unhealthy this long in TRAINING → cull
    uint64_t evaluation_steps = 100;         // EVALUATING gate due
    double min_benefit = 0.0;                // approve when contribution > min_benefit
    uint64_t fine_tuning_steps = 200;        // FINE_TUNING gate due
    double cull_contribution = 0.0;          // contribution < this in FINE_TUNING → cull (hurts)
    // Rent: a seed's parameters must pay for themselves. Both contribution thresholds above rise
    // by rent_per_param × the seed's blueprint parameters (loss units per parameter; 0 = none).
    double rent_per_param = 0.0;
};

class HeuristicPolicy final : public Policy {
public:
    explicit HeuristicPolicy(HeuristicConfig config = {}) : config_(std::move(config)) {}
    std::string name() const override { return "heuristic"; }
    std::string kind() const override { return "heuristic"; }
    std::vector<Decision> decide(const View& view, uint64_t step) override;
    const HeuristicConfig& config() const { return config_; }
    // What decide() does with this config, one rule per line (`esper policy show/check`,
    // `esper tamiyo --check-config`). Kept next to decide() so the two cannot drift apart.
    std::string describe() const;

private:
    double rent(const SeedView& s) const;            // rent_per_param × its parameters
    std::string rent_note(const SeedView& s) const;  // "" without rent
    HeuristicConfig config_;
};

}  // namespace esper::tamiyo
