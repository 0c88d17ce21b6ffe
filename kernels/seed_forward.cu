// Fused seed-layer forward. Pass 1 streams every column of h once: copies it to y unless the
// seed blends, accumulates shifted per-seed sums for the telemetry (shift = the accumulated mean,
// so the variance does not cancel) and lists the blending seeds; a seed whose columns sit in one
// warp of a block that covers all rows is Chan-merged right there. Pass 2 evaluates blueprints for
// the listed seeds only (persistent blocks over (seed, row tile) items; wide arenas as cuBLAS
// strided-batched GEMMs); pass 3 Chan-merges the seeds that were reduced through the workspace
// and resets the counters.
#include "kernels/seed_common.cuh"
#include "kernels/seed_forward.h"

namespace esper::kernels {

namespace {

using detail::DeviceBlueprint;

struct ForwardWorkspace {
    double* stats;  // [S][3]: Σ(x−K), Σ(x−K)², dead count (seeds reduced across blocks/warps)
    int32_t* counts;        // [0]: active seeds, [1]: pending seeds, [2]: finalize blocks done
    int32_t* active_list;   // [S] seeds that blend
    int32_t* pending_list;  // [S] seeds whose statistics went through `stats`
};

size_t align_up(size_t n) { return (n + 255) & ~size_t(255); }

ForwardWorkspace carve(void* ws, int32_t s) {
    char* p = static_cast<char*>(ws);
    ForwardWorkspace w;
    w.stats = reinterpret_cast<double*>(p);
    p += align_up(sizeof(double) * 3 * size_t(s));
    w.counts = reinterpret_cast<int32_t*>(p);
    p += 256;
    w.active_list = reinterpret_cast<int32_t*>(p);
    p += align_up(sizeof(int32_t) * size_t(s));
    w.pending_list = reinterpret_cast<int32_t*>(p);
    return w;
}

__device__ inline bool seed_blends(const SeedLayerView& v, int32_t s, float* a_out) {
    const auto st = static_cast<SeedStage>(v.stage[s]);
    const float a = stage_forward_alpha(st, v.alpha[s]);
    *a_out = a;
    if (!stage_runs_blueprint(st) || a == 0.0f) return false;
    return detail::blueprint_of(v, s).params != nullptr;
}

__device__ inline float stats_shift(const SeedTelemetryAccum& tel, int32_t s) {
    return tel.count[s] > 0.0 ? static_cast<float>(tel.mean[s]) : 0.0f;
}

// Fast path for blueprints whose weights fit in shared memory next to a 64-row tile: weights are
// staged transposed (conflict-free broadcasts), each thread keeps 8 hidden units or 4 outputs of
// one row in registers, and y is written back through shared memory so stores stay coalesced.
constexpr int kFastRows = 64;

__host__ __device__ inline int32_t odd_stride(int32_t n) { return (n + 1) | 1; }

__host__ __device__ inline size_t fast_smem_floats(int32_t w, int32_t hidden) {
    return size_t(2) * w * hidden + hidden + w + size_t(kFastRows) * odd_stride(w) +
           size_t(kFastRows) * odd_stride(hidden);
}

__global__ void __launch_bounds__(detail::kActiveThreads)
    forward_active_smem_kernel(SeedLayerView v, const float* __restrict__ h, float* __restrict__ y,
                               ForwardWorkspace ws, uint32_t skip_kinds) {
    extern __shared__ float smem[];
    const int32_t row_tiles = (v.batch + kFastRows - 1) / kFastRows;
    const int64_t n_items = int64_t(ws.counts[0]) * row_tiles;
    const int64_t ld = v.width;
    const int32_t tid = threadIdx.x;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / row_tiles];
        const int32_t r0 = int32_t(item % row_tiles) * kFastRows;
        const int32_t rt = min(kFastRows, v.batch - r0);
        const int32_t c0 = v.chunk_offset[s];
        const int32_t w = v.chunk_offset[s + 1] - c0;
        float a;
        seed_blends(v, s, &a);
        const DeviceBlueprint bp = detail::blueprint_of(v, s);
        const float* p = bp.params;
        if ((skip_kinds >> unsigned(bp.kind)) & 1u) continue;  // done by the batched GEMMs
        if (bp.kind == BlueprintKind::kScaleShift) {
            for (int32_t idx = tid; idx < rt * w; idx += blockDim.x) {
                const int32_t r = idx / w, i = idx - r * w;
                const int64_t off = int64_t(r0 + r) * ld + c0 + i;
                const float x = h[off];
                y[off] = x + a * fmaf(p[i], x, p[bp.max_width + i]);
            }
            continue;
        }
        const MlpSlotOffsets o = mlp_slot_offsets(bp.max_width, bp.hidden);
        const bool relu = bp.kind == BlueprintKind::kResidualMlp;
        const int32_t H = bp.hidden, M = bp.max_width;
        const int32_t xst = odd_stride(w), hst = odd_stride(H);
        float* vt = smem;                   // [w][H]
        float* ut = vt + w * H;             // [H][w]
        float* b1 = ut + H * w;             // [H]
        float* b2 = b1 + H;                 // [w]
        float* xs = b2 + w;                 // [64][xst]
        float* hid = xs + kFastRows * xst;  // [64][hst]
        for (int32_t idx = tid; idx < H * w; idx += blockDim.x) {
            const int32_t j = idx / w, i = idx - j * w;
            vt[i * H + j] = p[o.v + int64_t(j) * M + i];
        }
        for (int32_t idx = tid; idx < w * H; idx += blockDim.x) {
            const int32_t i = idx / H, j = idx - i * H;
            ut[j * w + i] = p[o.u + int64_t(i) * H + j];
        }
        for (int32_t j = tid; j < H; j += blockDim.x) b1[j] = p[o.b1 + j];
        for (int32_t i = tid; i < w; i += blockDim.x) b2[i] = p[o.b2 + i];
        for (int32_t idx = tid; idx < rt * w; idx += blockDim.x) {
            const int32_t r = idx / w, i = idx - r * w;
            xs[r * xst + i] = h[int64_t(r0 + r) * ld + c0 + i];
        }
        __syncthreads();
        const int32_t r = tid & (kFastRows - 1);
        const int32_t g = tid / kFastRows;  // 0..3
        if (r < rt) {
            const float* xr = xs + r * xst;
            for (int32_t jb = g * 8; jb < H; jb += 32) {
                float z[8];
#pragma unroll
                for (int k = 0; k < 8; ++k) z[k] = jb + k < H ? b1[jb + k] : 0.0f;
                if (jb + 8 <= H) {
                    for (int32_t i = 0; i < w; ++i) {
                        const float x = xr[i];
                        const float* vi = vt + i * H + jb;
#pragma unroll
                        for (int k = 0; k < 8; ++k) z[k] = fmaf(vi[k], x, z[k]);
                    }
                } else {
                    for (int32_t i = 0; i < w; ++i) {
                        const float x = xr[i];
                        const float* vi = vt + i * H + jb;
                        for (int k = 0; k < 8 && jb + k < H; ++k) z[k] = fmaf(vi[k], x, z[k]);
                    }
                }
                for (int k = 0; k < 8 && jb + k < H; ++k)
                    hid[r * hst + jb + k] = relu ? fmaxf(z[k], 0.0f) : z[k];
            }
        }
        __syncthreads();
        if (r < rt) {
            const float* hr = hid + r * hst;
            float* xr = xs + r * xst;
            for (int32_t ib = g * 4; ib < w; ib += 16) {
                float acc[4];
#pragma unroll
                for (int k = 0; k < 4; ++k) acc[k] = ib + k < w ? b2[ib + k] : 0.0f;
                if (ib + 4 <= w) {
                    for (int32_t j = 0; j < H; ++j) {
                        const float hv = hr[j];
                        const float* uj = ut + j * w + ib;
#pragma unroll
                        for (int k = 0; k < 4; ++k) acc[k] = fmaf(uj[k], hv, acc[k]);
                    }
                } else {
                    for (int32_t j = 0; j < H; ++j) {
                        const float hv = hr[j];
                        const float* uj = ut + j * w + ib;
                        for (int k = 0; k < 4 && ib + k < w; ++k) acc[k] = fmaf(uj[k], hv, acc[k]);
                    }
                }
                for (int k = 0; k < 4 && ib + k < w; ++k) xr[ib + k] = xr[ib + k] + a * acc[k];
            }
        }
        __syncthreads();
        for (int32_t idx = tid; idx < rt * w; idx += blockDim.x) {
            const int32_t rr = idx / w, i = idx - rr * w;
            y[int64_t(r0 + rr) * ld + c0 + i] = xs[rr * xst + i];
        }
        __syncthreads();
    }
}

