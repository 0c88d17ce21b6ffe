// Widening (layer-input) blueprints on the CUDA backend against the CPU backend, the reference:
// the kernels/widening.h launchers against their CPU references; one step with seeds in every
// stage (loss, host and blueprint gradients, telemetry, evaluation); a germination → FOSSILIZED
// walk and a cull mid-run on the same stages with the same losses and weights; graph replay
// against the uncaptured step. TF32 is off (the backend's default). Without a device every case
// is skipped.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/mlp.h"
#include "kasmina/model/tensor.h"
#include "kasmina/train/cpu_backend.h"
#include "kasmina/train/cuda_backend.h"
#include "kasmina/train/cuda_handles.h"
#include "kasmina/train/trainer.h"
#include "kernels/widening.h"
#include "tests/kasmina/train/teacher_test_util.h"
#include "tests/support/gpu.h"

using namespace esper::kasmina;
using esper::kernels::WideningSeedRef;

namespace {

// CPU (OpenBLAS, float GEMMs) against GPU (cuBLAS fp32): |gpu − cpu| <= kAbsTol + kRelTol·|cpu|
// per step loss; tensors compare by ‖gpu − cpu‖ <= kNormTol·‖cpu‖ + 1e-6.
constexpr double kAbsTol = 2e-3;
constexpr double kRelTol = 2e-3;
constexpr double kNormTol = 1e-3;
constexpr double kGpuGpuTol = 1e-4;

bool close(double a, double b, double abs_tol, double rel_tol) {
    return std::fabs(a - b) <= abs_tol + rel_tol * std::fabs(b);
}

template <typename A, typename B>
double rel_diff(const A& got, const B& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
        num += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
        den += double(want[i]) * double(want[i]);
    }
    return std::sqrt(num) / (std::sqrt(den) + 1e-6);
}

// Two hidden layers (24, 20) on a 16-feature teacher, 4 seeds per layer: chunks of 6 and 5, the
// widening seeds of layer 0 read 16 features and those of layer 1 read 24.
Config widening_config() {
    Config c = test::timer_driven_teacher_config();
    c.run.seed = 11;
    c.run.max_steps = 70;
    c.blueprints.input = BlueprintInput::kLayer;
    return c;
}

template <typename T>
std::vector<T> download(const DeviceBuffer<T>& d) {
    std::vector<T> h(d.size());
    REQUIRE(cudaMemcpy(h.data(), d.get(), d.size() * sizeof(T), cudaMemcpyDeviceToHost) ==
            cudaSuccess);
    return h;
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& h) {
    DeviceBuffer<T> d(h.size());
    REQUIRE(cudaMemcpy(d.get(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) ==
            cudaSuccess);
    return d;
}

}  // namespace

