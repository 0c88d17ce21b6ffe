// The seed lifecycle of DESIGN.md §4.3: the legal-transition table, minimum times
// and the one validator every entry point (API, bus command, batch, governor, automatic steps)
// goes through (stage names and classes: kernels/vocabulary.h). Reasons are user-facing strings:
// `invalid transition A→B`, `insufficient time in A: n < m`, `gate failed: …`. Transitions into
// ROLLED_BACK bypass the minimum times; CULLED/ROLLED_BACK → DORMANT waits `embargo_steps`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "kasmina/lifecycle/config.h"
#include "kernels/vocabulary.h"

namespace esper::kasmina {

// The edge exists in the DESIGN §4.3 table.
bool is_legal_transition(SeedStage from, SeedStage to);
// Minimum steps in `from` before `from → to` (0 when none; 0 for every → ROLLED_BACK).
int64_t minimum_steps(SeedStage from, SeedStage to, const LifecycleConfig& cfg);
// Minimum steps in a gated stage before its decision is due (training/evaluation/fine_tuning).
int64_t gate_due_steps(SeedStage s, const LifecycleConfig& cfg);

// What the validator knows about the seed and its layer when asked for `from → to`.
struct TransitionFacts {
    SeedStage from = SeedStage::kDormant;
    int64_t steps_in_stage = 0;
    int64_t step = 0;                       // the global step the transition would happen at
    int64_t embargo_until_step = 0;         // DORMANT → GERMINATED refused while step < this
    float alpha = 0.0f;                     // GRAFTING → STABILIZATION needs α >= 1
    std::optional<double> gradient_health;  // TRAINING → GRAFTING; nullopt = never measured
    // Layer facts, only read for the edges that need them.
    bool arena_slot_free = true;    // DORMANT → GERMINATED
    bool param_budget_ok = true;    // DORMANT → GERMINATED
    int64_t active_in_layer = 0;    // DORMANT → GERMINATED (vs max_active_per_layer)
    int64_t training_in_layer = 0;  // GERMINATED → TRAINING (vs max_training_per_layer)
    std::string blueprint_name;     // for the reasons only
};

// Empty string = allowed; otherwise the rejection reason.
std::string validate_transition(SeedStage to, const TransitionFacts& facts,
                                const LifecycleConfig& cfg);

}  // namespace esper::kasmina
