// Decode kernels (see decode.h). Attention: one block per (split of kDecodeChunk positions, head,
// row), four warps taking every fourth position with an online softmax each, lanes holding the
// head's dimensions (D <= 128: up to 4 per lane); the splits' partial (max, sum, Σ e·v) are then
// merged per (row, head). Positions come from the device, so the grid is sized for the full
// context and splits past a row's length return at once. Linear layers: one warp per output,
// its lanes streaming the output's bf16 weight row 16 bytes at a time (four loads in flight)
// against every row of a, which sits in shared memory when the block normalised it itself.
#include <cuda_bf16.h>

#include <cfloat>

#include "kernels/decode.h"

namespace esper::kernels {

namespace {

constexpr int kWarps = 4;
constexpr int kMaxPerLane = 4;  // D <= 128

__device__ __forceinline__ uint64_t splitmix64_d(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

// Programmatic dependent launch (sm_90): a kernel launched with `overlap` may start while its
// predecessor runs; it lets its own successor start (launch_dependents) and waits for its
// predecessor's completion and memory (wait) before it reads or writes anything the predecessor
// touches. Outside such a launch both are no-ops.
__device__ __forceinline__ void overlap_begin() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void overlap_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Launches `kernel` on `stream`, with programmatic stream serialisation when overlap is set.
template <typename... Params, typename... Args>
cudaError_t launch(bool overlap, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args... args) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = overlap ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, kernel, Params(args)...);
}

__device__ __forceinline__ int row_pos(const DecodeShape& s, int pos, int r) {
    return pos + (s.shared ? r : 0);
}
__device__ __forceinline__ int row_cache(const DecodeShape& s, int r) {
    return s.cache_base + (s.shared ? 0 : r);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void embed_kernel(const int32_t* tokens, const float* wte, const float* wpe,
                             const int32_t* pos, bool shared, float* x, int32_t channels) {
    const int r = blockIdx.x;
    const int64_t p = *pos + (shared ? r : 0);
    const int64_t tok = tokens[r];
    for (int c = threadIdx.x; c < channels; c += blockDim.x)
        x[int64_t(r) * channels + c] = wte[tok * channels + c] + wpe[p * channels + c];
}

__global__ void append_kernel(DecodeShape s, const float* k_new, const float* v_new,
                              const int32_t* pos, __nv_bfloat16* kc, __nv_bfloat16* vc) {
    overlap_begin();
    overlap_wait();
    const int r = blockIdx.x;
    const int p = row_pos(s, *pos, r);
    if (p >= s.context) return;
    const int width = s.heads * s.head_dim;
    const int64_t at = (int64_t(row_cache(s, r)) * s.context + p) * width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        kc[at + i] = __float2bfloat16(k_new[r * s.ld_q + i]);
        vc[at + i] = __float2bfloat16(v_new[r * s.ld_q + i]);
    }
}

__global__ void __launch_bounds__(kWarps * 32)
    attention_split_kernel(DecodeShape s, const float* q, const __nv_bfloat16* kc,
                           const __nv_bfloat16* vc, const int32_t* pos, float* ws, int splits) {
    overlap_begin();
    overlap_wait();
    const int split = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int p = row_pos(s, *pos, r);
    const int j0 = split * kDecodeChunk;
    if (p >= s.context || j0 > p) return;
    const int j1 = min(j0 + kDecodeChunk, p + 1);
    const int D = s.head_dim, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int64_t width = int64_t(s.heads) * D;
    float qv[kMaxPerLane], acc[kMaxPerLane];
#pragma unroll
    for (int c = 0; c < kMaxPerLane; ++c) {
        const int i = lane + 32 * c;
        qv[c] = i < D ? q[r * s.ld_q + h * D + i] * s.scale : 0.0f;
        acc[c] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int64_t base = int64_t(row_cache(s, r)) * s.context * width + h * D;
    for (int j = j0 + warp; j < j1; j += kWarps) {
        const __nv_bfloat16* k = kc + base + j * width;
        float d = 0.0f;
#pragma unroll
        for (int c = 0; c < kMaxPerLane; ++c) {
            const int i = lane + 32 * c;
            if (i < D) d += qv[c] * __bfloat162float(k[i]);
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        const float mn = fmaxf(m, d);
        const float corr = __expf(m - mn), e = __expf(d - mn);
        l = l * corr + e;
        const __nv_bfloat16* v = vc + base + j * width;
#pragma unroll
        for (int c = 0; c < kMaxPerLane; ++c) {
            const int i = lane + 32 * c;
            acc[c] = acc[c] * corr + (i < D ? e * __bfloat162float(v[i]) : 0.0f);
        }
        m = mn;
    }
    __shared__ float sm_m[kWarps], sm_l[kWarps], sm_acc[kWarps][32 * kMaxPerLane];
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int c = 0; c < kMaxPerLane; ++c) sm_acc[warp][lane + 32 * c] = acc[c];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w]);  // warp 0 saw a key: M is finite
    float* part = ws + ((int64_t(r) * s.heads + h) * splits + split) * (D + 2);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < kWarps; ++w)
            if (sm_m[w] > -INFINITY) a += sm_acc[w][i] * __expf(sm_m[w] - M);
        part[i] = a;
    }
    if (threadIdx.x == 0) {
        float L = 0.0f;
        for (int w = 0; w < kWarps; ++w)
            if (sm_m[w] > -INFINITY) L += sm_l[w] * __expf(sm_m[w] - M);
        part[D] = M;
        part[D + 1] = L;
    }
}