TEST_CASE("the widening kernels match their CPU references", "[kasmina][widening][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const auto kind = GENERATE(BlueprintKind::kResidualMlp, BlueprintKind::kLowrank);
    const SeedStage stage =
        GENERATE(SeedStage::kTraining, SeedStage::kGrafting, SeedStage::kStabilization,
                 SeedStage::kFineTuning, SeedStage::kFossilized);
    CAPTURE(int(kind), int(stage));
    const int32_t rows = 37, w = 13, H = 300, D = 40, c0 = 21;
    Rng rng(5);
    auto random = [&](size_t n) {
        std::vector<float> v(n);
        for (float& x : v) x = rng.uniform(-1.0f, 1.0f);
        return v;
    };
    const std::vector<uint8_t> stages = {0, uint8_t(stage), 0};
    const std::vector<float> alphas = {0.0f, 0.35f, 0.0f};
    const WideningSeedRef host_ref{stages.data(), alphas.data(), 1};
    const DeviceBuffer<uint8_t> d_stages = upload(stages);
    const DeviceBuffer<float> d_alphas = upload(alphas);
    const WideningSeedRef dev_ref{d_stages.get(), d_alphas.get(), 1};

    // Output forward.
    const std::vector<float> b2 = random(size_t(w)), r0 = random(size_t(rows * w)),
                             y0 = random(size_t(rows * D));
    std::vector<float> r = r0, y = y0;
    esper::kernels::widening_output_forward_reference(host_ref, b2.data(), r.data(), y.data(), rows,
                                                      w, D, c0);
    DeviceBuffer<float> d_b2 = upload(b2), d_r = upload(r0), d_y = upload(y0);
    REQUIRE(esper::kernels::launch_widening_output_forward(
                dev_ref, d_b2.get(), d_r.get(), d_y.get(), rows, w, D, c0, nullptr) == cudaSuccess);
    CHECK(rel_diff(download(d_r), r) < 1e-6);
    CHECK(rel_diff(download(d_y), y) < 1e-6);

    // Output backward.
    const std::vector<float> dy = random(size_t(rows * D)), db2_0 = random(size_t(w));
    std::vector<float> g(size_t(rows * w)), gs(size_t(rows * w)), db2 = db2_0;
    double contribution = 0.25;
    esper::kernels::widening_output_backward_reference(host_ref, dy.data(), D, c0, r.data(), rows,
                                                       w, g.data(), gs.data(), db2.data(),
                                                       &contribution);
    DeviceBuffer<float> d_dy = upload(dy), d_g(g.size()), d_gs(gs.size()), d_db2 = upload(db2_0);
    const DeviceBuffer<double> d_contribution = upload(std::vector<double>{0.25});
    REQUIRE(esper::kernels::launch_widening_output_backward(
                dev_ref, d_dy.get(), D, c0, d_r.get(), rows, w, d_g.get(), d_gs.get(), d_db2.get(),
                d_contribution.get(), nullptr) == cudaSuccess);
    CHECK(rel_diff(download(d_g), g) < 1e-6);
    CHECK(rel_diff(download(d_gs), gs) < 1e-6);
    CHECK(rel_diff(download(d_db2), db2) < 1e-5);
    CHECK(download(d_contribution)[0] == Approx(contribution).epsilon(1e-9));

    // Hidden backward: dA from random values, the pre-activation with both signs.
    const std::vector<float> da = random(size_t(rows * H)), z = random(size_t(rows * H)),
                             db1_0 = random(size_t(H));
    std::vector<float> dzs(da.size()), dzi(da.size()), db1 = db1_0;
    esper::kernels::widening_hidden_backward_reference(host_ref, kind, da.data(), z.data(), rows, H,
                                                       dzs.data(), db1.data(), dzi.data());
    DeviceBuffer<float> d_da = upload(da), d_z = upload(z), d_dzs(dzs.size()), d_dzi(dzi.size()),
                        d_db1 = upload(db1_0);
    REQUIRE(esper::kernels::launch_widening_hidden_backward(dev_ref, kind, d_da.get(), d_z.get(),
                                                            rows, H, d_dzs.get(), d_db1.get(),
                                                            d_dzi.get(), nullptr) == cudaSuccess);
    CHECK(rel_diff(download(d_dzs), dzs) < 1e-6);
    CHECK(rel_diff(download(d_dzi), dzi) < 1e-6);
    CHECK(rel_diff(download(d_db1), db1) < 1e-5);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE(
    "one step with widening seeds in every running stage gives the CPU's loss, gradients and "
    "telemetry",
    "[kasmina][widening][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const bool graphs = GENERATE(true, false);
    CAPTURE(graphs);
    const Config c = widening_config();
    const int32_t B = 32, F = 16, classes = 4;
    // Two identical worlds, one per backend.
    struct World {
        std::unique_ptr<Model> model;
        std::unique_ptr<SeedManager> seeds;
        std::unique_ptr<Optimizer> optimizer;
    };
    auto make_world = [&] {
        World w;
        w.model = make_model(c.model, F, classes, c.run.seed);
        w.seeds = std::make_unique<SeedManager>(seed_manager_config(c), w.model->seed_sites());
        w.optimizer = std::make_unique<Optimizer>(c.optimizer, w.model->params(),
                                                  w.model->seed_layer_widths());
        return w;
    };
    World cw = make_world(), gw = make_world();
    // Layer 0 (input: the data): a running seed of each kind and stage, a chunk-reading
    // scale_shift beside them. Layer 1 (input: layer 0's output, so input gradients matter).
    struct Plan {
        int32_t layer, seed;
        BlueprintKind kind;
        SeedStage stage;
    };
    const Plan plan[] = {
        {0, 0, BlueprintKind::kResidualMlp, SeedStage::kTraining},
        {0, 1, BlueprintKind::kLowrank, SeedStage::kGrafting},
        {0, 2, BlueprintKind::kResidualMlp, SeedStage::kFossilized},
        {0, 3, BlueprintKind::kScaleShift, SeedStage::kFineTuning},
        {1, 0, BlueprintKind::kResidualMlp, SeedStage::kFineTuning},
        {1, 1, BlueprintKind::kLowrank, SeedStage::kEvaluating},
        {1, 2, BlueprintKind::kResidualMlp, SeedStage::kStabilization},
        {1, 3, BlueprintKind::kResidualMlp, SeedStage::kGerminated},  // holds a slot, runs not
    };
    Rng rng(77);
    for (World* w : {&cw, &gw})
        for (const Plan& p : plan)
            REQUIRE(w->seeds->apply(test::operator_germinate(p.layer, p.seed, p.kind)).applied());
    SeedManagerSnapshot snap = cw.seeds->snapshot();
    for (const Plan& p : plan) {
        SeedRow& row = snap.layers[size_t(p.layer)].rows[size_t(p.seed)];
        row.stage = p.stage;
        row.alpha = p.stage == SeedStage::kGrafting ? 0.4f : 1.0f;
    }
    cw.seeds->restore(snap);
    gw.seeds->restore(snap);
    // Random blueprint weights (U ≠ 0), the same in both worlds.
    for (const Plan& p : plan) {
        const int32_t slot = cw.seeds->table(p.layer).slot(p.seed);
        REQUIRE(slot >= 0);
        REQUIRE(gw.seeds->table(p.layer).slot(p.seed) == slot);
        auto a = cw.seeds->arenas(p.layer).params(p.kind, slot);
        auto b = gw.seeds->arenas(p.layer).params(p.kind, slot);
        for (size_t i = 0; i < a.size(); ++i) a[i] = b[i] = rng.uniform(-0.5f, 0.5f);
    }
    std::vector<float> x(size_t(B * F));
    std::vector<int32_t> labels(static_cast<size_t>(B));
    for (float& v : x) v = rng.uniform(-1.0f, 1.0f);
    for (int32_t b = 0; b < B; ++b) labels[size_t(b)] = b % classes;
    const Batch batch = features_batch(x.data(), labels.data(), B);
    std::vector<std::vector<float>> before;
    for (const ParamRef& p : gw.model->params())
        before.emplace_back(p.value->span().begin(), p.value->span().end());

    StepBackendOptions so;
    so.batch = B;
    so.eval_batch = B;
    CpuBackend cpu(*cw.model, *cw.seeds, *cw.optimizer, so);
    CudaBackendOptions co;
    co.batch = B;
    co.eval_batch = B;
    co.use_graphs = graphs;
    CudaBackend gpu(c, dynamic_cast<MlpModel&>(*gw.model), gw.seeds.get(), *gw.optimizer, co);
    Telemetry tc({4, 4}), tg({4, 4});
    tc.begin_step();
    tg.begin_step();
    // lr 1, momentum buffer empty: the first SGD update is p −= g, so the GPU's host gradients
    // are read back as the change of its parameters.
    const StepRates rates{1.0, 1.0, {}};
    const StepResult rc = cpu.run_step(batch, rates, tc);
    const StepResult rg = gpu.run_step(batch, rates, tg);
    CHECK(rg.finite);
    CHECK(close(rg.loss, rc.loss, 1e-5, 1e-5));
    CHECK(rg.correct == rc.correct);

    // Blueprint gradients (the GPU copies the live slots' gradients back after the step).
    for (const Plan& p : plan) {
        CAPTURE(p.layer, p.seed);
        const int32_t slot = cw.seeds->table(p.layer).slot(p.seed);
        const auto ga = cw.seeds->arenas(p.layer).grads(p.kind, slot);
        const auto gb = gw.seeds->arenas(p.layer).grads(p.kind, slot);
        CHECK(rel_diff(gb, ga) < kNormTol);
    }
    // Host gradients: layer 0's include the FINE_TUNING/STABILIZATION/EVALUATING layer-1 seeds'
    // input gradients, which only the widening path sends.
    gpu.download_all();
    const auto& ps = gw.model->params();
    for (size_t i = 0; i < ps.size(); ++i) {
        CAPTURE(ps[i].name);
        std::vector<double> g(before[i].size());
        for (size_t k = 0; k < g.size(); ++k) g[k] = double(before[i][k]) - ps[i].value->data()[k];
        CHECK(rel_diff(g, cw.model->params()[i].grad->span()) < kNormTol);
    }
    // Telemetry of every seed: activation statistics, gradient and contribution sums.
    for (int32_t l = 0; l < 2; ++l) {
        const esper::kernels::SeedTelemetryAccum* a = tc.step_accum(l);
        const esper::kernels::SeedTelemetryAccum* b = tg.step_accum(l);
        for (int32_t s = 0; s < 4; ++s) {
            CAPTURE(l, s);
            CHECK(b->count[s] == a->count[s]);
            CHECK(close(b->mean[s], a->mean[s], 1e-6, 1e-5));
            CHECK(close(b->m2[s], a->m2[s], 1e-6, 1e-5));
            CHECK(std::fabs(b->dead[s] - a->dead[s]) <= 1.0);  // a ReLU output at ±1e-6
            CHECK(close(b->grad_sq[s], a->grad_sq[s], 1e-9, 1e-4));
            CHECK(close(b->contribution[s], a->contribution[s], 1e-7, 1e-4));
        }
    }
    // The layer-input seeds did contribute (a non-zero term where the forward α is not 0).
    CHECK(tc.step_accum(1)->contribution[0] != 0.0);
    // Evaluation of the same batch after the update.
    cpu.commit_step(rates);
    gpu.commit_step(rates);
    const BatchResult ec = cpu.eval_batch(batch);
    const BatchResult eg = gpu.eval_batch(batch);
    CHECK(close(eg.loss, ec.loss, 1e-4, 1e-4));
}

TEST_CASE(
    "widening seeds germinated mid-run on the GPU walk to FOSSILIZED, and a cull, on the CPU's "
    "stages, losses and weights",
    "[kasmina][widening][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config cpu_cfg = widening_config();
    cpu_cfg.run.device = "cpu";
    Config gpu_cfg = widening_config();
    gpu_cfg.run.device = "cuda";
    Trainer cpu(cpu_cfg);
    Trainer gpu(gpu_cfg);
    REQUIRE(gpu.cuda() != nullptr);
    double max_diff = 0.0;
    bool seen[esper::kNumSeedStages] = {};
    for (int i = 0; i < 70; ++i) {
        if (i == 8) {
            for (Trainer* t : {&cpu, &gpu}) {
                REQUIRE(t->apply(test::operator_germinate(0, 1, BlueprintKind::kResidualMlp))
                            .applied());
                REQUIRE(
                    t->apply(test::operator_germinate(1, 2, BlueprintKind::kLowrank)).applied());
            }
        }
        if (i == 25)
            for (Trainer* t : {&cpu, &gpu})
                REQUIRE(t->apply(test::operator_germinate(1, 0, BlueprintKind::kResidualMlp))
                            .applied());
        if (i == 29) {  // seed (1, 0) trains behind the host by now: cull it
            REQUIRE(cpu.seeds().table(1).stage(0) == SeedStage::kTraining);
            for (Trainer* t : {&cpu, &gpu}) REQUIRE(t->apply(test::operator_cull(1, 0)).applied());
        }
        const TrainStep a = cpu.step();
        const TrainStep b = gpu.step();
        INFO("step " << a.step << " cpu " << a.loss << " gpu " << b.loss);
        REQUIRE(std::isfinite(b.loss));
        CHECK(close(b.loss, a.loss, kAbsTol, kRelTol));
        max_diff = std::max(max_diff, std::fabs(a.loss - b.loss));
        for (int l = 0; l < 2; ++l) {
            const SeedTable& ta = cpu.seeds().table(l);
            const SeedTable& tb = gpu.seeds().table(l);
            for (int32_t s = 0; s < ta.num_seeds(); ++s) {
                INFO("layer " << l << " seed " << s);
                REQUIRE(int(tb.stage(s)) == int(ta.stage(s)));
                CHECK(tb.alpha(s) == Approx(ta.alpha(s)).margin(1e-6));
                seen[int(ta.stage(s))] = true;
            }
        }
    }
    CHECK(seen[int(SeedStage::kGrafting)]);
    CHECK(seen[int(SeedStage::kFineTuning)]);
    CHECK(seen[int(SeedStage::kFossilized)]);
    CHECK(seen[int(SeedStage::kCulled)]);
    REQUIRE(cpu.seeds().table(0).stage(1) == SeedStage::kFossilized);
    REQUIRE(cpu.seeds().table(1).stage(2) == SeedStage::kFossilized);
    // The learnt blueprints and host weights match (FOSSILIZED seeds stay frozen blueprints on
    // the MLP host, on both backends).
    const std::pair<int32_t, BlueprintKind> fossils[] = {{0, BlueprintKind::kResidualMlp},
                                                         {1, BlueprintKind::kLowrank}};
    const int32_t fossil_seed[] = {1, 2};
    for (int f = 0; f < 2; ++f) {
        const auto [l, kind] = fossils[f];
        const auto pa =
            cpu.seeds().arenas(l).params(kind, cpu.seeds().table(l).slot(fossil_seed[f]));
        const auto pb =
            gpu.seeds().arenas(l).params(kind, gpu.seeds().table(l).slot(fossil_seed[f]));
        CHECK(rel_diff(pb, pa) < 1e-2);
    }
    gpu.cuda()->download_all();
    for (size_t i = 0; i < cpu.model().params().size(); ++i) {
        CAPTURE(cpu.model().params()[i].name);
        CHECK(rel_diff(gpu.model().params()[i].value->span(),
                       cpu.model().params()[i].value->span()) < 1e-2);
    }
    const EvalResult ea = cpu.evaluate();
    const EvalResult eb = gpu.evaluate();
    CHECK(close(eb.loss, ea.loss, 5e-3, 5e-3));
    CHECK(std::fabs(eb.accuracy - ea.accuracy) <= 0.01);
    // The same telemetry records (what Tamiyo sees), contribution included.
    const auto ra = cpu.collect_telemetry();
    const auto rb = gpu.collect_telemetry();
    REQUIRE(ra.size() == rb.size());
    for (size_t i = 0; i < ra.size(); ++i) {
        CAPTURE(ra[i].layer, ra[i].seed);
        CHECK(rb[i].stage == ra[i].stage);
        CHECK(rb[i].contribution.has_value() == ra[i].contribution.has_value());
        if (ra[i].contribution && rb[i].contribution)
            CHECK(close(*rb[i].contribution, *ra[i].contribution, 2e-3, 5e-2));
    }
    std::fprintf(stderr, "widening walk 70 steps: max |gpu - cpu| loss = %.3g, captures %lld\n",
                 max_diff, static_cast<long long>(gpu.cuda()->graph_captures()));
}

TEST_CASE("graph replay of a step with widening seeds gives the loss of the uncaptured step",
          "[kasmina][widening][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config cfg = widening_config();
    cfg.run.device = "cuda";
    cfg.blueprints.init = BlueprintInit::kSplit;  // the split path on the GPU too
    Trainer graphed(cfg);
    Trainer direct(cfg);
    direct.cuda()->set_use_graphs(false);
    for (int i = 0; i < 50; ++i) {
        if (i == 4)
            for (Trainer* t : {&graphed, &direct}) {
                REQUIRE(t->apply(test::operator_germinate(1, 1, BlueprintKind::kResidualMlp))
                            .applied());
                REQUIRE(
                    t->apply(test::operator_germinate(0, 3, BlueprintKind::kLowrank)).applied());
            }
        const TrainStep a = direct.step();
        const TrainStep b = graphed.step();
        INFO("step " << a.step << " direct " << a.loss << " graph " << b.loss);
        CHECK(close(b.loss, a.loss, kGpuGpuTol, kGpuGpuTol));
        CHECK(a.correct == b.correct);
    }
    CHECK(direct.cuda()->graph_captures() == 0);
    // A capture per change of the running seeds' stages (a handful per seed), not per step.
    CHECK(graphed.cuda()->graph_captures() >= 3);
    CHECK(graphed.cuda()->graph_captures() <= 24);
    CHECK(graphed.seeds().table(1).stage(1) == SeedStage::kFossilized);
}
