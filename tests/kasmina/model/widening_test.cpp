// The BLAS fast path of layer-input (widening) blueprints against the double-precision kernels
// references: forward values, ∂L/∂h, ∂L/∂input, blueprint gradients and the contribution
// telemetry, for every stage a seed can be in, both MLP kinds and a chunk-reading scale_shift seed
// in the same layer.
#include "kasmina/model/widening.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "kasmina/model/blueprints.h"
#include "kasmina/model/tensor.h"
#include "kernels/bias_act.h"
#include "kernels/grad_ops.h"
#include "kernels/seed_layer.h"
#include "kernels/widening.h"

using namespace esper::kasmina;
using esper::kernels::SeedLayerView;
using esper::kernels::SeedStage;
using esper::kernels::SeedTelemetryAccum;

namespace {

struct Tel {
    std::vector<double> count, mean, m2, dead, grad_sq, contribution;
    explicit Tel(size_t s) : count(s), mean(s), m2(s), dead(s), grad_sq(s), contribution(s) {}
    SeedTelemetryAccum accum() {
        return {count.data(), mean.data(),    m2.data(),
                dead.data(),  grad_sq.data(), contribution.data()};
    }
};

template <typename A, typename B>
double max_rel_err(const std::vector<A>& got, const std::vector<B>& want) {
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i)
        worst = std::max(
            worst, std::abs(double(got[i]) - double(want[i])) / (1e-3 + std::abs(double(want[i]))));
    return worst;
}

}  // namespace

