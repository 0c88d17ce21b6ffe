// [gpu] tests: every CUDA kernel against its CPU reference on seeded random inputs over ragged
// shapes, all stages, α values and blueprint kinds, with outputs poisoned (NaN) before each run,
// and a CUDA-graph capture + replay of forward, backward and optimizer launches.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kernels/bf16_host.h"
#include "kernels/bias_act.h"
#include "kernels/gemm.h"
#include "kernels/optimizer.h"
#include "kernels/seed_backward.h"
#include "kernels/seed_forward.h"
#include "kernels/seed_state_update.h"
#include "kernels/softmax_xent.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/support/gpu.h"

using namespace esper::kernels;
using esper::kernels::test::compare;
using esper::kernels::test::fill_uniform;
using esper::kernels::test::HostSeedLayer;
using esper::kernels::test::LayerSpec;
using esper::kernels::test::make_layer;
using esper::kernels::test::Telemetry;
using esper::testing::DevBuf;

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

// Mirrors a HostSeedLayer (and its telemetry) on the device.
struct DeviceLayer {
    DevBuf off, stage, kind, slot, alpha;
    std::vector<std::unique_ptr<DevBuf>> params, grads;
    explicit DeviceLayer(HostSeedLayer& L)
        : off(L.chunk_offset), stage(L.stage), kind(L.kind), slot(L.slot), alpha(L.alpha) {
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
            params.push_back(std::make_unique<DevBuf>(L.params[k]));
            grads.push_back(std::make_unique<DevBuf>(L.grads[k]));
        }
    }
    SeedLayerView view(HostSeedLayer& L) {
        SeedLayerView v = L.view();
        v.chunk_offset = off.as<int32_t>();
        v.stage = stage.as<uint8_t>();
        v.kind = kind.as<uint8_t>();
        v.slot = slot.as<int32_t>();
        v.alpha = alpha.as<float>();
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
            v.arenas[k].params = params[k]->as<float>();
            v.arenas[k].grads = grads[k]->as<float>();
        }
        return v;
    }
};

struct DeviceTelemetry {
    DevBuf count, mean, m2, dead, grad_sq, contribution;
    explicit DeviceTelemetry(Telemetry& t)
        : count(t.count),
          mean(t.mean),
          m2(t.m2),
          dead(t.dead),
          grad_sq(t.grad_sq),
          contribution(t.contribution) {}
    SeedTelemetryAccum accum() {
        return {count.as<double>(), mean.as<double>(),    m2.as<double>(),
                dead.as<double>(),  grad_sq.as<double>(), contribution.as<double>()};
    }
};

// Telemetry that already holds a few steps' worth of data (tests the device-side Chan merge).
Telemetry prefilled_telemetry(int32_t s, std::mt19937& rng) {
    Telemetry t(s);
    std::uniform_real_distribution<double> u(0.1, 1.0);
    for (int32_t i = 0; i < s; ++i) {
        if (i % 3 == 0) continue;  // some seeds start unmeasured
        t.count[i] = 100 + i;
        t.mean[i] = u(rng) - 0.5;
        t.m2[i] = u(rng) * 30;
        t.dead[i] = i % 5;
        t.grad_sq[i] = u(rng);
        t.contribution[i] = u(rng) - 0.5;
    }
    return t;
}

struct Shape {
    int32_t batch, seeds, min_w, max_w;
};

Shape shape_gen() {
    return GENERATE(Shape{5, 7, 1, 9}, Shape{33, 40, 1, 3}, Shape{17, 5, 20, 70},
                    Shape{64, 300, 1, 4}, Shape{3, 1, 1, 1}, Shape{130, 23, 8, 40},
                    Shape{7, 2000, 0, 3}, Shape{4, 3000, 1, 5}, Shape{2, 40, 20, 70},
                    Shape{9, 3, 100, 160}, Shape{20, 500, 1, 2}, Shape{2, 700, 1, 2});
}

}  // namespace

