// Fused seed-layer backward. Pass 1 streams dy once: dh = dy for every seed whose input gradient
// does not go through its blueprint, Σdy² per seed into the telemetry, and the list of seeds that
// need their blueprint (input grads, parameter grads or a contribution term). Pass 2 recomputes
// r for those seeds without float atomics, so blueprint gradients and contributions are the same
// bits on every run: tiny blueprints (the streaming pass's inline kind) in blocks that own 32
// seeds, their columns and all their rows; wide arenas as cuBLAS strided-batched GEMMs; others
// per (seed, row group) item, each group summing its row tiles in a fixed order into the arena
// (one group) or a workspace partial that pass 3 adds up in order.
#include <algorithm>

#include "kernels/seed_backward.h"
#include "kernels/seed_common.cuh"

namespace esper::kernels {

namespace {

using detail::DeviceBlueprint;

struct BackwardWorkspace {
    int32_t* active_count;
    int32_t* active_list;  // [S]
    float* partials;       // [partial_floats]: per (listed seed, row group) gradient partials
    int64_t partial_floats;
};

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

size_t base_bytes(int32_t num_seeds) { return 256 + align_up(sizeof(int32_t) * size_t(num_seeds)); }

// Gradient partials of a workspace sized by seed count only: 16 MiB, enough for a few hundred
// row groups of w = 16 blueprints. The view overload sizes them for the layer's arenas.
constexpr int64_t kDefaultPartialFloats = int64_t(1) << 22;
constexpr int64_t kMaxPartialFloats = int64_t(1) << 27;  // 512 MiB

// Layout: counters and list (base_bytes), then the wide-chunk scratch when used (wide_bytes),
// then the gradient partials (the rest).
BackwardWorkspace carve(void* ws, size_t bytes, int32_t num_seeds, size_t wide_bytes) {
    char* p = static_cast<char*>(ws);
    BackwardWorkspace w;
    w.active_count = reinterpret_cast<int32_t*>(p);
    w.active_list = reinterpret_cast<int32_t*>(p + 256);
    const size_t head = base_bytes(num_seeds) + wide_bytes;
    w.partials = reinterpret_cast<float*>(p + head);
    w.partial_floats = int64_t((bytes - head) / sizeof(float));
    return w;
}

// Row groups per listed seed: one per row tile when the workspace partials hold them all (each
// partial is then written once, never read back by pass 2), fewer when they do not. A function
// of the number of listed seeds only (not of their order), so passes 2 and 3 agree and every run
// sums alike.
__device__ inline int32_t row_groups(int32_t n_listed, int32_t row_tiles, int64_t region_floats,
                                     int64_t partial_floats) {
    if (n_listed <= 0) return 1;
    int64_t g = row_tiles;
    const int64_t fit = partial_floats / (int64_t(n_listed) * region_floats);
    if (g > fit) g = fit;
    return g < 2 ? 1 : int32_t(g);
}

struct SeedGradPlan {
    float a_fwd, a_in, g_scale;
    bool param_grads, needs_pass2;
};

__device__ inline SeedGradPlan plan_of(const SeedLayerView& v, int32_t s, bool with_tel,
                                       DeviceBlueprint* bp_out) {
    const auto st = static_cast<SeedStage>(v.stage[s]);
    const float alpha = v.alpha[s];
    const DeviceBlueprint bp = detail::blueprint_of(v, s);
    *bp_out = bp;
    SeedGradPlan p{0.0f, 0.0f, 0.0f, false, false};
    if (!stage_runs_blueprint(st) || bp.params == nullptr) return p;
    p.a_fwd = stage_forward_alpha(st, alpha);
    p.a_in = stage_input_grad_alpha(st, alpha);
    p.g_scale = stage_blueprint_grad_scale(st, alpha);
    p.param_grads = p.g_scale > 0.0f && bp.grads != nullptr;
    p.needs_pass2 = p.a_in != 0.0f || p.param_grads || (with_tel && p.a_fwd != 0.0f);
    return p;
}

__global__ void __launch_bounds__(detail::kStreamThreads)
    backward_stream_kernel(SeedLayerView v, const float* __restrict__ dy, float* __restrict__ dh,
                           SeedTelemetryAccum tel, bool with_tel, BackwardWorkspace ws,
                           int32_t rows_per_block, int32_t skip_width) {
    const int32_t c = blockIdx.x * detail::kStreamThreads + threadIdx.x;
    int32_t s = -1;
    if (c < v.width) {
        s = detail::seed_of_column(v.chunk_offset, v.num_seeds, v.width, c);
        // Chunks of <= skip_width columns belong to the tiny kernel, which streams them itself.
        if (v.chunk_offset[s + 1] - v.chunk_offset[s] <= skip_width) s = -1;
    }
    const bool valid = s >= 0;
    bool through_blueprint = false;
    if (valid) {
        DeviceBlueprint bp;
        const SeedGradPlan p = plan_of(v, s, with_tel, &bp);
        through_blueprint = p.a_in != 0.0f;
        if (p.needs_pass2 && blockIdx.y == 0 && c == v.chunk_offset[s])
            ws.active_list[atomicAdd(ws.active_count, 1)] = s;
    }
    const int32_t r0 = blockIdx.y * rows_per_block;
    const int32_t r1 = min(v.batch, r0 + rows_per_block);
    float sq = 0.0f;
    if (valid) {
        const int64_t ld = v.width;
        const float* gp = dy + int64_t(r0) * ld + c;
        float* dp = dh + int64_t(r0) * ld + c;
        int32_t r = r0;
        for (; r + 4 <= r1; r += 4) {
            float g[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) g[k] = __ldcs(gp + k * ld);
            if (!through_blueprint)
#pragma unroll
                for (int k = 0; k < 4; ++k) __stcs(dp + k * ld, g[k]);
#pragma unroll
            for (int k = 0; k < 4; ++k) sq = fmaf(g[k], g[k], sq);
            gp += 4 * ld;
            dp += 4 * ld;
        }
        for (; r < r1; ++r) {
            const float g = __ldcs(gp);
            if (!through_blueprint) __stcs(dp, g);
            sq = fmaf(g, g, sq);
            gp += ld;
            dp += ld;
        }
    }
    if (!with_tel) return;
    double dq = sq;
    if (detail::segmented_warp_sum(s, dq) && s >= 0) atomicAdd(tel.grad_sq + s, dq);
}

// Deterministic sum of one double per thread: a shuffle tree per warp, then warps in order.
// Every thread of the block must call it; the total is valid on thread 0.
__device__ inline double block_sum(double v, double* red) {
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    double t = 0.0;
    if (threadIdx.x == 0)
        for (int k = 0; k < int(blockDim.x >> 5); ++k) t += red[k];
    __syncthreads();
    return t;
}

// Pass 2 for the listed seeds: item = (seed, row group); a group walks its row tiles in order and
// adds each tile's gradients (+=, each element owned by one thread) into the arena slot when the
// seed has one group, else into its own workspace region (zeroed first; pass 3 sums the regions).
// The region's last two floats hold the group's contribution as a double.
__global__ void __launch_bounds__(detail::kActiveThreads)
    backward_active_kernel(SeedLayerView v, const float* __restrict__ h,
                           const float* __restrict__ dy, float* __restrict__ dh,
                           SeedTelemetryAccum tel, bool with_tel, BackwardWorkspace ws,
                           int32_t row_tile, int64_t region_floats, bool stage_v,
                           uint32_t skip_kinds) {
    extern __shared__ float smem[];
    __shared__ double red[detail::kActiveThreads / 32];
    constexpr int HC = detail::kHiddenChunk;
    const int32_t row_tiles = (v.batch + row_tile - 1) / row_tile;
    const int32_t n_listed = *ws.active_count;
    const int32_t groups = row_groups(n_listed, row_tiles, region_floats, ws.partial_floats);
    const int64_t n_items = int64_t(n_listed) * groups;
    const int64_t ld = v.width;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t pos = int32_t(item / groups);
        const int32_t grp = int32_t(item % groups);
        const int32_t s = ws.active_list[pos];
        const int32_t t0 = int32_t(int64_t(grp) * row_tiles / groups);
        const int32_t t1 = int32_t(int64_t(grp + 1) * row_tiles / groups);
        const int32_t c0 = v.chunk_offset[s];
        const int32_t w = v.chunk_offset[s + 1] - c0;
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        if ((skip_kinds >> unsigned(bp.kind)) & 1u) continue;  // done by the batched GEMMs
        const float* p = bp.params;
        const int32_t M = bp.max_width;
        float* region =
            groups > 1 ? ws.partials + (int64_t(pos) * groups + grp) * region_floats : nullptr;
        float* gd = groups > 1 ? region : bp.grads;  // this item's gradients go here (+=)
        double contrib_sum = 0.0;  // Σ g·r over this thread's share of the group
        for (int32_t tile = t0; tile < t1; ++tile) {
            // A group's first tile writes its partial (no zeroing, no read); the arena and later
            // tiles accumulate. Entries past the chunk width stay unwritten: pass 3 skips them.
            const bool overwrite = groups > 1 && tile == t0;
            auto put = [&](int64_t at, float val) { gd[at] = overwrite ? val : gd[at] + val; };
            const int32_t r0 = tile * row_tile;
            const int32_t rt = min(row_tile, v.batch - r0);
            float contrib = 0.0f;  // Σ g·r over this thread's share of the tile
            if (bp.kind == BlueprintKind::kScaleShift) {
                for (int32_t i = threadIdx.x; i < w; i += blockDim.x) {
                    const float sc = p[i], sh = p[M + i];
                    float gs = 0.0f, gb = 0.0f;
                    for (int32_t r = 0; r < rt; ++r) {
                        const int64_t off = int64_t(r0 + r) * ld + c0 + i;
                        const float x = h[off], g = dy[off];
                        gs = fmaf(g, x, gs);
                        gb += g;
                        contrib = fmaf(g, fmaf(sc, x, sh), contrib);
                        if (pl.a_in != 0.0f) dh[off] = g + pl.a_in * sc * g;
                    }
                    if (pl.param_grads) {
                        put(i, pl.g_scale * gs);
                        put(M + i, pl.g_scale * gb);
                    }
                }
            } else {
                const MlpSlotOffsets o = mlp_slot_offsets(M, bp.hidden);
                const bool relu = bp.kind == BlueprintKind::kResidualMlp;
                const int32_t H = bp.hidden;
                float* xs = smem;
                float* gs = xs + row_tile * w;
                float* dx = gs + row_tile * w;
                float* act = dx + row_tile * w;
                float* dz = act + row_tile * HC;
                float* vts = dz + row_tile * HC;  // [w][HC + 1]: this hidden chunk of V, transposed
                for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                    const int32_t r = idx / w, i = idx - r * w;
                    const int64_t off = int64_t(r0 + r) * ld + c0 + i;
                    xs[idx] = h[off];
                    gs[idx] = dy[off];
                    dx[idx] = 0.0f;
                    contrib = fmaf(gs[idx], p[o.b2 + i], contrib);
                }
                __syncthreads();
                if (pl.param_grads)
                    for (int32_t i = threadIdx.x; i < w; i += blockDim.x) {
                        float t = 0.0f;
                        for (int32_t r = 0; r < rt; ++r) t += gs[r * w + i];
                        put(o.b2 + i, pl.g_scale * t);
                    }
                for (int32_t hc = 0; hc < H; hc += HC) {
                    const int32_t hn = min(HC, H - hc);
                    // Lanes of a warp read 32 hidden units' weights of one input: staged
                    // transposed (odd stride, no bank conflicts) instead of 32 rows of V.
                    if (stage_v) {
                        for (int32_t idx = threadIdx.x; idx < hn * w; idx += blockDim.x) {
                            const int32_t jj = idx / w, i = idx - jj * w;
                            vts[i * (HC + 1) + jj] = p[o.v + int64_t(hc + jj) * M + i];
                        }
                        __syncthreads();
                    }
                    for (int32_t idx = threadIdx.x; idx < rt * HC; idx += blockDim.x) {
                        const int32_t r = idx / HC, jj = idx - r * HC;
                        float av = 0.0f, dzv = 0.0f;
                        if (jj < hn) {
                            const int32_t j = hc + jj;
                            const float* xr = xs + r * w;
                            const float* gr = gs + r * w;
                            float z = p[o.b1 + j], da = 0.0f;
                            for (int32_t i = 0; i < w; ++i) {
                                const float vji =
                                    stage_v ? vts[i * (HC + 1) + jj] : p[o.v + int64_t(j) * M + i];
                                z = fmaf(vji, xr[i], z);
                                da = fmaf(p[o.u + int64_t(i) * H + j], gr[i], da);
                            }
                            av = relu ? fmaxf(z, 0.0f) : z;
                            dzv = (relu && !(z > 0.0f)) ? 0.0f : da;
                            contrib = fmaf(av, da, contrib);
                        }
                        act[idx] = av;
                        dz[idx] = dzv;
                    }
                    __syncthreads();
                    if (pl.param_grads) {
                        for (int32_t idx = threadIdx.x; idx < w * hn; idx += blockDim.x) {
                            const int32_t i = idx / hn, jj = idx - i * hn;
                            float t = 0.0f;
                            for (int32_t r = 0; r < rt; ++r)
                                t = fmaf(gs[r * w + i], act[r * HC + jj], t);
                            put(o.u + int64_t(i) * H + hc + jj, pl.g_scale * t);
                        }
                        for (int32_t idx = threadIdx.x; idx < hn * w; idx += blockDim.x) {
                            const int32_t jj = idx / w, i = idx - jj * w;
                            float t = 0.0f;
                            for (int32_t r = 0; r < rt; ++r)
                                t = fmaf(dz[r * HC + jj], xs[r * w + i], t);
                            put(o.v + int64_t(hc + jj) * M + i, pl.g_scale * t);
                        }
                        for (int32_t jj = threadIdx.x; jj < hn; jj += blockDim.x) {
                            float t = 0.0f;
                            for (int32_t r = 0; r < rt; ++r) t += dz[r * HC + jj];
                            put(o.b1 + hc + jj, pl.g_scale * t);
                        }
                    }
                    if (pl.a_in != 0.0f)
                        for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                            const int32_t r = idx / w, i = idx - r * w;
                            float t = 0.0f;
                            for (int32_t jj = 0; jj < hn; ++jj)
                                t = fmaf(stage_v ? vts[i * (HC + 1) + jj]
                                                 : p[o.v + int64_t(hc + jj) * M + i],
                                         dz[r * HC + jj], t);
                            dx[idx] += t;
                        }
                    __syncthreads();
                }
                if (pl.a_in != 0.0f)
                    for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                        const int32_t r = idx / w, i = idx - r * w;
                        dh[int64_t(r0 + r) * ld + c0 + i] = gs[idx] + pl.a_in * dx[idx];
                    }
            }
            contrib_sum += double(contrib);
            __syncthreads();
        }
        if (with_tel && pl.a_fwd != 0.0f) {
            const double c = block_sum(contrib_sum, red);
            if (threadIdx.x == 0) {
                const double val = -double(pl.a_fwd) * c;
                if (groups > 1)
                    *reinterpret_cast<double*>(region + region_floats - 2) = val;
                else
                    tel.contribution[s] += val;
            }
        }
    }
}