TEST_CASE("the widening fast path matches the kernels references", "[kasmina][widening]") {
    const auto kind = GENERATE(BlueprintKind::kResidualMlp, BlueprintKind::kLowrank);
    CAPTURE(static_cast<int>(kind));
    const int32_t B = 6, D = 12, S = 6, N = 9;  // chunks of 2, a 9-feature layer input
    BlueprintsConfig cfg;
    cfg.residual_mlp.expansion = 3;
    BlueprintArenas arenas(2, cfg, N);
    const SeedStage stages[S] = {SeedStage::kTraining,   SeedStage::kGrafting,
                                 SeedStage::kFineTuning, SeedStage::kFossilized,
                                 SeedStage::kDormant,    SeedStage::kEvaluating};
    std::vector<int32_t> offsets, slot(S, -1);
    std::vector<uint8_t> stage(S), kinds(S, uint8_t(kind));
    std::vector<float> alpha(S, 0.35f);
    for (int32_t s = 0; s <= S; ++s) offsets.push_back(2 * s);
    Rng rng(31);
    for (int32_t s = 0; s < S; ++s) {
        stage[size_t(s)] = uint8_t(stages[s]);
        if (stages[s] == SeedStage::kDormant) continue;
        // The last seed is a chunk-reading scale_shift: the reference must still handle it.
        const BlueprintKind k = s == S - 1 ? BlueprintKind::kScaleShift : kind;
        kinds[size_t(s)] = uint8_t(k);
        slot[size_t(s)] = *arenas.acquire(k);
        arenas.init_slot(k, slot[size_t(s)], 2, 100 + uint64_t(s));
        for (float& p : arenas.params(k, slot[size_t(s)])) p += rng.uniform(-0.5f, 0.5f);
    }
    std::vector<float> x(size_t(B * N)), h(size_t(B * D)), dy(size_t(B * D));
    for (float& v : x) v = rng.uniform(-1.0f, 1.0f);
    for (float& v : h) v = rng.uniform(-1.0f, 1.0f);
    for (float& v : dy) v = rng.uniform(-1.0f, 1.0f);

    auto view = [&] {
        SeedLayerView v;
        v.batch = B;
        v.width = D;
        v.num_seeds = S;
        v.chunk_offset = offsets.data();
        v.stage = stage.data();
        v.kind = kinds.data();
        v.slot = slot.data();
        v.alpha = alpha.data();
        for (int k = 0; k < kNumBlueprintKinds; ++k) v.arenas[k] = arenas.view(BlueprintKind(k));
        v.input = x.data();
        v.input_width = N;
        return v;
    };
    auto grads = [&] {
        std::vector<float> g;
        for (int k = 0; k < kNumBlueprintKinds; ++k)
            for (float v : arenas.all_grads(BlueprintKind(k))) g.push_back(v);
        return g;
    };

    // Reference: the whole layer through the double-precision kernels references.
    arenas.zero_grads();
    Tel tref(S);
    SeedTelemetryAccum aref = tref.accum();
    std::vector<float> y_ref(h.size()), dh_ref(h.size()), dx_ref(x.size(), 0.5f);
    esper::kernels::seed_forward_reference(view(), h.data(), y_ref.data(), &aref);
    esper::kernels::seed_backward_reference(view(), h.data(), dy.data(), dh_ref.data(), &aref,
                                            dx_ref.data());
    const std::vector<float> g_ref = grads();

    // Fast path: the reference on the masked view plus WideningPath.
    arenas.zero_grads();
    Tel tfast(S);
    SeedTelemetryAccum afast = tfast.accum();
    WideningPath wp;
    std::vector<float> y(h.size()), dh(h.size()), dx(x.size(), 0.5f);
    esper::kernels::seed_forward_reference(wp.mask(view()), h.data(), y.data(), &afast);
    wp.forward(view(), y.data());
    esper::kernels::seed_backward_reference(wp.mask(view()), h.data(), dy.data(), dh.data(),
                                            &afast);
    wp.backward(view(), dy.data(), dx.data(), &afast);
    const std::vector<float> g = grads();

    CHECK(max_rel_err(y, y_ref) < 1e-4);
    CHECK(max_rel_err(dh, dh_ref) < 1e-4);
    CHECK(max_rel_err(dx, dx_ref) < 1e-4);
    CHECK(max_rel_err(g, g_ref) < 1e-4);
    CHECK(max_rel_err(tfast.contribution, tref.contribution) < 1e-4);
    CHECK(max_rel_err(tfast.grad_sq, tref.grad_sq) < 1e-9);
    CHECK(max_rel_err(tfast.m2, tref.m2) < 1e-9);
    // Not vacuous: the layer-input seeds changed y, sent gradient to the input and got grads.
    double moved = 0.0, dx_moved = 0.0, g_sum = 0.0;
    for (size_t i = 0; i < y.size(); ++i) moved += std::abs(double(y[i]) - h[i]);
    for (float v : dx) dx_moved += std::abs(double(v) - 0.5);
    for (float v : g) g_sum += std::abs(double(v));
    CHECK(moved > 0.1);
    CHECK(dx_moved > 0.1);
    CHECK(g_sum > 0.1);
}

