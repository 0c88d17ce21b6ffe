// Layer-input blueprints as BLAS GEMMs (kasmina/widening.h). Row-major throughout:
//   Z = X·Vᵀ + b1 [B, H], A = act(Z), R = A·Uᵀ + b2 [B, w], y_chunk += a·R
//   backward with G = dy_chunk: gU += s·Gᵀ·A, gb2 += s·ΣG, dZ = (G·U) ⊙ act'(Z),
//   gV += s·dZᵀ·X, gb1 += s·ΣdZ, d_input += a_in·dZ·V
#include "kasmina/model/widening.h"

#include <cblas.h>

#include <algorithm>

namespace esper::kasmina {

using kernels::BlueprintKind;
using kernels::SeedStage;

bool WideningPath::handled(const kernels::SeedLayerView& v, int32_t s) {
    if (v.slot == nullptr || v.kind == nullptr || v.slot[s] < 0) return false;
    const auto kind = static_cast<BlueprintKind>(v.kind[s]);
    const kernels::BlueprintArena& a = v.arenas[static_cast<int>(kind)];
    return kernels::blueprint_reads_layer_input(kind, a.in_width) && a.params != nullptr &&
           v.slot[s] < a.capacity;
}

kernels::SeedLayerView WideningPath::mask(const kernels::SeedLayerView& v) {
    if (v.input_width <= 0) return v;
    masked_slot_.assign(v.slot, v.slot + v.num_seeds);
    for (int32_t s = 0; s < v.num_seeds; ++s)
        if (handled(v, s)) masked_slot_[size_t(s)] = -1;
    kernels::SeedLayerView m = v;
    m.slot = masked_slot_.data();
    return m;
}

void WideningPath::forward(const kernels::SeedLayerView& v, float* y) {
    cache_.clear();
    if (v.input_width <= 0) return;
    const int32_t B = v.batch, N = v.input_width;
    for (int32_t s = 0; s < v.num_seeds; ++s) {
        const auto stage = static_cast<SeedStage>(v.stage[s]);
        if (!handled(v, s) || !kernels::stage_runs_blueprint(stage)) continue;
        const auto kind = static_cast<BlueprintKind>(v.kind[s]);
        const kernels::BlueprintArena& a = v.arenas[static_cast<int>(kind)];
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0, H = a.hidden;
        const float* p = a.params + int64_t(v.slot[s]) * a.stride;
        const kernels::MlpSlotOffsets o = kernels::mlp_slot_offsets(a.max_width, H, N);
        Cache& c = cache_.emplace_back();
        c.seed = s;
        c.act.resize(size_t(B) * size_t(H));
        c.r.resize(size_t(B) * size_t(w));
        for (int32_t b = 0; b < B; ++b)
            std::copy(p + o.b1, p + o.b1 + H, c.act.data() + size_t(b) * H);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, N, 1.0f, v.input, N, p + o.v, N,
                    1.0f, c.act.data(), H);
        if (kind == BlueprintKind::kResidualMlp)
            for (float& z : c.act) z = z > 0.0f ? z : 0.0f;
        for (int32_t b = 0; b < B; ++b)
            std::copy(p + o.b2, p + o.b2 + w, c.r.data() + size_t(b) * w);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, w, H, 1.0f, c.act.data(), H,
                    p + o.u, H, 1.0f, c.r.data(), w);
        const float alpha = kernels::stage_forward_alpha(stage, v.alpha[s]);
        if (alpha == 0.0f) continue;
        for (int32_t b = 0; b < B; ++b) {
            float* yrow = y + int64_t(b) * v.width + c0;
            const float* rrow = c.r.data() + size_t(b) * w;
            for (int32_t i = 0; i < w; ++i) yrow[i] += alpha * rrow[i];
        }
    }
}

void WideningPath::backward(const kernels::SeedLayerView& v, const float* dy, float* d_input,
                            kernels::SeedTelemetryAccum* tel) {
    if (v.input_width <= 0) return;
    const int32_t B = v.batch, N = v.input_width, D = v.width;
    for (const Cache& c : cache_) {
        const int32_t s = c.seed;
        const auto stage = static_cast<SeedStage>(v.stage[s]);
        const auto kind = static_cast<BlueprintKind>(v.kind[s]);
        const kernels::BlueprintArena& a = v.arenas[static_cast<int>(kind)];
        const int32_t c0 = v.chunk_offset[s], w = v.chunk_offset[s + 1] - c0, H = a.hidden;
        const float* p = a.params + int64_t(v.slot[s]) * a.stride;
        const kernels::MlpSlotOffsets o = kernels::mlp_slot_offsets(a.max_width, H, N);
        const float a_fwd = kernels::stage_forward_alpha(stage, v.alpha[s]);
        const float a_in = kernels::stage_input_grad_alpha(stage, v.alpha[s]);
        const float g_scale = kernels::stage_blueprint_grad_scale(stage, v.alpha[s]);
        const float* G = dy + c0;  // [B, w] with leading dimension D
        if (tel != nullptr && a_fwd != 0.0f) {
            double contribution = 0.0;
            for (int32_t b = 0; b < B; ++b)
                for (int32_t i = 0; i < w; ++i)
                    contribution -= double(G[int64_t(b) * D + i]) * a_fwd * c.r[size_t(b) * w + i];
            tel->contribution[s] += contribution;
        }
        const bool param_grads = g_scale > 0.0f && a.grads != nullptr;
        const bool input_grads = a_in != 0.0f && d_input != nullptr;
        if (!param_grads && !input_grads) continue;
        float* gp = param_grads ? a.grads + int64_t(v.slot[s]) * a.stride : nullptr;
        if (param_grads) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, w, H, B, g_scale, G, D,
                        c.act.data(), H, 1.0f, gp + o.u, H);
            for (int32_t b = 0; b < B; ++b)
                for (int32_t i = 0; i < w; ++i) gp[o.b2 + i] += g_scale * G[int64_t(b) * D + i];
        }
        da_.resize(size_t(B) * size_t(H));
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H, w, 1.0f, G, D, p + o.u, H,
                    0.0f, da_.data(), H);
        if (kind == BlueprintKind::kResidualMlp)
            for (size_t k = 0; k < da_.size(); ++k)
                if (!(c.act[k] > 0.0f)) da_[k] = 0.0f;
        if (param_grads) {
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, N, B, g_scale, da_.data(), H,
                        v.input, N, 1.0f, gp + o.v, N);
            for (int32_t b = 0; b < B; ++b)
                for (int32_t j = 0; j < H; ++j) gp[o.b1 + j] += g_scale * da_[size_t(b) * H + j];
        }
        if (input_grads)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, N, H, a_in, da_.data(), H,
                        p + o.v, N, 1.0f, d_input, N);
    }
}

}  // namespace esper::kasmina