// Pass 3 (only when seeds were split into row groups): adds each seed's group partials, group 0
// first, into its arena slot and its contribution.
__global__ void backward_reduce_kernel(SeedLayerView v, SeedTelemetryAccum tel, bool with_tel,
                                       BackwardWorkspace ws, int32_t row_tiles,
                                       int64_t region_floats, uint32_t skip_kinds) {
    const int32_t n_listed = *ws.active_count;
    const int32_t groups = row_groups(n_listed, row_tiles, region_floats, ws.partial_floats);
    if (groups == 1) return;
    for (int32_t pos = blockIdx.x; pos < n_listed; pos += gridDim.x) {
        const int32_t s = ws.active_list[pos];
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        if ((skip_kinds >> unsigned(bp.kind)) & 1u) continue;
        const float* base = ws.partials + int64_t(pos) * groups * region_floats;
        if (pl.param_grads) {
            const int32_t w = v.chunk_offset[s + 1] - v.chunk_offset[s];
            const int32_t M = bp.max_width, H = bp.hidden;
            const MlpSlotOffsets o = mlp_slot_offsets(M, H);
            const bool ss = bp.kind == BlueprintKind::kScaleShift;
            for (int32_t k = threadIdx.x; k < bp.stride; k += blockDim.x) {
                // The column (or output row) this entry belongs to; >= w: never written.
                const int64_t i = ss         ? (k < M ? k : k - M)
                                  : k < o.b1 ? k % M
                                  : k < o.u  ? 0
                                  : k < o.b2 ? (k - o.u) / H
                                             : k - o.b2;
                if (i >= w) continue;
                float t = 0.0f;
                for (int32_t g = 0; g < groups; ++g) t += base[g * region_floats + k];
                bp.grads[k] += t;
            }
        }
        if (threadIdx.x == 0 && with_tel && pl.a_fwd != 0.0f) {
            double t = 0.0;
            for (int32_t g = 0; g < groups; ++g)
                t += *reinterpret_cast<const double*>(base + (g + 1) * region_floats - 2);
            tel.contribution[s] += t;
        }
    }
}

