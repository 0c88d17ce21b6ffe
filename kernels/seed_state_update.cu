// CUDA seed-table update: one pass advancing steps_in_stage, one thread per update.
#include "kernels/seed_state_update.h"

namespace esper::kernels {

namespace {

__global__ void advance_steps_kernel(uint32_t* steps, int32_t n) {
    for (int32_t s = blockIdx.x * blockDim.x + threadIdx.x; s < n; s += gridDim.x * blockDim.x)
        if (steps[s] != 0xffffffffu) ++steps[s];
}

__global__ void apply_updates_kernel(SeedTableView table, const SeedUpdate* updates, int32_t n) {
    const int32_t u = blockIdx.x * blockDim.x + threadIdx.x;
    if (u >= n) return;
    const SeedUpdate up = updates[u];
    if (up.seed < 0 || up.seed >= table.num_seeds) return;
    if (up.fields & kSeedUpdateStage) {
        table.stage[up.seed] = up.stage;
        if (table.steps_in_stage) table.steps_in_stage[up.seed] = 0;
    }
    if (up.fields & kSeedUpdateKind) table.kind[up.seed] = up.kind;
    if (up.fields & kSeedUpdateSlot) table.slot[up.seed] = up.slot;
    if (up.fields & kSeedUpdateAlpha) table.alpha[up.seed] = up.alpha;
}

}  // namespace

cudaError_t launch_seed_state_update(const SeedTableView& table, const SeedUpdate* updates,
                                     int32_t num_updates, bool advance_steps, cudaStream_t stream) {
    if (advance_steps && table.steps_in_stage != nullptr && table.num_seeds > 0) {
        const int blocks =
            (table.num_seeds + 255) / 256 < 4096 ? (table.num_seeds + 255) / 256 : 4096;
        advance_steps_kernel<<<blocks, 256, 0, stream>>>(table.steps_in_stage, table.num_seeds);
    }
    if (num_updates > 0)
        apply_updates_kernel<<<(num_updates + 127) / 128, 128, 0, stream>>>(table, updates,
                                                                            num_updates);
    return cudaGetLastError();
}

}  // namespace esper::kernels
