// cuBLASLt launcher of the row-major GemmSpec (see gemm.h). A row-major [r, c] matrix is the
// column-major [c, r] one, so D = op(A)·op(B) runs as the column-major Dᵀ = op(B)ᵀ·op(A)ᵀ:
// cuBLASLt's A is our B and its B our A, and the per-column bias of D is cuBLASLt's per-row bias.
#include <cuda_bf16.h>

#include "kernels/gemm.h"

namespace esper::kernels {

namespace {

cudaDataType_t cuda_type(GemmDtype t) {
    return t == GemmDtype::kBfloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

cudaError_t to_cuda(cublasStatus_t s) {
    switch (s) {
        case CUBLAS_STATUS_SUCCESS:
            return cudaSuccess;
        case CUBLAS_STATUS_NOT_SUPPORTED:
            return cudaErrorNotSupported;
        case CUBLAS_STATUS_INVALID_VALUE:
            return cudaErrorInvalidValue;
        default:
            return cudaErrorUnknown;
    }
}

// Owns the cuBLASLt descriptors of one call.
struct Descs {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
    ~Descs() {
        if (pref) cublasLtMatmulPreferenceDestroy(pref);
        if (d) cublasLtMatrixLayoutDestroy(d);
        if (b) cublasLtMatrixLayoutDestroy(b);
        if (a) cublasLtMatrixLayoutDestroy(a);
        if (op) cublasLtMatmulDescDestroy(op);
    }
};

__global__ void cast_bf16_kernel(const float* __restrict__ src, __nv_bfloat16* dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __float2bfloat16(src[i]);
}

__global__ void uncast_bf16_kernel(const __nv_bfloat16* __restrict__ src, float* dst, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

#define LT_TRY(expr)                                           \
    do {                                                       \
        const cublasStatus_t st_ = (expr);                     \
        if (st_ != CUBLAS_STATUS_SUCCESS) return to_cuda(st_); \
    } while (0)

}  // namespace

cudaError_t launch_gemm(cublasLtHandle_t handle, const GemmSpec& s, const void* a, const void* b,
                        void* d, void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (s.m <= 0 || s.n <= 0 || s.k <= 0 || a == nullptr || b == nullptr || d == nullptr)
        return cudaErrorInvalidValue;
    // cuBLASLt takes an fp32 bias with an fp32 D and a bf16 bias with a bf16 D.
    if (s.epilogue != GemmEpilogue::kNone && (s.bias == nullptr || s.bias_type != s.d_type))
        return cudaErrorInvalidValue;
    // Column-major problem: D'[n, m] = A'[n, k] · B'[k, m] with A' = our B, B' = our A.
    const cublasOperation_t op_a = s.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = s.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cudaDataType_t ab = cuda_type(s.ab_type), dt = cuda_type(s.d_type);
    Descs x;
    LT_TRY(cublasLtMatmulDescCreate(&x.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
    cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_DEFAULT;
    if (s.epilogue == GemmEpilogue::kBias) epi = CUBLASLT_EPILOGUE_BIAS;
    if (s.epilogue == GemmEpilogue::kBiasGelu)
        epi = s.aux ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_BIAS;
    LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    if (s.epilogue != GemmEpilogue::kNone) {
        const cudaDataType_t bias_type = cuda_type(s.bias_type);
        LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type,
                                              sizeof(bias_type)));
        LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &s.bias,
                                              sizeof(s.bias)));
    }
    if (s.epilogue == GemmEpilogue::kBiasGelu && s.aux) {
        LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER,
                                              &s.aux, sizeof(s.aux)));
        const int64_t ld_aux = s.ld_aux;
        LT_TRY(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ld_aux,
                                              sizeof(ld_aux)));
    }
    // Layouts (column-major rows, cols, ld) of the stored buffers.
    const uint64_t a_rows = s.trans_b ? uint64_t(s.k) : uint64_t(s.n);
    const uint64_t a_cols = s.trans_b ? uint64_t(s.n) : uint64_t(s.k);
    const uint64_t b_rows = s.trans_a ? uint64_t(s.m) : uint64_t(s.k);
    const uint64_t b_cols = s.trans_a ? uint64_t(s.k) : uint64_t(s.m);
    LT_TRY(cublasLtMatrixLayoutCreate(&x.a, ab, a_rows, a_cols, s.ldb));
    LT_TRY(cublasLtMatrixLayoutCreate(&x.b, ab, b_rows, b_cols, s.lda));
    LT_TRY(cublasLtMatrixLayoutCreate(&x.d, dt, uint64_t(s.n), uint64_t(s.m), s.ldd));
    LT_TRY(cublasLtMatmulPreferenceCreate(&x.pref));
    const uint64_t ws = workspace_bytes;
    LT_TRY(cublasLtMatmulPreferenceSetAttribute(x.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                &ws, sizeof(ws)));
    cublasLtMatmulHeuristicResult_t heur{};
    int found = 0;
    LT_TRY(
        cublasLtMatmulAlgoGetHeuristic(handle, x.op, x.a, x.b, x.d, x.d, x.pref, 1, &heur, &found));
    if (found == 0) return cudaErrorNotSupported;
    const void* c = s.c != nullptr ? s.c : d;
    LT_TRY(cublasLtMatmul(handle, x.op, &s.alpha, b, x.a, a, x.b, &s.beta, c, x.d, d, x.d,
                          &heur.algo, workspace, workspace_bytes, stream));
    return cudaGetLastError();
}

cudaError_t launch_cast_to_bf16(const float* src, void* dst, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int64_t blocks = (n + 255) / 256;
    cast_bf16_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
        src, static_cast<__nv_bfloat16*>(dst), n);
    return cudaGetLastError();
}

cudaError_t launch_cast_from_bf16(const void* src, float* dst, int64_t n, cudaStream_t stream) {
    if (n <= 0) return cudaSuccess;
    const int64_t blocks = (n + 255) / 256;
    uncast_bf16_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(src), dst, n);
    return cudaGetLastError();
}

}  // namespace esper::kernels