// Chan merge of one forward's shifted sums (n_b samples) into the accumulators of seed s.
__device__ inline void merge_stats(const SeedTelemetryAccum& tel, int32_t s, double n_b, double s1,
                                   double s2, double dead) {
    if (n_b == 0.0) return;
    const double shift = stats_shift(tel, s);
    const double mean_b = shift + s1 / n_b;
    double m2_b = s2 - s1 * s1 / n_b;
    if (m2_b < 0.0) m2_b = 0.0;
    const double n_a = tel.count[s];
    const double n = n_a + n_b;
    const double delta = mean_b - tel.mean[s];
    tel.mean[s] += delta * (n_b / n);
    tel.m2[s] += m2_b + delta * delta * (n_a * n_b / n);
    tel.count[s] = n;
    tel.dead[s] += dead;
}

// Blueprints small enough to evaluate inside the streaming pass (kInline): a seed of width
// <= kInlineWidth and hidden <= kInlineHidden whose columns sit in one warp. Each of its lanes
// gathers the seed's row with shuffles and evaluates its own output from registers.
constexpr int kInlineWidth = 2;
constexpr int kInlineHidden = 4;
// Rows each streaming thread keeps in flight: at 1 M seeds a thread sees only 64 rows, so the
// loads of one iteration are what hides the memory latency.
constexpr int kRowUnroll = 8;

