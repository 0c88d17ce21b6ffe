// Launcher of the fused seed-layer forward on the GPU: y = h + a_eff·r(h) per chunk plus the
// per-seed activation telemetry of kernels/seed_layer.h, in one pass over h for dormant seeds.
// All pointers in the view, h, y, tel and the workspace are device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/seed_layer.h"

namespace esper::kernels {

// Workspace for num_seeds seeds. It must be zeroed once after allocation (cudaMemsetAsync); every
// launch leaves its counters and sums zeroed again, so a captured graph replays without a memset.
size_t seed_forward_workspace_bytes(int32_t num_seeds);
// The same plus the scratch of the wide-chunk path (host fields of the view only: batch and
// arenas): residual_mlp / lowrank arenas with max_width >= 64 and hidden >= 16 then run as cuBLAS
// fp32 strided-batched GEMMs over their slots (capacity·batch·(2·max_width + hidden) floats each).
// With the num_seeds size the kernels run them instead. The first wide launch on a host thread
// creates that thread's cuBLAS handle: do it before capturing a graph.
size_t seed_forward_workspace_bytes(const SeedLayerView& view);
// Creates this host thread's cuBLAS handle of the wide path (seed_forward and seed_backward);
// call it before capturing a graph that may contain wide launches. Cheap once created.
[[nodiscard]] cudaError_t prepare_seed_gemms();

// h, y: [batch, width] row-major (y must not alias h); tel: a host struct of device pointers, or
// null for no telemetry. Precondition: a seed with a blueprint has chunk width <= its arena's
// max_width. Work on `stream`: a streaming pass (copy, statistics, list of blending seeds; tiny
// blueprints — every arena max_width <= 2, hidden <= 4 — are evaluated right there), a pass over
// the listed seeds' chunks (weights staged in shared memory when they fit next to a 64-row tile,
// else a generic kernel; wide arenas as batched GEMMs when the workspace has room), a Chan merge
// of seeds reduced across blocks that also resets the counters. Each seed owns its arena slot.
[[nodiscard]] cudaError_t launch_seed_forward(const SeedLayerView& view, const float* h, float* y,
                                              const SeedTelemetryAccum* tel, void* workspace,
                                              size_t workspace_bytes, cudaStream_t stream);

}  // namespace esper::kernels
