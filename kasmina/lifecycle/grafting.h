// Grafting strategies (α schedules, DESIGN §4.4) as pure functions of (state, metrics).
// Convention: `state.t` counts the grafting steps already taken; graft_step computes the α of
// step t (so the first call returns the α of step 0) and advances t. Every strategy receives the
// seed's real current α (it may have been changed by an operator or the governor).
#pragma once

#include <cstdint>

#include "kasmina/lifecycle/config.h"

namespace esper::kasmina {

// Per-seed α-schedule state; lives in the seed table row. All zero at GRAFTING entry except
// ramp_steps (from config or a set_alpha_schedule command).
struct GraftState {
    float t = 0.0f;                  // progress in steps (stability may advance by halves)
    float velocity = 0.0f;           // momentum
    float weight_ema = 0.0f;         // drift_controlled: EMA of the blueprint weight norm
    float last_stable_alpha = 0.0f;  // stability
    float loss_delta_ema = 0.0f;     // adaptive
    int32_t ramp_steps = 0;          // R; 0 = take lifecycle.grafting.ramp_steps
    uint16_t unstable_count = 0;     // stability
    uint8_t adaptive_choice = 0;     // adaptive: the GraftingStrategy it currently follows
    uint8_t has_ema = 0;             // drift_controlled: weight_ema initialised
    bool operator==(const GraftState&) const = default;
};

struct GraftMetrics {
    double loss_delta = 0.0;     // previous loss − current loss (positive = improving)
    double weight_norm = 0.0;    // L2 norm of the seed's blueprint parameters
    double loss_variance = 0.0;  // relative variance of recent losses (var / mean²)
};

struct GraftResult {
    float alpha = 0.0f;
    GraftState state;
};

// One step of `strategy`; α is clipped to [0, 1].
GraftResult graft_step(GraftingStrategy strategy, const GraftingConfig& cfg,
                       const GraftState& state, float current_alpha, const GraftMetrics& metrics);

}  // namespace esper::kasmina
