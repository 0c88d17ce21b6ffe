// Matrix products of the transformer's linear layers through cuBLASLt (DESIGN §14): bf16
// operands on the tensor cores with fp32 accumulation, or fp32 throughout (run.precision: fp32,
// no TF32), and the bias / bias+GELU epilogues cuBLASLt fuses into the product. Row-major
// throughout: D[m, n] = α·op(A)[m, k]·op(B)[k, n] + β·D (+ bias[n]) (then GELU, tanh form).
// The CPU reference defines the math in fp32/fp64.
#pragma once

#include <cstddef>
#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

enum class GemmDtype : uint8_t { kFloat32 = 0, kBfloat16 = 1 };
enum class GemmEpilogue : uint8_t { kNone = 0, kBias = 1, kBiasGelu = 2 };

struct GemmSpec {
    bool trans_a = false;  // A is stored [k, m] (row-major) and used transposed
    bool trans_b = false;  // B is stored [n, k] and used transposed (a Linear's W[out, in])
    int32_t m = 0, n = 0, k = 0;
    int64_t lda = 0, ldb = 0, ldd = 0;        // row-major leading dimensions (elements)
    GemmDtype ab_type = GemmDtype::kFloat32;  // A and B
    GemmDtype d_type = GemmDtype::kFloat32;   // D (kFloat32 with bf16 operands is allowed)
    float alpha = 1.0f, beta = 0.0f;
    GemmEpilogue epilogue = GemmEpilogue::kNone;
    // [n] for kBias / kBiasGelu, in bias_type: fp32 with an fp32 D, bf16 with a bf16 D (the
    // pairs cuBLASLt runs; the reference reads fp32 values, so a test hands it the bf16 ones).
    const void* bias = nullptr;
    GemmDtype bias_type = GemmDtype::kFloat32;
    // kBiasGelu: when not null, the pre-activation (D before GELU) is also written here, rows
    // ld_aux apart, in d_type (the backward needs it); ld_aux a multiple of 8.
    void* aux = nullptr;
    int64_t ld_aux = 0;
    // When not null, β's term reads C from here instead of from D (same type and layout as D, not
    // overlapping it): D = α·op(A)·op(B) + β·C, e.g. a residual added without copying it to D.
    const void* c = nullptr;
};

// Reference on fp32 host arrays (bf16 specs are computed in fp32 on the values given).
void gemm_reference(const GemmSpec& s, const float* a, const float* b, float* d,
                    float* aux = nullptr);

#if ESPER_HAVE_CUDA
// Device pointers; workspace: scratch for cuBLASLt (32 MiB covers every Hopper algorithm).
// Returns cudaErrorInvalidValue for an inconsistent spec and cudaErrorNotSupported when
// cuBLASLt has no algorithm for it; otherwise the launch's status. Never allocates or syncs.
[[nodiscard]] cudaError_t launch_gemm(cublasLtHandle_t handle, const GemmSpec& s, const void* a,
                                      const void* b, void* d, void* workspace,
                                      size_t workspace_bytes, cudaStream_t stream);
// dst[i] = bf16(src[i]) (round to nearest even), n elements: the bf16 operand copy of an fp32
// tensor (master weights, activations) for a bf16 GEMM.
[[nodiscard]] cudaError_t launch_cast_to_bf16(const float* src, void* dst, int64_t n,
                                              cudaStream_t stream);
// dst[i] = float(src[i]) for n bf16 values (exact): an fp32 copy of a bf16 result (the bf16
// attention's gradients, for the fp32 bias-gradient sums).
[[nodiscard]] cudaError_t launch_cast_from_bf16(const void* src, float* dst, int64_t n,
                                                cudaStream_t stream);
#endif

}  // namespace esper::kernels