__global__ void attention_merge_kernel(DecodeShape s, const int32_t* pos, const float* ws,
                                       int splits, __nv_bfloat16* out) {
    overlap_begin();
    overlap_wait();
    const int h = blockIdx.x, r = blockIdx.y;
    const int p = row_pos(s, *pos, r);
    if (p >= s.context) return;
    const int used = p / kDecodeChunk + 1, D = s.head_dim;
    const float* part = ws + (int64_t(r) * s.heads + h) * splits * (D + 2);
    float M = -INFINITY;
    for (int k = 0; k < used; ++k) M = fmaxf(M, part[k * (D + 2) + D]);
    float L = 0.0f;
    for (int k = 0; k < used; ++k)
        L += part[k * (D + 2) + D + 1] * __expf(part[k * (D + 2) + D] - M);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float a = 0.0f;
        for (int k = 0; k < used; ++k)
            a += part[k * (D + 2) + i] * __expf(part[k * (D + 2) + D] - M);
        out[r * s.ld_out + h * D + i] = __float2bfloat16(a / L);
    }
}

__global__ void __launch_bounds__(kDecodeVocab)
    pick_kernel(const float* logits, int32_t rows, DecodePick o, const int32_t* step_p,
                int32_t* next, int32_t* out_tokens, float* out_logprobs, int64_t capacity) {
    constexpr int V = kDecodeVocab;
    const int r = blockIdx.x, i = threadIdx.x;
    __shared__ float sl[V], cum[V];
    __shared__ float red_v[V / 32];
    __shared__ int red_i[V / 32];
    __shared__ int chosen;
    const float li = logits[int64_t(r) * V + i];
    sl[i] = li;
    // arg-max, the first on ties
    float bv = li;
    int bi = i;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        if (ov > bv || (ov == bv && oi < bi)) {
            bv = ov;
            bi = oi;
        }
    }
    if ((i & 31) == 0) {
        red_v[i >> 5] = bv;
        red_i[i >> 5] = bi;
    }
    __syncthreads();
    float mx = red_v[0];
    int best = red_i[0];
    for (int w = 1; w < V / 32; ++w)
        if (red_v[w] > mx || (red_v[w] == mx && red_i[w] < best)) {
            mx = red_v[w];
            best = red_i[w];
        }
    // Σ exp(l - max) in index order (a scan also serves the draw below)
    cum[i] = __expf(li - mx);
    __syncthreads();
    for (int off = 1; off < V; off <<= 1) {
        const float add = i >= off ? cum[i - off] : 0.0f;
        __syncthreads();
        cum[i] += add;
        __syncthreads();
    }
    const float lse = mx + logf(cum[V - 1]);
    __syncthreads();
    const int64_t step = *step_p;
    if (i == 0) chosen = best;
    if (o.temperature > 0.0f) {
        int rank = 0;
        for (int j = 0; j < V; ++j) rank += (sl[j] > li || (sl[j] == li && j < i)) ? 1 : 0;
        const bool keep = o.top_k <= 0 || o.top_k >= V || rank < o.top_k;
        const float w = keep ? expf((li - mx) / o.temperature) : 0.0f;
        cum[i] = w;
        __syncthreads();
        for (int off = 1; off < V; off <<= 1) {
            const float add = i >= off ? cum[i - off] : 0.0f;
            __syncthreads();
            cum[i] += add;
            __syncthreads();
        }
        const uint64_t hsh = splitmix64_d(
            o.seed ^ splitmix64_d(uint64_t(step) * 0x100000001b3ull + uint64_t(uint32_t(r)) + 1));
        const float u = float(double(hsh >> 11) * 0x1.0p-53) * cum[V - 1];
        const float before = i > 0 ? cum[i - 1] : 0.0f;
        if (w > 0.0f && cum[i] > u && before <= u) chosen = i;  // at most one such i
        __syncthreads();
    }
    __syncthreads();
    if (i == 0) {
        const int b = chosen;
        next[r] = b;
        if (step < capacity) {
            if (out_tokens) out_tokens[step * rows + r] = b;
            if (out_logprobs) out_logprobs[step * rows + r] = sl[b] - lse;
        }
    }
}

