// Applies a batch of seed-table edits (stage transitions, slots, α-schedule values) to a seed
// table, and advances every seed's steps_in_stage. The host decides transitions (lifecycle
// validation lives in kasmina); this only writes them where the table lives, without a sync.
#pragma once

#include <cstddef>
#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// The mutable columns of a seed table ([num_seeds] each; host or device pointers).
struct SeedTableView {
    int32_t num_seeds = 0;
    uint8_t* stage = nullptr;
    uint8_t* kind = nullptr;
    int32_t* slot = nullptr;
    float* alpha = nullptr;
    uint32_t* steps_in_stage = nullptr;
};

// Which fields of a SeedUpdate apply (bit mask). Setting the stage resets steps_in_stage to 0.
inline constexpr uint32_t kSeedUpdateStage = 1u << 0;
inline constexpr uint32_t kSeedUpdateKind = 1u << 1;
inline constexpr uint32_t kSeedUpdateSlot = 1u << 2;
inline constexpr uint32_t kSeedUpdateAlpha = 1u << 3;

struct SeedUpdate {
    int32_t seed = 0;
    uint32_t fields = 0;
    uint8_t stage = 0;
    uint8_t kind = 0;
    int32_t slot = -1;
    float alpha = 0.0f;
};

// First (when advance_steps) every seed's steps_in_stage += 1 (saturating), then the updates.
// Precondition: at most one update per seed in a batch (updates apply in parallel on the GPU);
// seeds out of range are ignored.
void seed_state_update_reference(const SeedTableView& table, const SeedUpdate* updates,
                                 int32_t num_updates, bool advance_steps);

#if ESPER_HAVE_CUDA
// table and updates in device memory (updates typically copied from pinned memory with
// cudaMemcpyAsync just before, on the same stream).
[[nodiscard]] cudaError_t launch_seed_state_update(const SeedTableView& table,
                                                   const SeedUpdate* updates, int32_t num_updates,
                                                   bool advance_steps, cudaStream_t stream);
#endif

}  // namespace esper::kernels
