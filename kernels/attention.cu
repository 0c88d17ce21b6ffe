// Fused causal attention on tensor cores, FlashAttention-2 style: bf16 operands of
// mma.sync.m16n8k16, fp32 accumulation, online softmax in registers, the log-sum-exp saved by the
// forward and the probabilities recomputed by the backward, so no T×T matrix ever reaches memory.
// The backward is two atomic-free kernels (deterministic): dK/dV per key block, dQ per query block
// (the dQ kernel recomputes S and dP instead of accumulating dQ with atomics).
#include <cuda_bf16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention.h"
#include "kernels/attention_cudnn.h"

namespace esper::kernels {

namespace {

using bf16 = __nv_bfloat16;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr int kThreads = 128;  // 4 warps, each owns 16 rows of the block's tile

__device__ inline void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ inline uint32_t lds32(const bf16* p) { return *reinterpret_cast<const uint32_t*>(p); }

// B fragments of two adjacent n8 tiles for a k16 step, from a row-major [k][n] smem tile whose
// rows are `ld` elements apart, starting at element (k0, n0): ldmatrix .trans hands each thread
// tile[k0 + 2t .. 2t + 1][n0 + g] (b0) and the same 8 rows further (b1), the m16n8k16 B layout,
// so no transposed copy of the tile is ever stored.
__device__ inline void ldsm_b_trans(uint32_t b[2][2], const bf16* tile, int ld, int k0, int n0,
                                    int lane) {
    const int mat = lane / 8, r = lane % 8;
    const bf16* p = tile + (k0 + r + (mat & 1) * 8) * ld + n0 + (mat >> 1) * 8;
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(b[0][0]), "=r"(b[0][1]), "=r"(b[1][0]), "=r"(b[1][1])
                 : "r"(addr));
}

// Eight consecutive elements (16-byte aligned for bf16, 32-byte for float) as bf16.
__device__ inline void load8(const bf16* src, bf16 out[8]) {
    *reinterpret_cast<uint4*>(out) = *reinterpret_cast<const uint4*>(src);
}
__device__ inline void load8(const float* src, bf16 out[8]) {
    const float4 a = reinterpret_cast<const float4*>(src)[0];
    const float4 b = reinterpret_cast<const float4*>(src)[1];
    out[0] = __float2bfloat16(a.x);
    out[1] = __float2bfloat16(a.y);
    out[2] = __float2bfloat16(a.z);
    out[3] = __float2bfloat16(a.w);
    out[4] = __float2bfloat16(b.x);
    out[5] = __float2bfloat16(b.y);
    out[6] = __float2bfloat16(b.z);
    out[7] = __float2bfloat16(b.w);
}

__device__ inline void store2(bf16* dst, float a, float b) {
    *reinterpret_cast<__nv_bfloat162*>(dst) = __floats2bfloat162_rn(a, b);
}
__device__ inline void store2(float* dst, float a, float b) {
    *reinterpret_cast<float2*>(dst) = make_float2(a, b);
}
__device__ inline float to_float(bf16 x) { return __bfloat162float(x); }
__device__ inline float to_float(float x) { return x; }

struct Params {
    AttentionShape s;
    const void* q;
    const void* k;
    const void* v;
    const void* out;
    const void* dout;
    void* o;  // forward output
    float* lse;
    const float* delta;
    void* dq;
    void* dk;
    void* dv;
};

// Copies rows [row0, row0 + ROWS) of one head (D columns) into shared memory as bf16,
// row-major with stride lds; rows at or past T are zero.
template <int ROWS, int D, typename T>
__device__ inline void load_tile(bf16* dst, int lds, const T* head_base, int64_t ld, int row0,
                                 int seq) {
    constexpr int kVec = D / 8;
    for (int idx = threadIdx.x; idx < ROWS * kVec; idx += kThreads) {
        const int r = idx / kVec, c = (idx % kVec) * 8;
        const int t = row0 + r;
        alignas(16) bf16 vals[8];
        if (t < seq) {
            load8(head_base + int64_t(t) * ld + c, vals);
        } else {
#pragma unroll
            for (int i = 0; i < 8; ++i) vals[i] = __float2bfloat16(0.0f);
        }
        *reinterpret_cast<uint4*>(dst + r * lds + c) = *reinterpret_cast<uint4*>(vals);
    }
}

// cp.async of 16 bytes into shared memory; zeros when !valid (src must still be a valid address).
__device__ inline void cp_async16(bf16* dst, const bf16* src, bool valid) {
    const uint32_t d = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src),
                 "r"(valid ? 16 : 0));
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ inline void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// The two tiles of ROWS rows (K and V, or Q and dO) each step of a kernel's loop reads, in
// kStages shared-memory buffers. bf16 sources are copied with cp.async, the next step's tiles in
// flight while this step computes; fp32 sources are converted through registers, one step at a
// time (the layout and the zero rows past seq are load_tile's). The loop:
//   pipe.fill(first, 0);
//   for (it = 0, step = first; step < end; ++it, ++step) {
//       __syncthreads();                                    // the buffer to refill is free
//       const int st = pipe.advance(it, step, step + 1 < end);
//       __syncthreads();                                    // this step's tiles are visible
//       ... read pipe.a(st), pipe.b(st) ...
//   }
template <int ROWS, int D, typename T>
struct TilePipe {
    static constexpr int kStages = std::is_same_v<T, bf16> ? 2 : 1;
    static constexpr int kLds = D + 8;
    bf16* a0;  // stage st's tiles: a0 + st·a_stride, b0 + st·b_stride
    bf16* b0;
    int a_stride, b_stride;
    const T* ga;  // the tiles' global rows: row t of a at ga + t·lda
    int64_t lda;
    const T* gb;
    int64_t ldb;
    int seq;

