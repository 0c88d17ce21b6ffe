// Embedding gather (wte[token] + wpe[t]) and its deterministic backward: dwpe sums over the
// batch in a fixed order per (t, c); dwte is the product onehot(tokens)ᵀ · dx, an fp32 cuBLASLt
// GEMM over a one-hot matrix written to the workspace (products by 0 and 1 are exact, so it is a
// sum of the rows that hold each token, in the GEMM's fixed order). The scatter-add it replaces
// gave each vocabulary row one block that added its rows one dependent load at a time: 1.3 ms of
// an 11 ms step at 6 × 384 (docs/benchmarks.md), where the frequent bytes hold thousands of rows.
#include "kernels/embedding.h"
#include "kernels/gemm.h"

namespace esper::kernels {

namespace {

__global__ void emb_forward_kernel(const int32_t* __restrict__ tokens,
                                   const float* __restrict__ wte, const float* __restrict__ wpe,
                                   float* x, int32_t batch, int32_t seq, int32_t channels) {
    const int64_t n = int64_t(batch) * seq * channels;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = i / channels;
        const int32_t c = int32_t(i % channels), t = int32_t(r % seq);
        x[i] = wte[int64_t(tokens[r]) * channels + c] + wpe[int64_t(t) * channels + c];
    }
}

__global__ void emb_dwpe_kernel(const float* __restrict__ dx, float* dwpe, int32_t batch,
                                int32_t seq, int32_t channels) {
    const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;  // t·C + c
    if (i >= int64_t(seq) * channels) return;
    float s = 0.0f;
    for (int32_t b = 0; b < batch; ++b) s += dx[int64_t(b) * seq * channels + i];
    dwpe[i] += s;
}

// onehot[r, v] = (tokens[r] == v), rows × vocab.
__global__ void emb_onehot_kernel(const int32_t* __restrict__ tokens, float* onehot, int64_t rows,
                                  int32_t vocab) {
    const int64_t n = rows * vocab;
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        onehot[i] = tokens[i / vocab] == int32_t(i % vocab) ? 1.0f : 0.0f;
}

}  // namespace

cudaError_t launch_embedding_forward(const int32_t* tokens, const float* wte, const float* wpe,
                                     float* x, int32_t batch, int32_t seq, int32_t channels,
                                     cudaStream_t stream) {
    if (batch <= 0 || seq <= 0 || channels <= 0) return cudaErrorInvalidValue;
    const int64_t n = int64_t(batch) * seq * channels;
    const int64_t blocks = (n + 255) / 256;
    emb_forward_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(
        tokens, wte, wpe, x, batch, seq, channels);
    return cudaGetLastError();
}

size_t embedding_backward_workspace_bytes(int32_t batch, int32_t seq, int32_t vocab) {
    return size_t(batch) * size_t(seq) * size_t(vocab) * sizeof(float);
}

cudaError_t launch_embedding_backward(cublasLtHandle_t lt, const int32_t* tokens, const float* dx,
                                      float* dwte, float* dwpe, int32_t batch, int32_t seq,
                                      int32_t channels, int32_t vocab, void* workspace,
                                      size_t workspace_bytes, void* gemm_workspace,
                                      size_t gemm_workspace_bytes, cudaStream_t stream) {
    if (batch <= 0 || seq <= 0 || channels <= 0 || vocab <= 0) return cudaErrorInvalidValue;
    if (workspace == nullptr ||
        workspace_bytes < embedding_backward_workspace_bytes(batch, seq, vocab))
        return cudaErrorInvalidValue;
    const int64_t tc = int64_t(seq) * channels;
    emb_dwpe_kernel<<<int((tc + 255) / 256), 256, 0, stream>>>(dx, dwpe, batch, seq, channels);
    const int64_t rows = int64_t(batch) * seq;
    auto* onehot = static_cast<float*>(workspace);
    const int64_t blocks = (rows * vocab + 255) / 256;
    emb_onehot_kernel<<<int(blocks < 8192 ? blocks : 8192), 256, 0, stream>>>(tokens, onehot, rows,
                                                                              vocab);
    if (const cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
    // dwte[vocab, C] += onehot[rows, vocab]ᵀ · dx[rows, C], fp32 throughout (no TF32).
    GemmSpec sp;
    sp.trans_a = true;
    sp.m = vocab;
    sp.n = channels;
    sp.k = int32_t(rows);
    sp.lda = vocab;
    sp.ldb = channels;
    sp.ldd = channels;
    sp.beta = 1.0f;
    return launch_gemm(lt, sp, onehot, dx, dwte, gemm_workspace, gemm_workspace_bytes, stream);
}

}  // namespace esper::kernels
