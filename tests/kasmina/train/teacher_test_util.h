// What the tests that run the CPU and the CUDA backend side by side share: a small teacher task
// whose seeds walk their stages on timers (gates that always pass), so two backends cannot part on
// a measurement that happens to sit near a threshold, and operator commands to drive it.
#pragma once

#include <cstdint>
#include <optional>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/command.h"

namespace esper::kasmina::test {

// Two hidden layers (24, 20) on a 16-feature, 4-class teacher, 4 seeds per layer, 60 steps.
inline Config timer_driven_teacher_config() {
    Config c;
    c.run.seed = 7;
    c.run.max_steps = 60;
    c.data.dataset = "teacher";
    c.data.batch_size = 32;
    c.data.teacher = {1024, 256, 16, 4, 24, 0.0};
    c.model.hidden = {24, 20};
    c.model.seeds_per_layer = 4;
    c.lifecycle.training_steps = 5;
    c.lifecycle.stabilization_steps = 5;
    c.lifecycle.evaluation_steps = 5;
    c.lifecycle.fine_tuning_steps = 5;
    c.lifecycle.gates.min_gradient_health = 0.0;
    c.lifecycle.gates.min_contribution = -1e9;
    c.lifecycle.gates.cull_contribution = 1e9;
    c.lifecycle.gates.min_improvement = -1e9;
    c.lifecycle.gates.max_error_rate = 1.0;
    c.lifecycle.grafting.ramp_steps = 10;
    c.governor.snapshot_every_steps = 10;
    return c;
}

inline Command operator_germinate(int32_t layer, int32_t seed, BlueprintKind kind) {
    Command c;
    c.origin = TransitionOrigin::kOperator;
    c.body = GerminateCommand{SeedRef{layer, seed}, kind, std::nullopt};
    return c;
}

inline Command operator_cull(int32_t layer, int32_t seed) {
    Command c;
    c.origin = TransitionOrigin::kOperator;
    c.body = CullCommand{SeedRef{layer, seed}};
    return c;
}

}  // namespace esper::kasmina::test