    __device__ bf16* a(int st) const { return a0 + st * a_stride; }
    __device__ bf16* b(int st) const { return b0 + st * b_stride; }
    __device__ void fill(int step, int st) {
        if constexpr (kStages == 2) {
            constexpr int kVec = D / 8;
            for (int idx = threadIdx.x; idx < ROWS * kVec; idx += kThreads) {
                const int r = idx / kVec, c = (idx % kVec) * 8;
                const int t = step * ROWS + r;
                const int64_t row = t < seq ? t : 0;
                cp_async16(a(st) + r * kLds + c, ga + row * lda + c, t < seq);
                cp_async16(b(st) + r * kLds + c, gb + row * ldb + c, t < seq);
            }
            cp_async_commit();
        } else {
            load_tile<ROWS, D, T>(a(st), kLds, ga, lda, step * ROWS, seq);
            load_tile<ROWS, D, T>(b(st), kLds, gb, ldb, step * ROWS, seq);
        }
    }
    // Starts the next step's copies and waits for this step's own; returns the buffer to read.
    __device__ int advance(int it, int step, bool has_next) {
        if constexpr (kStages == 2) {
            const int st = it & 1;
            if (has_next) {
                fill(step + 1, st ^ 1);
                cp_async_wait<1>();
            } else {
                cp_async_wait<0>();
            }
            return st;
        } else {
            if (it > 0) fill(step, 0);
            return 0;
        }
    }
};

// A fragments (16 rows × D) of rows [16w, 16w + 16) of a row-major smem tile.
template <int D>
__device__ inline void load_a_frags(uint32_t a[D / 16][4], const bf16* tile, int lds, int warp,
                                    int g, int t4) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        const bf16* p = tile + (warp * 16 + g) * lds + kk * 16 + 2 * t4;
        a[kk][0] = lds32(p);
        a[kk][1] = lds32(p + 8 * lds);
        a[kk][2] = lds32(p + 8);
        a[kk][3] = lds32(p + 8 * lds + 8);
    }
}

