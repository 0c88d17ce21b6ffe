// CPU tests of the seed-layer references: identity for non-blending stages, the blend formula
// against an independent naive evaluation, telemetry against naive double sums, and finite-
// difference checks of seed_backward_reference for every stage and blueprint kind.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/seed_layer.h"
#include "tests/kernels/kernel_test_util.h"

using namespace esper::kernels;
using esper::kernels::test::compare;
using esper::kernels::test::fill_uniform;
using esper::kernels::test::HostSeedLayer;
using esper::kernels::test::LayerSpec;
using esper::kernels::test::make_layer;
using esper::kernels::test::Telemetry;

namespace {

// Independent evaluation of r for one seed row (written from the seed_layer.h slot layout). x has
// w entries for chunk input, the arena's in_width entries for a layer-input MLP blueprint.
std::vector<double> naive_r(HostSeedLayer& L, int32_t s, const float* x, int32_t w) {
    std::vector<double> out(w, 0.0);
    if (L.slot[s] < 0) return out;
    const int k = L.kind[s];
    const BlueprintArena& a = L.arena[k];
    const float* p = L.params[k].data() + static_cast<size_t>(L.slot[s]) * a.stride;
    if (k == static_cast<int>(BlueprintKind::kScaleShift)) {
        for (int i = 0; i < w; ++i) out[i] = double(p[i]) * x[i] + p[a.max_width + i];
        return out;
    }
    const int H = a.hidden, M = a.max_width;
    const int N = a.in_width > 0 ? a.in_width : M;  // V's row stride
    const int n = a.in_width > 0 ? a.in_width : w;  // entries of x read
    const float* V = p;
    const float* b1 = p + H * N;
    const float* U = b1 + H;
    const float* b2 = U + M * H;
    std::vector<double> hid(H);
    for (int j = 0; j < H; ++j) {
        double z = b1[j];
        for (int i = 0; i < n; ++i) z += double(V[j * N + i]) * x[i];
        hid[j] = (k == static_cast<int>(BlueprintKind::kResidualMlp) && z < 0) ? 0.0 : z;
    }
    for (int i = 0; i < w; ++i) {
        double acc = b2[i];
        for (int j = 0; j < H; ++j) acc += double(U[i * H + j]) * hid[j];
        out[i] = acc;
    }
    return out;
}

double loss_of(HostSeedLayer& L, const std::vector<float>& h, const std::vector<float>& dy) {
    std::vector<float> y(h.size());
    seed_forward_reference(L.view(), h.data(), y.data(), nullptr);
    double acc = 0.0;
    for (size_t i = 0; i < y.size(); ++i) acc += double(dy[i]) * y[i];
    return acc;
}

}  // namespace