// Tiny blueprints (every arena max_width <= 2, hidden <= 4, the streaming forward's inline kind):
// this kernel owns every seed whose chunk has <= kTinyW columns, streaming included (the
// streaming pass skips them), so dy is read once. Lane l of a warp group handles seed
// 32·group + l; the group's `stripes` warps split the rows (warp k of a group: rows k,
// k + stripes, ...). Each lane keeps its seed's gradients, Σdy² and contribution in registers;
// the stripes are added in order by the group's first warp, which writes them once: no atomics,
// no workspace, the same bits on every run.
constexpr int kTinyW = 2;
constexpr int kTinyH = 4;
constexpr int kTinyWarps = detail::kActiveThreads / 32;
constexpr int kTinyGrads = 2 * kTinyH * kTinyW + kTinyH + kTinyW;  // gV, gU, gb1, gb2
constexpr int kTinyRows = 4;                                       // rows in flight per lane

// 124 registers, 16 warps/SM. __launch_bounds__(256, 3) (80 registers, 24 warps) spills to local
// memory and ran slower on an H100 (1.03 ms vs 735 µs at 1 M seeds, 100 %): not used.

__global__ void __launch_bounds__(detail::kActiveThreads)
    backward_tiny_kernel(SeedLayerView v, const float* __restrict__ h, const float* __restrict__ dy,
                         float* __restrict__ dh, SeedTelemetryAccum tel, bool with_tel,
                         int32_t stripes) {
    __shared__ float red[kTinyWarps][kTinyGrads][32];
    __shared__ double red_c[kTinyWarps][2][32];
    const int32_t lane = int32_t(threadIdx.x & 31u), warp = int32_t(threadIdx.x >> 5);
    const int32_t stripe = warp % stripes;
    const int32_t s = (int32_t(blockIdx.x) * (kTinyWarps / stripes) + warp / stripes) * 32 + lane;
    // gV[j][i] at j·kTinyW + i, gU[i][j] at 8 + i·kTinyH + j (scale_shift: gU[i][0] = d scale),
    // gb1[j] at 16 + j, gb2[i] at 20 + i (scale_shift: d shift).
    float acc[kTinyGrads];
#pragma unroll
    for (int k = 0; k < kTinyGrads; ++k) acc[k] = 0.0f;
    double contrib = 0.0;
    float gsq = 0.0f;
    bool own = false, blueprint = false, ss = false;
    int32_t w = 0, c0 = 0, M = 0, H = 0;
    SeedGradPlan pl{0.0f, 0.0f, 0.0f, false, false};
    DeviceBlueprint bp;
    if (s < v.num_seeds) {
        c0 = v.chunk_offset[s];
        w = v.chunk_offset[s + 1] - c0;
        own = w <= kTinyW;
    }
    if (own) {
        pl = plan_of(v, s, with_tel, &bp);
        blueprint = pl.needs_pass2;
        const float* p = bp.params;
        M = bp.max_width;
        ss = bp.kind == BlueprintKind::kScaleShift;
        const bool relu = bp.kind == BlueprintKind::kResidualMlp;
        H = ss ? 0 : bp.hidden;
        float V[kTinyH][kTinyW], b1[kTinyH], U[kTinyW][kTinyH], b2[kTinyW];
#pragma unroll
        for (int i = 0; i < kTinyW; ++i) {
            b2[i] = 0.0f;
#pragma unroll
            for (int j = 0; j < kTinyH; ++j) U[i][j] = V[j][i] = 0.0f;
        }
#pragma unroll
        for (int j = 0; j < kTinyH; ++j) b1[j] = 0.0f;
        if (blueprint && ss) {
#pragma unroll
            for (int i = 0; i < kTinyW; ++i)
                if (i < w) {
                    U[i][0] = p[i];
                    b2[i] = p[M + i];
                }
        } else if (blueprint) {
            const MlpSlotOffsets o = mlp_slot_offsets(M, bp.hidden);
#pragma unroll
            for (int j = 0; j < kTinyH; ++j) {
                if (j >= H) continue;
                b1[j] = p[o.b1 + j];
#pragma unroll
                for (int i = 0; i < kTinyW; ++i)
                    if (i < w) {
                        V[j][i] = p[o.v + int64_t(j) * M + i];
                        U[i][j] = p[o.u + int64_t(i) * H + j];
                    }
            }
#pragma unroll
            for (int i = 0; i < kTinyW; ++i)
                if (i < w) b2[i] = p[o.b2 + i];
        }
        const int64_t ld = v.width;
        const bool through = blueprint && pl.a_in != 0.0f;
        for (int32_t rb = stripe; rb < v.batch; rb += stripes * kTinyRows) {
            float x[kTinyRows][kTinyW], g[kTinyRows][kTinyW];
#pragma unroll
            for (int q = 0; q < kTinyRows; ++q) {
                const int32_t r = rb + q * stripes;
#pragma unroll
                for (int i = 0; i < kTinyW; ++i) {
                    const bool in = r < v.batch && i < w;
                    const int64_t off = int64_t(r) * ld + c0 + i;
                    g[q][i] = in ? __ldcs(dy + off) : 0.0f;
                    x[q][i] = in && blueprint ? __ldcs(h + off) : 0.0f;
                }
            }
#pragma unroll
            for (int q = 0; q < kTinyRows; ++q) {
                float dx[kTinyW], rr[kTinyW];
#pragma unroll
                for (int i = 0; i < kTinyW; ++i) {
                    gsq = fmaf(g[q][i], g[q][i], gsq);
                    dx[i] = 0.0f;
                    rr[i] = 0.0f;
                }
                if (blueprint && ss) {
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i) {
                        rr[i] = fmaf(U[i][0], x[q][i], b2[i]);
                        acc[8 + i * kTinyH] = fmaf(g[q][i], x[q][i], acc[8 + i * kTinyH]);
                        acc[20 + i] += g[q][i];
                        dx[i] = U[i][0] * g[q][i];
                    }
                } else if (blueprint) {
                    float a[kTinyH], dz[kTinyH];
#pragma unroll
                    for (int j = 0; j < kTinyH; ++j) {
                        float z = b1[j], da = 0.0f;
#pragma unroll
                        for (int i = 0; i < kTinyW; ++i) {
                            z = fmaf(V[j][i], x[q][i], z);
                            da = fmaf(U[i][j], g[q][i], da);
                        }
                        a[j] = relu ? fmaxf(z, 0.0f) : z;
                        dz[j] = (relu && !(z > 0.0f)) ? 0.0f : da;
                    }
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i) {
                        float o = b2[i], t = 0.0f;
#pragma unroll
                        for (int j = 0; j < kTinyH; ++j) {
                            o = fmaf(U[i][j], a[j], o);
                            t = fmaf(V[j][i], dz[j], t);
                            acc[8 + i * kTinyH + j] = fmaf(g[q][i], a[j], acc[8 + i * kTinyH + j]);
                            acc[j * kTinyW + i] = fmaf(dz[j], x[q][i], acc[j * kTinyW + i]);
                        }
                        rr[i] = o;
                        dx[i] = t;
                        acc[20 + i] += g[q][i];
                    }
#pragma unroll
                    for (int j = 0; j < kTinyH; ++j) acc[16 + j] += dz[j];
                }
                if (blueprint) {
                    float c = 0.0f;
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i) c = fmaf(g[q][i], rr[i], c);
                    contrib += double(c);
                }
                const int32_t r = rb + q * stripes;
                if (r < v.batch)
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i)
                        if (i < w)
                            __stcs(dh + int64_t(r) * ld + c0 + i,
                                   through ? fmaf(pl.a_in, dx[i], g[q][i]) : g[q][i]);
            }
        }
    }
    double gsq_sum = gsq;
    if (stripes > 1) {
#pragma unroll
        for (int k = 0; k < kTinyGrads; ++k) red[warp][k][lane] = acc[k];
        red_c[warp][0][lane] = contrib;
        red_c[warp][1][lane] = gsq_sum;
        __syncthreads();
        if (stripe != 0) return;
        for (int q = 1; q < stripes; ++q) {
#pragma unroll
            for (int k = 0; k < kTinyGrads; ++k) acc[k] += red[warp + q][k][lane];
            contrib += red_c[warp + q][0][lane];
            gsq_sum += red_c[warp + q][1][lane];
        }
    }
    if (!own) return;
    if (with_tel) tel.grad_sq[s] += gsq_sum;
    if (!blueprint) return;
    if (with_tel && pl.a_fwd != 0.0f) tel.contribution[s] += -double(pl.a_fwd) * contrib;
    if (!pl.param_grads) return;
    const MlpSlotOffsets o = mlp_slot_offsets(M, H);
    float* gr = bp.grads;