// ---------------------------------------------------------------- forward
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) attn_fwd_kernel(Params p) {
    constexpr int BR = 64, BC = 64, LDS = D + 8;
    using Pipe = TilePipe<BC, D, T>;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16* const sm = reinterpret_cast<bf16*>(smem_raw);  // [2·kStages][BC][LDS]: K, V per stage
    const AttentionShape& s = p.s;
    const int seq = s.seq;
    const int qb = gridDim.x - 1 - blockIdx.x;  // longest (last) query blocks first
    const int bh = blockIdx.y, b = bh / s.heads, h = bh % s.heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int64_t head_off = int64_t(b) * seq * s.ld_qkv + int64_t(h) * D;
    const T* qg = static_cast<const T*>(p.q) + head_off;
    const T* kg = static_cast<const T*>(p.k) + head_off;
    const T* vg = static_cast<const T*>(p.v) + head_off;

    uint32_t qa[D / 16][4];
    load_tile<BR, D, T>(sm, LDS, qg, s.ld_qkv, qb * BR, seq);
    __syncthreads();
    load_a_frags<D>(qa, sm, LDS, warp, g, t4);

    float o[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.0f;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};
    const int row[2] = {qb * BR + warp * 16 + g, qb * BR + warp * 16 + g + 8};
    const float sl2 = s.scale * kLog2e;
    const int nkb = min((seq + BC - 1) / BC, qb + 1);
    Pipe pipe{sm, sm + BC * LDS, 2 * BC * LDS, 2 * BC * LDS, kg, s.ld_qkv, vg, s.ld_qkv, seq};
    __syncthreads();  // Q's fragments are read: its staging buffer becomes K's
    pipe.fill(0, 0);

    for (int j = 0; j < nkb; ++j) {
        __syncthreads();
        const int st = pipe.advance(j, j, j + 1 < nkb);
        __syncthreads();
        const bf16* ks = pipe.a(st);
        const bf16* vs = pipe.b(st);
        float sc[BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const bf16* kp = ks + (nt * 8 + g) * LDS + kk * 16 + 2 * t4;
                mma_bf16(sc[nt], qa[kk], lds32(kp), lds32(kp + 8));
            }
        }
        float mx[2] = {m[0], m[1]};
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j * BC + nt * 8 + 2 * t4 + (e & 1);
                const int r = e >> 1;
                float v = sc[nt][e] * sl2;
                if (key > row[r] || key >= seq) v = -INFINITY;
                sc[nt][e] = v;
                mx[r] = fmaxf(mx[r], v);
            }
        float corr[2], base[2];
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 1));
            mx[r] = fmaxf(mx[r], __shfl_xor_sync(0xffffffffu, mx[r], 2));
            base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];
            corr[r] = exp2f(m[r] - base[r]);  // m = -inf: 0
            m[r] = mx[r];
            l[r] *= corr[r];
        }
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            o[nt][0] *= corr[0];
            o[nt][1] *= corr[0];
            o[nt][2] *= corr[1];
            o[nt][3] *= corr[1];
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float pe = exp2f(sc[nt][e] - base[e >> 1]);
                sc[nt][e] = pe;
                l[e >> 1] += pe;
            }
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            a[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            a[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            a[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            a[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt += 2) {
                uint32_t bv[2][2];
                ldsm_b_trans(bv, vs, LDS, kk * 16, nt * 8, lane);
                mma_bf16(o[nt], a, bv[0][0], bv[0][1]);
                mma_bf16(o[nt + 1], a, bv[1][0], bv[1][1]);
            }
        }
    }
    T* og = static_cast<T*>(p.o) + int64_t(b) * seq * s.ld_out + int64_t(h) * D;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
        l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
        if (row[r] >= seq) continue;
        const float inv = 1.0f / l[r];
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
            store2(og + int64_t(row[r]) * s.ld_out + nt * 8 + 2 * t4, o[nt][2 * r] * inv,
                   o[nt][2 * r + 1] * inv);
        if (t4 == 0) p.lse[int64_t(bh) * seq + row[r]] = (m[r] + log2f(l[r])) * kLn2;
    }
}

