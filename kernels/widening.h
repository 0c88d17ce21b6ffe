// Elementwise pieces of layer-input ("widening") blueprints on the GPU (docs/kasmina.md,
// "Widening blueprints"); the GEMMs between them run through cuBLAS in the CUDA backend, as
// kasmina/model/widening.cpp runs them through BLAS. The stage factors (kernels/seed_layer.h) are
// read from the seed table on the device, so a captured step follows the grafting ramp without a
// re-capture or a host read. With G = ∂L/∂y[:, c0 : c0 + w] and R = A·Uᵀ (before b2):
//   output forward   R += b2;  y[:, c0 : c0 + w] += a_fwd·R
//   output backward  g = G (contiguous copy), gs = g_scale·G, db2 += Σ_rows gs,
//                    contribution += −Σ G·a_fwd·R (only when a_fwd ≠ 0, as on the CPU)
//   hidden backward  dZ = dA ⊙ act'(Z); dzs = g_scale·dZ, db1 += Σ_rows dzs; dzi = a_in·dZ
// Sums over rows are in a fixed order (one thread per column), the contribution in double.
#pragma once

#include <cstdint>

#include "kernels/seed_layer.h"

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// Where a seed's stage and α live: the seed layer's table ([S] each; device memory for the
// launchers) and the seed's index in it.
struct WideningSeedRef {
    const uint8_t* stage = nullptr;
    const float* alpha = nullptr;
    int32_t seed = 0;
};

// r: [rows, w] (b2 added in place); y: rows ld_y apart, the seed's chunk at column c0.
void widening_output_forward_reference(WideningSeedRef s, const float* b2, float* r, float* y,
                                       int32_t rows, int32_t w, int32_t ld_y, int32_t c0);
// dy: rows ld_dy apart, the chunk at column c0; r: [rows, w] (b2 included). g, gs: [rows, w]
// (overwritten; gs may be null); db2: [w] (+=, may be null); contribution: one double (+=, may be
// null).
void widening_output_backward_reference(WideningSeedRef s, const float* dy, int32_t ld_dy,
                                        int32_t c0, const float* r, int32_t rows, int32_t w,
                                        float* g, float* gs, float* db2, double* contribution);
// da, z (the pre-activation, bias included): [rows, hidden]; act' is 1 for kLowrank and z > 0 for
// kResidualMlp (ReLU). dzs, dzi: [rows, hidden] (overwritten; either may be null); db1: [hidden]
// (+=, may be null, needs dzs).
void widening_hidden_backward_reference(WideningSeedRef s, BlueprintKind kind, const float* da,
                                        const float* z, int32_t rows, int32_t hidden, float* dzs,
                                        float* db1, float* dzi);

#if ESPER_HAVE_CUDA
// The references' contracts on device pointers; they never allocate or sync.
[[nodiscard]] cudaError_t launch_widening_output_forward(WideningSeedRef s, const float* b2,
                                                         float* r, float* y, int32_t rows,
                                                         int32_t w, int32_t ld_y, int32_t c0,
                                                         cudaStream_t stream);
[[nodiscard]] cudaError_t launch_widening_output_backward(
    WideningSeedRef s, const float* dy, int32_t ld_dy, int32_t c0, const float* r, int32_t rows,
    int32_t w, float* g, float* gs, float* db2, double* contribution, cudaStream_t stream);
[[nodiscard]] cudaError_t launch_widening_hidden_backward(WideningSeedRef s, BlueprintKind kind,
                                                          const float* da, const float* z,
                                                          int32_t rows, int32_t hidden, float* dzs,
                                                          float* db1, float* dzi,
                                                          cudaStream_t stream);
#endif

}  // namespace esper::kernels
