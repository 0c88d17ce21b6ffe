// The agents' training loop in miniature (agents/kasmina_main.cpp, agents/kasmina_bus.cpp), for
// tests that run a Trainer to its end: `before_step` plays the agent's command intake at every
// step boundary, `after` sees what each step made due.
#pragma once

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

}  // namespace esper::kasmina::test