struct InlineBlueprint {
    float v[kInlineHidden][kInlineWidth];  // V (scale_shift: unused)
    float b1[kInlineHidden];
    float u[kInlineHidden];  // this lane's row of U (scale_shift: u[0] = scale)
    float b2;                // this lane's b2 (scale_shift: shift)
    int32_t w, hidden, lane0, me;
    bool relu, scale_shift;
};

__device__ inline void load_inline(const SeedLayerView& v, int32_t s, int32_t c, int32_t lane0,
                                   InlineBlueprint& ib) {
    const DeviceBlueprint bp = detail::blueprint_of(v, s);
    const float* p = bp.params;
    const int32_t k0 = v.chunk_offset[s];
    ib.w = v.chunk_offset[s + 1] - k0;
    ib.me = c - k0;
    ib.lane0 = lane0;
    ib.scale_shift = bp.kind == BlueprintKind::kScaleShift;
    ib.relu = bp.kind == BlueprintKind::kResidualMlp;
    ib.hidden = ib.scale_shift ? 0 : bp.hidden;
    if (ib.scale_shift) {
        ib.u[0] = p[ib.me];
        ib.b2 = p[bp.max_width + ib.me];
        return;
    }
    const MlpSlotOffsets o = mlp_slot_offsets(bp.max_width, bp.hidden);
#pragma unroll
    for (int j = 0; j < kInlineHidden; ++j) {
        const bool jv = j < ib.hidden;
        ib.b1[j] = jv ? p[o.b1 + j] : 0.0f;
        ib.u[j] = jv ? p[o.u + int64_t(ib.me) * bp.hidden + j] : 0.0f;
#pragma unroll
        for (int i = 0; i < kInlineWidth; ++i)
            ib.v[j][i] = (jv && i < ib.w) ? p[o.v + int64_t(j) * bp.max_width + i] : 0.0f;
    }
    ib.b2 = p[o.b2 + ib.me];
}

// Every lane of the warp must call this (shuffles); returns r(x)[me] on inline lanes.
__device__ inline float eval_inline(const InlineBlueprint& ib, float x, bool active) {
    float xs[kInlineWidth];
#pragma unroll
    for (int i = 0; i < kInlineWidth; ++i) xs[i] = __shfl_sync(0xffffffffu, x, (ib.lane0 + i) & 31);
    if (!active) return 0.0f;
    if (ib.scale_shift) return fmaf(ib.u[0], x, ib.b2);
#pragma unroll
    for (int i = 0; i < kInlineWidth; ++i)
        if (i >= ib.w) xs[i] = 0.0f;  // neighbours' values never reach this seed (0·inf = NaN)
    float out = ib.b2;
#pragma unroll
    for (int j = 0; j < kInlineHidden; ++j) {
        float z = ib.b1[j];
#pragma unroll
        for (int i = 0; i < kInlineWidth; ++i) z = fmaf(ib.v[j][i], xs[i], z);  // v = 0 past w
        if (ib.relu) z = fmaxf(z, 0.0f);
        out = fmaf(ib.u[j], z, out);  // u = 0 past hidden
    }
    return out;
}