__global__ void advance_kernel(int32_t* pos, int32_t* step, int32_t set_pos) {
    *pos = set_pos >= 0 ? set_pos : *pos + 1;
    *step += 1;
}

constexpr int kLinWarps = 4;
constexpr int kLinUnroll = 4;
constexpr float kGeluC = 0.7978845608028654f, kGeluK = 0.044715f;

__device__ __forceinline__ void unpack_bf16x8(const uint4& v, float (&f)[8]) {
    const auto* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 t = __bfloat1622float2(p[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

__global__ void __launch_bounds__(kLinWarps * 32) linear_kernel(DecodeLinear s) {
    extern __shared__ __align__(16) unsigned char lin_smem[];
    constexpr int kRows = kDecodeLinearMaxRows;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int R = s.rows, in = s.in;
    // The weights do not depend on the predecessor: the first loads are issued before the wait.
    const int n = blockIdx.x * kLinWarps + warp;
    const bool active = n < s.out;
    const int nvec = in / 8;
    const uint4* wrow = static_cast<const uint4*>(s.w) + int64_t(active ? n : 0) * nvec;
    uint4 wv[kLinUnroll];
#pragma unroll
    for (int u = 0; u < kLinUnroll; ++u) {
        const int v = lane + 32 * u;
        wv[u] = active && v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
    }
    overlap_begin();
    overlap_wait();
    const __nv_bfloat16* a = static_cast<const __nv_bfloat16*>(s.a_in);
    if (s.ln_w) {  // the prologue: LayerNorm of every row into shared memory, a warp per row
        auto* sa = reinterpret_cast<__nv_bfloat16*>(lin_smem);
        for (int r = warp; r < R; r += kLinWarps) {
            const float* xr = s.x + int64_t(r) * in;
            float sum = 0.0f;
            for (int k = lane; k < in; k += 32) sum += xr[k];
            const float mean = warp_sum(sum) / float(in);
            float sq = 0.0f;
            for (int k = lane; k < in; k += 32) {
                const float d = xr[k] - mean;
                sq += d * d;
            }
            const float rstd = rsqrtf(warp_sum(sq) / float(in) + s.eps);
            for (int k = lane; k < in; k += 32)
                sa[r * in + k] = __float2bfloat16((xr[k] - mean) * rstd * s.ln_w[k] + s.ln_b[k]);
        }
        __syncthreads();
        a = sa;
    }
    if (!active) return;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int v0 = lane; v0 < nvec; v0 += 32 * kLinUnroll) {
        if (v0 != lane) {
#pragma unroll
            for (int u = 0; u < kLinUnroll; ++u) {
                const int v = v0 + 32 * u;
                wv[u] = v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < kLinUnroll; ++u) {
            const int v = v0 + 32 * u;
            if (v >= nvec) break;
            float wf[8];
            unpack_bf16x8(wv[u], wf);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                if (r >= R) break;
                float af[8];
                unpack_bf16x8(*reinterpret_cast<const uint4*>(a + int64_t(r) * in + v * 8), af);
#pragma unroll
                for (int i = 0; i < 8; ++i) acc[r] = fmaf(af[i], wf[i], acc[r]);
            }
        }
    }
    const float bias = s.bias ? s.bias[n] : 0.0f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        if (r >= R) break;
        float z = warp_sum(acc[r]) + bias;
        if (lane != r) continue;
        if (s.gelu) z = 0.5f * z * (1.0f + tanhf(kGeluC * (z + kGeluK * z * z * z)));
        const int64_t at = int64_t(r) * s.out + n;
        if (s.y_bf16)
            static_cast<__nv_bfloat16*>(s.y_bf16)[at] = __float2bfloat16(z);
        else
            s.y[at] = s.beta != 0.0f ? s.beta * s.y[at] + z : z;
    }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

bool shape_ok(const DecodeShape& s) {
    return s.rows > 0 && s.heads > 0 && s.head_dim > 0 && s.head_dim <= 32 * kMaxPerLane &&
           s.context > 0;
}

int splits_of(const DecodeShape& s) { return (s.context + kDecodeChunk - 1) / kDecodeChunk; }

}  // namespace

cudaError_t launch_decode_embed(const int32_t* tokens, const float* wte, const float* wpe,
                                const int32_t* pos, bool shared, float* x, int32_t rows,
                                int32_t channels, cudaStream_t stream) {
    if (rows <= 0 || channels <= 0) return cudaErrorInvalidValue;
    embed_kernel<<<rows, 256, 0, stream>>>(tokens, wte, wpe, pos, shared, x, channels);
    return cudaGetLastError();
}

cudaError_t launch_decode_append(const DecodeShape& s, const float* k_new, const float* v_new,
                                 const int32_t* pos, void* k_cache, void* v_cache,
                                 cudaStream_t stream) {
    if (!shape_ok(s)) return cudaErrorInvalidValue;
    return launch(s.overlap, append_kernel, s.rows, 256, 0, stream, s, k_new, v_new, pos,
                  static_cast<__nv_bfloat16*>(k_cache), static_cast<__nv_bfloat16*>(v_cache));
}

size_t decode_attention_workspace_bytes(const DecodeShape& s) {
    return size_t(s.rows) * size_t(s.heads) * size_t(splits_of(s)) * size_t(s.head_dim + 2) *
           sizeof(float);
}

cudaError_t launch_decode_attention(const DecodeShape& s, const float* q, const void* k_cache,
                                    const void* v_cache, const int32_t* pos, void* out,
                                    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (!shape_ok(s) || workspace_bytes < decode_attention_workspace_bytes(s))
        return cudaErrorInvalidValue;
    const int splits = splits_of(s);
    auto* ws = static_cast<float*>(workspace);
    if (cudaError_t e =
            launch(s.overlap, attention_split_kernel, dim3(splits, s.heads, s.rows), kWarps * 32, 0,
                   stream, s, q, static_cast<const __nv_bfloat16*>(k_cache),
                   static_cast<const __nv_bfloat16*>(v_cache), pos, ws, splits);
        e != cudaSuccess)
        return e;
    return launch(s.overlap, attention_merge_kernel, dim3(s.heads, s.rows), 128, 0, stream, s, pos,
                  ws, splits, static_cast<__nv_bfloat16*>(out));
}

cudaError_t launch_decode_linear(const DecodeLinear& s, cudaStream_t stream) {
    const bool ln = s.ln_w != nullptr;
    const bool input_ok = ln ? (s.x && s.ln_b) : (s.a_in && aligned16(s.a_in));
    if (!decode_linear_fits(s.rows, s.in, ln) || s.out <= 0 || !input_ok || !s.w ||
        !aligned16(s.w) || (s.y == nullptr) == (s.y_bf16 == nullptr) ||
        (s.beta != 0.0f && (s.y_bf16 || s.gelu)))
        return cudaErrorInvalidValue;
    const size_t smem = ln ? size_t(s.rows) * size_t(s.in) * 2 : 0;
    return launch(s.overlap, linear_kernel, (s.out + kLinWarps - 1) / kLinWarps, kLinWarps * 32,
                  smem, stream, s);
}

cudaError_t launch_decode_pick(const float* logits, int32_t rows, const DecodePick& o,
                               const int32_t* step, int32_t* next, int32_t* out_tokens,
                               float* out_logprobs, int64_t capacity, cudaStream_t stream) {
    if (rows <= 0) return cudaErrorInvalidValue;
    pick_kernel<<<rows, kDecodeVocab, 0, stream>>>(logits, rows, o, step, next, out_tokens,
                                                   out_logprobs, capacity);
    return cudaGetLastError();
}

cudaError_t launch_decode_advance(int32_t* pos, int32_t* step, int32_t set_pos,
                                  cudaStream_t stream) {
    advance_kernel<<<1, 1, 0, stream>>>(pos, step, set_pos);
    return cudaGetLastError();
}

}  // namespace esper::kernels