// ---------------------------------------------------------------- backward
// delta[b, h, t] = dO · O over the head's D values: one warp per (b, t, h).
template <typename T>
__global__ void attn_delta_kernel(Params p, int head_dim) {
    const AttentionShape& s = p.s;
    const int64_t w = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    const int64_t rows = int64_t(s.batch) * s.seq * s.heads;
    if (w >= rows) return;
    const int h = int(w % s.heads);
    const int64_t bt = w / s.heads;
    const int b = int(bt / s.seq), t = int(bt % s.seq);
    const T* o = static_cast<const T*>(p.out) + bt * s.ld_out + int64_t(h) * head_dim;
    const T* d = static_cast<const T*>(p.dout) + bt * s.ld_out + int64_t(h) * head_dim;
    float acc = 0.0f;
    for (int i = lane; i < head_dim; i += 32) acc += to_float(o[i]) * to_float(d[i]);
    for (int x = 16; x > 0; x >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, x);
    if (lane == 0) const_cast<float*>(p.delta)[(int64_t(b) * s.heads + h) * s.seq + t] = acc;
}

// dQ for 64 query rows: S = QKᵀ and dP = dO·Vᵀ recomputed per key block, dS = P⊙(dP − Δ),
// dQ += dS·K. BC keys per step (32 for D = 128 to keep the accumulators in registers).
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_dq_kernel(Params p) {
    constexpr int BR = 64, BC = D > 64 ? 32 : 64, LDS = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    using Pipe = TilePipe<BC, D, T>;
    // [max(BR, BC)][LDS] (Q, dO staging, then K of stage 0), V of stage 0, K and V of stage 1
    bf16* const sm = reinterpret_cast<bf16*>(smem_raw);
    const AttentionShape& s = p.s;
    const int seq = s.seq;
    const int qb = gridDim.x - 1 - blockIdx.x;
    const int bh = blockIdx.y, b = bh / s.heads, h = bh % s.heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int64_t head_off = int64_t(b) * seq * s.ld_qkv + int64_t(h) * D;
    const int64_t out_off = int64_t(b) * seq * s.ld_out + int64_t(h) * D;

    uint32_t qa[D / 16][4], da[D / 16][4];
    load_tile<BR, D, T>(sm, LDS, static_cast<const T*>(p.q) + head_off, s.ld_qkv, qb * BR, seq);
    __syncthreads();
    load_a_frags<D>(qa, sm, LDS, warp, g, t4);
    __syncthreads();
    load_tile<BR, D, T>(sm, LDS, static_cast<const T*>(p.dout) + out_off, s.ld_out, qb * BR, seq);
    __syncthreads();
    load_a_frags<D>(da, sm, LDS, warp, g, t4);

    const int row[2] = {qb * BR + warp * 16 + g, qb * BR + warp * 16 + g + 8};
    float lse2[2], dlt[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int64_t i = int64_t(bh) * seq + (row[r] < seq ? row[r] : seq - 1);
        lse2[r] = p.lse[i] * kLog2e;
        dlt[r] = p.delta[i];
    }
    float dq[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) dq[i][0] = dq[i][1] = dq[i][2] = dq[i][3] = 0.0f;
    const float sl2 = s.scale * kLog2e;
    const int last_key = min(seq - 1, qb * BR + BR - 1);
    const int nkb = last_key / BC + 1;
    const T* kg = static_cast<const T*>(p.k) + head_off;
    const T* vg = static_cast<const T*>(p.v) + head_off;
    constexpr int kStage0 = (BR > BC ? BR : BC) * LDS;  // stage 1: K, V after stage 0's V
    Pipe pipe{sm, sm + kStage0, kStage0 + BC * LDS, 2 * BC * LDS, kg, s.ld_qkv, vg, s.ld_qkv, seq};
    __syncthreads();  // dO's fragments are read: its staging buffer becomes K's
    pipe.fill(0, 0);

    for (int j = 0; j < nkb; ++j) {
        __syncthreads();
        const int st = pipe.advance(j, j, j + 1 < nkb);
        __syncthreads();
        const bf16* ks = pipe.a(st);
        const bf16* vs = pipe.b(st);
        float sc[BC / 8][4], dp[BC / 8][4];
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                const bf16* kp = ks + (nt * 8 + g) * LDS + kk * 16 + 2 * t4;
                mma_bf16(sc[nt], qa[kk], lds32(kp), lds32(kp + 8));
                const bf16* vp = vs + (nt * 8 + g) * LDS + kk * 16 + 2 * t4;
                mma_bf16(dp[nt], da[kk], lds32(vp), lds32(vp + 8));
            }
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int key = j * BC + nt * 8 + 2 * t4 + (e & 1);
                const int r = e >> 1;
                const float pe = (key > row[r] || key >= seq || row[r] >= seq)
                                     ? 0.0f
                                     : exp2f(sc[nt][e] * sl2 - lse2[r]);
                sc[nt][e] = pe * (dp[nt][e] - dlt[r]);  // dS (unscaled)
            }
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t a[4];
            a[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            a[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            a[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            a[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt += 2) {
                uint32_t bk[2][2];
                ldsm_b_trans(bk, ks, LDS, kk * 16, nt * 8, lane);
                mma_bf16(dq[nt], a, bk[0][0], bk[0][1]);
                mma_bf16(dq[nt + 1], a, bk[1][0], bk[1][1]);
            }
        }
    }
    T* dqg = static_cast<T*>(p.dq) + head_off;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (row[r] >= seq) continue;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt)
            store2(dqg + int64_t(row[r]) * s.ld_qkv + nt * 8 + 2 * t4, dq[nt][2 * r] * s.scale,
                   dq[nt][2 * r + 1] * s.scale);
    }
}

