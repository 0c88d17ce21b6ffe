// Softmax cross-entropy + accuracy: one warp per row (online max/sum over the classes), per-row
// loss and hit into the workspace, then one block reduces them in a fixed order (deterministic).
#include "kernels/softmax_xent.h"

namespace esper::kernels {

namespace {

__global__ void xent_rows_kernel(const float* __restrict__ logits,
                                 const int32_t* __restrict__ labels, int32_t batch, int32_t classes,
                                 float* dlogits, float* row_loss, int32_t* row_hit) {
    const int32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const int32_t lane = threadIdx.x & 31;
    if (warp >= batch) return;
    const float* z = logits + int64_t(warp) * classes;
    float mx = -INFINITY;
    int32_t arg = 0x7fffffff;
    for (int32_t c = lane; c < classes; c += 32) {
        const float v = z[c];
        if (v > mx) {
            mx = v;
            arg = c;
        }
    }
    for (int d = 16; d > 0; d >>= 1) {
        const float om = __shfl_xor_sync(0xffffffffu, mx, d);
        const int32_t oa = __shfl_xor_sync(0xffffffffu, arg, d);
        if (om > mx || (om == mx && oa < arg)) {
            mx = om;
            arg = oa;
        }
    }
    float sum = 0.0f;
    for (int32_t c = lane; c < classes; c += 32) sum += expf(z[c] - mx);
    for (int d = 16; d > 0; d >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, d);
    const int32_t label = labels[warp];
    const float zl = z[label];
    const float inv = 1.0f / sum;
    const float inv_b = 1.0f / float(batch);
    float* dz = dlogits + int64_t(warp) * classes;
    for (int32_t c = lane; c < classes; c += 32) {
        const float pr = expf(z[c] - mx) * inv;
        dz[c] = (pr - (c == label ? 1.0f : 0.0f)) * inv_b;
    }
    if (lane == 0) {
        row_loss[warp] = logf(sum) - (zl - mx);
        row_hit[warp] = arg == label ? 1 : 0;
    }
}

__global__ void xent_reduce_kernel(const float* row_loss, const int32_t* row_hit, int32_t batch,
                                   float* loss, int32_t* correct) {
    __shared__ double sl[256];
    __shared__ int32_t sh[256];
    double l = 0.0;
    int32_t c = 0;
    for (int32_t i = threadIdx.x; i < batch; i += blockDim.x) {
        l += row_loss[i];
        c += row_hit[i];
    }
    sl[threadIdx.x] = l;
    sh[threadIdx.x] = c;
    __syncthreads();
    for (int d = 128; d > 0; d >>= 1) {
        if (int(threadIdx.x) < d) {
            sl[threadIdx.x] += sl[threadIdx.x + d];
            sh[threadIdx.x] += sh[threadIdx.x + d];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        *loss = float(sl[0] / batch);
        *correct = sh[0];
    }
}

}  // namespace

size_t softmax_xent_workspace_bytes(int32_t batch) {
    return ((size_t(batch) * 4 + 255) & ~size_t(255)) * 2;
}

cudaError_t launch_softmax_xent(const float* logits, const int32_t* labels, int32_t batch,
                                int32_t classes, float* loss, float* dlogits, int32_t* correct,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (batch <= 0 || classes <= 0) return cudaErrorInvalidValue;
    if (workspace == nullptr || workspace_bytes < softmax_xent_workspace_bytes(batch))
        return cudaErrorInvalidValue;
    float* row_loss = static_cast<float*>(workspace);
    int32_t* row_hit = reinterpret_cast<int32_t*>(static_cast<char*>(workspace) +
                                                  softmax_xent_workspace_bytes(batch) / 2);
    const int64_t threads = int64_t(batch) * 32;
    xent_rows_kernel<<<int((threads + 255) / 256), 256, 0, stream>>>(logits, labels, batch, classes,
                                                                     dlogits, row_loss, row_hit);
    xent_reduce_kernel<<<1, 256, 0, stream>>>(row_loss, row_hit, batch, loss, correct);
    return cudaGetLastError();
}

}  // namespace esper::kernels