#pragma unroll
    for (int k = 0; k < kTinyGrads; ++k) {
        int64_t dst = -1;
        if (k < 8) {
            const int32_t j = k / kTinyW, i = k % kTinyW;
            if (j < H && i < w) dst = o.v + int64_t(j) * M + i;
        } else if (k < 16) {
            const int32_t i = (k - 8) / kTinyH, j = (k - 8) % kTinyH;
            if (ss && j == 0 && i < w) dst = i;
            if (!ss && i < w && j < H) dst = o.u + int64_t(i) * H + j;
        } else if (k < 20) {
            const int32_t j = k - 16;
            if (j < H) dst = o.b1 + j;
        } else {
            const int32_t i = k - 20;
            if (i < w) dst = ss ? M + i : o.b2 + i;
        }
        if (dst >= 0) gr[dst] += pl.g_scale * acc[k];
    }
}

// ---- wide chunks: cuBLAS strided-batched GEMMs over the arena's slots ----
// The backward of r = U·act(V·x + b1) + b2 for every slot of a wide arena (kWideWidth): gather X
// (h), G (dy) and Z = b1 rows of the listed seeds, then Z += X·Vᵀ, DA = G·U, act / act' in place
// (A, dZ) with each row's contribution ⟨g, r⟩ = Σ A·DA + Σ g·b2, and the gradients as products:
// gU = Gᵀ·A, gV = dZᵀ·X, gb1 = dZᵀ·1, gb2 = Gᵀ·1, dX = dZ·V. cuBLAS gives the same bits on
// every run (one stream, same GPU), the per-seed sums below run in a fixed order. fp32, no TF32.
struct WideBwdArena {
    bool on = false;
    int64_t x = 0, g = 0, z = 0, da = 0, dx = 0, gp = 0, cr = 0;  // float offsets in the scratch
};
struct WideBwdPlan {
    WideBwdArena arena[2];
    int64_t ones = 0;  // [batch] ones (column sums as GEMMs)
    size_t bytes = 0;
    uint32_t kinds = 0;
};