template <bool kInline>
__global__ void __launch_bounds__(detail::kStreamThreads)
    forward_stream_kernel(SeedLayerView v, const float* __restrict__ h, float* __restrict__ y,
                          SeedTelemetryAccum tel, bool with_stats, ForwardWorkspace ws,
                          int32_t rows_per_block) {
    const int32_t c = blockIdx.x * detail::kStreamThreads + threadIdx.x;
    const int32_t lane = int32_t(threadIdx.x & 31u);
    const int32_t warp_c0 = c - lane;
    const bool valid = c < v.width;
    const int32_t r0 = blockIdx.y * rows_per_block;
    const int32_t r1 = min(v.batch, r0 + rows_per_block);
    const int64_t ld = v.width;
    const int64_t cc = valid ? c : 0;
    const float* hp = h + int64_t(r0) * ld + cc;
    float* yp = y + int64_t(r0) * ld + cc;
    // The first rows' loads go out before the seed lookup and the table reads, which they do not
    // depend on (at 1 M seeds a thread streams only 64 rows: that latency is not negligible).
    const bool prefetched = r0 + kRowUnroll <= r1;
    float x0[kRowUnroll];
#pragma unroll
    for (int k = 0; k < kRowUnroll; ++k) x0[k] = prefetched && valid ? __ldcs(hp + k * ld) : 0.0f;
    int32_t s = -1;
    bool blend = false;
    float shift = 0.0f, a = 0.0f;
    bool inline_lane = false;
    InlineBlueprint ib;
    if (valid) {
        s = detail::seed_of_column(v.chunk_offset, v.num_seeds, v.width, c);
        blend = seed_blends(v, s, &a);
        const int32_t k0 = v.chunk_offset[s], k1 = v.chunk_offset[s + 1];
        if constexpr (kInline) {
            inline_lane = blend && k0 >= warp_c0 && k1 <= warp_c0 + 32 && k1 - k0 <= kInlineWidth;
            if (inline_lane) load_inline(v, s, c, k0 - warp_c0, ib);
        }
        if (blend && !inline_lane && blockIdx.y == 0 && c == k0)
            ws.active_list[atomicAdd(ws.counts, 1)] = s;
        if (with_stats) shift = stats_shift(tel, s);
    }
    if constexpr (kInline) {
        if (!inline_lane) ib.lane0 = lane;
    }
    bool warp_inline = false;
    if constexpr (kInline) warp_inline = __any_sync(0xffffffffu, inline_lane);
    const bool write_plain = valid && !blend;
    float sum = 0.0f, sq = 0.0f, dead = 0.0f;
    int32_t r = r0;
    for (; r + kRowUnroll <= r1; r += kRowUnroll) {
        float x[kRowUnroll];
        if (r == r0) {  // the prefetched rows
#pragma unroll
            for (int k = 0; k < kRowUnroll; ++k) x[k] = x0[k];
        } else {
#pragma unroll
            for (int k = 0; k < kRowUnroll; ++k) x[k] = valid ? __ldcs(hp + k * ld) : 0.0f;
        }
        if (write_plain)
#pragma unroll
            for (int k = 0; k < kRowUnroll; ++k) __stcs(yp + k * ld, x[k]);
        if constexpr (kInline) {
            if (warp_inline)
#pragma unroll
                for (int k = 0; k < kRowUnroll; ++k) {
                    const float out = eval_inline(ib, x[k], inline_lane);
                    if (inline_lane) __stcs(yp + k * ld, x[k] + a * out);
                }
        }
        if (valid)
#pragma unroll
            for (int k = 0; k < kRowUnroll; ++k) {
                const float d = x[k] - shift;
                sum += d;
                sq = fmaf(d, d, sq);
                dead += fabsf(x[k]) < kDeadThreshold ? 1.0f : 0.0f;
            }
        hp += kRowUnroll * ld;
        yp += kRowUnroll * ld;
    }
    for (; r < r1; ++r) {
        const float x = valid ? __ldcs(hp) : 0.0f;
        if (write_plain) __stcs(yp, x);
        if constexpr (kInline) {
            if (warp_inline) {
                const float out = eval_inline(ib, x, inline_lane);
                if (inline_lane) __stcs(yp, x + a * out);
            }
        }
        if (valid) {
            const float d = x - shift;
            sum += d;
            sq = fmaf(d, d, sq);
            dead += fabsf(x) < kDeadThreshold ? 1.0f : 0.0f;
        }
        hp += ld;
        yp += ld;
    }
    if (!with_stats) return;
    double ds = sum, dq = sq, dd = dead;
    const int32_t key = s;
    // Chunks of one column (every seed at >= 64 k seeds) need no cross-lane sum at all.
    const int32_t prev_key = __shfl_up_sync(0xffffffffu, key, 1);
    bool tail = true;
    if (!__all_sync(0xffffffffu, lane == 0 || prev_key != key)) {
        tail = detail::segmented_warp_sum(key, ds);
        detail::segmented_warp_sum(key, dq);
        detail::segmented_warp_sum(key, dd);
    }
    if (!tail || key < 0) return;
    // This lane holds the warp's total for `key`. When one block covers every row and the
    // seed's chunk lies inside this warp's 32 columns, that total is the seed's: merge now.
    const int32_t k0 = v.chunk_offset[key], k1 = v.chunk_offset[key + 1];
    if (gridDim.y == 1 && k0 >= warp_c0 && k1 <= warp_c0 + 32) {
        merge_stats(tel, key, double(v.batch) * double(k1 - k0), ds, dq, dd);
        return;
    }
    atomicAdd(ws.stats + 3 * int64_t(key), ds);
    atomicAdd(ws.stats + 3 * int64_t(key) + 1, dq);
    if (dd != 0.0) atomicAdd(ws.stats + 3 * int64_t(key) + 2, dd);
    if (blockIdx.y == 0 && k0 >= warp_c0) ws.pending_list[atomicAdd(ws.counts + 1, 1)] = key;
}