TEST_CASE("all-dormant seed layer is the identity and leaves blueprint grads alone",
          "[kernels][reference]") {
    std::mt19937 rng(11);
    LayerSpec spec;
    spec.all_dormant = true;
    spec.num_seeds = 13;
    HostSeedLayer L = make_layer(spec, rng);
    std::vector<float> h(size_t(L.batch) * L.width), dy(h.size()), y(h.size(), NAN),
        dh(h.size(), NAN);
    fill_uniform(h, rng, -2.f, 2.f);
    fill_uniform(dy, rng, -1.f, 1.f);
    const auto grads_before = L.grads[0];
    seed_forward_reference(L.view(), h.data(), y.data(), nullptr);
    seed_backward_reference(L.view(), h.data(), dy.data(), dh.data(), nullptr);
    CHECK(std::memcmp(y.data(), h.data(), h.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(dh.data(), dy.data(), dy.size() * sizeof(float)) == 0);
    CHECK(L.grads[0] == grads_before);
}

TEST_CASE("stages that do not blend return h exactly, blending stages follow the formula",
          "[kernels][reference]") {
    std::mt19937 rng(12);
    LayerSpec spec;
    spec.num_seeds = 33;  // three of each stage, every kind
    spec.batch = 4;
    HostSeedLayer L = make_layer(spec, rng);
    std::vector<float> h(size_t(L.batch) * L.width), y(h.size(), NAN);
    fill_uniform(h, rng, -2.f, 2.f);
    seed_forward_reference(L.view(), h.data(), y.data(), nullptr);
    std::string err;
    for (int32_t s = 0; s < L.num_seeds; ++s) {
        const auto st = static_cast<SeedStage>(L.stage[s]);
        const int32_t c0 = L.chunk_offset[s], w = L.chunk_offset[s + 1] - c0;
        const double a = st == SeedStage::kGrafting ? L.alpha[s]
                         : (st >= SeedStage::kStabilization && st <= SeedStage::kFossilized) ? 1.0
                                                                                             : 0.0;
        for (int32_t b = 0; b < L.batch; ++b) {
            const float* x = h.data() + size_t(b) * L.width + c0;
            const float* yr = y.data() + size_t(b) * L.width + c0;
            if (a == 0.0) {
                for (int i = 0; i < w; ++i)
                    if (yr[i] != x[i]) err += "stage " + std::to_string(int(st)) + " changed h\n";
                continue;
            }
            const auto r = naive_r(L, s, x, w);
            std::vector<float> got(yr, yr + w);
            std::vector<double> want(w);
            for (int i = 0; i < w; ++i) want[i] = x[i] + a * r[i];
            err += compare(got, want, 1e-5, 1e-5, "y");
        }
    }
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("telemetry merges match naive double statistics over every sample",
          "[kernels][reference]") {
    std::mt19937 rng(13);
    LayerSpec spec;
    spec.num_seeds = 22;
    spec.batch = 6;
    spec.max_chunk = 17;
    HostSeedLayer L = make_layer(spec, rng);
    Telemetry tel(L.num_seeds);
    SeedTelemetryAccum acc = tel.accum();
    const size_t n = size_t(L.batch) * L.width;
    std::vector<std::vector<float>> hs, dys;
    std::vector<float> y(n), dh(n);
    for (int step = 0; step < 3; ++step) {
        std::vector<float> h(n), dy(n);
        fill_uniform(h, rng, -1.f + step, 1.5f + 2 * step);  // shifting mean: tests the merge
        fill_uniform(dy, rng, -0.5f, 0.5f);
        for (size_t i = 0; i < n; i += 7) h[i] = 1e-8f;  // some dead units
        seed_forward_reference(L.view(), h.data(), y.data(), &acc);
        seed_backward_reference(L.view(), h.data(), dy.data(), dh.data(), &acc);
        hs.push_back(h);
        dys.push_back(dy);
    }
    std::vector<double> count(L.num_seeds), mean(L.num_seeds), var(L.num_seeds), dead(L.num_seeds),
        gsq(L.num_seeds), contrib(L.num_seeds), got_var(L.num_seeds);
    for (int32_t s = 0; s < L.num_seeds; ++s) {
        const int32_t c0 = L.chunk_offset[s], c1 = L.chunk_offset[s + 1];
        const auto st = static_cast<SeedStage>(L.stage[s]);
        const double a = stage_forward_alpha(st, L.alpha[s]);
        double sum = 0, sq = 0, cnt = 0, dd = 0, g2 = 0, ct = 0;
        for (size_t t = 0; t < hs.size(); ++t)
            for (int32_t b = 0; b < L.batch; ++b) {
                const float* x = hs[t].data() + size_t(b) * L.width + c0;
                const float* g = dys[t].data() + size_t(b) * L.width + c0;
                const auto r = naive_r(L, s, x, c1 - c0);
                for (int32_t i = 0; i < c1 - c0; ++i) {
                    sum += x[i];
                    sq += double(x[i]) * x[i];
                    cnt += 1;
                    dd += std::fabs(x[i]) < kDeadThreshold ? 1 : 0;
                    g2 += double(g[i]) * g[i];
                    ct -= double(g[i]) * a * r[i];
                }
            }
        count[s] = cnt;
        mean[s] = sum / cnt;
        var[s] = sq / cnt - mean[s] * mean[s];
        got_var[s] = tel.m2[s] / tel.count[s];
        dead[s] = dd;
        gsq[s] = g2;
        contrib[s] = ct;
        CHECK(tel.m2[s] >= 0.0);
    }
    std::string err =
        compare(tel.count, count, 0, 0, "count") + compare(tel.mean, mean, 1e-9, 1e-9, "mean") +
        compare(got_var, var, 1e-9, 1e-7, "var") + compare(tel.dead, dead, 0, 0, "dead") +
        compare(tel.grad_sq, gsq, 1e-9, 1e-9, "grad_sq") +
        compare(tel.contribution, contrib, 1e-6, 1e-6, "contribution");
    INFO(err);
    CHECK(err.empty());
    bool some_contribution = false;
    for (double c : contrib) some_contribution |= c != 0.0;
    CHECK(some_contribution);
}

TEST_CASE("seed backward reference matches finite differences for every stage and kind",
          "[kernels][reference]") {
    const int stage = GENERATE(range(0, kNumSeedStages));
    const int kind = GENERATE(range(0, kNumChunkBlueprintKinds));
    CAPTURE(stage, kind);
    std::mt19937 rng(1000 + stage * 7 + kind);
    LayerSpec spec;
    spec.batch = 3;
    spec.num_seeds = 3;
    spec.min_width = 2;
    spec.max_chunk = 6;
    spec.forced_stage = stage;
    spec.forced_kind = kind;
    HostSeedLayer L = make_layer(spec, rng);
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n), dy(n), dh(n, NAN);
    fill_uniform(h, rng, -1.f, 1.f);
    fill_uniform(dy, rng, -1.f, 1.f);
    const std::vector<float> grads0 = L.grads[kind];
    seed_backward_reference(L.view(), h.data(), dy.data(), dh.data(), nullptr);

    // Finite differences of L = Σ dy·y with every seed forced to FINE_TUNING (α = 1, no
    // isolation) give J_full; each stage's gradients are then fixed by the stage functions.
    HostSeedLayer F = L;
    for (auto& st : F.stage) st = static_cast<uint8_t>(SeedStage::kFineTuning);
    const double eps = 1e-3;
    std::vector<double> fd_h(n), fd_p(F.params[kind].size());
    for (size_t i = 0; i < n; ++i) {
        std::vector<float> hp = h, hm = h;
        hp[i] += float(eps);
        hm[i] -= float(eps);
        fd_h[i] = (loss_of(F, hp, dy) - loss_of(F, hm, dy)) / (double(hp[i]) - double(hm[i]));
    }
    for (size_t k = 0; k < fd_p.size(); ++k) {
        const float p0 = F.params[kind][k];
        F.params[kind][k] = p0 + float(eps);
        const double lp = loss_of(F, h, dy);
        const double up = F.params[kind][k];
        F.params[kind][k] = p0 - float(eps);
        const double lm = loss_of(F, h, dy);
        const double dn = F.params[kind][k];
        F.params[kind][k] = p0;
        fd_p[k] = (lp - lm) / (up - dn);
    }
    const auto st = static_cast<SeedStage>(stage);
    const bool runs = stage_runs_blueprint(st);
    std::vector<double> want_dh(n), want_g(grads0.size());
    for (int32_t s = 0; s < L.num_seeds; ++s) {
        const double a_in = runs ? stage_input_grad_alpha(st, L.alpha[s]) : 0.0;
        for (int32_t b = 0; b < L.batch; ++b)
            for (int32_t c = L.chunk_offset[s]; c < L.chunk_offset[s + 1]; ++c) {
                const size_t i = size_t(b) * L.width + c;
                want_dh[i] = dy[i] + a_in * (fd_h[i] - dy[i]);
            }
    }
    for (size_t k = 0; k < want_g.size(); ++k) want_g[k] = grads0[k];
    const int32_t stride = L.arena[kind].stride;
    for (int32_t s = 0; s < L.num_seeds; ++s) {
        if (L.slot[s] < 0 || !runs) continue;
        const double scale = stage_blueprint_grad_scale(st, L.alpha[s]);
        for (int32_t k = 0; k < stride; ++k) {
            const size_t idx = size_t(L.slot[s]) * stride + k;
            want_g[idx] += scale * fd_p[idx];
        }
    }
    std::string err = compare(dh, want_dh, 2e-3, 1e-2, "dh") +
                      compare(L.grads[kind], want_g, 2e-3, 1e-2, "grads");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("grafting gradients equal direct finite differences of the blended loss",
          "[kernels][reference]") {
    const int kind = GENERATE(range(0, kNumChunkBlueprintKinds));
    CAPTURE(kind);
    std::mt19937 rng(77 + kind);
    LayerSpec spec;
    spec.batch = 4;
    spec.num_seeds = 2;
    spec.min_width = 3;
    spec.max_chunk = 5;
    spec.forced_stage = static_cast<int>(SeedStage::kGrafting);
    spec.forced_kind = kind;
    HostSeedLayer L = make_layer(spec, rng);
    for (auto& g : L.grads[kind]) g = 0.0f;
    const size_t n = size_t(L.batch) * L.width;
    std::vector<float> h(n), dy(n), dh(n, NAN);
    fill_uniform(h, rng, -1.f, 1.f);
    fill_uniform(dy, rng, -1.f, 1.f);
    seed_backward_reference(L.view(), h.data(), dy.data(), dh.data(), nullptr);
    std::vector<double> fd(L.params[kind].size());
    const double eps = 1e-3;
    for (size_t k = 0; k < fd.size(); ++k) {
        const float p0 = L.params[kind][k];
        L.params[kind][k] = p0 + float(eps);
        const double lp = loss_of(L, h, dy);
        L.params[kind][k] = p0 - float(eps);
        const double lm = loss_of(L, h, dy);
        L.params[kind][k] = p0;
        fd[k] = (lp - lm) / (2 * eps);
    }
    const std::string err =
        compare(L.grads[kind], fd, 2e-3, 1e-2, "grads") + compare(dh, dy, 0, 0, "dh (isolated)");
    INFO(err);
    CHECK(err.empty());
}

namespace {

// Turns every arena of L into a layer-input arena reading `in_w` features (slot layout of
// seed_layer.h with V [H, in_w]) and refills the parameters with random, non-zero values.
void make_layer_input(HostSeedLayer& L, int32_t in_w, std::mt19937& rng) {
    for (int k = 0; k < kNumChunkBlueprintKinds; ++k) {
        BlueprintArena& a = L.arena[k];
        a.in_width = in_w;
        a.stride = static_cast<int32_t>(
            blueprint_slot_floats(static_cast<BlueprintKind>(k), a.max_width, a.hidden, in_w));
        L.params[k].assign(static_cast<size_t>(a.capacity) * a.stride, 0.0f);
        L.grads[k].assign(L.params[k].size(), 0.0f);
        fill_uniform(L.params[k], rng, -0.6f, 0.6f);
    }
}

double loss_of_input(HostSeedLayer& L, const std::vector<float>& x, int32_t in_w,
                     const std::vector<float>& h, const std::vector<float>& dy) {
    SeedLayerView v = L.view();
    v.input = x.data();
    v.input_width = in_w;
    std::vector<float> y(h.size());
    seed_forward_reference(v, h.data(), y.data(), nullptr);
    double acc = 0.0;
    for (size_t i = 0; i < y.size(); ++i) acc += double(dy[i]) * y[i];
    return acc;
}

}  // namespace

TEST_CASE("layer-input blueprints read the whole layer input and send its gradient to d_input",
          "[kernels][reference]") {
    const int kind = GENERATE(range(0, kNumChunkBlueprintKinds));
    const bool isolated = GENERATE(false, true);  // TRAINING (isolated) or FINE_TUNING
    CAPTURE(kind, isolated);
    std::mt19937 rng(4242 + kind * 3 + (isolated ? 1 : 0));
    LayerSpec spec;
    spec.batch = 3;
    spec.num_seeds = 3;
    spec.min_width = 2;
    spec.max_chunk = 4;
    spec.forced_stage = static_cast<int>(isolated ? SeedStage::kTraining : SeedStage::kFineTuning);
    spec.forced_kind = kind;
    HostSeedLayer L = make_layer(spec, rng);
    const int32_t in_w = 7;  // wider than any chunk: the blueprint sees features outside it
    make_layer_input(L, in_w, rng);
    const bool mlp = kind != static_cast<int>(BlueprintKind::kScaleShift);
    const size_t n = size_t(L.batch) * L.width, nx = size_t(L.batch) * in_w;
    std::vector<float> x(nx), h(n), dy(n), y(n), dh(n, NAN), dx(nx, 0.25f);
    fill_uniform(x, rng, -1.f, 1.f);
    fill_uniform(h, rng, -1.f, 1.f);
    fill_uniform(dy, rng, -1.f, 1.f);
    SeedLayerView v = L.view();
    v.input = x.data();
    v.input_width = in_w;

    // Forward: FINE_TUNING blends r(x) of the whole input row into each chunk (scale_shift still
    // reads its chunk); TRAINING is straight-through (y == h).
    seed_forward_reference(v, h.data(), y.data(), nullptr);
    std::vector<double> want_y(n);
    for (int32_t s = 0; s < L.num_seeds; ++s) {
        const int32_t c0 = L.chunk_offset[s], w = L.chunk_offset[s + 1] - c0;
        for (int32_t b = 0; b < L.batch; ++b) {
            const float* hrow = h.data() + size_t(b) * L.width + c0;
            const std::vector<double> r =
                naive_r(L, s, mlp ? x.data() + size_t(b) * in_w : hrow, w);
            for (int32_t i = 0; i < w; ++i)
                want_y[size_t(b) * L.width + c0 + i] = hrow[i] + (isolated ? 0.0 : r[i]);
        }
    }
    std::string err = compare(y, want_y, 1e-5, 1e-5, "y");

    // Backward against finite differences of Σ dy·y (forward value with α = 1).
    seed_backward_reference(v, h.data(), dy.data(), dh.data(), nullptr, dx.data());
    HostSeedLayer F = L;
    for (auto& st : F.stage) st = static_cast<uint8_t>(SeedStage::kFineTuning);
    const double eps = 1e-3;
    std::vector<double> fd_p(F.params[kind].size()), want_dx(nx), want_dh(n);
    for (size_t k = 0; k < fd_p.size(); ++k) {
        const float p0 = F.params[kind][k];
        F.params[kind][k] = p0 + float(eps);
        const double up = F.params[kind][k], lp = loss_of_input(F, x, in_w, h, dy);
        F.params[kind][k] = p0 - float(eps);
        const double dn = F.params[kind][k], lm = loss_of_input(F, x, in_w, h, dy);
        F.params[kind][k] = p0;
        fd_p[k] = (lp - lm) / (up - dn);
    }
    for (size_t i = 0; i < nx; ++i) {
        std::vector<float> xp = x, xm = x;
        xp[i] += float(eps);
        xm[i] -= float(eps);
        const double fd = (loss_of_input(F, xp, in_w, h, dy) - loss_of_input(F, xm, in_w, h, dy)) /
                          (double(xp[i]) - double(xm[i]));
        // Isolated stages send nothing; scale_shift never reads the input.
        want_dx[i] = 0.25 + (isolated || !mlp ? 0.0 : fd);
    }
    for (size_t i = 0; i < n; ++i) {
        std::vector<float> hp = h, hm = h;
        hp[i] += float(eps);
        hm[i] -= float(eps);
        const double fd = (loss_of_input(F, x, in_w, hp, dy) - loss_of_input(F, x, in_w, hm, dy)) /
                          (double(hp[i]) - double(hm[i]));
        want_dh[i] = isolated ? dy[i] : fd;  // MLP kinds: fd == dy (r does not read h)
    }
    err += compare(
               F.params[kind].size() == L.grads[kind].size() ? L.grads[kind] : std::vector<float>{},
               fd_p, 2e-3, 1e-2, "grads") +
           compare(dx, want_dx, 2e-3, 1e-2, "d_input") + compare(dh, want_dh, 2e-3, 1e-2, "dh");
    INFO(err);
    CHECK(err.empty());
}