// dK, dV for 64 keys: per query block Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, Pᵀ from the saved lse,
// dV += Pᵀ·dO, dK += dSᵀ·Q. BQ queries per step (32 for D = 128).
template <int D, typename T>
__global__ void __launch_bounds__(kThreads) attn_bwd_dkdv_kernel(Params p) {
    constexpr int BKV = 64, BQ = D > 64 ? 32 : 64, LDS = D + 8;
    extern __shared__ __align__(16) unsigned char smem_raw[];
    using Pipe = TilePipe<BQ, D, T>;
    bf16* ks = reinterpret_cast<bf16*>(smem_raw);  // [BKV][LDS]
    bf16* vs = ks + BKV * LDS;                     // [BKV][LDS]
    bf16* qd = vs + BKV * LDS;                     // per stage: Q [BQ][LDS], dO [BQ][LDS]
    float* lse_s = reinterpret_cast<float*>(qd + 2 * Pipe::kStages * BQ * LDS);  // [BQ], log2
    float* dlt_s = lse_s + BQ;                                                   // [BQ]
    const AttentionShape& s = p.s;
    const int seq = s.seq;
    const int kb = blockIdx.x;
    const int bh = blockIdx.y, b = bh / s.heads, h = bh % s.heads;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t4 = lane % 4;
    const int64_t head_off = int64_t(b) * seq * s.ld_qkv + int64_t(h) * D;
    const int64_t out_off = int64_t(b) * seq * s.ld_out + int64_t(h) * D;
    const T* qg = static_cast<const T*>(p.q) + head_off;
    const T* dog = static_cast<const T*>(p.dout) + out_off;

    load_tile<BKV, D, T>(ks, LDS, static_cast<const T*>(p.k) + head_off, s.ld_qkv, kb * BKV, seq);
    load_tile<BKV, D, T>(vs, LDS, static_cast<const T*>(p.v) + head_off, s.ld_qkv, kb * BKV, seq);
    const int key[2] = {kb * BKV + warp * 16 + g, kb * BKV + warp * 16 + g + 8};
    float dk[D / 8][4], dv[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk[i][e] = dv[i][e] = 0.0f;
    const float sl2 = s.scale * kLog2e;
    const int first_qb = (kb * BKV) / BQ;
    const int nqb = (seq + BQ - 1) / BQ;
    Pipe pipe{qd, qd + BQ * LDS, 2 * BQ * LDS, 2 * BQ * LDS, qg, s.ld_qkv, dog, s.ld_out, seq};
    pipe.fill(first_qb, 0);

    for (int i = first_qb; i < nqb; ++i) {
        __syncthreads();
        const int st = pipe.advance(i - first_qb, i, i + 1 < nqb);
        const bf16* qs = pipe.a(st);
        const bf16* ds = pipe.b(st);
        for (int r = threadIdx.x; r < BQ; r += kThreads) {
            const int t = i * BQ + r;
            const int64_t idx = int64_t(bh) * seq + (t < seq ? t : seq - 1);
            lse_s[r] = p.lse[idx] * kLog2e;
            dlt_s[r] = p.delta[idx];
        }
        __syncthreads();
        float sc[BQ / 8][4], dp[BQ / 8][4];
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) sc[nt][e] = dp[nt][e] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            uint32_t ka[4], va[4];
            const bf16* kp = ks + (warp * 16 + g) * LDS + kk * 16 + 2 * t4;
            ka[0] = lds32(kp);
            ka[1] = lds32(kp + 8 * LDS);
            ka[2] = lds32(kp + 8);
            ka[3] = lds32(kp + 8 * LDS + 8);
            const bf16* vp = vs + (warp * 16 + g) * LDS + kk * 16 + 2 * t4;
            va[0] = lds32(vp);
            va[1] = lds32(vp + 8 * LDS);
            va[2] = lds32(vp + 8);
            va[3] = lds32(vp + 8 * LDS + 8);
#pragma unroll
            for (int nt = 0; nt < BQ / 8; ++nt) {
                const bf16* qp = qs + (nt * 8 + g) * LDS + kk * 16 + 2 * t4;
                mma_bf16(sc[nt], ka, lds32(qp), lds32(qp + 8));
                const bf16* dpp = ds + (nt * 8 + g) * LDS + kk * 16 + 2 * t4;
                mma_bf16(dp[nt], va, lds32(dpp), lds32(dpp + 8));
            }
        }
#pragma unroll
        for (int nt = 0; nt < BQ / 8; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = nt * 8 + 2 * t4 + (e & 1);
                const int q = i * BQ + qi;
                const int kr = key[e >> 1];
                const float pe =
                    (q < kr || q >= seq || kr >= seq) ? 0.0f : exp2f(sc[nt][e] * sl2 - lse_s[qi]);
                sc[nt][e] = pe;
                dp[nt][e] = pe * (dp[nt][e] - dlt_s[qi]);  // dSᵀ (unscaled)
            }
#pragma unroll
        for (int kk = 0; kk < BQ / 16; ++kk) {
            uint32_t pa[4], sa[4];
            pa[0] = pack_bf16(sc[2 * kk][0], sc[2 * kk][1]);
            pa[1] = pack_bf16(sc[2 * kk][2], sc[2 * kk][3]);
            pa[2] = pack_bf16(sc[2 * kk + 1][0], sc[2 * kk + 1][1]);
            pa[3] = pack_bf16(sc[2 * kk + 1][2], sc[2 * kk + 1][3]);
            sa[0] = pack_bf16(dp[2 * kk][0], dp[2 * kk][1]);
            sa[1] = pack_bf16(dp[2 * kk][2], dp[2 * kk][3]);
            sa[2] = pack_bf16(dp[2 * kk + 1][0], dp[2 * kk + 1][1]);
            sa[3] = pack_bf16(dp[2 * kk + 1][2], dp[2 * kk + 1][3]);
#pragma unroll
            for (int nt = 0; nt < D / 8; nt += 2) {
                uint32_t bd[2][2], bq[2][2];
                ldsm_b_trans(bd, ds, LDS, kk * 16, nt * 8, lane);
                mma_bf16(dv[nt], pa, bd[0][0], bd[0][1]);
                mma_bf16(dv[nt + 1], pa, bd[1][0], bd[1][1]);
                ldsm_b_trans(bq, qs, LDS, kk * 16, nt * 8, lane);
                mma_bf16(dk[nt], sa, bq[0][0], bq[0][1]);
                mma_bf16(dk[nt + 1], sa, bq[1][0], bq[1][1]);
            }
        }
    }
    T* dkg = static_cast<T*>(p.dk) + head_off;
    T* dvg = static_cast<T*>(p.dv) + head_off;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        if (key[r] >= seq) continue;
