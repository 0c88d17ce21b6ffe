// Launcher of the fused seed-layer backward on the GPU: dh = dy + a_in·J_rᵀdy, blueprint
// gradients accumulated (+=) into the arenas' grads, and grad_sq / contribution added to the
// telemetry accumulators. Blueprint gradients and contributions are summed in a fixed order (no
// float atomics): the same inputs give the same bits on every run. Device pointers only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/seed_layer.h"

namespace esper::kernels {

// Workspace for num_seeds seeds; zero it once after allocation, launches leave its counters
// zeroed. Past a small header it holds per-row-tile gradient partials: the num_seeds size has
// 16 MiB of them, the view size (host fields only: batch, arenas) one per arena slot and row tile
// (at most 512 MiB) plus the scratch of the GEMM path for arenas with max_width >= 64 and
// hidden >= 16 (which the kernels do otherwise). Every size is deterministic; the summation
// grouping, hence the last bits, depends on the size given.
size_t seed_backward_workspace_bytes(int32_t num_seeds);
size_t seed_backward_workspace_bytes(const SeedLayerView& view);

// h, dy, dh: [batch, width] row-major, dh aliasing neither h nor dy; tel: a host struct of device
// pointers, or null for no telemetry. Order on `stream`: one streaming pass over dy, the pass(es)
// over the seeds that need their blueprint (kernels and/or cuBLAS on this thread's handle, see
// seed_forward.h), one tiny reset of the workspace counters.
[[nodiscard]] cudaError_t launch_seed_backward(const SeedLayerView& view, const float* h,
                                               const float* dy, float* dh,
                                               const SeedTelemetryAccum* tel, void* workspace,
                                               size_t workspace_bytes, cudaStream_t stream);

}  // namespace esper::kernels