WideBwdPlan wide_bwd_plan(const SeedLayerView& v) {
    WideBwdPlan wp;
    int64_t f = detail::align64(v.batch);  // the ones come first
    for (int k = 0; k < 2; ++k) {
        const BlueprintArena& a = v.arenas[k];
        if (!detail::arena_is_wide(a)) continue;
        WideBwdArena& w = wp.arena[k];
        w.on = true;
        const int64_t rows = int64_t(a.capacity) * v.batch;
        w.x = f;
        f += detail::align64(rows * a.max_width);
        w.g = f;
        f += detail::align64(rows * a.max_width);
        w.dx = f;
        f += detail::align64(rows * a.max_width);
        w.z = f;
        f += detail::align64(rows * a.hidden);
        w.da = f;
        f += detail::align64(rows * a.hidden);
        w.gp = f;
        f += detail::align64(int64_t(a.capacity) * a.stride);
        w.cr = f;  // doubles
        f += detail::align64(2 * rows);
        wp.kinds |= 1u << k;
    }
    wp.bytes = wp.kinds ? size_t(f) * sizeof(float) : 0;
    return wp;
}

__global__ void wide_fill_ones_kernel(float* ones, int32_t n) {
    for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        ones[i] = 1.0f;
}

// Item = (listed seed of `kind`, row): X = h chunk, G = dy chunk (both zero past w), Z = b1.
__global__ void wide_bwd_gather_kernel(SeedLayerView v, const float* __restrict__ h,
                                       const float* __restrict__ dy, BackwardWorkspace ws, int kind,
                                       float* __restrict__ xs, float* __restrict__ gs,
                                       float* __restrict__ zs) {
    const BlueprintArena& arena = v.arenas[kind];
    const int32_t M = arena.max_width, H = arena.hidden;
    const MlpSlotOffsets o = mlp_slot_offsets(M, H);
    const int64_t n_items = int64_t(*ws.active_count) * v.batch;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / v.batch];
        if (v.kind[s] != kind) continue;
        const int32_t r = int32_t(item % v.batch);
        const int32_t q = v.slot[s];
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0;
        const float* p = arena.params + int64_t(q) * arena.stride;
        const int64_t row = int64_t(q) * v.batch + r;
        const int64_t off = int64_t(r) * v.width + c0;
        for (int32_t i = threadIdx.x; i < M; i += blockDim.x) {
            xs[row * M + i] = i < w ? h[off + i] : 0.0f;
            gs[row * M + i] = i < w ? dy[off + i] : 0.0f;
        }
        for (int32_t j = threadIdx.x; j < H; j += blockDim.x) zs[row * H + j] = p[o.b1 + j];
    }
}