TEST_CASE(
    "the GPU's widening decomposition (kernels/widening.h references around plain GEMMs) gives "
    "the seed layer references",
    "[kasmina][widening]") {
    // The CUDA backend runs a layer-input seed as cuBLAS GEMMs around the three kernels of
    // kernels/widening.h; here the same sequence runs with loops for the GEMMs and the kernels'
    // CPU references, against the double-precision seed layer references, in every stage.
    const auto kind = GENERATE(BlueprintKind::kResidualMlp, BlueprintKind::kLowrank);
    const SeedStage stage =
        GENERATE(SeedStage::kTraining, SeedStage::kGrafting, SeedStage::kStabilization,
                 SeedStage::kEvaluating, SeedStage::kFineTuning, SeedStage::kFossilized);
    CAPTURE(static_cast<int>(kind), static_cast<int>(stage));
    const int32_t B = 5, D = 9, S = 3, N = 7, s = 1, c0 = 3, w = 3;
    BlueprintsConfig cfg;
    BlueprintArenas arenas(3, cfg, N);
    std::vector<int32_t> offsets = {0, 3, 6, 9}, slot(S, -1);
    std::vector<uint8_t> stages(S, uint8_t(SeedStage::kDormant)), kinds(S, uint8_t(kind));
    std::vector<float> alpha(S, 0.35f);
    stages[s] = uint8_t(stage);
    slot[s] = *arenas.acquire(kind);
    arenas.init_slot(kind, slot[s], w, 7);
    Rng rng(19);
    for (float& p : arenas.params(kind, slot[s])) p += rng.uniform(-0.5f, 0.5f);
    std::vector<float> x(size_t(B * N)), h(size_t(B * D)), dy(size_t(B * D));
    for (float& v : x) v = rng.uniform(-1.0f, 1.0f);
    for (float& v : h) v = rng.uniform(-1.0f, 1.0f);
    for (float& v : dy) v = rng.uniform(-1.0f, 1.0f);
    SeedLayerView v;
    v.batch = B;
    v.width = D;
    v.num_seeds = S;
    v.chunk_offset = offsets.data();
    v.stage = stages.data();
    v.kind = kinds.data();
    v.slot = slot.data();
    v.alpha = alpha.data();
    for (int k = 0; k < kNumBlueprintKinds; ++k) v.arenas[k] = arenas.view(BlueprintKind(k));
    v.input = x.data();
    v.input_width = N;

    arenas.zero_grads();
    Tel tref(S);
    SeedTelemetryAccum aref = tref.accum();
    std::vector<float> y_ref(h.size()), dh_ref(h.size()), dx_ref(x.size(), 0.0f);
    esper::kernels::seed_forward_reference(v, h.data(), y_ref.data(), &aref);
    esper::kernels::seed_backward_reference(v, h.data(), dy.data(), dh_ref.data(), &aref,
                                            dx_ref.data());
    const auto grads_ref = arenas.grads(kind, slot[s]);
    const std::vector<float> g_ref(grads_ref.begin(), grads_ref.end());

    // The decomposition, as CudaBackend::Impl::widening_{forward,backward,input_grads} order it.
    const int32_t H = arenas.hidden(kind);
    const auto p = arenas.params(kind, slot[s]);
    const esper::kernels::MlpSlotOffsets o = esper::kernels::mlp_slot_offsets(3, H, N);
    std::vector<float> gp(p.size(), 0.0f);
    const esper::kernels::WideningSeedRef ref{stages.data(), alpha.data(), s};
    std::vector<float> z(size_t(B * H)), a(z.size()), r(size_t(B * w)), y = h;
    for (int32_t b = 0; b < B; ++b)
        for (int32_t j = 0; j < H; ++j)
            for (int32_t i = 0; i < N; ++i)
                z[size_t(b * H + j)] += x[size_t(b * N + i)] * p[size_t(o.v + j * N + i)];
    esper::kernels::bias_act_forward_reference(z.data(), p.data() + o.b1, a.data(), B, H,
                                               kind == BlueprintKind::kResidualMlp
                                                   ? esper::kernels::Activation::kRelu
                                                   : esper::kernels::Activation::kIdentity);
    for (int32_t b = 0; b < B; ++b)
        for (int32_t i = 0; i < w; ++i)
            for (int32_t j = 0; j < H; ++j)
                r[size_t(b * w + i)] += a[size_t(b * H + j)] * p[size_t(o.u + i * H + j)];
    esper::kernels::widening_output_forward_reference(ref, p.data() + o.b2, r.data(), y.data(), B,
                                                      w, D, c0);
    std::vector<float> g(r.size()), gs(r.size()), da(z.size()), dzs(z.size()), dzi(z.size());
    std::vector<float> dx(x.size(), 0.0f);
    double contribution = 0.0;
    esper::kernels::widening_output_backward_reference(ref, dy.data(), D, c0, r.data(), B, w,
                                                       g.data(), gs.data(), gp.data() + o.b2,
                                                       &contribution);
    for (int32_t i = 0; i < w; ++i)
        for (int32_t j = 0; j < H; ++j)
            for (int32_t b = 0; b < B; ++b)
                gp[size_t(o.u + i * H + j)] += gs[size_t(b * w + i)] * a[size_t(b * H + j)];
    for (int32_t b = 0; b < B; ++b)
        for (int32_t j = 0; j < H; ++j)
            for (int32_t i = 0; i < w; ++i)
                da[size_t(b * H + j)] += g[size_t(b * w + i)] * p[size_t(o.u + i * H + j)];
    esper::kernels::widening_hidden_backward_reference(ref, kind, da.data(), z.data(), B, H,
                                                       dzs.data(), gp.data() + o.b1, dzi.data());
    for (int32_t j = 0; j < H; ++j)
        for (int32_t i = 0; i < N; ++i)
            for (int32_t b = 0; b < B; ++b)
                gp[size_t(o.v + j * N + i)] += dzs[size_t(b * H + j)] * x[size_t(b * N + i)];
    for (int32_t b = 0; b < B; ++b)
        for (int32_t i = 0; i < N; ++i)
            for (int32_t j = 0; j < H; ++j)
                dx[size_t(b * N + i)] += dzi[size_t(b * H + j)] * p[size_t(o.v + j * N + i)];

    CHECK(max_rel_err(y, y_ref) < 1e-4);
    CHECK(max_rel_err(gp, g_ref) < 1e-4);
    CHECK(max_rel_err(dx, dx_ref) < 1e-4);
    CHECK(contribution == Approx(tref.contribution[size_t(s)]).epsilon(1e-4).margin(1e-9));
    // Not vacuous where the stage has a term: the forward moved, gradients or input gradients.
    double moved = 0.0;
    for (size_t i = 0; i < y.size(); ++i) moved += std::abs(double(y[i]) - h[i]);
    CHECK((moved > 0.0) == (stage != SeedStage::kTraining));
}