TEST_CASE("seed_forward kernel matches the reference with telemetry over ragged shapes",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const Shape sh = shape_gen();
    const float alpha_override = GENERATE(-1.0f, 0.0f, 1.0f);
    CAPTURE(sh.batch, sh.seeds, sh.min_w, sh.max_w, alpha_override);
    std::mt19937 rng(sh.batch * 131 + sh.seeds);
    LayerSpec spec;
    spec.batch = sh.batch;
    spec.num_seeds = sh.seeds;
    spec.min_width = sh.min_w;
    spec.max_chunk = sh.max_w;
    HostSeedLayer L = make_layer(spec, rng);
    if (alpha_override >= 0.0f)
        for (auto& a : L.alpha) a = alpha_override;
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n);
    fill_uniform(h, rng, -1.5f, 2.0f);
    for (size_t i = 0; i < n; i += 11) h[i] = 1e-9f;
    Telemetry tel = prefilled_telemetry(L.num_seeds, rng);

    DeviceLayer D(L);
    DevBuf dh_in(h), dy(n * sizeof(float));
    DeviceTelemetry dt(tel);
    DevBuf ws(seed_forward_workspace_bytes(L.num_seeds));
    CUDA_OK(cudaMemset(ws.p, 0, ws.bytes));
    SeedTelemetryAccum dacc = dt.accum();
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreate(&stream));
    // Twice: the second launch checks that the workspace was left clean.
    SeedTelemetryAccum hacc = tel.accum();
    std::vector<float> y_ref(n);
    for (int rep = 0; rep < 2; ++rep) {
        CUDA_OK(cudaMemsetAsync(dy.p, 0xFF, dy.bytes, stream));
        CUDA_OK(launch_seed_forward(D.view(L), dh_in.as<float>(), dy.as<float>(), &dacc, ws.p,
                                    ws.bytes, stream));
        seed_forward_reference(L.view(), h.data(), y_ref.data(), &hacc);
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaStreamDestroy(stream));
    const std::string err = compare(dy.download<float>(), y_ref, 1e-4, 1e-4, "y") +
                            compare(dt.count.download<double>(), tel.count, 0, 0, "count") +
                            compare(dt.mean.download<double>(), tel.mean, 1e-6, 1e-5, "mean") +
                            compare(dt.m2.download<double>(), tel.m2, 1e-4, 1e-4, "m2") +
                            compare(dt.dead.download<double>(), tel.dead, 0, 0, "dead");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("seed_forward and seed_backward run wide chunks as batched GEMMs like the reference",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const int forced_stage = GENERATE(-1, int(SeedStage::kGrafting));
    const int32_t min_width = GENERATE(64, 256);  // wide: max_width >= 64 (residual_mlp only;
                                                  // lowrank rank 3 and scale_shift stay on the
                                                  // kernels, which skip the GEMMs' seeds)
    CAPTURE(forced_stage, min_width);
    std::mt19937 rng(4242 + forced_stage + min_width);
    LayerSpec spec;
    spec.batch = 37;
    spec.num_seeds = 8;
    spec.min_width = min_width;
    spec.max_chunk = min_width + 44;
    spec.forced_stage = forced_stage;
    HostSeedLayer L = make_layer(spec, rng);
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n);
    fill_uniform(h, rng, -1.5f, 2.0f);
    Telemetry tel = prefilled_telemetry(L.num_seeds, rng);
    DeviceLayer D(L);
    DevBuf dh_in(h), dy(n * sizeof(float));
    DeviceTelemetry dt(tel);
    const SeedLayerView dv = D.view(L);
    REQUIRE(seed_forward_workspace_bytes(dv) > seed_forward_workspace_bytes(L.num_seeds));
    DevBuf ws(seed_forward_workspace_bytes(dv));
    CUDA_OK(cudaMemset(ws.p, 0, ws.bytes));
    SeedTelemetryAccum dacc = dt.accum(), hacc = tel.accum();
    std::vector<float> y_ref(n);
    for (int rep = 0; rep < 2; ++rep) {
        CUDA_OK(cudaMemset(dy.p, 0xFF, dy.bytes));
        CUDA_OK(launch_seed_forward(dv, dh_in.as<float>(), dy.as<float>(), &dacc, ws.p, ws.bytes,
                                    nullptr));
        seed_forward_reference(L.view(), h.data(), y_ref.data(), &hacc);
    }
    CUDA_OK(cudaDeviceSynchronize());
    // fp32 GEMMs (no TF32) over up to 600 hidden units: summation order differs from the
    // double reference by a few ulps of |r| ~ 10.
    std::string err = compare(dy.download<float>(), y_ref, 1e-4, 1e-4, "y") +
                      compare(dt.m2.download<double>(), tel.m2, 1e-4, 1e-4, "m2");

    // The backward of the same layer through its GEMMs: twice, the same bits, and the reference.
    std::vector<float> g(n), dh_ref(n);
    fill_uniform(g, rng, -1.0f, 1.0f);
    DevBuf dgbuf(g), ddh(n * sizeof(float));
    REQUIRE(seed_backward_workspace_bytes(dv) > seed_backward_workspace_bytes(L.num_seeds));
    DevBuf bws(seed_backward_workspace_bytes(dv));
    CUDA_OK(cudaMemset(bws.p, 0, bws.bytes));
    std::vector<std::vector<float>> first;
    std::vector<double> first_contribution;
    for (int rep = 0; rep < 2; ++rep) {
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            CUDA_OK(cudaMemset(D.grads[k]->p, 0, D.grads[k]->bytes));
        CUDA_OK(cudaMemset(dt.contribution.p, 0, dt.contribution.bytes));
        CUDA_OK(cudaMemset(ddh.p, 0xFF, ddh.bytes));
        CUDA_OK(launch_seed_backward(dv, dh_in.as<float>(), dgbuf.as<float>(), ddh.as<float>(),
                                     &dacc, bws.p, bws.bytes, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<std::vector<float>> got;
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            got.push_back(D.grads[k]->download<float>());
        const std::vector<double> contribution = dt.contribution.download<double>();
        if (rep == 0) {
            first = got;
            first_contribution = contribution;
            continue;
        }
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            CHECK(std::memcmp(first[k].data(), got[k].data(), got[k].size() * 4) == 0);
        CHECK(std::memcmp(first_contribution.data(), contribution.data(),
                          contribution.size() * sizeof(double)) == 0);
    }
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        std::fill(L.grads[k].begin(), L.grads[k].end(), 0.0f);
    std::fill(tel.contribution.begin(), tel.contribution.end(), 0.0);
    seed_backward_reference(L.view(), h.data(), g.data(), dh_ref.data(), &hacc);
    err += compare(ddh.download<float>(), dh_ref, 1e-4, 1e-4, "dh");
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        err += compare(first[k], L.grads[k], 2e-4, 1e-4, "grads");
    err += compare(first_contribution, tel.contribution, 1e-3, 1e-4, "contribution");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("seed_backward kernel matches the reference: dh, blueprint grads, telemetry",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const Shape sh = shape_gen();
    const bool with_tel = GENERATE(true, false);
    CAPTURE(sh.batch, sh.seeds, sh.min_w, sh.max_w, with_tel);
    std::mt19937 rng(sh.batch * 71 + sh.seeds * 3 + with_tel);
    LayerSpec spec;
    spec.batch = sh.batch;
    spec.num_seeds = sh.seeds;
    spec.min_width = sh.min_w;
    spec.max_chunk = sh.max_w;
    HostSeedLayer L = make_layer(spec, rng);
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n), g(n), dh_ref(n);
    fill_uniform(h, rng, -1.5f, 2.0f);
    fill_uniform(g, rng, -1.0f, 1.0f);
    Telemetry tel = prefilled_telemetry(L.num_seeds, rng);

    DeviceLayer D(L);
    DevBuf dhbuf(h), dgbuf(g), ddh(n * sizeof(float));
    DeviceTelemetry dt(tel);
    DevBuf ws(seed_backward_workspace_bytes(L.num_seeds));
    CUDA_OK(cudaMemset(ws.p, 0, ws.bytes));
    SeedTelemetryAccum dacc = dt.accum(), hacc = tel.accum();
    CUDA_OK(launch_seed_backward(D.view(L), dhbuf.as<float>(), dgbuf.as<float>(), ddh.as<float>(),
                                 with_tel ? &dacc : nullptr, ws.p, ws.bytes, nullptr));
    seed_backward_reference(L.view(), h.data(), g.data(), dh_ref.data(),
                            with_tel ? &hacc : nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    std::string err = compare(ddh.download<float>(), dh_ref, 1e-4, 1e-4, "dh");
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        err += compare(D.grads[k]->download<float>(), L.grads[k], 2e-4, 1e-4, "grads");
    err +=
        compare(dt.grad_sq.download<double>(), tel.grad_sq, 1e-5, 1e-5, "grad_sq") +
        compare(dt.contribution.download<double>(), tel.contribution, 1e-3, 1e-4, "contribution");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("seed_backward gives bit-identical blueprint gradients and contributions on every run",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    // Few listed seeds over many rows (row groups + the ordered sum), many listed seeds (one
    // group each, written straight into the arena), tiny blueprints (blocks owning 32 seeds).
    const Shape sh = GENERATE(Shape{512, 6, 16, 40}, Shape{300, 40, 1, 9}, Shape{4, 3000, 1, 5},
                              Shape{333, 500, 1, 2}, Shape{1024, 3, 100, 160});
    CAPTURE(sh.batch, sh.seeds, sh.min_w, sh.max_w);
    std::mt19937 rng(sh.batch * 17 + sh.seeds);
    LayerSpec spec;
    spec.batch = sh.batch;
    spec.num_seeds = sh.seeds;
    spec.min_width = sh.min_w;
    spec.max_chunk = sh.max_w;
    HostSeedLayer L = make_layer(spec, rng);
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n), g(n);
    fill_uniform(h, rng, -1.5f, 2.0f);
    fill_uniform(g, rng, -1.0f, 1.0f);
    Telemetry tel(L.num_seeds);
    DeviceLayer D(L);
    DeviceTelemetry dt(tel);
    DevBuf dhbuf(h), dgbuf(g), ddh(n * sizeof(float)), dy(n * sizeof(float));
    DevBuf fws(seed_forward_workspace_bytes(L.num_seeds));
    DevBuf ws(seed_backward_workspace_bytes(L.num_seeds));
    CUDA_OK(cudaMemset(fws.p, 0, fws.bytes));
    CUDA_OK(cudaMemset(ws.p, 0, ws.bytes));
    DevBuf noise(size_t(256) << 20);  // another stream keeps the memory system busy in run 2
    SeedTelemetryAccum dacc = dt.accum();
    const SeedLayerView dv = D.view(L);
    cudaStream_t s1, s2, s3;
    CUDA_OK(cudaStreamCreate(&s1));
    CUDA_OK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
    CUDA_OK(cudaStreamCreateWithFlags(&s3, cudaStreamNonBlocking));
    struct Run {
        std::vector<std::vector<float>> grads;
        std::vector<double> contribution;
    };
    auto run = [&](int which) {
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            CUDA_OK(cudaMemset(D.grads[k]->p, 0, D.grads[k]->bytes));
        CUDA_OK(cudaMemset(dt.contribution.p, 0, dt.contribution.bytes));
        CUDA_OK(cudaDeviceSynchronize());
        if (which == 0) {
            CUDA_OK(launch_seed_backward(dv, dhbuf.as<float>(), dgbuf.as<float>(), ddh.as<float>(),
                                         &dacc, ws.p, ws.bytes, s1));
        } else {  // a forward first, a concurrent memory hog, another stream
            CUDA_OK(launch_seed_forward(dv, dhbuf.as<float>(), dy.as<float>(), &dacc, fws.p,
                                        fws.bytes, s2));
            CUDA_OK(cudaMemsetAsync(noise.p, which, noise.bytes, s3));
            CUDA_OK(launch_seed_backward(dv, dhbuf.as<float>(), dgbuf.as<float>(), ddh.as<float>(),
                                         &dacc, ws.p, ws.bytes, s2));
            CUDA_OK(cudaMemsetAsync(noise.p, which + 1, noise.bytes, s3));
        }
        CUDA_OK(cudaDeviceSynchronize());
        Run r;
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            r.grads.push_back(D.grads[k]->download<float>());
        r.contribution = dt.contribution.download<double>();
        return r;
    };
    const Run a = run(0), b = run(1), c = run(2);
    size_t nonzero = 0;
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
        REQUIRE(a.grads[k].size() == b.grads[k].size());
        CHECK(std::memcmp(a.grads[k].data(), b.grads[k].data(), a.grads[k].size() * 4) == 0);
        CHECK(std::memcmp(a.grads[k].data(), c.grads[k].data(), a.grads[k].size() * 4) == 0);
        for (float x : a.grads[k]) nonzero += x != 0.0f;
    }
    CHECK(std::memcmp(a.contribution.data(), b.contribution.data(),
                      a.contribution.size() * sizeof(double)) == 0);
    CHECK(std::memcmp(a.contribution.data(), c.contribution.data(),
                      a.contribution.size() * sizeof(double)) == 0);
    CHECK(nonzero > 0);  // the runs did produce gradients
    // And they are the right ones.
    std::vector<float> dh_ref(n);
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        std::fill(L.grads[k].begin(), L.grads[k].end(), 0.0f);
    SeedTelemetryAccum hacc = tel.accum();
    seed_backward_reference(L.view(), h.data(), g.data(), dh_ref.data(), &hacc);
    std::string err = compare(ddh.download<float>(), dh_ref, 1e-4, 1e-4, "dh");
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        err += compare(c.grads[k], L.grads[k], 2e-4, 1e-4, "grads");
    err += compare(c.contribution, tel.contribution, 1e-3, 1e-4, "contribution");
    INFO(err);
    CHECK(err.empty());
    CUDA_OK(cudaStreamDestroy(s1));
    CUDA_OK(cudaStreamDestroy(s2));
    CUDA_OK(cudaStreamDestroy(s3));
}

TEST_CASE("seed_state_update kernel matches the reference", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    std::mt19937 rng(9);
    const int32_t S = 1000;
    std::vector<uint8_t> stage(S), kind(S);
    std::vector<int32_t> slot(S);
    std::vector<float> alpha(S);
    std::vector<uint32_t> steps(S);
    for (int32_t s = 0; s < S; ++s) {
        stage[s] = uint8_t(rng() % kNumSeedStages);
        kind[s] = uint8_t(rng() % kNumChunkBlueprintKinds);
        slot[s] = int32_t(rng() % 50) - 1;
        alpha[s] = float(rng() % 100) / 100.0f + 0.005f;
        steps[s] = rng() % 1000;
    }
    steps[3] = 0xffffffffu;
    std::vector<SeedUpdate> ups;
    for (int32_t s = 0; s < S; s += 7) {
        SeedUpdate u;
        u.seed = s;
        u.fields = uint32_t(rng() % 16) | 1u;
        u.stage = uint8_t(rng() % kNumSeedStages);
        u.kind = uint8_t(rng() % 3);
        u.slot = int32_t(rng() % 9);
        u.alpha = 0.25f;
        ups.push_back(u);
    }
    ups.push_back(SeedUpdate{S + 5, kSeedUpdateStage, 1, 0, 0, 0.0f});  // out of range: ignored
    DevBuf ds(stage), dk(kind), dsl(slot), da(alpha), dst(steps), du(ups);
    SeedTableView dtab{S,
                       ds.as<uint8_t>(),
                       dk.as<uint8_t>(),
                       dsl.as<int32_t>(),
                       da.as<float>(),
                       dst.as<uint32_t>()};
    SeedTableView htab{S, stage.data(), kind.data(), slot.data(), alpha.data(), steps.data()};
    CUDA_OK(
        launch_seed_state_update(dtab, du.as<SeedUpdate>(), int32_t(ups.size()), true, nullptr));
    seed_state_update_reference(htab, ups.data(), int32_t(ups.size()), true);
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(ds.download<uint8_t>() == stage);
    CHECK(dk.download<uint8_t>() == kind);
    CHECK(dsl.download<int32_t>() == slot);
    CHECK(da.download<float>() == alpha);
    CHECK(dst.download<uint32_t>() == steps);
}

TEST_CASE("fused optimizer kernels match the references over several steps", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const int64_t n = GENERATE(1, 1000, 300001);
    CAPTURE(n);
    std::mt19937 rng{static_cast<uint32_t>(n)};
    std::vector<float> p(n), g(n), buf(n, 0.0f), m(n, 0.0f), v(n, 0.0f);
    fill_uniform(p, rng, -1.f, 1.f);
    std::vector<float> p2 = p;
    DevBuf dp(p), dp2(p2), dg(n * 4), dbuf(buf), dm(m), dv(v);
    DevBuf dsgd(sizeof(SgdHyper)), dadam(sizeof(AdamwHyper));
    const SgdHyper sh{0.05f, 0.9f, 1e-3f};
    dsgd.upload(std::vector<SgdHyper>{sh});
    for (int step = 1; step <= 3; ++step) {
        fill_uniform(g, rng, -1.f, 1.f);
        dg.upload(g);
        const AdamwHyper ah{1e-2f, 0.9f, 0.999f, 1e-8f, 0.05f, step};
        dadam.upload(std::vector<AdamwHyper>{ah});
        CUDA_OK(launch_sgd_momentum_step(dp.as<float>(), dg.as<float>(), dbuf.as<float>(), n,
                                         dsgd.as<SgdHyper>(), nullptr));
        CUDA_OK(launch_adamw_step(dp2.as<float>(), dg.as<float>(), dm.as<float>(), dv.as<float>(),
                                  n, dadam.as<AdamwHyper>(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        sgd_momentum_step_reference(p.data(), g.data(), buf.data(), n, sh.lr, sh.momentum,
                                    sh.weight_decay);
        adamw_step_reference(p2.data(), g.data(), m.data(), v.data(), n, ah.lr, ah.beta1, ah.beta2,
                             ah.eps, ah.weight_decay, step);
    }
    const std::string err = compare(dp.download<float>(), p, 1e-6, 1e-5, "sgd") +
                            compare(dp2.download<float>(), p2, 1e-6, 1e-5, "adamw");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("softmax cross-entropy kernel matches the reference", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const int32_t B = GENERATE(1, 37, 1024);
    const int32_t C = GENERATE(2, 10, 100, 256, 1000);
    CAPTURE(B, C);
    std::mt19937 rng(uint32_t(B * 1000 + C));
    std::vector<float> z(size_t(B) * C), dz_ref(z.size());
    fill_uniform(z, rng, -4.f, 4.f);
    std::vector<int32_t> labels(B);
    for (auto& l : labels) l = int32_t(rng() % C);
    float loss_ref;
    int32_t correct_ref;
    softmax_xent_reference(z.data(), labels.data(), B, C, &loss_ref, dz_ref.data(), &correct_ref);
    DevBuf dz(z), dl(labels), ddz(z.size() * 4), dloss(4), dcorrect(4);
    DevBuf ws(softmax_xent_workspace_bytes(B));
    CUDA_OK(launch_softmax_xent(dz.as<float>(), dl.as<int32_t>(), B, C, dloss.as<float>(),
                                ddz.as<float>(), dcorrect.as<int32_t>(), ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(dloss.download<float>()[0] == Approx(loss_ref).epsilon(1e-5));
    CHECK(dcorrect.download<int32_t>()[0] == correct_ref);
    const std::string err = compare(ddz.download<float>(), dz_ref, 1e-7, 1e-4, "dlogits");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("bias+activation kernels match the references", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const int act = GENERATE(0, 1, 2);
    const int32_t R = GENERATE(1, 63, 130);
    const int32_t C = GENERATE(1, 33, 256, 257);  // 256: the four-wide kernels
    CAPTURE(act, R, C);
    std::mt19937 rng(uint32_t(act * 7 + R * 13 + C));
    std::vector<float> z(size_t(R) * C), bias(C), da(z.size()), a_ref(z.size()), dz_ref(z.size()),
        db_ref(C);
    fill_uniform(z, rng, -3.f, 3.f);
    fill_uniform(bias, rng, -1.f, 1.f);
    fill_uniform(da, rng, -1.f, 1.f);
    DevBuf dz(z), db(bias), dda(da), da_out(z.size() * 4), ddz(z.size() * 4), ddb(C * 4);
    DevBuf ws(bias_act_backward_workspace_bytes(R, C));
    std::vector<float> z_ref = z;
    bias_act_forward_reference(z_ref.data(), bias.data(), a_ref.data(), R, C, Activation(act));
    bias_act_backward_reference(da.data(), z_ref.data(), dz_ref.data(), db_ref.data(), R, C,
                                Activation(act));
    CUDA_OK(launch_bias_act_forward(dz.as<float>(), db.as<float>(), da_out.as<float>(), R, C,
                                    Activation(act), nullptr));
    CUDA_OK(launch_bias_act_backward(dda.as<float>(), dz.as<float>(), ddz.as<float>(),
                                     ddb.as<float>(), R, C, Activation(act), ws.p, ws.bytes,
                                     nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::string err = compare(dz.download<float>(), z_ref, 1e-6, 1e-6, "z") +
                            compare(da_out.download<float>(), a_ref, 1e-5, 1e-5, "a") +
                            compare(ddz.download<float>(), dz_ref, 1e-5, 1e-5, "dz") +
                            compare(ddb.download<float>(), db_ref, 1e-4, 1e-4, "dbias");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("bias+activation bf16 ends equal the fp32 kernels followed by a cast, bit for bit",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const int act = GENERATE(0, 1, 2);
    const int32_t R = GENERATE(1, 63, 130, 1000);
    const int32_t C = GENERATE(1, 33, 257, 1536);
    CAPTURE(act, R, C);
    const Activation a = Activation(act);
    const size_t n = size_t(R) * C;
    std::mt19937 rng(uint32_t(act * 11 + R * 17 + C));
    std::vector<float> z(n), bias(C), da(n);
    fill_uniform(z, rng, -3.f, 3.f);
    fill_uniform(bias, rng, -1.f, 1.f);
    fill_uniform(da, rng, -1.f, 1.f);
    DevBuf db(bias), dda(da), ws(bias_act_backward_workspace_bytes(R, C));
    auto bits = [](const DevBuf& b) { return b.download<uint16_t>(); };

    // Forward: fp32 kernel + cast against the bf16 kernel (z written by both).
    DevBuf z1(z), z2(z), a32(n * 4), a16_ref(n * 2), a16(n * 2);
    CUDA_OK(
        launch_bias_act_forward(z1.as<float>(), db.as<float>(), a32.as<float>(), R, C, a, nullptr));
    CUDA_OK(launch_cast_to_bf16(a32.as<float>(), a16_ref.p, int64_t(n), nullptr));
    CUDA_OK(launch_bias_act_forward_bf16(z2.p, false, db.as<float>(), a16.p, R, C, a, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(z1.download<float>() == z2.download<float>());
    CHECK(bits(a16) == bits(a16_ref));

    // Backward from an fp32 da: fp32 kernel + cast against the bf16 kernel, and the bias
    // gradient alone (no dz).
    DevBuf dz32(n * 4), dz16_ref(n * 2), db32(size_t(C) * 4), dz16(n * 2), db16(size_t(C) * 4),
        db_only(size_t(C) * 4);
    CUDA_OK(launch_bias_act_backward(dda.as<float>(), z1.as<float>(), dz32.as<float>(),
                                     db32.as<float>(), R, C, a, ws.p, ws.bytes, nullptr));
    CUDA_OK(launch_cast_to_bf16(dz32.as<float>(), dz16_ref.p, int64_t(n), nullptr));
    CUDA_OK(launch_bias_act_backward_bf16(dda.p, false, z1.p, false, dz16.p, db16.as<float>(), R, C,
                                          a, ws.p, ws.bytes, nullptr));
    CUDA_OK(launch_bias_act_backward_bf16(dda.p, false, z1.p, false, nullptr, db_only.as<float>(),
                                          R, C, a, ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(bits(dz16) == bits(dz16_ref));
    CHECK(db16.download<float>() == db32.download<float>());
    CHECK(db_only.download<float>() == db32.download<float>());

    // Backward from a bf16 da: equal to the fp32 kernel on its exact fp32 values; for kIdentity
    // without z (a cast fused with the column sums), dz16 is da16 itself.
    DevBuf da16(n * 2), da_wide(n * 4), dz32b(n * 4), dz16b_ref(n * 2), db32b(size_t(C) * 4),
        dz16b(n * 2), db16b(size_t(C) * 4);
    CUDA_OK(launch_cast_to_bf16(dda.as<float>(), da16.p, int64_t(n), nullptr));
    CUDA_OK(launch_cast_from_bf16(da16.p, da_wide.as<float>(), int64_t(n), nullptr));
    CUDA_OK(launch_bias_act_backward(da_wide.as<float>(), z1.as<float>(), dz32b.as<float>(),
                                     db32b.as<float>(), R, C, a, ws.p, ws.bytes, nullptr));
    CUDA_OK(launch_cast_to_bf16(dz32b.as<float>(), dz16b_ref.p, int64_t(n), nullptr));
    const void* zp = a == Activation::kIdentity ? nullptr : z1.p;
    CUDA_OK(launch_bias_act_backward_bf16(da16.p, true, zp, false, dz16b.p, db16b.as<float>(), R, C,
                                          a, ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(bits(dz16b) == bits(dz16b_ref));
    CHECK(db16b.download<float>() == db32b.download<float>());
    if (a == Activation::kIdentity) CHECK(bits(dz16b) == bits(da16));

    // z in bf16 (the fc product written in bf16): z + bias is stored rounded, the activation and
    // its derivative read the rounded value — the fp32 kernels on those values, then a cast.
    std::vector<uint16_t> z16_in(n), z16_want(n);
    for (size_t i = 0; i < n; ++i) {
        z16_in[i] = esper::kernels::bf16_bits(z[i]);
        z16_want[i] =
            esper::kernels::bf16_bits(esper::kernels::bf16_value(z16_in[i]) + bias[i % size_t(C)]);
    }
    DevBuf z16(z16_in), zr(n * 4), ar32(n * 4), ar16(n * 2), af16(n * 2);
    CUDA_OK(launch_bias_act_forward_bf16(z16.p, true, db.as<float>(), af16.p, R, C, a, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(bits(z16) == z16_want);
    CUDA_OK(launch_cast_from_bf16(z16.p, zr.as<float>(), int64_t(n), nullptr));
    CUDA_OK(launch_bias_act_forward(zr.as<float>(), nullptr, ar32.as<float>(), R, C, a, nullptr));
    CUDA_OK(launch_cast_to_bf16(ar32.as<float>(), ar16.p, int64_t(n), nullptr));
    DevBuf dzr32(n * 4), dzr16_ref(n * 2), dbr32(size_t(C) * 4), dzr16(n * 2), dbr16(size_t(C) * 4);
    CUDA_OK(launch_bias_act_backward(da_wide.as<float>(), zr.as<float>(), dzr32.as<float>(),
                                     dbr32.as<float>(), R, C, a, ws.p, ws.bytes, nullptr));
    CUDA_OK(launch_cast_to_bf16(dzr32.as<float>(), dzr16_ref.p, int64_t(n), nullptr));
    CUDA_OK(launch_bias_act_backward_bf16(da16.p, true, z16.p, true, dzr16.p, dbr16.as<float>(), R,
                                          C, a, ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    CHECK(bits(af16) == bits(ar16));
    CHECK(bits(dzr16) == bits(dzr16_ref));
    CHECK(dbr16.download<float>() == dbr32.download<float>());

    // The four-wide kernels (cols % 4 == 0, aligned) against the one-wide ones (the same tensors
    // one element into their buffers, so not aligned): the same bits.
    if (C % 4 == 0) {
        DevBuf zo((n + 1) * 2), ao((n + 1) * 2), dao((n + 1) * 2), dzo((n + 1) * 2),
            dbo(size_t(C) * 4);
        auto* zo16 = zo.as<uint16_t>() + 1;
        CUDA_OK(cudaMemcpy(zo16, z16_in.data(), n * 2, cudaMemcpyHostToDevice));
        CUDA_OK(cudaMemcpy(dao.as<uint16_t>() + 1, da16.p, n * 2, cudaMemcpyDeviceToDevice));
        CUDA_OK(launch_bias_act_forward_bf16(zo16, true, db.as<float>(), ao.as<uint16_t>() + 1, R,
                                             C, a, nullptr));
        CUDA_OK(launch_bias_act_backward_bf16(dao.as<uint16_t>() + 1, true, zo16, true,
                                              dzo.as<uint16_t>() + 1, dbo.as<float>(), R, C, a,
                                              ws.p, ws.bytes, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        auto tail = [&](const DevBuf& b) {
            std::vector<uint16_t> v = bits(b);
            return std::vector<uint16_t>(v.begin() + 1, v.end());
        };
        CHECK(tail(zo) == bits(z16));
        CHECK(tail(ao) == bits(af16));
        CHECK(tail(dzo) == bits(dzr16));
        CHECK(dbo.download<float>() == dbr16.download<float>());
    }

    // The backward writing the activation again (a16), in place (dz16 = da), four-wide and
    // one-wide: the forward's activation and the same gradients, bit for bit.
    for (const size_t off : {size_t(0), size_t(1)}) {
        CAPTURE(off);
        DevBuf dai((n + 1) * 2), ai((n + 1) * 2), zi((n + 1) * 2), dbi(size_t(C) * 4);
        auto* da_in = dai.as<uint16_t>() + off;
        auto* z_in = zi.as<uint16_t>() + off;
        CUDA_OK(cudaMemcpy(da_in, da16.p, n * 2, cudaMemcpyDeviceToDevice));
        CUDA_OK(cudaMemcpy(z_in, z16.p, n * 2, cudaMemcpyDeviceToDevice));  // z + bias, bf16
        CUDA_OK(launch_bias_act_backward_bf16(da_in, true, z_in, true, da_in, dbi.as<float>(), R, C,
                                              a, ws.p, ws.bytes, nullptr, ai.as<uint16_t>() + off));
        CUDA_OK(cudaDeviceSynchronize());
        auto part = [&](const DevBuf& b) {
            std::vector<uint16_t> v = bits(b);
            return std::vector<uint16_t>(v.begin() + long(off), v.begin() + long(off + n));
        };
        CHECK(part(ai) == bits(af16));
        CHECK(part(dai) == bits(dzr16));
        CHECK(dbi.download<float>() == dbr16.download<float>());
        CHECK(launch_bias_act_backward_bf16(da_in, true, nullptr, true, da_in, nullptr, R, C,
                                            Activation::kIdentity, ws.p, ws.bytes, nullptr,
                                            ai.p) == cudaErrorInvalidValue);  // a16 needs z
    }

    // And against the CPU reference, within bf16's rounding.
    std::vector<float> z_ref = z, a_ref(n), dz_ref(n), db_ref(C);
    bias_act_forward_reference(z_ref.data(), bias.data(), a_ref.data(), R, C, a);
    bias_act_backward_reference(da.data(), z_ref.data(), dz_ref.data(), db_ref.data(), R, C, a);
    auto widen = [](const std::vector<uint16_t>& v) {
        std::vector<float> out(v.size());
        for (size_t i = 0; i < v.size(); ++i) out[i] = esper::kernels::bf16_value(v[i]);
        return out;
    };
    const std::string err = compare(widen(bits(a16)), a_ref, 1e-2, 8e-3, "a16") +
                            compare(widen(bits(dz16)), dz_ref, 1e-2, 8e-3, "dz16") +
                            compare(db16.download<float>(), db_ref, 1e-3, 1e-4, "dbias");
    INFO(err);
    CHECK(err.empty());

    // A GELU or ReLU backward needs z; an output-less call is refused.
    if (a != Activation::kIdentity)
        CHECK(launch_bias_act_backward_bf16(dda.p, false, nullptr, false, dz16.p, db16.as<float>(),
                                            R, C, a, ws.p, ws.bytes,
                                            nullptr) == cudaErrorInvalidValue);
    CHECK(launch_bias_act_backward_bf16(dda.p, false, z1.p, false, nullptr, nullptr, R, C, a, ws.p,
                                        ws.bytes, nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("a captured CUDA graph of forward, backward and SGD replays like the references",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICE();
    std::mt19937 rng(2024);
    LayerSpec spec;
    spec.batch = 48;
    spec.num_seeds = 60;
    spec.min_width = 1;
    spec.max_chunk = 12;
    HostSeedLayer L = make_layer(spec, rng);
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n), g(n), y(n), dh(n);
    fill_uniform(h, rng, -1.f, 1.f);
    fill_uniform(g, rng, -1.f, 1.f);
    Telemetry tel(L.num_seeds);
    DeviceLayer D(L);
    DeviceTelemetry dt(tel);
    DevBuf dhb(h), dgb(g), dy(n * 4), ddh(n * 4);
    DevBuf fws(seed_forward_workspace_bytes(L.num_seeds)),
        bws(seed_backward_workspace_bytes(L.num_seeds));
    CUDA_OK(cudaMemset(fws.p, 0, fws.bytes));
    CUDA_OK(cudaMemset(bws.p, 0, bws.bytes));
    std::vector<std::unique_ptr<DevBuf>> mom;
    std::vector<std::vector<float>> hmom;
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
        hmom.emplace_back(L.params[k].size(), 0.0f);
        mom.push_back(std::make_unique<DevBuf>(hmom.back()));
    }
    DevBuf dhyper(sizeof(SgdHyper));
    const SgdHyper hyper{0.01f, 0.9f, 0.0f};
    dhyper.upload(std::vector<SgdHyper>{hyper});
    SeedTelemetryAccum dacc = dt.accum(), hacc = tel.accum();
    const SeedLayerView dv = D.view(L);
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreate(&stream));
    auto enqueue = [&]() {
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            CUDA_OK(cudaMemsetAsync(D.grads[k]->p, 0, D.grads[k]->bytes, stream));
        CUDA_OK(launch_seed_forward(dv, dhb.as<float>(), dy.as<float>(), &dacc, fws.p, fws.bytes,
                                    stream));
        CUDA_OK(launch_seed_backward(dv, dhb.as<float>(), dgb.as<float>(), ddh.as<float>(), &dacc,
                                     bws.p, bws.bytes, stream));
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            CUDA_OK(launch_sgd_momentum_step(D.params[k]->as<float>(), D.grads[k]->as<float>(),
                                             mom[k]->as<float>(), int64_t(L.params[k].size()),
                                             dhyper.as<SgdHyper>(), stream));
    };
    auto reference_step = [&]() {
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            std::fill(L.grads[k].begin(), L.grads[k].end(), 0.f);
        seed_forward_reference(L.view(), h.data(), y.data(), &hacc);
        seed_backward_reference(L.view(), h.data(), g.data(), dh.data(), &hacc);
        for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
            sgd_momentum_step_reference(L.params[k].data(), L.grads[k].data(), hmom[k].data(),
                                        int64_t(L.params[k].size()), hyper.lr, hyper.momentum,
                                        hyper.weight_decay);
    };
    enqueue();  // warm-up outside the capture (first-use attribute queries)
    reference_step();
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    enqueue();
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    for (int rep = 0; rep < 3; ++rep) {
        CUDA_OK(cudaGraphLaunch(exec, stream));
        reference_step();
    }
    CUDA_OK(cudaStreamSynchronize(stream));
    std::string err =
        compare(dy.download<float>(), y, 1e-4, 1e-4, "y") +
        compare(ddh.download<float>(), dh, 1e-4, 1e-4, "dh") +
        compare(dt.m2.download<double>(), tel.m2, 1e-4, 1e-4, "m2") +
        compare(dt.contribution.download<double>(), tel.contribution, 1e-3, 1e-4, "contribution");
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k)
        err += compare(D.params[k]->download<float>(), L.params[k], 1e-5, 1e-4, "params");
    INFO(err);
    CHECK(err.empty());
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
}