// Item = (listed seed of `kind`, row): Z → act(Z), DA → dZ in place; the row's contribution
// Σ A·DA + Σ g·b2 (a fixed-order block sum) into cr[row].
__global__ void wide_bwd_act_kernel(SeedLayerView v, BackwardWorkspace ws, int kind,
                                    float* __restrict__ zs, float* __restrict__ das,
                                    const float* __restrict__ gs, double* __restrict__ cr) {
    __shared__ double red[detail::kActiveThreads / 32];
    const BlueprintArena& arena = v.arenas[kind];
    const int32_t M = arena.max_width, H = arena.hidden;
    const MlpSlotOffsets o = mlp_slot_offsets(M, H);
    const bool relu = kind == int(BlueprintKind::kResidualMlp);
    const int64_t n_items = int64_t(*ws.active_count) * v.batch;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / v.batch];
        if (v.kind[s] != kind) continue;
        const int32_t r = int32_t(item % v.batch);
        const int32_t q = v.slot[s];
        const float* p = arena.params + int64_t(q) * arena.stride;
        const int64_t row = int64_t(q) * v.batch + r;
        float c = 0.0f;
        for (int32_t j = threadIdx.x; j < H; j += blockDim.x) {
            const float z = zs[row * H + j], da = das[row * H + j];
            const float a = relu ? fmaxf(z, 0.0f) : z;
            zs[row * H + j] = a;
            das[row * H + j] = (relu && !(z > 0.0f)) ? 0.0f : da;
            c = fmaf(a, da, c);
        }
        for (int32_t i = threadIdx.x; i < M; i += blockDim.x)
            c = fmaf(gs[row * M + i], p[o.b2 + i], c);
        const double total = block_sum(double(c), red);
        if (threadIdx.x == 0) cr[row] = total;
    }
}

// Item = (listed seed of `kind`, piece of kWideFinishPiece floats of its slot): grads += g_scale ·
// (that piece of the GEMMs' gradients); piece 0 also adds the contribution −a·Σ_rows cr (fixed
// order). Each gradient float gets exactly one add, so the pieces may run in any order. One block
// per seed (264 k floats each at 64 seeds) took 470.8 µs on an H100; pieces take 30.1 µs.
constexpr int32_t kWideFinishPiece = 8 * 1024;

__global__ void wide_bwd_finish_kernel(SeedLayerView v, SeedTelemetryAccum tel, bool with_tel,
                                       BackwardWorkspace ws, int kind, const float* __restrict__ gp,
                                       const double* __restrict__ cr, int32_t pieces) {
    __shared__ double red[detail::kActiveThreads / 32];
    const int64_t n_items = int64_t(*ws.active_count) * pieces;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / pieces];
        if (v.kind[s] != kind) continue;
        const int32_t piece = int32_t(item % pieces);
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        const int32_t q = v.slot[s];
        if (pl.param_grads) {
            const float* src = gp + int64_t(q) * bp.stride;
            const int32_t k0 = piece * kWideFinishPiece;
            const int32_t k1 = min(bp.stride, k0 + kWideFinishPiece);
            for (int32_t k = k0 + threadIdx.x; k < k1; k += blockDim.x)
                bp.grads[k] += pl.g_scale * src[k];
        }
        if (piece == 0 && with_tel && pl.a_fwd != 0.0f) {
            double t = 0.0;
            for (int32_t r = threadIdx.x; r < v.batch; r += blockDim.x)
                t += cr[int64_t(q) * v.batch + r];
            const double total = block_sum(t, red);
            if (threadIdx.x == 0) tel.contribution[s] += -double(pl.a_fwd) * total;
        }
    }
}

