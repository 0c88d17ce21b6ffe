// CPU reference of the seed-table update (also what kasmina's CPU backend calls).
#include "kernels/seed_state_update.h"

namespace esper::kernels {

void seed_state_update_reference(const SeedTableView& table, const SeedUpdate* updates,
                                 int32_t num_updates, bool advance_steps) {
    if (advance_steps && table.steps_in_stage != nullptr)
        for (int32_t s = 0; s < table.num_seeds; ++s)
            if (table.steps_in_stage[s] != UINT32_MAX) ++table.steps_in_stage[s];
    for (int32_t u = 0; u < num_updates; ++u) {
        const SeedUpdate& up = updates[u];
        if (up.seed < 0 || up.seed >= table.num_seeds) continue;
        if (up.fields & kSeedUpdateStage) {
            table.stage[up.seed] = up.stage;
            if (table.steps_in_stage) table.steps_in_stage[up.seed] = 0;
        }
        if (up.fields & kSeedUpdateKind) table.kind[up.seed] = up.kind;
        if (up.fields & kSeedUpdateSlot) table.slot[up.seed] = up.slot;
        if (up.fields & kSeedUpdateAlpha) table.alpha[up.seed] = up.alpha;
    }
}

}  // namespace esper::kernels
