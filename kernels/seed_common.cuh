// Device helpers shared by seed_forward.cu and seed_backward.cu: column→seed lookup, the
// per-seed blueprint descriptor, segmented warp reductions and launch geometry.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/seed_layer.h"

namespace esper::kernels::detail {

inline constexpr int kStreamThreads = 256;
inline constexpr int kActiveThreads = 256;
inline constexpr int kHiddenChunk = 32;
// MLP arenas at least this wide (and this hidden) run as cuBLAS strided-batched fp32 GEMMs over
// their slots when the workspace was sized for it (the view overloads of *_workspace_bytes).
inline constexpr int32_t kWideWidth = 64;
inline constexpr int32_t kWideHidden = 16;

inline bool arena_is_wide(const BlueprintArena& a) {
    return a.params != nullptr && a.max_width >= kWideWidth && a.hidden >= kWideHidden &&
           a.capacity > 0 && a.in_width == 0;
}
inline int64_t align64(int64_t floats) { return (floats + 63) & ~int64_t(63); }

inline cudaError_t from_cublas(cublasStatus_t st) {
    return st == CUBLAS_STATUS_SUCCESS ? cudaSuccess : cudaErrorUnknown;
}

// One cuBLAS handle per host thread (cuBLAS handles are not thread-safe), made on first use:
// run a wide layer once before capturing it into a graph. Never destroyed: a destructor at thread
// exit could run after the CUDA runtime has shut down.
inline cudaError_t seed_cublas_handle(cublasHandle_t* out) {
    thread_local cublasHandle_t handle = nullptr;
    thread_local cublasStatus_t status = cublasCreate(&handle);
    *out = handle;
    return from_cublas(status);
}

// Largest s with chunk_offset[s] <= c (the seed owning column c). Equal chunks, the usual
// layout, put that seed at c·S/D give or take one, so two probes around that guess settle it in
// O(1) (two loads of one sector each); a ragged layout falls back to bisecting what is left.
__device__ inline int32_t seed_of_column(const int32_t* chunk_offset, int32_t num_seeds,
                                         int32_t width, int32_t c) {
    int32_t lo = 0, hi = num_seeds - 1;
    int32_t s = static_cast<int32_t>((int64_t(c) * num_seeds) / width);
    if (s > hi) s = hi;
#pragma unroll
    for (int probe = 0; probe < 2; ++probe) {
        if (__ldg(chunk_offset + s) > c) {
            hi = s - 1;
            s = hi;
        } else if (__ldg(chunk_offset + s + 1) <= c) {
            lo = s + 1;
            s = lo;
        } else {
            return s;
        }
    }
    while (lo < hi) {
        const int32_t mid = (lo + hi + 1) >> 1;
        if (__ldg(chunk_offset + mid) <= c)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

// Row splits of the streaming passes: enough blocks to fill the GPU twice, but a layer wide
// enough to fill it with one block per column tile gets no split at all, so every seed's
// statistics stay in one block and merge without the workspace.
inline int32_t stream_row_splits(int32_t col_tiles, int32_t batch, int32_t sms) {
    if (col_tiles >= 4 * sms) return 1;
    int32_t splits = (sms * 16 + col_tiles - 1) / col_tiles;
    splits = splits < (batch + 3) / 4 ? splits : (batch + 3) / 4;
    return splits < 1 ? 1 : splits;
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