__global__ void __launch_bounds__(detail::kActiveThreads)
    forward_active_kernel(SeedLayerView v, const float* __restrict__ h, float* __restrict__ y,
                          ForwardWorkspace ws, int32_t row_tile, uint32_t skip_kinds) {
    extern __shared__ float smem[];
    const int32_t row_tiles = (v.batch + row_tile - 1) / row_tile;
    const int64_t n_items = int64_t(ws.counts[0]) * row_tiles;
    const int64_t ld = v.width;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / row_tiles];
        const int32_t r0 = int32_t(item % row_tiles) * row_tile;
        const int32_t rt = min(row_tile, v.batch - r0);
        const int32_t c0 = v.chunk_offset[s];
        const int32_t w = v.chunk_offset[s + 1] - c0;
        float a;
        seed_blends(v, s, &a);
        const DeviceBlueprint bp = detail::blueprint_of(v, s);
        const float* p = bp.params;
        if ((skip_kinds >> unsigned(bp.kind)) & 1u) continue;  // done by the batched GEMMs
        if (bp.kind == BlueprintKind::kScaleShift) {
            for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                const int32_t r = idx / w, i = idx - r * w;
                const int64_t off = int64_t(r0 + r) * ld + c0 + i;
                const float x = h[off];
                y[off] = x + a * fmaf(p[i], x, p[bp.max_width + i]);
            }
            continue;
        }
        const MlpSlotOffsets o = mlp_slot_offsets(bp.max_width, bp.hidden);
        const bool relu = bp.kind == BlueprintKind::kResidualMlp;
        const int32_t H = bp.hidden, M = bp.max_width;
        float* xs = smem;
        float* acc = xs + row_tile * w;
        float* hid = acc + row_tile * w;
        for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
            const int32_t r = idx / w, i = idx - r * w;
            xs[idx] = h[int64_t(r0 + r) * ld + c0 + i];
            acc[idx] = p[o.b2 + i];
        }
        __syncthreads();
        constexpr int HC = detail::kHiddenChunk;
        for (int32_t hc = 0; hc < H; hc += HC) {
            const int32_t hn = min(HC, H - hc);
            for (int32_t idx = threadIdx.x; idx < rt * HC; idx += blockDim.x) {
                const int32_t r = idx / HC, jj = idx - r * HC;
                float z = 0.0f;
                if (jj < hn) {
                    const int32_t j = hc + jj;
                    const float* vrow = p + o.v + int64_t(j) * M;
                    const float* xr = xs + r * w;
                    z = p[o.b1 + j];
                    for (int32_t i = 0; i < w; ++i) z = fmaf(vrow[i], xr[i], z);
                    if (relu) z = fmaxf(z, 0.0f);
                }
                hid[idx] = z;
            }
            __syncthreads();
            for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
                const int32_t r = idx / w, i = idx - r * w;
                const float* urow = p + o.u + int64_t(i) * H + hc;
                const float* hr = hid + r * HC;
                float t = 0.0f;
                for (int32_t jj = 0; jj < hn; ++jj) t = fmaf(urow[jj], hr[jj], t);
                acc[idx] += t;
            }
            __syncthreads();
        }
        for (int32_t idx = threadIdx.x; idx < rt * w; idx += blockDim.x) {
            const int32_t r = idx / w, i = idx - r * w;
            y[int64_t(r0 + r) * ld + c0 + i] = xs[idx] + a * acc[idx];
        }
        __syncthreads();
    }
}