// Item = (listed seed of `kind` whose input gradient goes through r, row): dh = dy + a_in·dX.
__global__ void wide_bwd_dh_kernel(SeedLayerView v, BackwardWorkspace ws, int kind,
                                   const float* __restrict__ gs, const float* __restrict__ dxs,
                                   float* __restrict__ dh) {
    const int32_t M = v.arenas[kind].max_width;
    const int64_t n_items = int64_t(*ws.active_count) * v.batch;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / v.batch];
        if (v.kind[s] != kind) continue;
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, false, &bp);
        if (pl.a_in == 0.0f) continue;
        const int32_t r = int32_t(item % v.batch);
        const int64_t row = int64_t(v.slot[s]) * v.batch + r;
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0;
        const int64_t off = int64_t(r) * v.width + c0;
        for (int32_t i = threadIdx.x; i < w; i += blockDim.x)
            dh[off + i] = fmaf(pl.a_in, dxs[row * M + i], gs[row * M + i]);
    }
}

cudaError_t launch_wide_backward(const SeedLayerView& v, const WideBwdPlan& wp, const float* h,
                                 const float* dy, float* dh, const SeedTelemetryAccum& tel,
                                 bool with_tel, const BackwardWorkspace& ws, float* scratch,
                                 int blocks, cudaStream_t stream) {
    using detail::from_cublas;
    cublasHandle_t handle = nullptr;
    cudaError_t e = detail::seed_cublas_handle(&handle);
    if (e != cudaSuccess) return e;
    if ((e = from_cublas(cublasSetStream(handle, stream))) != cudaSuccess) return e;
    const int32_t B = v.batch;
    float* ones = scratch + wp.ones;
    wide_fill_ones_kernel<<<(B + 255) / 256, 256, 0, stream>>>(ones, B);
    const float one = 1.0f, zero = 0.0f;
    for (int k = 0; k < 2; ++k) {
        const WideBwdArena& wa = wp.arena[k];
        if (!wa.on) continue;
        const BlueprintArena& a = v.arenas[k];
        const int32_t M = a.max_width, H = a.hidden, cap = a.capacity;
        const int64_t S = a.stride, BM = int64_t(B) * M, BH = int64_t(B) * H;
        const MlpSlotOffsets o = mlp_slot_offsets(M, H);
        float *xs = scratch + wa.x, *gs = scratch + wa.g, *dxs = scratch + wa.dx;
        float *zs = scratch + wa.z, *das = scratch + wa.da, *gp = scratch + wa.gp;
        double* cr = reinterpret_cast<double*>(scratch + wa.cr);
        const float* vw = a.params + o.v;
        const float* uw = a.params + o.u;
        wide_bwd_gather_kernel<<<blocks, 256, 0, stream>>>(v, h, dy, ws, k, xs, gs, zs);
        // Column-major views: X_q [M, B], G_q [M, B], Z_q / DA_q [H, B]; V_q is [M, H] (ld M),
        // U_q is [H, M] (ld H).
        auto gemm = [&](cublasOperation_t ta, cublasOperation_t tb, int m, int n, int kk,
                        const float* A, int lda, long long sa, const float* Bm, int ldb,
                        long long sb, const float* beta, float* C, int ldc, long long sc) {
            return from_cublas(cublasSgemmStridedBatched(handle, ta, tb, m, n, kk, &one, A, lda, sa,
                                                         Bm, ldb, sb, beta, C, ldc, sc, cap));
        };
        const auto N = CUBLAS_OP_N, T = CUBLAS_OP_T;
        if ((e = gemm(T, N, H, B, M, vw, M, S, xs, M, BM, &one, zs, H, BH)) != cudaSuccess)
            return e;  // Z += Vᵀ-product
        if ((e = gemm(N, N, H, B, M, uw, H, S, gs, M, BM, &zero, das, H, BH)) != cudaSuccess)
            return e;  // DA = Uᵀg per row
        wide_bwd_act_kernel<<<blocks, detail::kActiveThreads, 0, stream>>>(v, ws, k, zs, das, gs,
                                                                           cr);
        if ((e = gemm(N, T, H, M, B, zs, H, BH, gs, M, BM, &zero, gp + o.u, H, S)) != cudaSuccess)
            return e;  // gU
        if ((e = gemm(N, T, M, H, B, xs, M, BM, das, H, BH, &zero, gp + o.v, M, S)) != cudaSuccess)
            return e;  // gV
        if ((e = gemm(N, N, H, 1, B, das, H, BH, ones, B, 0, &zero, gp + o.b1, H, S)) !=
            cudaSuccess)
            return e;  // gb1
        if ((e = gemm(N, N, M, 1, B, gs, M, BM, ones, B, 0, &zero, gp + o.b2, M, S)) != cudaSuccess)
            return e;  // gb2
        if ((e = gemm(N, N, M, B, H, vw, M, S, das, H, BH, &zero, dxs, M, BM)) != cudaSuccess)
            return e;  // dX
        const int32_t pieces = int32_t((S + kWideFinishPiece - 1) / kWideFinishPiece);
        wide_bwd_finish_kernel<<<blocks, detail::kActiveThreads, 0, stream>>>(v, tel, with_tel, ws,
                                                                              k, gp, cr, pieces);
        wide_bwd_dh_kernel<<<blocks, 256, 0, stream>>>(v, ws, k, gs, dxs, dh);
    }
    return cudaGetLastError();
}

__global__ void backward_reset_kernel(BackwardWorkspace ws) { *ws.active_count = 0; }