#pragma unroll
        for (int nt = 0; nt < D / 8; ++nt) {
            const int64_t off = int64_t(key[r]) * s.ld_qkv + nt * 8 + 2 * t4;
            store2(dkg + off, dk[nt][2 * r] * s.scale, dk[nt][2 * r + 1] * s.scale);
            store2(dvg + off, dv[nt][2 * r], dv[nt][2 * r + 1]);
        }
    }
}

template <typename T>
constexpr int stages() {
    return std::is_same_v<T, bf16> ? 2 : 1;
}
template <int D, typename T>
constexpr size_t fwd_smem_bytes() {
    return size_t(2 * stages<T>() * 64 * (D + 8)) * sizeof(bf16);
}
template <int D, typename T>
constexpr size_t dq_smem_bytes() {
    constexpr int BR = 64, BC = D > 64 ? 32 : 64;
    return size_t((BR > BC ? BR : BC) * (D + 8) + (2 * stages<T>() - 1) * BC * (D + 8)) *
           sizeof(bf16);
}
template <int D, typename T>
constexpr size_t dkdv_smem_bytes() {
    constexpr int BKV = 64, BQ = D > 64 ? 32 : 64;
    return size_t(2 * BKV * (D + 8) + 2 * stages<T>() * BQ * (D + 8)) * sizeof(bf16) +
           2 * BQ * sizeof(float);
}

