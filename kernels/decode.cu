// Decode kernels (see decode.h). A decode step is a chain of small kernels, each bound by the
// latency of its dependent memory round trips rather than by bytes, so every kernel issues what
// does not depend on its predecessor (weights, biases, LayerNorm parameters, cached keys and
// values, the position) before the programmatic-launch wait, and keeps one round trip after it.
// Attention: one block per (split of kDecodeChunk positions, head, row), G lanes per cache
// position with 8 head dimensions each, all of a split's keys and values loaded at once; the last
// split to finish merges the partial (max, sum, Σ e·v) of its (row, head). Positions come from the
// device, so the grid is sized for the full context and splits past a row's length return at
// once. Linear layers: one warp per output, its lanes streaming the output's bf16 weight row 16
// bytes at a time (the whole row in flight up to 4096 inputs) against every row of a, which sits
// in shared memory when the block normalised it itself (the whole block per row, one pass).
#include <cuda_bf16.h>

#include <cfloat>
#include <type_traits>

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

// Eight bf16 values from p, `valid` of them real (the rest 0): one 16-byte load where the row
// allows it, else one load per value. kL2: through L2 only, for what the predecessor wrote (an
// SM's L1 may hold a line of it from before the write).
template <bool kL2>
__device__ __forceinline__ uint4 load_bf16x8(const __nv_bfloat16* p, int valid) {
    if (valid >= 8 && (reinterpret_cast<uintptr_t>(p) & 15u) == 0) {
        const auto* v = reinterpret_cast<const uint4*>(p);
        return kL2 ? __ldcg(v) : __ldg(v);
    }
    const auto* e = reinterpret_cast<const unsigned short*>(p);
    uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
    for (int i = 0; i < 8; ++i)
        if (i < valid) w[i / 2] |= uint32_t(kL2 ? __ldcg(e + i) : __ldg(e + i)) << (16 * (i % 2));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

__device__ __forceinline__ void unpack_bf16x8(const uint4& v, float (&f)[8]) {
    const auto* p = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const float2 t = __bfloat1622float2(p[i]);
        f[2 * i] = t.x;
        f[2 * i + 1] = t.y;
    }
}

// (m, l, acc) ∪= (mo, lo, ao): two partial softmaxes over disjoint positions (m = -inf: empty).
__device__ __forceinline__ void softmax_merge(float& m, float& l, float (&acc)[8], float mo,
                                              float lo, const float (&ao)[8]) {
    const float M = fmaxf(m, mo);
    const float ca = m > -INFINITY ? __expf(m - M) : 0.0f;
    const float cb = mo > -INFINITY ? __expf(mo - M) : 0.0f;
    l = l * ca + lo * cb;
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * ca + ao[i] * cb;
    m = M;
}