// The GPU transformer's seed telemetry arrives as sums (kernels::launch_moments); merged with
// merge_activation_sums they give the accumulators merge_activation_stats gives from the values.
TEST_CASE("activation moments merged from sums equal the merge of the values",
          "[kasmina][widening]") {
    std::vector<float> first(300), second(517);
    for (size_t i = 0; i < first.size(); ++i) first[i] = float(std::sin(0.1 * double(i))) + 0.3f;
    for (size_t i = 0; i < second.size(); ++i)
        second[i] = i % 5 == 0 ? 0.0f : float(std::cos(0.07 * double(i))) * 2.0f - 0.5f;
    Tel by_values(2), by_sums(2);
    SeedTelemetryAccum a = by_values.accum(), b = by_sums.accum();
    for (const std::vector<float>* v : {&first, &second}) {
        merge_activation_stats(&a, 1, v->data(), int64_t(v->size()));
        double sums[3] = {0.0, 0.0, 0.0};
        esper::kernels::moments_reference(v->data(), int64_t(v->size()), sums);
        merge_activation_sums(&b, 1, double(v->size()), sums[0], sums[1], sums[2]);
    }
    CHECK(by_sums.count[1] == by_values.count[1]);
    CHECK(by_sums.count[1] == 817.0);
    CHECK(by_sums.mean[1] == Approx(by_values.mean[1]).epsilon(1e-12));
    CHECK(by_sums.m2[1] == Approx(by_values.m2[1]).epsilon(1e-9));
    CHECK(by_sums.dead[1] == by_values.dead[1]);
    CHECK(by_sums.dead[1] == 104.0);  // every fifth value of the second
    CHECK(by_sums.count[0] == 0.0);   // the other seed untouched
    CHECK(esper::kernels::dot_reference(first.data(), first.data(), 300) ==
          Approx(esper::kernels::sum_squares_reference(first.data(), 300)));
}