int sm_count() {
    static int n = [] {
        int dev = 0, v = 0;
        if (cudaGetDevice(&dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
            v = 132;
        return v;
    }();
    return n;
}

// Geometry of pass 2 for a view, shared by the launcher and the workspace sizing.
struct ActiveGeometry {
    int32_t max_w = 1, max_hidden = 0, max_stride = 0, row_tile = 1;
    int64_t capacity = 0;  // slots over all arenas
    bool any_arena = false, tiny = false;
    int64_t region_floats() const { return ((int64_t(max_stride) + 1) & ~int64_t(1)) + 2; }
    int32_t row_tiles(int32_t batch) const { return (batch + row_tile - 1) / row_tile; }
};
constexpr size_t kSmemBudget = 160 * 1024;
// Shared memory of pass 2's transposed chunk of V (none when it would take over a third).
size_t vt_bytes(int32_t max_w) {
    const size_t b = size_t(max_w) * (detail::kHiddenChunk + 1) * sizeof(float);
    return b <= kSmemBudget / 3 ? b : 0;
}

// Over the arenas the kernels do (every arena but those in `skip`, which the GEMMs do).
ActiveGeometry active_geometry(const SeedLayerView& view, uint32_t skip = 0) {
    ActiveGeometry g;
    for (int k = 0; k < kNumBlueprintKinds; ++k) {
        const BlueprintArena& a = view.arenas[k];
        if (a.params == nullptr || ((skip >> k) & 1u)) continue;
        g.any_arena = true;
        if (a.max_width > g.max_w) g.max_w = a.max_width;
        g.capacity += a.capacity;
        if (a.stride > g.max_stride) g.max_stride = a.stride;
        if (k < 2 && a.hidden > g.max_hidden) g.max_hidden = a.hidden;
    }
    g.tiny = skip == 0 && g.any_arena && g.max_w <= kTinyW && g.max_hidden <= kTinyH;
    g.row_tile = detail::active_row_tile(g.max_w, 3, view.batch, kSmemBudget - vt_bytes(g.max_w));
    return g;
}

}  // namespace

size_t seed_backward_workspace_bytes(int32_t num_seeds) {
    return base_bytes(num_seeds) + sizeof(float) * size_t(kDefaultPartialFloats);
}

size_t seed_backward_workspace_bytes(const SeedLayerView& view) {
    const WideBwdPlan wp = wide_bwd_plan(view);
    const ActiveGeometry g = active_geometry(view, wp.kinds);
    // One partial per (slot, row tile) at most.
    const int64_t items = g.capacity * g.row_tiles(view.batch);
    const int64_t need = g.tiny ? 0 : std::min(kMaxPartialFloats, items * g.region_floats());
    return base_bytes(view.num_seeds) + wp.bytes +
           sizeof(float) * size_t(std::max(kDefaultPartialFloats, need));
}

cudaError_t launch_seed_backward(const SeedLayerView& view, const float* h, const float* dy,
                                 float* dh, const SeedTelemetryAccum* tel, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
    if (view.batch <= 0 || view.width <= 0 || view.num_seeds <= 0) return cudaSuccess;
    if (workspace == nullptr || workspace_bytes < seed_backward_workspace_bytes(view.num_seeds))
        return cudaErrorInvalidValue;
    // Wide arenas take the GEMMs when the workspace has room for them and the default partials.
    WideBwdPlan wp = wide_bwd_plan(view);
    if (workspace_bytes < seed_backward_workspace_bytes(view.num_seeds) + wp.bytes) wp = {};
    const BackwardWorkspace ws = carve(workspace, workspace_bytes, view.num_seeds, wp.bytes);
    const bool with_tel = tel != nullptr;
    const SeedTelemetryAccum t = with_tel ? *tel : SeedTelemetryAccum{};

    const int32_t col_tiles = (view.width + detail::kStreamThreads - 1) / detail::kStreamThreads;
    int32_t splits = detail::stream_row_splits(col_tiles, view.batch, sm_count());
    const int32_t rows_per_block = (view.batch + splits - 1) / splits;
    splits = (view.batch + rows_per_block - 1) / rows_per_block;
    const ActiveGeometry g = active_geometry(view, wp.kinds);
    backward_stream_kernel<<<dim3(col_tiles, splits), detail::kStreamThreads, 0, stream>>>(
        view, dy, dh, t, with_tel, ws, rows_per_block, g.tiny ? kTinyW : 0);
    if (g.tiny) {
        // Row stripes per seed: enough lanes to fill the GPU, at least 32 rows per stripe.
        int32_t stripes = 1;
        while (stripes < kTinyWarps && int64_t(view.num_seeds) * stripes < sm_count() * 2048LL &&
               view.batch >= 64 * stripes)
            stripes *= 2;
        const int64_t seeds_per_block = 32 * (kTinyWarps / stripes);
        backward_tiny_kernel<<<int32_t((view.num_seeds + seeds_per_block - 1) / seeds_per_block),
                               detail::kActiveThreads, 0, stream>>>(view, h, dy, dh, t, with_tel,
                                                                    stripes);
    } else if (g.any_arena) {
        const size_t smem =
            size_t(g.row_tile) * (3 * size_t(g.max_w) + 2 * detail::kHiddenChunk) * 4 +
            vt_bytes(g.max_w);
        if (smem > 48 * 1024) {
            const cudaError_t e = cudaFuncSetAttribute(
                backward_active_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
            if (e != cudaSuccess) return e;
        }
        const int32_t blocks = sm_count() * 4;
        backward_active_kernel<<<blocks, detail::kActiveThreads, smem, stream>>>(
            view, h, dy, dh, t, with_tel, ws, g.row_tile, g.region_floats(), vt_bytes(g.max_w) > 0,
            wp.kinds);
        backward_reduce_kernel<<<blocks, detail::kActiveThreads, 0, stream>>>(
            view, t, with_tel, ws, g.row_tiles(view.batch), g.region_floats(), wp.kinds);
    }
    if (wp.kinds != 0) {
        float* scratch =
            reinterpret_cast<float*>(static_cast<char*>(workspace) + base_bytes(view.num_seeds));
        const cudaError_t e = launch_wide_backward(view, wp, h, dy, dh, t, with_tel, ws, scratch,
                                                   sm_count() * 8, stream);
        if (e != cudaSuccess) return e;
    }
    backward_reset_kernel<<<1, 1, 0, stream>>>(ws);
    return cudaGetLastError();
}

}  // namespace esper::kernels
