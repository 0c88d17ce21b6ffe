// Fused seed-layer backward. Pass 1 streams dy once: dh = dy for every seed whose input gradient
// does not go through its blueprint, Σdy² per seed into the telemetry, and the list of seeds that
// need their blueprint (input grads, parameter grads or a contribution term). Pass 2 recomputes
// r for those seeds per (seed, row tile) item and accumulates with atomics.
#include "kernels/seed_backward.h"
#include "kernels/seed_common.cuh"

namespace esper::kernels {

namespace {

using detail::DeviceBlueprint;

struct BackwardWorkspace {
    int32_t* active_count;
    int32_t* active_list;  // [S]
};

BackwardWorkspace carve(void* ws) {
    BackwardWorkspace w;
    w.active_count = static_cast<int32_t*>(ws);
    w.active_list = reinterpret_cast<int32_t*>(static_cast<char*>(ws) + 256);
    return w;
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
        s = detail::seed_of_column(v.chunk_offset, v.num_seeds, c);
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

__device__ inline float warp_sum(float v) {
    for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
    return v;
}

__global__ void __launch_bounds__(detail::kActiveThreads)
    backward_active_kernel(SeedLayerView v, const float* __restrict__ h,
                           const float* __restrict__ dy, float* __restrict__ dh,
                           SeedTelemetryAccum tel, bool with_tel, BackwardWorkspace ws,
                           int32_t row_tile) {
    extern __shared__ float smem[];
    constexpr int HC = detail::kHiddenChunk;
    const int32_t row_tiles = (v.batch + row_tile - 1) / row_tile;
    const int64_t n_items = int64_t(*ws.active_count) * row_tiles;
    const int64_t ld = v.width;
    for (int64_t item = blockIdx.x; item < n_items; item += gridDim.x) {
        const int32_t s = ws.active_list[item / row_tiles];
        const int32_t r0 = int32_t(item % row_tiles) * row_tile;
        const int32_t rt = min(row_tile, v.batch - r0);
        const int32_t c0 = v.chunk_offset[s];
        const int32_t w = v.chunk_offset[s + 1] - c0;
        DeviceBlueprint bp;
        const SeedGradPlan pl = plan_of(v, s, with_tel, &bp);
        const float* p = bp.params;
        const int32_t M = bp.max_width;
        float contrib = 0.0f;  // Σ g·r over this item
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
                    atomicAdd(bp.grads + i, pl.g_scale * gs);
                    atomicAdd(bp.grads + M + i, pl.g_scale * gb);
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
                    atomicAdd(bp.grads + o.b2 + i, pl.g_scale * t);
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
                        atomicAdd(bp.grads + o.u + int64_t(i) * H + hc + jj, pl.g_scale * t);
                    }
                    for (int32_t idx = threadIdx.x; idx < hn * w; idx += blockDim.x) {
                        const int32_t jj = idx / w, i = idx - jj * w;
                        float t = 0.0f;
                        for (int32_t r = 0; r < rt; ++r)
                            t = fmaf(dz[r * HC + jj], xs[r * w + i], t);
                        atomicAdd(bp.grads + o.v + int64_t(hc + jj) * M + i, pl.g_scale * t);
                    }
                    for (int32_t jj = threadIdx.x; jj < hn; jj += blockDim.x) {
                        float t = 0.0f;
                        for (int32_t r = 0; r < rt; ++r) t += dz[r * HC + jj];
                        atomicAdd(bp.grads + o.b1 + hc + jj, pl.g_scale * t);
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
        if (with_tel && pl.a_fwd != 0.0f) {
            contrib = warp_sum(contrib);
            if ((threadIdx.x & 31) == 0 && contrib != 0.0f)
                atomicAdd(tel.contribution + s, -double(pl.a_fwd) * double(contrib));
        }
        __syncthreads();
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

}  // namespace

size_t seed_backward_workspace_bytes(int32_t num_seeds) {
    return 256 + ((sizeof(int32_t) * size_t(num_seeds) + 255) & ~size_t(255));
}

cudaError_t launch_seed_backward(const SeedLayerView& view, const float* h, const float* dy,
                                 float* dh, const SeedTelemetryAccum* tel, void* workspace,
                                 size_t workspace_bytes, cudaStream_t stream) {
    if (view.batch <= 0 || view.width <= 0 || view.num_seeds <= 0) return cudaSuccess;
    if (workspace == nullptr || workspace_bytes < seed_backward_workspace_bytes(view.num_seeds))
        return cudaErrorInvalidValue;
    const BackwardWorkspace ws = carve(workspace);
    const bool with_tel = tel != nullptr;
    const SeedTelemetryAccum t = with_tel ? *tel : SeedTelemetryAccum{};

    const int32_t col_tiles = (view.width + detail::kStreamThreads - 1) / detail::kStreamThreads;
    int32_t splits = (sm_count() * 16 + col_tiles - 1) / col_tiles;
    splits = max(1, min(splits, (view.batch + 3) / 4));
    const int32_t rows_per_block = (view.batch + splits - 1) / splits;
    splits = (view.batch + rows_per_block - 1) / rows_per_block;
    backward_stream_kernel<<<dim3(col_tiles, splits), detail::kStreamThreads, 0, stream>>>(
        view, dy, dh, t, with_tel, ws, rows_per_block);

    const int32_t max_w = detail::view_max_width(view);
    constexpr size_t kSmemBudget = 160 * 1024;
    const int32_t row_tile = detail::active_row_tile(max_w, 3, view.batch, kSmemBudget);
    const size_t smem = size_t(row_tile) * (3 * size_t(max_w) + 2 * detail::kHiddenChunk) * 4;
    if (smem > 48 * 1024) {
        const cudaError_t e = cudaFuncSetAttribute(
            backward_active_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem));
        if (e != cudaSuccess) return e;
    }
    backward_active_kernel<<<sm_count() * 4, detail::kActiveThreads, smem, stream>>>(
        view, h, dy, dh, t, with_tel, ws, row_tile);
    backward_reset_kernel<<<1, 1, 0, stream>>>(ws);
    return cudaGetLastError();
}

}  // namespace esper::kernels