bool shape_ok(const AttentionShape& s, const void* const* ptrs, int n) {
    if (s.batch <= 0 || s.seq <= 0 || s.heads <= 0) return false;
    if (s.head_dim != 32 && s.head_dim != 64 && s.head_dim != 128) return false;
    if (s.ld_qkv % 8 != 0 || s.ld_out % 8 != 0) return false;
    if (s.ld_qkv < int64_t(s.heads) * s.head_dim || s.ld_out < int64_t(s.heads) * s.head_dim)
        return false;
    for (int i = 0; i < n; ++i)  // 16-byte vector loads and stores
        if (ptrs[i] == nullptr || reinterpret_cast<uintptr_t>(ptrs[i]) % 16 != 0) return false;
    return true;
}

template <int D, typename T>
cudaError_t forward_d(const Params& p, cudaStream_t stream) {
    constexpr size_t smem = fwd_smem_bytes<D, T>();
    if (cudaError_t e = cudaFuncSetAttribute(
            attn_fwd_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        e != cudaSuccess)
        return e;
    const dim3 grid((p.s.seq + 63) / 64, p.s.batch * p.s.heads);
    attn_fwd_kernel<D, T><<<grid, kThreads, smem, stream>>>(p);
    return cudaGetLastError();
}

template <int D, typename T>
cudaError_t backward_d(const Params& p, cudaStream_t stream) {
    const int64_t rows = int64_t(p.s.batch) * p.s.seq * p.s.heads;
    attn_delta_kernel<T><<<int((rows * 32 + 255) / 256), 256, 0, stream>>>(p, D);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
    constexpr size_t dkdv = dkdv_smem_bytes<D, T>(), dq = dq_smem_bytes<D, T>();
    // Idempotent and cheap; capture-safe (no stream work).
    e = cudaFuncSetAttribute(attn_bwd_dkdv_kernel<D, T>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, int(dkdv));
    if (e != cudaSuccess) return e;
    e = cudaFuncSetAttribute(attn_bwd_dq_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(dq));
    if (e != cudaSuccess) return e;
    const dim3 grid((p.s.seq + 63) / 64, p.s.batch * p.s.heads);
    attn_bwd_dkdv_kernel<D, T><<<grid, kThreads, dkdv, stream>>>(p);
    attn_bwd_dq_kernel<D, T><<<grid, kThreads, dq, stream>>>(p);
    return cudaGetLastError();
}

template <typename T>
cudaError_t forward_t(const Params& p, cudaStream_t stream) {
    switch (p.s.head_dim) {
        case 32:
            return forward_d<32, T>(p, stream);
        case 64:
            return forward_d<64, T>(p, stream);
        case 128:
            return forward_d<128, T>(p, stream);
        default:
            return cudaErrorInvalidValue;
    }
}

template <typename T>
cudaError_t backward_t(const Params& p, cudaStream_t stream) {
    switch (p.s.head_dim) {
        case 32:
            return backward_d<32, T>(p, stream);
        case 64:
            return backward_d<64, T>(p, stream);
        case 128:
            return backward_d<128, T>(p, stream);
        default:
            return cudaErrorInvalidValue;
    }
}

}  // namespace

