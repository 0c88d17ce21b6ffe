// The agents' training loop in miniature (agents/kasmina_main.cpp, agents/kasmina_bus.cpp), for
// tests that run a Trainer to its end: `before_step` plays the agent's command intake at every
// step boundary, `after` sees what each step made due.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>

#include "kasmina/train/trainer.h"

namespace esper::kasmina::test {

inline void run_loop(Trainer& t, const std::function<void(Trainer&)>& before_step = {},
                     const std::function<void(const StepReport&)>& after = {}) {
    while (!t.done()) {
        if (before_step) before_step(t);
        if (!t.boundary()) break;
        t.step();
        const StepReport due = t.after_step();
        if (after) after(due);
    }
}

// A lifecycle that walks on its timers: TRAINING, FINE_TUNING and the graft ramp of `steps`
// each, two steps of STABILIZATION and EVALUATION, and gates that pass whatever a seed measures,
// so a short run sees every stage.
inline void timer_driven_lifecycle(Config& c, int64_t steps) {
    c.lifecycle.training_steps = steps;
    c.lifecycle.stabilization_steps = 2;
    c.lifecycle.evaluation_steps = 2;
    c.lifecycle.fine_tuning_steps = steps;
    c.lifecycle.grafting.ramp_steps = steps;
    c.lifecycle.gates.min_gradient_health = 0.0;
    c.lifecycle.gates.min_contribution = -1e9;
    c.lifecycle.gates.min_improvement = -1e9;
}

// Two trainers that should have trained identically: every seed row of every layer and every
// host parameter equal, bit for bit.
inline void check_same_training(Trainer& a, Trainer& b) {
    REQUIRE(a.seeds().num_layers() == b.seeds().num_layers());
    for (int32_t l = 0; l < a.seeds().num_layers(); ++l)
        for (int32_t s = 0; s < a.seeds().table(l).num_seeds(); ++s)
            CHECK(a.seeds().table(l).row(s) == b.seeds().table(l).row(s));
    const auto& pa = a.model().params();
    const auto& pb = b.model().params();
    REQUIRE(pa.size() == pb.size());
    for (size_t i = 0; i < pa.size(); ++i) {
        CAPTURE(pa[i].name);
        CHECK(std::equal(pa[i].value->span().begin(), pa[i].value->span().end(),
                         pb[i].value->span().begin(), pb[i].value->span().end()));
    }
}

}  // namespace esper::kasmina::test
