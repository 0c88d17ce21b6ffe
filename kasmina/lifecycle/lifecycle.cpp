// The lifecycle table and validator. Check order: the edge exists, then the minimum time in the
// source stage, then the gate; the first failure is the reason.
#include "kasmina/lifecycle/lifecycle.h"

#include <fmt/format.h>

#include <cctype>

namespace esper::kasmina {

namespace {
using S = SeedStage;
}  // namespace

bool is_legal_transition(SeedStage from, SeedStage to) {
    switch (from) {
        case S::kDormant:
            return to == S::kGerminated;
        case S::kGerminated:
            return to == S::kTraining || to == S::kCancelled;
        case S::kTraining:
            return to == S::kGrafting || to == S::kCulled || to == S::kCancelled;
        case S::kGrafting:
            return to == S::kStabilization || to == S::kRolledBack;
        case S::kStabilization:
            return to == S::kEvaluating || to == S::kRolledBack;
        case S::kEvaluating:
            return to == S::kFineTuning || to == S::kCulled || to == S::kRolledBack;
        case S::kFineTuning:
            return to == S::kFossilized || to == S::kCulled || to == S::kRolledBack;
        case S::kFossilized:
            return false;
        case S::kCulled:
            return to == S::kDormant;
        case S::kCancelled:
            return to == S::kDormant;
        case S::kRolledBack:
            return to == S::kDormant;
    }
    return false;
}

int64_t minimum_steps(SeedStage from, SeedStage to, const LifecycleConfig& cfg) {
    if (to == S::kRolledBack) return 0;  // the emergency exit bypasses every minimum
    if (from == S::kTraining && to == S::kGrafting) return cfg.training_steps;
    if (from == S::kStabilization && to == S::kEvaluating) return cfg.stabilization_steps;
    if (from == S::kEvaluating && to == S::kFineTuning) return cfg.evaluation_steps;
    if (from == S::kFineTuning && to == S::kFossilized) return cfg.fine_tuning_steps;
    if ((from == S::kCulled || from == S::kRolledBack) && to == S::kDormant)
        return cfg.embargo_steps;
    return 0;
}

int64_t gate_due_steps(SeedStage s, const LifecycleConfig& cfg) {
    switch (s) {
        case S::kTraining:
            return cfg.training_steps;
        case S::kEvaluating:
            return cfg.evaluation_steps;
        case S::kFineTuning:
            return cfg.fine_tuning_steps;
        default:
            return 0;
    }
}

std::string validate_transition(SeedStage to, const TransitionFacts& f,
                                const LifecycleConfig& cfg) {
    const SeedStage from = f.from;
    if (!is_legal_transition(from, to)) {
        return fmt::format("invalid transition {}→{}", stage_name(from), stage_name(to));
    }
    const int64_t need = minimum_steps(from, to, cfg);
    if (f.steps_in_stage < need) {
        return fmt::format("insufficient time in {}: {} < {}", stage_name(from), f.steps_in_stage,
                           need);
    }
    if (from == S::kDormant && to == S::kGerminated) {
        if (f.step < f.embargo_until_step) {
            return fmt::format("gate failed: in embargo until step {}", f.embargo_until_step);
        }
        if (f.active_in_layer >= cfg.max_active_per_layer) {
            return fmt::format("gate failed: layer has {} active seeds (max_active_per_layer {})",
                               f.active_in_layer, cfg.max_active_per_layer);
        }
        if (!f.arena_slot_free) {
            return fmt::format("gate failed: no free {} arena slot",
                               f.blueprint_name.empty() ? "blueprint" : f.blueprint_name);
        }
        if (!f.param_budget_ok)
            return "gate failed: blueprint parameter budget of the layer exceeded";
    }
    if (from == S::kGerminated && to == S::kTraining &&
        f.training_in_layer >= cfg.max_training_per_layer) {
        return fmt::format("gate failed: no free training slot ({}/{})", f.training_in_layer,
                           cfg.max_training_per_layer);
    }
    if (from == S::kTraining && to == S::kGrafting) {
        if (!f.gradient_health) return "gate failed: gradient health never measured";
        if (*f.gradient_health < cfg.gates.min_gradient_health) {
            return fmt::format("gate failed: gradient health {:g} < {:g}", *f.gradient_health,
                               cfg.gates.min_gradient_health);
        }
    }
    if (from == S::kGrafting && to == S::kStabilization && f.alpha < 1.0f) {
        return fmt::format("gate failed: alpha {:g} < 1 (ramp not complete)", double(f.alpha));
    }
    return {};
}

}  // namespace esper::kasmina
