// Device helpers shared by seed_forward.cu and seed_backward.cu: column→seed lookup, the
// per-seed blueprint descriptor, segmented warp reductions and launch geometry.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/seed_layer.h"

namespace esper::kernels::detail {

inline constexpr int kStreamThreads = 256;
inline constexpr int kActiveThreads = 256;
inline constexpr int kHiddenChunk = 32;

// Largest s with chunk_offset[s] <= c (the seed owning column c).
__device__ inline int32_t seed_of_column(const int32_t* chunk_offset, int32_t num_seeds,
                                         int32_t c) {
    int32_t lo = 0, hi = num_seeds - 1;
    while (lo < hi) {
        const int32_t mid = (lo + hi + 1) >> 1;
        if (__ldg(chunk_offset + mid) <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

struct DeviceBlueprint {
    const float* params = nullptr;
    float* grads = nullptr;
    int32_t hidden = 0;
    int32_t max_width = 0;
    int32_t stride = 0;
    BlueprintKind kind = BlueprintKind::kResidualMlp;
};

__device__ inline DeviceBlueprint blueprint_of(const SeedLayerView& v, int32_t s) {
    DeviceBlueprint bp;
    if (v.slot == nullptr || v.kind == nullptr) return bp;
    const int32_t slot = v.slot[s];
    if (slot < 0) return bp;
    const uint8_t k = v.kind[s];
    if (k >= kNumBlueprintKinds) return bp;
    const BlueprintArena& a = v.arenas[k];
    if (a.params == nullptr || slot >= a.capacity) return bp;
    bp.kind = static_cast<BlueprintKind>(k);
    bp.params = a.params + static_cast<int64_t>(slot) * a.stride;
    bp.grads = a.grads ? a.grads + static_cast<int64_t>(slot) * a.stride : nullptr;
    bp.hidden = a.hidden;
    bp.max_width = a.max_width;
    bp.stride = a.stride;
    return bp;
}

// Segmented inclusive sum across a warp where segments are runs of equal `key`; returns true on
// the lane that holds its segment's total (the last lane of the run).
template <typename T>
__device__ inline bool segmented_warp_sum(int32_t key, T& value) {
    const unsigned lane = threadIdx.x & 31u;
    for (int d = 1; d < 32; d <<= 1) {
        const T other = __shfl_up_sync(0xffffffffu, value, d);
        const int32_t other_key = __shfl_up_sync(0xffffffffu, key, d);
        if (lane >= unsigned(d) && other_key == key) value += other;
    }
    const int32_t next_key = __shfl_down_sync(0xffffffffu, key, 1);
    return lane == 31u || next_key != key;
}

// The largest row tile whose shared-memory footprint fits `smem_budget` bytes.
inline int32_t active_row_tile(int32_t max_width, int64_t per_row_floats_per_col, int32_t batch,
                               size_t smem_budget) {
    int64_t rt = 64;
    while (rt > 1 && rt * (max_width * per_row_floats_per_col + 2 * kHiddenChunk) * 4 >
                         static_cast<int64_t>(smem_budget))
        rt >>= 1;
    if (rt > batch) rt = batch;
    return static_cast<int32_t>(rt < 1 ? 1 : rt);
}

inline int32_t view_max_width(const SeedLayerView& v) {
    int32_t m = 1;
    for (int k = 0; k < kNumBlueprintKinds; ++k)
        if (v.arenas[k].params != nullptr && v.arenas[k].max_width > m) m = v.arenas[k].max_width;
    return m;
}

}  // namespace esper::kernels::detail
