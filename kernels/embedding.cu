// Embedding gather (wte[token] + wpe[t]) and its deterministic scatter-add backward: dwpe sums
// over the batch in a fixed order per (t, c); dwte gives each vocabulary row one block that scans
// the tokens in order (through shared memory) and adds the rows that hold it, so no atomics and
// the same bits on every run.
#include "kernels/embedding.h"

namespace esper::kernels {

namespace {

constexpr int kTokenChunk = 256;

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

// grid (vocab, ceil(C / blockDim)): block (v, cblock) sums dx rows whose token is v.
__global__ void emb_dwte_kernel(const int32_t* __restrict__ tokens, const float* __restrict__ dx,
                                float* dwte, int64_t rows, int32_t channels) {
    __shared__ int32_t tok[kTokenChunk];
    const int32_t v = blockIdx.x;
    const int32_t c = blockIdx.y * blockDim.x + threadIdx.x;
    float s = 0.0f;
    bool any = false;
    for (int64_t base = 0; base < rows; base += kTokenChunk) {
        const int64_t n = rows - base < kTokenChunk ? rows - base : kTokenChunk;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) tok[i] = tokens[base + i];
        __syncthreads();
        for (int i = 0; i < n; ++i)
            if (tok[i] == v) {
                any = true;
                if (c < channels) s += dx[(base + i) * channels + c];
            }
    }
    if (any && c < channels) dwte[int64_t(v) * channels + c] += s;
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

cudaError_t launch_embedding_backward(const int32_t* tokens, const float* dx, float* dwte,
                                      float* dwpe, int32_t batch, int32_t seq, int32_t channels,
                                      int32_t vocab, cudaStream_t stream) {
    if (batch <= 0 || seq <= 0 || channels <= 0 || vocab <= 0) return cudaErrorInvalidValue;
    const int64_t tc = int64_t(seq) * channels;
    emb_dwpe_kernel<<<int((tc + 255) / 256), 256, 0, stream>>>(dx, dwpe, batch, seq, channels);
    const int threads = channels < 128 ? 32 * ((channels + 31) / 32) : 128;
    emb_dwte_kernel<<<dim3(vocab, (channels + threads - 1) / threads), threads, 0, stream>>>(
        tokens, dx, dwte, int64_t(batch) * seq, channels);
    return cudaGetLastError();
}

}  // namespace esper::kernels
