// Configuration values of the lifecycle room: stage timers, gates, α schedules and the governor
// (the `lifecycle:` and `governor:` sections of a run config; kasmina/io/config.h reads them from
// YAML). Plain values.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "kasmina/model/config.h"

namespace esper::kasmina {

// Parameters of every strategy (DESIGN §4.4); each strategy reads only its own.
struct GraftingConfig {
    GraftingStrategy strategy = GraftingStrategy::kLinear;
    int64_t ramp_steps = 100;          // R: steps from α = 0 to α = 1 (>= 1)
    double steepness = 10.0;           // sigmoid k
    double momentum = 0.5;             // momentum m
    double momentum_gain = 0.01;       // momentum: v ← m·v + gain·Δloss
    double drift_threshold = 0.1;      // drift_controlled: pause while drift > threshold
    double drift_ema = 0.9;            // drift_controlled: EMA decay of the weight norm
    double stability_threshold = 0.1;  // stability: relative loss variance counted unstable
    int64_t stability_patience = 3;    // stability: unstable steps before reverting α
    int64_t adaptive_window = 10;      // adaptive: steps between strategy re-choices
    bool operator==(const GraftingConfig&) const = default;
};

struct GatesConfig {
    double min_gradient_health = 0.7;  // TRAINING → GRAFTING
    double min_contribution = 0.0;     // EVALUATING → FINE_TUNING needs benefit > this
    double cull_contribution = 0.0;    // EVALUATING → CULLED when benefit < −this
    double min_improvement = 0.0;      // FINE_TUNING → FOSSILIZED
    double max_error_rate = 0.1;       // EVALUATING → CULLED when error rate above
    double min_stability = 0.0;        // EVALUATING → FINE_TUNING
    bool operator==(const GatesConfig&) const = default;
};

// How a seed's contribution (the EVALUATING and FINE_TUNING gates' measure, telemetry's
// `contribution`) is measured. `gradient`: the first-order term −Σ⟨∂L/∂y, α·r(h)⟩ summed over the
// telemetry window's steps (free: the backward computes it; ≈ 0 for a seed whose output the host
// has adapted to). `ablation`: at the last step of each telemetry window, after the update, the
// loss of the window's last `ablation_batches` training batches with the seed's output removed
// minus the loss with them (per batch one forward per blending seed plus one; positive = the seed
// helps), averaged over the batches and ranks.
enum class ContributionMeasure : uint8_t { kGradient = 0, kAblation = 1 };
inline constexpr std::array<std::string_view, 2> kContributionMeasureNames = {"gradient",
                                                                              "ablation"};
constexpr std::string_view contribution_measure_name(ContributionMeasure m) {
    return enum_name(m, kContributionMeasureNames);
}

struct LifecycleConfig {
    int64_t training_steps = 200;
    int64_t stabilization_steps = 100;
    int64_t evaluation_steps = 100;
    int64_t fine_tuning_steps = 200;
    int64_t embargo_steps = 500;
    int64_t max_training_per_layer = 2;    // concurrent seeds in TRAINING per layer
    int64_t max_active_per_layer = 4;      // seeds in GERMINATED..FINE_TUNING per layer
    bool auto_gates = true;                // evaluate the default gates in-process
    int64_t decision_timeout_steps = 500;  // auto_gates false: safe default after this wait
    ContributionMeasure contribution = ContributionMeasure::kGradient;
    int64_t ablation_batches = 1;  // contribution: ablation — batches measured per window
    GraftingConfig grafting;
    GatesConfig gates;
    bool operator==(const LifecycleConfig&) const = default;
};

struct GovernorConfig {
    bool enabled = true;
    double divergence_factor = 5.0;     // trip when loss > factor × recent mean
    int64_t window = 50;                // steps of loss history
    int64_t snapshot_every_steps = 50;  // last-known-good snapshot cadence
    // Consecutive trips after which the run stops with an error (0 = never): a run restored to
    // its last-known-good state that still never has a finite loss cannot recover.
    int64_t max_consecutive_trips = 20;
    bool operator==(const GovernorConfig&) const = default;
};

}  // namespace esper::kasmina