// ---- wide chunks: cuBLAS strided-batched GEMMs ----
// An MLP arena of max_width >= kWideWidth and hidden >= kWideHidden (seed_common.cuh) runs as
// two fp32 SGEMMs batched over the arena's slots (slot q's weights are `stride` floats after slot
// q-1's, exactly a strided batch): the listed seeds' chunks are gathered into X[q] (zero past the
// chunk width), Z[q] and R[q] start as the biases, Z += X·Vᵀ, act(Z), R += act(Z)·Uᵀ, and the
// blend y = h + a·R is scattered back. Idle slots are computed too (their rows are never read),
// so the cost is the arena's capacity, not its active seeds. No TF32: results match the fp32
// kernels to the usual summation-order tolerance.
struct WideArena {
    bool on = false;
    int64_t x_off = 0, z_off = 0, r_off = 0;  // floats from the scratch start
};

struct WidePlan {
    WideArena arena[2];  // kResidualMlp, kLowrank
    size_t bytes = 0;
    uint32_t kinds = 0;  // bit k: kind k goes through the GEMMs
};

WidePlan wide_plan(const SeedLayerView& v) {
    WidePlan wp;
    int64_t floats = 0;
    for (int k = 0; k < 2; ++k) {
        const BlueprintArena& a = v.arenas[k];
        if (!detail::arena_is_wide(a)) continue;
        WideArena& w = wp.arena[k];
        w.on = true;
        const int64_t rows = int64_t(a.capacity) * v.batch;
        w.x_off = floats;
        floats += (rows * a.max_width + 63) & ~int64_t(63);
        w.z_off = floats;
        floats += (rows * a.hidden + 63) & ~int64_t(63);
        w.r_off = floats;
        floats += (rows * a.max_width + 63) & ~int64_t(63);
        wp.kinds |= 1u << k;
    }
    wp.bytes = size_t(floats) * sizeof(float);
    return wp;
}

// Item = (listed seed of kind `kind`, row): X row = chunk (zero padded), Z row = b1, R row = b2.
__global__ void wide_gather_kernel(SeedLayerView v, const float* __restrict__ h,
                                   ForwardWorkspace ws, int kind, float* __restrict__ xs,
                                   float* __restrict__ zs, float* __restrict__ rs) {
    const BlueprintArena& arena = v.arenas[kind];
    const int32_t M = arena.max_width, H = arena.hidden;
    const MlpSlotOffsets o = mlp_slot_offsets(M, H);
    const int64_t n_items = int64_t(ws.counts[0]) * v.batch;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / v.batch];
        if (v.kind[s] != kind) continue;
        const int32_t r = int32_t(item % v.batch);
        const int32_t q = v.slot[s];
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0;
        const float* p = arena.params + int64_t(q) * arena.stride;
        const int64_t row = int64_t(q) * v.batch + r;
        const float* hr = h + int64_t(r) * v.width + c0;
        for (int32_t i = threadIdx.x; i < M; i += blockDim.x) {
            xs[row * M + i] = i < w ? hr[i] : 0.0f;
            rs[row * M + i] = p[o.b2 + i];
        }
        for (int32_t j = threadIdx.x; j < H; j += blockDim.x) zs[row * H + j] = p[o.b1 + j];
    }
}

__global__ void wide_relu_kernel(float* __restrict__ z, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
         i += int64_t(gridDim.x) * blockDim.x)
        z[i] = fmaxf(z[i], 0.0f);
}

__global__ void wide_scatter_kernel(SeedLayerView v, const float* __restrict__ h,
                                    float* __restrict__ y, ForwardWorkspace ws, int kind,
                                    const float* __restrict__ rs) {
    const int32_t M = v.arenas[kind].max_width;
    const int64_t n_items = int64_t(ws.counts[0]) * v.batch;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / v.batch];
        if (v.kind[s] != kind) continue;
        const int32_t r = int32_t(item % v.batch);
        float a;
        seed_blends(v, s, &a);
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0;
        const float* rr = rs + (int64_t(v.slot[s]) * v.batch + r) * M;
        const int64_t off = int64_t(r) * v.width + c0;
        for (int32_t i = threadIdx.x; i < w; i += blockDim.x)
            y[off + i] = fmaf(a, rr[i], h[off + i]);
    }
}