// One block per (split of kDecodeChunk positions, head, row). G lanes share a cache position,
// each holding 8 of its head dimensions (G = the power of two >= D/8), so a warp reads 32/G
// positions at once and every load of a block is issued before any arithmetic: positions before
// *pos (cached by earlier steps) ahead of the wait, the ones the predecessor appended after it.
// The block's partial softmax goes to the workspace; the last split of its (row, head) to finish
// (a counter) merges all of them in split order and writes out, then zeroes the counter.
template <int G>
__global__ void __launch_bounds__(kWarps * 32)
    attention_kernel(DecodeShape s, const float* q, const __nv_bfloat16* kc,
                     const __nv_bfloat16* vc, const int32_t* pos_p, float* ws, unsigned* counters,
                     int splits, __nv_bfloat16* out) {
    constexpr int P = 32 / G;              // positions per warp and round
    constexpr int kPerRound = kWarps * P;  // positions per block and round
    constexpr int NR = (kDecodeChunk + kPerRound - 1) / kPerRound;
    overlap_begin();
    const int split = blockIdx.x, h = blockIdx.y, r = blockIdx.z;
    const int base_pos = *pos_p;  // written before this step began (never by a predecessor)
    const int p = row_pos(s, base_pos, r);
    const int j0 = split * kDecodeChunk;
    if (p >= s.context || j0 > p) {  // idle; waits so that its grid ends after its predecessor
        overlap_wait();
        return;
    }
    const int j1 = min(j0 + kDecodeChunk, p + 1);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int grp = lane / G, d0 = (lane % G) * 8, D = s.head_dim;
    const int64_t width = int64_t(s.heads) * D;
    const int64_t base = int64_t(row_cache(s, r)) * s.context * width + int64_t(h) * D + d0;
    uint4 kr[NR], vr[NR];
#pragma unroll
    for (int u = 0; u < NR; ++u) {
        const int j = j0 + u * kPerRound + warp * P + grp;
        const bool old = j < j1 && j < base_pos;
        kr[u] = old ? load_bf16x8<false>(kc + base + j * width, D - d0) : make_uint4(0, 0, 0, 0);
        vr[u] = old ? load_bf16x8<false>(vc + base + j * width, D - d0) : make_uint4(0, 0, 0, 0);
    }
    overlap_wait();
    float qv[8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
        qv[i] = d0 + i < D ? __ldcg(q + r * s.ld_q + h * D + d0 + i) * s.scale : 0.0f;
#pragma unroll
    for (int u = 0; u < NR; ++u) {
        const int j = j0 + u * kPerRound + warp * P + grp;
        if (j < j1 && j >= base_pos) {
            kr[u] = load_bf16x8<true>(kc + base + j * width, D - d0);
            vr[u] = load_bf16x8<true>(vc + base + j * width, D - d0);
        }
    }
    float sc[NR], m = -INFINITY;
#pragma unroll
    for (int u = 0; u < NR; ++u) {
        float kf[8];
        unpack_bf16x8(kr[u], kf);
        float d = 0.0f;
#pragma unroll
        for (int i = 0; i < 8; ++i) d = fmaf(qv[i], kf[i], d);
#pragma unroll
        for (int o = G / 2; o > 0; o >>= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
        const int j = j0 + u * kPerRound + warp * P + grp;
        sc[u] = j < j1 ? d : -INFINITY;
        m = fmaxf(m, sc[u]);
    }
    float l = 0.0f, acc[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int u = 0; u < NR; ++u) {
        if (!(sc[u] > -INFINITY)) continue;
        const float e = __expf(sc[u] - m);
        l += e;
        float vf[8];
        unpack_bf16x8(vr[u], vf);
#pragma unroll
        for (int i = 0; i < 8; ++i) acc[i] = fmaf(e, vf[i], acc[i]);
    }
#pragma unroll
    for (int o = G; o < 32; o <<= 1) {  // the warp's position groups, lanes of equal d0
        float ao[8];
#pragma unroll
        for (int i = 0; i < 8; ++i) ao[i] = __shfl_xor_sync(0xffffffffu, acc[i], o);
        const float mo = __shfl_xor_sync(0xffffffffu, m, o);
        const float lo = __shfl_xor_sync(0xffffffffu, l, o);
        softmax_merge(m, l, acc, mo, lo, ao);
    }
    __shared__ float sm_m[kWarps], sm_l[kWarps], sm_acc[kWarps][32 * kMaxPerLane];
    __shared__ bool last;
    if (lane < G) {
#pragma unroll
        for (int i = 0; i < 8; ++i)
            if (d0 + i < D) sm_acc[warp][d0 + i] = acc[i];
        if (lane == 0) {
            sm_m[warp] = m;
            sm_l[warp] = l;
        }
    }
    __syncthreads();
    // The block's four warps; warp 0 holds position j0, so M is finite.
    float M = -INFINITY;
    for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm_m[w]);
    float a = 0.0f, L = 0.0f;
    for (int w = 0; w < kWarps; ++w) {
        if (!(sm_m[w] > -INFINITY)) continue;
        const float c = __expf(sm_m[w] - M);
        L += sm_l[w] * c;
        if (tid < D) a += sm_acc[w][tid] * c;
    }
    __nv_bfloat16* o = out + r * s.ld_out + h * D;
    const int used = p / kDecodeChunk + 1;
    if (used == 1) {  // the only split: nothing to merge
        if (tid < D) o[tid] = __float2bfloat16(a / L);
        return;
    }
    float* part = ws + ((int64_t(r) * s.heads + h) * splits + split) * (D + 2);
    if (tid < D) part[tid] = a;
    if (tid == 0) {
        part[D] = M;
        part[D + 1] = L;
    }
    __threadfence();
    __syncthreads();
    unsigned* counter = counters + int64_t(r) * s.heads + h;
    if (tid == 0) last = atomicAdd(counter, 1u) == unsigned(used - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    if (tid == 0) *counter = 0u;  // for the next launch
    const float* parts = ws + (int64_t(r) * s.heads + h) * splits * (D + 2);
    M = -INFINITY;
    for (int k = 0; k < used; ++k) M = fmaxf(M, __ldcg(parts + k * (D + 2) + D));
    L = 0.0f;
    a = 0.0f;
#pragma unroll 4
    for (int k = 0; k < used; ++k) {
        const float* pk = parts + k * (D + 2);
        const float c = __expf(__ldcg(pk + D) - M);
        L += __ldcg(pk + D + 1) * c;
        if (tid < D) a += __ldcg(pk + tid) * c;
    }
    if (tid < D) o[tid] = __float2bfloat16(a / L);
}

__global__ void __launch_bounds__(kDecodeVocab)
    pick_kernel(const float* logits, int32_t rows, DecodePick o, const int32_t* step_p,
                int32_t* next, int32_t* out_tokens, float* out_logprobs, int64_t capacity,
                DecodeNext nx) {
    constexpr int V = kDecodeVocab;
    overlap_begin();
    // The position is written only by the advance, after every kernel of the step has read it.
    const int next_pos = nx.set_pos >= 0 ? nx.set_pos : (nx.pos ? *nx.pos + 1 : 0);
    overlap_wait();
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
    // Σ exp(l - max): warp sums, then the eight warps' in order
    const float se = warp_sum(__expf(li - mx));
    __syncthreads();  // every thread has read red_v
    if ((i & 31) == 0) red_v[i >> 5] = se;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < V / 32; ++w) total += red_v[w];
    const float lse = mx + logf(total);
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
    const int b = chosen;
    if (i == 0) {
        next[r] = b;
        if (step < capacity) {
            if (out_tokens) out_tokens[step * rows + r] = b;
            if (out_logprobs) out_logprobs[step * rows + r] = sl[b] - lse;
        }
        if (nx.advance) {  // one row: every read of pos and step in this grid is done
            *nx.pos = next_pos;
            *nx.step_out += 1;
        }
    }
    if (nx.wte && next_pos < nx.context)
        for (int c = i; c < nx.channels; c += V)
            nx.x[int64_t(r) * nx.channels + c] =
                nx.wte[int64_t(b) * nx.channels + c] + nx.wpe[int64_t(next_pos) * nx.channels + c];
}

__global__ void advance_kernel(int32_t* pos, int32_t* step, int32_t set_pos) {
    overlap_begin();
    overlap_wait();
    *pos = set_pos >= 0 ? set_pos : *pos + 1;
    *step += 1;
}

constexpr int kLinWarps = 4;
constexpr int kLinThreads = kLinWarps * 32;
constexpr int kLnPer = 8;  // LayerNorm inputs per thread kept in registers (rows of <= 1024)
constexpr float kGeluC = 0.7978845608028654f, kGeluK = 0.044715f;

// (a, b) summed over the block; red: 2·kLinWarps floats of shared memory, free again after the
// caller's next __syncthreads.
__device__ __forceinline__ float2 block_sum2(float a, float b, float* red) {
    a = warp_sum(a);
    b = warp_sum(b);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        red[warp] = a;
        red[kLinWarps + warp] = b;
    }
    __syncthreads();
    float2 t = make_float2(0.0f, 0.0f);
#pragma unroll
    for (int w = 0; w < kLinWarps; ++w) {
        t.x += red[w];
        t.y += red[kLinWarps + w];
    }
    return t;
}