size_t attention_backward_workspace_bytes(const AttentionShape& s) {
    return size_t(s.batch) * s.heads * s.seq * sizeof(float);
}

bool attention_cudnn_available() { return detail::cudnn_attention_loadable(); }

std::string attention_cudnn_status() { return detail::cudnn_attention_status(); }

namespace {

// kCudnn and kAuto's choice of cuDNN for this call (see AttentionBackend).
bool wants_cudnn(const AttentionShape& s, AttentionDtype dtype, AttentionBackend backend) {
    if (backend == AttentionBackend::kCudnn) return true;
    return backend == AttentionBackend::kAuto && dtype == AttentionDtype::kBfloat16 &&
           s.seq >= kAttentionCudnnMinSeq && detail::cudnn_attention_loadable();
}

}  // namespace

cudaError_t launch_attention_forward(const AttentionShape& s, AttentionDtype dtype, const void* q,
                                     const void* k, const void* v, void* out, float* lse,
                                     cudaStream_t stream, AttentionBackend backend) {
    const void* ptrs[] = {q, k, v, out};
    if (!shape_ok(s, ptrs, 4) || lse == nullptr) return cudaErrorInvalidValue;
    if (wants_cudnn(s, dtype, backend)) {
        if (dtype != AttentionDtype::kBfloat16) return cudaErrorNotSupported;
        const cudaError_t e = detail::cudnn_attention_forward(s, q, k, v, out, lse, stream);
        if (e != cudaErrorNotSupported || backend == AttentionBackend::kCudnn) return e;
    }
    Params p{};
    p.s = s;
    p.q = q;
    p.k = k;
    p.v = v;
    p.o = out;
    p.lse = lse;
    return dtype == AttentionDtype::kBfloat16 ? forward_t<bf16>(p, stream)
                                              : forward_t<float>(p, stream);
}

cudaError_t launch_attention_backward(const AttentionShape& s, AttentionDtype dtype, const void* q,
                                      const void* k, const void* v, const void* out,
                                      const void* dout, const float* lse, void* dq, void* dk,
                                      void* dv, void* workspace, size_t workspace_bytes,
                                      cudaStream_t stream, AttentionBackend backend) {
    const void* ptrs[] = {q, k, v, out, dout, dq, dk, dv};
    if (!shape_ok(s, ptrs, 8) || lse == nullptr || workspace == nullptr ||
        workspace_bytes < attention_backward_workspace_bytes(s))
        return cudaErrorInvalidValue;
    if (wants_cudnn(s, dtype, backend)) {
        if (dtype != AttentionDtype::kBfloat16) return cudaErrorNotSupported;
        const cudaError_t e = detail::cudnn_attention_backward(
            s, q, k, v, out, dout, lse, dq, dk, dv, static_cast<float*>(workspace), stream);
        if (e != cudaErrorNotSupported || backend == AttentionBackend::kCudnn) return e;
    }
    Params p{};
    p.s = s;
    p.q = q;
    p.k = k;
    p.v = v;
    p.out = out;
    p.dout = dout;
    p.lse = const_cast<float*>(lse);
    p.delta = static_cast<const float*>(workspace);
    p.dq = dq;
    p.dk = dk;
    p.dv = dv;
    return dtype == AttentionDtype::kBfloat16 ? backward_t<bf16>(p, stream)
                                              : backward_t<float>(p, stream);
}

}  // namespace esper::kernels