cudaError_t launch_wide(const SeedLayerView& v, const WidePlan& wp, const float* h, float* y,
                        const ForwardWorkspace& ws, float* scratch, int blocks,
                        cudaStream_t stream) {
    using detail::from_cublas;
    cublasHandle_t handle = nullptr;
    cudaError_t e = detail::seed_cublas_handle(&handle);
    if (e != cudaSuccess) return e;
    if ((e = from_cublas(cublasSetStream(handle, stream))) != cudaSuccess) return e;
    for (int k = 0; k < 2; ++k) {
        if (!wp.arena[k].on) continue;
        const BlueprintArena& a = v.arenas[k];
        const int32_t M = a.max_width, H = a.hidden, B = v.batch;
        float* xs = scratch + wp.arena[k].x_off;
        float* zs = scratch + wp.arena[k].z_off;
        float* rs = scratch + wp.arena[k].r_off;
        const MlpSlotOffsets o = mlp_slot_offsets(M, H);
        wide_gather_kernel<<<blocks, 256, 0, stream>>>(v, h, ws, k, xs, zs, rs);
        const float one = 1.0f;
        // Column-major view: Z_q[H, B] += V_q[M, H]ᵀ · X_q[M, B].
        e = from_cublas(cublasSgemmStridedBatched(
            handle, CUBLAS_OP_T, CUBLAS_OP_N, H, B, M, &one, a.params + o.v, M, a.stride, xs, M,
            int64_t(B) * M, &one, zs, H, int64_t(B) * H, a.capacity));
        if (e != cudaSuccess) return e;
        if (k == int(BlueprintKind::kResidualMlp))
            wide_relu_kernel<<<blocks, 256, 0, stream>>>(zs, int64_t(a.capacity) * B * H);
        // R_q[M, B] += U_q[H, M]ᵀ · act(Z_q)[H, B].
        e = from_cublas(cublasSgemmStridedBatched(
            handle, CUBLAS_OP_T, CUBLAS_OP_N, M, B, H, &one, a.params + o.u, H, a.stride, zs, H,
            int64_t(B) * H, &one, rs, M, int64_t(B) * M, a.capacity));
        if (e != cudaSuccess) return e;
        wide_scatter_kernel<<<blocks, 256, 0, stream>>>(v, h, y, ws, k, rs);
    }
    return cudaGetLastError();
}

// Chan-merges the pending seeds, then the last block to finish resets the counters (one launch
// instead of a merge and a reset).
__global__ void forward_finalize_kernel(SeedLayerView v, SeedTelemetryAccum tel,
                                        ForwardWorkspace ws) {
    const int32_t n = ws.counts[1];
    for (int32_t k = blockIdx.x * blockDim.x + threadIdx.x; k < n; k += gridDim.x * blockDim.x) {
        const int32_t s = ws.pending_list[k];
        double* st = ws.stats + 3 * int64_t(s);
        const double s1 = st[0], s2 = st[1], dead = st[2];
        st[0] = 0.0;
        st[1] = 0.0;
        st[2] = 0.0;
        merge_stats(tel, s, double(v.batch) * double(v.chunk_offset[s + 1] - v.chunk_offset[s]), s1,
                    s2, dead);
    }
    __syncthreads();  // every thread of this block has read counts[1]
    if (threadIdx.x == 0 && atomicAdd(ws.counts + 2, 1) == int32_t(gridDim.x) - 1) {
        ws.counts[0] = 0;
        ws.counts[1] = 0;
        ws.counts[2] = 0;
    }
}

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

}  // namespace

size_t seed_forward_workspace_bytes(int32_t num_seeds) {
    return align_up(sizeof(double) * 3 * size_t(num_seeds)) + 256 +
           2 * align_up(sizeof(int32_t) * size_t(num_seeds));
}

size_t seed_forward_workspace_bytes(const SeedLayerView& view) {
    return seed_forward_workspace_bytes(view.num_seeds) + wide_plan(view).bytes;
}

cudaError_t prepare_seed_gemms() {
    cublasHandle_t handle = nullptr;
    return detail::seed_cublas_handle(&handle);
}