// S warps share an output, each taking 1/S of its inputs (their sums added in a fixed order), so
// that a layer with few outputs still has enough warps streaming its weights; U: 16-byte weight
// loads per lane issued at once (the warp's whole slice when in / S <= 256·U).
template <int U, int S>
__global__ void __launch_bounds__(kLinThreads) linear_kernel(DecodeLinear s) {
    extern __shared__ __align__(16) unsigned char lin_smem[];
    // The LayerNorm's sums (2 per warp), then the slices' sums (a row per warp).
    __shared__ float red[kLinWarps * kDecodeLinearMaxRows];
    constexpr int kRows = kDecodeLinearMaxRows;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int R = s.rows, in = s.in;
    // Nothing the predecessor writes is needed for the weights, the bias, the LayerNorm's
    // parameters and the cache position: their loads are issued before the wait.
    const int n = blockIdx.x * (kLinWarps / S) + warp / S, slice = warp % S;
    const bool active = n < s.out;
    const int nvec = in / (8 * S), k0 = slice * nvec * 8;  // this warp's inputs: k0 + [0, 8·nvec)
    const uint4* wrow =
        static_cast<const uint4*>(s.w) + int64_t(active ? n : 0) * (in / 8) + slice * nvec;
    uint4 wv[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
        const int v = lane + 32 * u;
        wv[u] = active && v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
    }
    const float bias = active && slice == 0 && s.bias ? __ldg(s.bias + n) : 0.0f;
    const bool ln = s.ln_w != nullptr, ln_regs = ln && in <= kLinThreads * kLnPer;
    float lw[kLnPer], lb[kLnPer];
#pragma unroll
    for (int i = 0; i < kLnPer; ++i) {
        const int k = tid + i * kLinThreads;
        lw[i] = ln_regs && k < in ? __ldg(s.ln_w + k) : 0.0f;
        lb[i] = ln_regs && k < in ? __ldg(s.ln_b + k) : 0.0f;
    }
    const int pos = s.append.k_cache ? *s.append.pos : 0;
    overlap_begin();
    overlap_wait();
    const float y_old =
        active && slice == 0 && s.beta != 0.0f && lane < R ? s.y[int64_t(lane) * s.out + n] : 0.0f;
    const __nv_bfloat16* a = static_cast<const __nv_bfloat16*>(s.a_in);
    if (ln) {  // the prologue: LayerNorm of every row into shared memory, the block per row
        auto* sa = reinterpret_cast<__nv_bfloat16*>(lin_smem);
        for (int r = 0; r < R; ++r) {
            const float* xr = s.x + int64_t(r) * in;
            const float shift = xr[0];  // sums of x - x[0]: no cancellation for an offset row
            float xv[kLnPer], s1 = 0.0f, s2 = 0.0f;
            if (ln_regs) {
#pragma unroll
                for (int i = 0; i < kLnPer; ++i) {
                    const int k = tid + i * kLinThreads;
                    xv[i] = k < in ? xr[k] : shift;
                }
#pragma unroll
                for (int i = 0; i < kLnPer; ++i) {
                    const float d = xv[i] - shift;
                    s1 += d;
                    s2 = fmaf(d, d, s2);
                }
            } else {
                for (int k = tid; k < in; k += kLinThreads) {
                    const float d = xr[k] - shift;
                    s1 += d;
                    s2 = fmaf(d, d, s2);
                }
            }
            const float2 t = block_sum2(s1, s2, red);
            const float m1 = t.x / float(in);
            const float mean = shift + m1;
            const float rstd = rsqrtf(fmaxf(t.y / float(in) - m1 * m1, 0.0f) + s.eps);
            if (ln_regs) {
#pragma unroll
                for (int i = 0; i < kLnPer; ++i) {
                    const int k = tid + i * kLinThreads;
                    if (k < in)
                        sa[r * in + k] = __float2bfloat16((xv[i] - mean) * rstd * lw[i] + lb[i]);
                }
            } else {
                for (int k = tid; k < in; k += kLinThreads)
                    sa[r * in + k] =
                        __float2bfloat16((xr[k] - mean) * rstd * s.ln_w[k] + s.ln_b[k]);
            }
            __syncthreads();  // red is free again; after the last row, sa is complete
        }
        a = sa;
    }
    if (S == 1 && !active) return;  // (with S > 1 every warp meets the barrier below)
    a += k0;
    float acc[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    for (int v0 = lane; v0 < (active ? nvec : 0); v0 += 32 * U) {
        if (v0 != lane) {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int v = v0 + 32 * u;
                wv[u] = v < nvec ? __ldg(wrow + v) : make_uint4(0, 0, 0, 0);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
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
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        if (r >= R) break;
        acc[r] = warp_sum(acc[r]);
    }
    if (S > 1) {  // the slices' sums, added by the output's first warp in slice order
        if (lane < R) {
#pragma unroll
            for (int r = 0; r < kRows; ++r)
                if (r == lane) red[warp * kRows + r] = acc[r];
        }
        __syncthreads();
        if (!active || slice != 0) return;
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            if (r >= R) break;
            float t = 0.0f;
#pragma unroll
            for (int q = 0; q < S; ++q) t += red[(warp + q) * kRows + r];
            acc[r] = t;
        }
    }
    const DecodeAppend& ap = s.append;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
        if (r >= R) break;
        float z = acc[r] + bias;
        if (lane != r) continue;
        if (s.gelu) z = 0.5f * z * (1.0f + tanhf(kGeluC * (z + kGeluK * z * z * z)));
        const int64_t at = int64_t(r) * s.out + n;
        if (s.y_bf16)
            static_cast<__nv_bfloat16*>(s.y_bf16)[at] = __float2bfloat16(z);
        else
            s.y[at] = s.beta != 0.0f ? s.beta * y_old + z : z;
        const int p = pos + (ap.shared ? r : 0);
        if (ap.k_cache && n >= ap.width && p < ap.context) {
            const bool is_k = n < 2 * ap.width;
            const int64_t c = ap.cache_base + (ap.shared ? 0 : r);
            const int64_t i = (c * ap.context + p) * ap.width + n - (is_k ? 1 : 2) * ap.width;
            static_cast<__nv_bfloat16*>(is_k ? ap.k_cache : ap.v_cache)[i] = __float2bfloat16(z);
        }
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
    return size_t(s.rows) * size_t(s.heads) *
           (size_t(splits_of(s)) * size_t(s.head_dim + 2) * sizeof(float) + sizeof(unsigned));
}

cudaError_t launch_decode_attention(const DecodeShape& s, const float* q, const void* k_cache,
                                    const void* v_cache, const int32_t* pos, void* out,
                                    void* workspace, size_t workspace_bytes, cudaStream_t stream) {
    if (!shape_ok(s) || workspace_bytes < decode_attention_workspace_bytes(s))
        return cudaErrorInvalidValue;
    const int splits = splits_of(s);
    auto* ws = static_cast<float*>(workspace);
    auto* counters =
        reinterpret_cast<unsigned*>(ws + int64_t(s.rows) * s.heads * splits * (s.head_dim + 2));
    const auto* kc = static_cast<const __nv_bfloat16*>(k_cache);
    const auto* vc = static_cast<const __nv_bfloat16*>(v_cache);
    auto* o = static_cast<__nv_bfloat16*>(out);
    const dim3 grid(splits, s.heads, s.rows);
    auto go = [&](auto kernel) {
        return launch(s.overlap, kernel, grid, kWarps * 32, 0, stream, s, q, kc, vc, pos, ws,
                      counters, splits, o);
    };
    const int lanes = (s.head_dim + 7) / 8;  // G: the power of two >= D/8
    if (lanes <= 1) return go(attention_kernel<1>);
    if (lanes <= 2) return go(attention_kernel<2>);
    if (lanes <= 4) return go(attention_kernel<4>);
    if (lanes <= 8) return go(attention_kernel<8>);
    return go(attention_kernel<16>);
}

cudaError_t launch_decode_linear(const DecodeLinear& s, cudaStream_t stream) {
    const bool ln = s.ln_w != nullptr;
    const bool input_ok = ln ? (s.x && s.ln_b) : (s.a_in && aligned16(s.a_in));
    const DecodeAppend& ap = s.append;
    const bool append_ok = !ap.k_cache || (ap.v_cache && ap.pos && ap.width > 0 && ap.context > 0 &&
                                           s.out == 3 * ap.width && s.y);
    if (!decode_linear_fits(s.rows, s.in, ln) || s.out <= 0 || !input_ok || !s.w ||
        !aligned16(s.w) || (s.y == nullptr) == (s.y_bf16 == nullptr) ||
        (s.beta != 0.0f && (s.y_bf16 || s.gelu)) || !append_ok)
        return cudaErrorInvalidValue;
    const size_t smem = ln ? size_t(s.rows) * size_t(s.in) * 2 : 0;
    // Fewer than 2048 outputs: two or four warps per output while each keeps >= 256 inputs (a
    // 16-byte load per lane), so the grid has as many warps streaming weights as wide layers'.
    auto slices = [&](int S) { return s.in % (8 * S) == 0 && s.in / S >= 256; };
    const int S = s.out >= 2048 ? 1 : slices(4) ? 4 : slices(2) ? 2 : 1;
    const int blocks = (s.out * S + kLinWarps - 1) / kLinWarps;
    const int per_lane = (s.in / (8 * S) + 31) / 32;  // 16-byte weight loads per lane
    auto go = [&](auto kernel) {
        return launch(s.overlap, kernel, blocks, kLinThreads, smem, stream, s);
    };
    auto pick_u = [&](auto s_tag) {
        constexpr int kS = decltype(s_tag)::value;
        if (per_lane <= 1) return go(linear_kernel<1, kS>);
        if (per_lane <= 2) return go(linear_kernel<2, kS>);
        if (per_lane <= 3) return go(linear_kernel<3, kS>);
        if (per_lane <= 4) return go(linear_kernel<4, kS>);
        if (per_lane <= 6) return go(linear_kernel<6, kS>);
        if (per_lane <= 8) return go(linear_kernel<8, kS>);
        if (per_lane <= 12) return go(linear_kernel<12, kS>);
        return go(linear_kernel<16, kS>);
    };
    if (S == 4) return pick_u(std::integral_constant<int, 4>{});
    if (S == 2) return pick_u(std::integral_constant<int, 2>{});
    return pick_u(std::integral_constant<int, 1>{});
}

cudaError_t launch_decode_pick(const float* logits, int32_t rows, const DecodePick& o,
                               const int32_t* step, int32_t* next, int32_t* out_tokens,
                               float* out_logprobs, int64_t capacity, cudaStream_t stream,
                               bool overlap, const DecodeNext& nx) {
    const bool embed_ok = !nx.wte || (nx.wpe && nx.x && nx.channels > 0 && nx.context > 0 &&
                                      (nx.pos || nx.set_pos >= 0));
    const bool advance_ok = !nx.advance || (rows == 1 && nx.pos && nx.step_out);
    if (rows <= 0 || !embed_ok || !advance_ok) return cudaErrorInvalidValue;
    return launch(overlap, pick_kernel, rows, kDecodeVocab, 0, stream, logits, rows, o, step, next,
                  out_tokens, out_logprobs, capacity, nx);
}

cudaError_t launch_decode_advance(int32_t* pos, int32_t* step, int32_t set_pos, cudaStream_t stream,
                                  bool overlap) {
    return launch(overlap, advance_kernel, 1, 1, 0, stream, pos, step, set_pos);
}

}  // namespace esper::kernels
