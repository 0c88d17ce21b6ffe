// Fused seed-layer backward. Pass 1 streams dy once: dh = dy for every seed whose input gradient
// does not go through its blueprint, Σdy² per seed into the telemetry, and the list of seeds that
// need their blueprint (input grads, parameter grads or a contribution term). Pass 2 recomputes
// r for those seeds without float atomics, so blueprint gradients and contributions are the same
// bits on every run: tiny blueprints (the streaming pass's inline kind) in blocks that own 32
// seeds and all rows; others per (seed, row group) item, each group summing its row tiles in a
// fixed order into the arena (one group) or a workspace partial that pass 3 adds up in order.
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

BackwardWorkspace carve(void* ws, size_t bytes, int32_t num_seeds) {
    char* p = static_cast<char*>(ws);
    BackwardWorkspace w;
    w.active_count = reinterpret_cast<int32_t*>(p);
    w.active_list = reinterpret_cast<int32_t*>(p + 256);
    w.partials = reinterpret_cast<float*>(p + base_bytes(num_seeds));
    w.partial_floats = int64_t((bytes - base_bytes(num_seeds)) / sizeof(float));
    return w;
}

// Row groups per listed seed: enough (seed, group) items for every block of pass 2, no more than
// there are row tiles, and no more than the workspace partials hold. A function of the number of
// listed seeds only (not of their order), so passes 2 and 3 agree and every run sums alike.
__device__ inline int32_t row_groups(int32_t n_listed, int32_t row_tiles, int64_t region_floats,
                                     int64_t partial_floats, int32_t blocks) {
    if (n_listed <= 0) return 1;
    int64_t g = (int64_t(blocks) + n_listed - 1) / n_listed;
    if (g > row_tiles) g = row_tiles;
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
                           int32_t rows_per_block) {
    const int32_t c = blockIdx.x * detail::kStreamThreads + threadIdx.x;
    const bool valid = c < v.width;
    int32_t s = -1;
    bool through_blueprint = false;
    if (valid) {
        s = detail::seed_of_column(v.chunk_offset, v.num_seeds, v.width, c);
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
                           int32_t row_tile, int64_t region_floats) {
    extern __shared__ float smem[];
    __shared__ double red[detail::kActiveThreads / 32];
    constexpr int HC = detail::kHiddenChunk;
    const int32_t row_tiles = (v.batch + row_tile - 1) / row_tile;
    const int32_t n_listed = *ws.active_count;
    const int32_t groups =
        row_groups(n_listed, row_tiles, region_floats, ws.partial_floats, int32_t(gridDim.x));
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
        const float* p = bp.params;
        const int32_t M = bp.max_width;
        float* region =
            groups > 1 ? ws.partials + (int64_t(pos) * groups + grp) * region_floats : nullptr;
        float* gd = groups > 1 ? region : bp.grads;  // this item's gradients go here (+=)
        if (groups > 1 && pl.param_grads) {
            for (int32_t k = threadIdx.x; k < bp.stride; k += blockDim.x) region[k] = 0.0f;
            __syncthreads();
        }
        double contrib_sum = 0.0;  // Σ g·r over this thread's share of the group
        for (int32_t tile = t0; tile < t1; ++tile) {
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
                        gd[i] += pl.g_scale * gs;
                        gd[M + i] += pl.g_scale * gb;
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
                        gd[o.b2 + i] += pl.g_scale * t;
                    }
                for (int32_t hc = 0; hc < H; hc += HC) {
                    const int32_t hn = min(HC, H - hc);
                    for (int32_t idx = threadIdx.x; idx < rt * HC; idx += blockDim.x) {
                        const int32_t r = idx / HC, jj = idx - r * HC;
                        float av = 0.0f, dzv = 0.0f;
                        if (jj < hn) {
                            const int32_t j = hc + jj;
                            const float* vrow = p + o.v + int64_t(j) * M;
                            const float* xr = xs + r * w;
                            const float* gr = gs + r * w;
                            float z = p[o.b1 + j], da = 0.0f;
                            for (int32_t i = 0; i < w; ++i) {
                                z = fmaf(vrow[i], xr[i], z);
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
                            gd[o.u + int64_t(i) * H + hc + jj] += pl.g_scale * t;
                        }
                        for (int32_t idx = threadIdx.x; idx < hn * w; idx += blockDim.x) {
                            const int32_t jj = idx / w, i = idx - jj * w;
                            float t = 0.0f;
                            for (int32_t r = 0; r < rt; ++r)
                                t = fmaf(dz[r * HC + jj], xs[r * w + i], t);
                            gd[o.v + int64_t(hc + jj) * M + i] += pl.g_scale * t;
                        }
                        for (int32_t jj = threadIdx.x; jj < hn; jj += blockDim.x) {
                            float t = 0.0f;
                            for (int32_t r = 0; r < rt; ++r) t += dz[r * HC + jj];
                            gd[o.b1 + hc + jj] += pl.g_scale * t;
                        }
                    }
                    if (pl.a_in != 0.0f)
                        for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                            const int32_t r = idx / w, i = idx - r * w;
                            float t = 0.0f;
                            for (int32_t jj = 0; jj < hn; ++jj)
                                t = fmaf(p[o.v + int64_t(hc + jj) * M + i], dz[r * HC + jj], t);
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
                                       int64_t region_floats, int32_t active_blocks) {
    const int32_t n_listed = *ws.active_count;
    const int32_t groups =
        row_groups(n_listed, row_tiles, region_floats, ws.partial_floats, active_blocks);
    if (groups == 1) return;
    for (int32_t pos = blockIdx.x; pos < n_listed; pos += gridDim.x) {
        const int32_t s = ws.active_list[pos];
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        const float* base = ws.partials + int64_t(pos) * groups * region_floats;
        if (pl.param_grads)
            for (int32_t k = threadIdx.x; k < bp.stride; k += blockDim.x) {
                float t = 0.0f;
                for (int32_t g = 0; g < groups; ++g) t += base[g * region_floats + k];
                bp.grads[k] += t;
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
// a block owns 32 consecutive seeds (lane l: seed 32·blockIdx.x + l) and all rows (warp k: rows
// k, k + 8, ...). Each lane keeps its seed's gradients in registers; the 8 warps' sums are added
// in warp order and written once, so no row split, no atomics, no workspace.
constexpr int kTinyW = 2;
constexpr int kTinyH = 4;
constexpr int kTinyWarps = detail::kActiveThreads / 32;
constexpr int kTinyGrads = 2 * kTinyH * kTinyW + kTinyH + kTinyW;  // gV, gU, gb1, gb2
constexpr int kTinyRows = 4;                                       // rows in flight per lane

__global__ void __launch_bounds__(detail::kActiveThreads)
    backward_tiny_kernel(SeedLayerView v, const float* __restrict__ h, const float* __restrict__ dy,
                         float* __restrict__ dh, SeedTelemetryAccum tel, bool with_tel) {
    __shared__ float red[kTinyWarps][kTinyGrads][32];
    __shared__ double red_c[kTinyWarps][32];
    const int32_t lane = int32_t(threadIdx.x & 31u), warp = int32_t(threadIdx.x >> 5);
    const int32_t s = int32_t(blockIdx.x) * 32 + lane;
    // gV[j][i] at j·kTinyW + i, gU[i][j] at 8 + i·kTinyH + j (scale_shift: gU[i][0] = d scale),
    // gb1[j] at 16 + j, gb2[i] at 20 + i (scale_shift: d shift).
    float acc[kTinyGrads];
#pragma unroll
    for (int k = 0; k < kTinyGrads; ++k) acc[k] = 0.0f;
    double contrib = 0.0;
    if (s < v.num_seeds) {
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        if (pl.needs_pass2) {
            const int32_t c0 = v.chunk_offset[s];
            const int32_t w = v.chunk_offset[s + 1] - c0;
            const float* p = bp.params;
            const int32_t M = bp.max_width;
            const bool ss = bp.kind == BlueprintKind::kScaleShift;
            const bool relu = bp.kind == BlueprintKind::kResidualMlp;
            const int32_t H = ss ? 0 : bp.hidden;
            float V[kTinyH][kTinyW], b1[kTinyH], U[kTinyW][kTinyH], b2[kTinyW];
#pragma unroll
            for (int i = 0; i < kTinyW; ++i) {
                b2[i] = 0.0f;
#pragma unroll
                for (int j = 0; j < kTinyH; ++j) U[i][j] = V[j][i] = 0.0f;
            }
#pragma unroll
            for (int j = 0; j < kTinyH; ++j) b1[j] = 0.0f;
            if (ss) {
#pragma unroll
                for (int i = 0; i < kTinyW; ++i)
                    if (i < w) {
                        U[i][0] = p[i];
                        b2[i] = p[M + i];
                    }
            } else {
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
            const bool write_dh = pl.a_in != 0.0f;
            for (int32_t rb = warp; rb < v.batch; rb += kTinyWarps * kTinyRows) {
                float x[kTinyRows][kTinyW], g[kTinyRows][kTinyW];
#pragma unroll
                for (int q = 0; q < kTinyRows; ++q) {
                    const int32_t r = rb + q * kTinyWarps;
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i) {
                        const bool in = r < v.batch && i < w;
                        const int64_t off = int64_t(r) * ld + c0 + i;
                        x[q][i] = in ? __ldg(h + off) : 0.0f;
                        g[q][i] = in ? __ldg(dy + off) : 0.0f;
                    }
                }
#pragma unroll
                for (int q = 0; q < kTinyRows; ++q) {
                    float dx[kTinyW], rr[kTinyW];
                    if (ss) {
#pragma unroll
                        for (int i = 0; i < kTinyW; ++i) {
                            rr[i] = fmaf(U[i][0], x[q][i], b2[i]);
                            acc[8 + i * kTinyH] = fmaf(g[q][i], x[q][i], acc[8 + i * kTinyH]);
                            acc[20 + i] += g[q][i];
                            dx[i] = U[i][0] * g[q][i];
                        }
                    } else {
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
                                acc[8 + i * kTinyH + j] =
                                    fmaf(g[q][i], a[j], acc[8 + i * kTinyH + j]);
                                acc[j * kTinyW + i] = fmaf(dz[j], x[q][i], acc[j * kTinyW + i]);
                            }
                            rr[i] = o;
                            dx[i] = t;
                            acc[20 + i] += g[q][i];
                        }
#pragma unroll
                        for (int j = 0; j < kTinyH; ++j) acc[16 + j] += dz[j];
                    }
                    float c = 0.0f;
#pragma unroll
                    for (int i = 0; i < kTinyW; ++i) c = fmaf(g[q][i], rr[i], c);
                    contrib += double(c);
                    const int32_t r = rb + q * kTinyWarps;
                    if (write_dh && r < v.batch)
#pragma unroll
                        for (int i = 0; i < kTinyW; ++i)
                            if (i < w) dh[int64_t(r) * ld + c0 + i] = fmaf(pl.a_in, dx[i], g[q][i]);
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < kTinyGrads; ++k) red[warp][k][lane] = acc[k];
    red_c[warp][lane] = contrib;
    __syncthreads();
    for (int32_t idx = threadIdx.x; idx < (kTinyGrads + 1) * 32; idx += blockDim.x) {
        const int32_t k = idx >> 5, l = idx & 31;
        const int32_t seed = int32_t(blockIdx.x) * 32 + l;
        if (seed >= v.num_seeds) continue;
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, seed, with_tel, &bp);
        if (!pl.needs_pass2) continue;
        if (k == kTinyGrads) {
            if (!with_tel || pl.a_fwd == 0.0f) continue;
            double t = 0.0;
            for (int q = 0; q < kTinyWarps; ++q) t += red_c[q][l];
            tel.contribution[seed] += -double(pl.a_fwd) * t;
            continue;
        }
        if (!pl.param_grads) continue;
        const int32_t w = v.chunk_offset[seed + 1] - v.chunk_offset[seed];
        const int32_t M = bp.max_width;
        const bool ss = bp.kind == BlueprintKind::kScaleShift;
        const int32_t H = ss ? 0 : bp.hidden;
        const MlpSlotOffsets o = mlp_slot_offsets(M, ss ? 0 : bp.hidden);
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
        if (dst < 0) continue;
        float t = 0.0f;
        for (int q = 0; q < kTinyWarps; ++q) t += red[q][k][l];
        bp.grads[dst] += pl.g_scale * t;
    }
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

ActiveGeometry active_geometry(const SeedLayerView& view) {
    ActiveGeometry g;
    g.max_w = detail::view_max_width(view);
    for (int k = 0; k < kNumBlueprintKinds; ++k) {
        const BlueprintArena& a = view.arenas[k];
        if (a.params == nullptr) continue;
        g.any_arena = true;
        g.capacity += a.capacity;
        if (a.stride > g.max_stride) g.max_stride = a.stride;
        if (k < 2 && a.hidden > g.max_hidden) g.max_hidden = a.hidden;
    }
    g.tiny = g.any_arena && g.max_w <= kTinyW && g.max_hidden <= kTinyH;
    g.row_tile = detail::active_row_tile(g.max_w, 3, view.batch, kSmemBudget);
    return g;
}

}  // namespace

size_t seed_backward_workspace_bytes(int32_t num_seeds) {
    return base_bytes(num_seeds) + sizeof(float) * size_t(kDefaultPartialFloats);
}

size_t seed_backward_workspace_bytes(const SeedLayerView& view) {
    const ActiveGeometry g = active_geometry(view);
    // Row groups never give more items than blocks + listed seeds, nor more than row tiles.
    const int64_t items = std::min<int64_t>(int64_t(sm_count()) * 4 + g.capacity,
                                            g.capacity * g.row_tiles(view.batch));
    const int64_t need = g.tiny ? 0 : std::min(kMaxPartialFloats, items * g.region_floats());
    return base_bytes(view.num_seeds) +
           sizeof(float) * size_t(std::max(kDefaultPartialFloats, need));
}

cudaError_t launch_seed_backward(const SeedLayerView& view, const float* h, const float* dy,
                                 float* dh, const SeedTelemetryAccum* tel, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
    if (view.batch <= 0 || view.width <= 0 || view.num_seeds <= 0) return cudaSuccess;
    if (workspace == nullptr || workspace_bytes < seed_backward_workspace_bytes(view.num_seeds))
        return cudaErrorInvalidValue;
    const BackwardWorkspace ws = carve(workspace, workspace_bytes, view.num_seeds);
    const bool with_tel = tel != nullptr;
    const SeedTelemetryAccum t = with_tel ? *tel : SeedTelemetryAccum{};

    const int32_t col_tiles = (view.width + detail::kStreamThreads - 1) / detail::kStreamThreads;
    int32_t splits = detail::stream_row_splits(col_tiles, view.batch, sm_count());
    const int32_t rows_per_block = (view.batch + splits - 1) / splits;
    splits = (view.batch + rows_per_block - 1) / rows_per_block;
    backward_stream_kernel<<<dim3(col_tiles, splits), detail::kStreamThreads, 0, stream>>>(
        view, dy, dh, t, with_tel, ws, rows_per_block);

    const ActiveGeometry g = active_geometry(view);
    if (g.tiny) {
        backward_tiny_kernel<<<(view.num_seeds + 31) / 32, detail::kActiveThreads, 0, stream>>>(
            view, h, dy, dh, t, with_tel);
    } else if (g.any_arena) {
        const size_t smem =
            size_t(g.row_tile) * (3 * size_t(g.max_w) + 2 * detail::kHiddenChunk) * 4;
        if (smem > 48 * 1024) {
            const cudaError_t e = cudaFuncSetAttribute(
                backward_active_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
            if (e != cudaSuccess) return e;
        }
        const int32_t blocks = sm_count() * 4;
        backward_active_kernel<<<blocks, detail::kActiveThreads, smem, stream>>>(
            view, h, dy, dh, t, with_tel, ws, g.row_tile, g.region_floats());
        backward_reduce_kernel<<<blocks, detail::kActiveThreads, 0, stream>>>(
            view, t, with_tel, ws, g.row_tiles(view.batch), g.region_floats(), blocks);
    }
    backward_reset_kernel<<<1, 1, 0, stream>>>(ws);
    return cudaGetLastError();
}

}  // namespace esper::kernels