cudaError_t launch_seed_forward(const SeedLayerView& view, const float* h, float* y,
                                const SeedTelemetryAccum* tel, void* workspace,
                                size_t workspace_bytes, cudaStream_t stream) {
    if (view.batch <= 0 || view.width <= 0 || view.num_seeds <= 0) return cudaSuccess;
    if (workspace == nullptr || workspace_bytes < seed_forward_workspace_bytes(view.num_seeds))
        return cudaErrorInvalidValue;
    const ForwardWorkspace ws = carve(workspace, view.num_seeds);
    const bool with_stats = tel != nullptr;
    const SeedTelemetryAccum t = with_stats ? *tel : SeedTelemetryAccum{};

    const int32_t col_tiles = (view.width + detail::kStreamThreads - 1) / detail::kStreamThreads;
    int32_t splits = detail::stream_row_splits(col_tiles, view.batch, sm_count());
    const int32_t rows_per_block = (view.batch + splits - 1) / splits;
    splits = (view.batch + rows_per_block - 1) / rows_per_block;
    const int32_t max_w = detail::view_max_width(view);
    int32_t max_hidden = 0;
    for (int k = 0; k < 2; ++k)
        if (view.arenas[k].params != nullptr && view.arenas[k].hidden > max_hidden)
            max_hidden = view.arenas[k].hidden;
    bool any_arena = false;
    for (int k = 0; k < kNumBlueprintKinds; ++k) any_arena |= view.arenas[k].params != nullptr;
    const dim3 grid(col_tiles, splits);
    if (any_arena && max_w <= kInlineWidth && max_hidden <= kInlineHidden)
        forward_stream_kernel<true><<<grid, detail::kStreamThreads, 0, stream>>>(
            view, h, y, t, with_stats, ws, rows_per_block);
    else
        forward_stream_kernel<false><<<grid, detail::kStreamThreads, 0, stream>>>(
            view, h, y, t, with_stats, ws, rows_per_block);

    constexpr size_t kSmemBudget = 160 * 1024;
    const size_t base_bytes = seed_forward_workspace_bytes(view.num_seeds);
    // Wide arenas take the GEMM path when the workspace was sized for it (the view overload of
    // seed_forward_workspace_bytes); the kernels below do every other arena.
    const WidePlan wp = wide_plan(view);
    const bool wide = wp.kinds != 0 && workspace_bytes >= base_bytes + wp.bytes;
    const uint32_t skip = wide ? wp.kinds : 0u;
    int32_t rest_w = 1, rest_hidden = 0;
    bool rest = false;
    for (int k = 0; k < kNumBlueprintKinds; ++k) {
        const BlueprintArena& a = view.arenas[k];
        if (a.params == nullptr || ((skip >> k) & 1u)) continue;
        rest = true;
        rest_w = max(rest_w, a.max_width);
        if (k < 2) rest_hidden = max(rest_hidden, a.hidden);
    }
    const size_t fast_smem = fast_smem_floats(rest_w, rest_hidden) * sizeof(float);
    if (!rest) {
        // No seed left for the kernels (none blends, or the GEMMs take them all).
    } else if (fast_smem <= kSmemBudget) {
        if (fast_smem > 48 * 1024) {
            const cudaError_t e =
                cudaFuncSetAttribute(forward_active_smem_kernel,
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, int(fast_smem));
            if (e != cudaSuccess) return e;
        }
        forward_active_smem_kernel<<<sm_count() * 8, detail::kActiveThreads, fast_smem, stream>>>(
            view, h, y, ws, skip);
    } else {
        const int32_t row_tile = detail::active_row_tile(rest_w, 2, view.batch, kSmemBudget);
        const size_t smem = size_t(row_tile) * (2 * size_t(rest_w) + detail::kHiddenChunk) * 4;
        if (smem > 48 * 1024) {
            const cudaError_t e = cudaFuncSetAttribute(
                forward_active_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
            if (e != cudaSuccess) return e;
        }
        forward_active_kernel<<<sm_count() * 4, detail::kActiveThreads, smem, stream>>>(
            view, h, y, ws, row_tile, skip);
    }
    if (wide) {
        float* scratch = reinterpret_cast<float*>(static_cast<char*>(workspace) + base_bytes);
        const cudaError_t e = launch_wide(view, wp, h, y, ws, scratch, sm_count() * 8, stream);
        if (e != cudaSuccess) return e;
    }
    // Pending seeds exist only with telemetry; without it this only resets the counters.
    const int32_t fin_blocks = with_stats ? min(sm_count() * 2, (view.num_seeds + 255) / 256) : 1;
    forward_finalize_kernel<<<fin_blocks, 256, 0, stream>>>(view, t, ws);
    return cudaGetLastError();
}

}  // namespace esper::kernels
