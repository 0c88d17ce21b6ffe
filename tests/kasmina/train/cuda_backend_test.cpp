// GPU training backend against the CPU reference: the first 50 Fashion-MNIST steps track the CPU
// losses, a germination mid-run walks the same stages, graph replay equals the uncaptured step,
// and a checkpoint taken on the GPU resumes on the GPU. TF32 is off (the backend's default).
// Without a device every case prints "skipped: no CUDA device" and exits 4 (ctest: Skipped).
// ESPER_FASHION_MNIST_DIR overrides the dataset folder (GPU nodes lack the Debian package).
#include "kasmina/train/cuda_backend.h"

#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/io/config.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/transformer.h"
#include "kasmina/train/cuda_transformer_backend.h"
#include "kasmina/train/trainer.h"
#include "kernels/attention.h"
#include "tests/kasmina/train/loop_test_util.h"
#include "tests/kasmina/train/teacher_test_util.h"
#include "tests/support/gpu.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper::kasmina;

namespace {

// Step-loss tolerance between CPU (OpenBLAS, double-accumulated references) and GPU (cuBLAS
// fp32, float atomics in the seed backward): |gpu − cpu| <= kAbsTol + kRelTol·|cpu|.
constexpr double kAbsTol = 2e-3;
constexpr double kRelTol = 2e-3;
// Two GPU runs of the same steps differ only through float-atomic summation order.
constexpr double kGpuGpuTol = 1e-4;

Config fashion_config() {
    Config c = load_config(esper::testing::test_data("examples/fashion_mnist.yaml"));
    if (const char* dir = std::getenv("ESPER_FASHION_MNIST_DIR")) c.data.path = dir;
    c.run.max_steps = 50;
    return c;
}

bool close(double a, double b, double abs_tol, double rel_tol) {
    return std::fabs(a - b) <= abs_tol + rel_tol * std::fabs(b);
}

}  // namespace

TEST_CASE("the first 50 Fashion-MNIST steps on the GPU track the CPU losses",
          "[kasmina][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config cpu_cfg = fashion_config();
    cpu_cfg.run.device = "cpu";
    Config gpu_cfg = fashion_config();
    gpu_cfg.run.device = "cuda";
    // Both placements of the all-dormant seed layers: off the critical path and in line.
    const bool overlap = GENERATE(true, false);
    Trainer cpu(cpu_cfg);
    Trainer gpu(gpu_cfg);
    REQUIRE(cpu.cuda() == nullptr);
    REQUIRE(gpu.cuda() != nullptr);
    gpu.cuda()->set_overlap_dormant(overlap);
    double max_diff = 0.0;
    for (int i = 0; i < 50; ++i) {
        const TrainStep a = cpu.step();
        const TrainStep b = gpu.step();
        INFO("step " << a.step << " cpu " << a.loss << " gpu " << b.loss);
        REQUIRE(std::isfinite(b.loss));
        CHECK(close(b.loss, a.loss, kAbsTol, kRelTol));
        max_diff = std::max(max_diff, std::fabs(a.loss - b.loss));
    }
    std::fprintf(stderr, "fashion-mnist 50 steps (overlap %d): max |gpu - cpu| loss = %.3g\n",
                 int(overlap), max_diff);
    const EvalResult ea = cpu.evaluate();
    const EvalResult eb = gpu.evaluate();
    CHECK(close(eb.loss, ea.loss, 5e-3, 5e-3));
    CHECK(std::fabs(eb.accuracy - ea.accuracy) <= 0.01);
}

TEST_CASE("a germination mid-run on the GPU walks the same stages as on the CPU",
          "[kasmina][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    // Narrow layers, and 256-wide ones whose 64-wide chunks take the seed kernels' batched-GEMM
    // path (arenas with max_width >= 64 and hidden >= 16; the workspace sized from the view).
    const bool wide = GENERATE(false, true);
    Config cpu_cfg = test::timer_driven_teacher_config();
    if (wide) cpu_cfg.model.hidden = {256, 256};
    cpu_cfg.run.device = "cpu";
    Config gpu_cfg = cpu_cfg;
    gpu_cfg.run.device = "cuda";
    INFO("hidden " << cpu_cfg.model.hidden[0] << ", " << cpu_cfg.model.hidden[1]);
    Trainer cpu(cpu_cfg);
    Trainer gpu(gpu_cfg);
    const BlueprintKind kinds[2] = {BlueprintKind::kResidualMlp, BlueprintKind::kLowrank};
    double max_diff = 0.0;
    bool saw_grafting = false;
    for (int i = 0; i < 60; ++i) {
        if (i == 8) {
            for (int l = 0; l < 2; ++l) {
                REQUIRE(cpu.apply(test::operator_germinate(l, 1, kinds[l])).applied());
                REQUIRE(gpu.apply(test::operator_germinate(l, 1, kinds[l])).applied());
            }
        }
        const TrainStep a = cpu.step();
        const TrainStep b = gpu.step();
        INFO("step " << a.step << " cpu " << a.loss << " gpu " << b.loss);
        CHECK(close(b.loss, a.loss, kAbsTol, kRelTol));
        max_diff = std::max(max_diff, std::fabs(a.loss - b.loss));
        for (int l = 0; l < 2; ++l) {
            const SeedTable& ta = cpu.seeds().table(l);
            const SeedTable& tb = gpu.seeds().table(l);
            for (int32_t s = 0; s < ta.num_seeds(); ++s) {
                INFO("layer " << l << " seed " << s);
                REQUIRE(int(tb.stage(s)) == int(ta.stage(s)));
                CHECK(tb.alpha(s) == Approx(ta.alpha(s)).margin(1e-6));
                saw_grafting = saw_grafting || ta.stage(s) == SeedStage::kGrafting;
            }
        }
    }
    CHECK(saw_grafting);
    // The blueprint parameters learnt on the GPU match the CPU's.
    for (int l = 0; l < 2; ++l) {
        const int32_t slot = cpu.seeds().table(l).slot(1);
        if (slot < 0) continue;
        const auto pa = cpu.seeds().arenas(l).params(kinds[l], slot);
        const auto pb = gpu.seeds().arenas(l).params(kinds[l], gpu.seeds().table(l).slot(1));
        double num = 0, den = 0;
        for (size_t i = 0; i < pa.size(); ++i) {
            num += (double(pa[i]) - pb[i]) * (double(pa[i]) - pb[i]);
            den += double(pa[i]) * pa[i];
        }
        CHECK(std::sqrt(num) <= 1e-2 * std::sqrt(den) + 1e-5);
    }
    std::fprintf(stderr, "germination 60 steps (hidden %d): max |gpu - cpu| loss = %.3g\n",
                 int(cpu_cfg.model.hidden[0]), max_diff);
}

TEST_CASE("graph capture and replay of the step give the loss of the uncaptured step",
          "[kasmina][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config cfg = test::timer_driven_teacher_config();
    cfg.run.device = "cuda";
    Trainer graphed(cfg);
    Trainer direct(cfg);
    direct.cuda()->set_use_graphs(false);
    for (int i = 0; i < 30; ++i) {
        if (i == 4) {
            REQUIRE(graphed.apply(test::operator_germinate(0, 2, BlueprintKind::kResidualMlp))
                        .applied());
            REQUIRE(direct.apply(test::operator_germinate(0, 2, BlueprintKind::kResidualMlp))
                        .applied());
        }
        const TrainStep a = direct.step();
        const TrainStep b = graphed.step();
        INFO("step " << a.step << " direct " << a.loss << " graph " << b.loss);
        CHECK(close(b.loss, a.loss, kGpuGpuTol, kGpuGpuTol));
        CHECK(a.correct == b.correct);
    }
    CHECK(direct.cuda()->graph_captures() == 0);
    // One capture at the start, one after the germination took a slot; stage changes of a live
    // seed that change whether it trains add one each (at most a handful in 30 steps).
    CHECK(graphed.cuda()->graph_captures() >= 2);
    CHECK(graphed.cuda()->graph_captures() <= 8);
}

TEST_CASE("a checkpoint taken on the GPU resumes on the GPU and continues",
          "[kasmina][cuda_backend][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config cfg = test::timer_driven_teacher_config();
    cfg.run.device = "cuda";
    cfg.run.max_steps = 40;
    const fs::path dir = scratch_dir("ckpt");
    std::vector<double> straight;
    {
        Trainer t(cfg);
        for (int i = 0; i < 40; ++i) {
            if (i == 5)
                REQUIRE(
                    t.apply(test::operator_germinate(1, 0, BlueprintKind::kResidualMlp)).applied());
            straight.push_back(t.step().loss);
        }
    }
    {
        Trainer t(cfg);
        for (int i = 0; i < 20; ++i) {
            if (i == 5)
                REQUIRE(
                    t.apply(test::operator_germinate(1, 0, BlueprintKind::kResidualMlp)).applied());
            t.step();
        }
        t.save_checkpoint(dir / "ck");
    }
    Trainer resumed(cfg);
    resumed.load_checkpoint(dir / "ck");
    REQUIRE(resumed.steps_done() == 20);
    REQUIRE(resumed.seeds().table(1).slot(0) >= 0);
    for (int i = 20; i < 40; ++i) {
        const double loss = resumed.step().loss;
        INFO("step " << i + 1 << " straight " << straight[size_t(i)] << " resumed " << loss);
        CHECK(close(loss, straight[size_t(i)], kGpuGpuTol, kGpuGpuTol));
    }
    fs::remove_all(dir);
}

namespace {

// The transformer example (examples/transformer_text.yaml) for the first 50 steps; its text
// corpus from ESPER_TEXT_PATH when set (GPU nodes lack Debian's bible-kjv).
Config transformer_config(const std::string& device, const std::string& precision) {
    Config c = load_config(esper::testing::test_data("examples/transformer_text.yaml"));
    if (const char* path = std::getenv("ESPER_TEXT_PATH")) c.data.path = path;
    c.run.max_steps = 50;
    c.run.device = device;
    c.run.precision = precision;
    return c;
}

// The telemetry windows since the last collection of two trainers that took the same steps,
// side by side at the given seed layers: activation moments, gradient norms (the chunk's and the
// blueprint's own: on the GPU from the device, on the CPU from the host arenas) and the
// contribution, within `tol` (relative). Returns the records compared.
int compare_telemetry(Trainer& cpu, Trainer& gpu, const std::vector<int32_t>& layers, double tol) {
    const std::vector<SeedTelemetryRecord> ra = cpu.collect_telemetry();
    const std::vector<SeedTelemetryRecord> rb = gpu.collect_telemetry();
    REQUIRE(ra.size() == rb.size());
    int compared = 0;
    for (size_t j = 0; j < ra.size(); ++j) {
        const SeedTelemetryRecord& x = ra[j];
        const SeedTelemetryRecord& y = rb[j];
        if (std::find(layers.begin(), layers.end(), x.layer) == layers.end()) continue;
        INFO("telemetry layer " << x.layer << " seed " << x.seed << " stage " << int(x.stage));
        REQUIRE(y.layer == x.layer);
        REQUIRE(y.seed == x.seed);
        REQUIRE(x.variance.has_value() == y.variance.has_value());
        if (!x.variance) continue;
        CHECK(y.samples == x.samples);
        CHECK(close(*y.variance, *x.variance, 1e-6, tol));
        CHECK(close(*y.mean, *x.mean, tol * std::sqrt(*x.variance), 0.0));
        REQUIRE(x.grad_norm.has_value() == y.grad_norm.has_value());
        if (x.grad_norm) CHECK(close(*y.grad_norm, *x.grad_norm, 1e-9, tol));
        REQUIRE(x.blueprint_grad_norm.has_value() == y.blueprint_grad_norm.has_value());
        if (x.blueprint_grad_norm)
            CHECK(close(*y.blueprint_grad_norm, *x.blueprint_grad_norm, 1e-9, tol));
        REQUIRE(x.contribution.has_value() == y.contribution.has_value());
        if (x.contribution && x.grad_norm)  // a sum of products: against its scale
            CHECK(close(*y.contribution, *x.contribution,
                        tol * *x.grad_norm *
                            std::sqrt(double(x.samples) * (*x.variance + *x.mean * *x.mean)),
                        0.0));
        ++compared;
    }
    return compared;
}

struct Germination {
    int32_t layer, seed;
    BlueprintKind kind;
};

// Step i of two trainers in lockstep: the germinations on both at step 5, a step each, the losses
// within tolerance (max_diff: the largest difference so far), and every germinated seed in the
// same stage with the same α.
void lockstep(Trainer& cpu, Trainer& gpu, std::span<const Germination> seeds, int i, double abs_tol,
              double rel_tol, double& max_diff) {
    if (i == 5)
        for (const Germination& sd : seeds) {
            REQUIRE(cpu.apply(test::operator_germinate(sd.layer, sd.seed, sd.kind)).applied());
            REQUIRE(gpu.apply(test::operator_germinate(sd.layer, sd.seed, sd.kind)).applied());
        }
    const TrainStep a = cpu.step();
    const TrainStep b = gpu.step();
    INFO("step " << a.step << " cpu " << a.loss << " gpu " << b.loss);
    REQUIRE(std::isfinite(b.loss));
    CHECK(close(b.loss, a.loss, abs_tol, rel_tol));
    max_diff = std::max(max_diff, std::fabs(a.loss - b.loss));
    for (const Germination& sd : seeds) {
        const SeedTable& ta = cpu.seeds().table(sd.layer);
        const SeedTable& tb = gpu.seeds().table(sd.layer);
        INFO("seed layer " << sd.layer << " seed " << sd.seed);
        REQUIRE(int(tb.stage(sd.seed)) == int(ta.stage(sd.seed)));
        CHECK(tb.alpha(sd.seed) == Approx(ta.alpha(sd.seed)).margin(1e-6));
    }
}

}  // namespace

// The fused attention multiplies on bf16 tensor cores in every precision (kernels/attention.h),
// so fp32 runs track the CPU within |Δloss| <= 0.005 + 0.002·|cpu| over 50 steps; bf16 GEMMs
// track the fp32 GPU run within 0.02 + 0.01·|fp32| (bf16 carries 8 mantissa bits). Seen on an
// H100 (2026-12-06): max |fp32 − cpu| = 3.0e-4, max |bf16 − fp32| = 1.9e-3.
TEST_CASE("the first 50 transformer steps on the GPU in fp32 track the CPU, bf16 tracks fp32",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Trainer cpu(transformer_config("cpu", "fp32"));
    Trainer fp32(transformer_config("cuda", "fp32"));
    Trainer bf16(transformer_config("cuda", "bf16"));
    REQUIRE(cpu.cuda() == nullptr);
    double max_fp32 = 0.0, max_bf16 = 0.0;
    TrainStep last_cpu, last_fp32;
    for (int i = 0; i < 50; ++i) {
        const TrainStep a = cpu.step();
        const TrainStep b = fp32.step();
        const TrainStep c = bf16.step();
        INFO("step " << a.step << " cpu " << a.loss << " fp32 " << b.loss << " bf16 " << c.loss);
        REQUIRE(std::isfinite(b.loss));
        REQUIRE(std::isfinite(c.loss));
        CHECK(close(b.loss, a.loss, 0.005, 0.002));
        CHECK(close(c.loss, b.loss, 0.02, 0.01));
        max_fp32 = std::max(max_fp32, std::fabs(a.loss - b.loss));
        max_bf16 = std::max(max_bf16, std::fabs(c.loss - b.loss));
        last_cpu = a;
        last_fp32 = b;
    }
    CHECK(last_fp32.loss < 0.8 * 5.545);  // it learns: below 80 % of ln 256 after 50 steps
    std::fprintf(stderr,
                 "transformer 50 steps: cpu %.4f fp32 %.4f; max |fp32 - cpu| = %.3g, "
                 "max |bf16 - fp32| = %.3g\n",
                 last_cpu.loss, last_fp32.loss, max_fp32, max_bf16);
    const EvalResult ea = cpu.evaluate();
    const EvalResult eb = fp32.evaluate();
    CHECK(close(eb.loss, ea.loss, 0.005, 0.002));
}

// grow_depth on the GPU (4 blocks + 2 at step 10, both inits): fp32 tracks the CPU step by step
// through the growth (a `copy` changes the function at once, so a GPU step that kept 4 blocks
// would leave the tolerance at step 11; zero_out with a 5-step warmup of the grown blocks' rate),
// the grown blocks trained on the GPU match the CPU's,
// and checkpoints before and after the growth resume on the GPU to the same losses.
TEST_CASE("the transformer grows its depth mid-run on the GPU as on the CPU",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const DepthInit init = GENERATE(DepthInit::kCopy, DepthInit::kZeroOut);
    INFO("init " << depth_init_name(init));
    const fs::path dir = scratch_dir("grow_gpu");
    auto config = [&](const std::string& device) {
        Config c = transformer_config(device, "fp32");
        c.run.max_steps = 30;
        c.run.checkpoint_every_steps = 6;
        // zero_out also ramps the grown blocks' rate over 5 steps (the optimizer's split launches)
        c.model.transformer.grow_depth = {2, 10, init, init == DepthInit::kZeroOut ? 5 : 0};
        return c;
    };
    std::vector<double> cpu_loss, gpu_loss;
    TrainerOptions oc, og;
    oc.run_dir = (dir / "cpu").string();
    og.run_dir = (dir / "gpu").string();
    Trainer cpu(config("cpu"), oc);
    Trainer gpu(config("cuda"), og);
    REQUIRE(cpu.cuda() == nullptr);
    REQUIRE(gpu.backend().name() == "cuda");
    test::run_loop(cpu, {}, [&](const StepReport&) { cpu_loss.push_back(cpu.last_step().loss); });
    test::run_loop(gpu, {}, [&](const StepReport&) { gpu_loss.push_back(gpu.last_step().loss); });
    REQUIRE(gpu_loss.size() == 30);
    REQUIRE(cpu_loss.size() == 30);
    double max_diff = 0.0;
    for (size_t i = 0; i < gpu_loss.size(); ++i) {
        INFO("step " << i + 1 << " cpu " << cpu_loss[i] << " gpu " << gpu_loss[i]);
        CHECK(close(gpu_loss[i], cpu_loss[i], 0.005, 0.002));
        max_diff = std::max(max_diff, std::fabs(gpu_loss[i] - cpu_loss[i]));
    }
    CHECK(dynamic_cast<TransformerModel&>(gpu.model()).n_layer() == 6);
    CHECK(dynamic_cast<TransformerModel&>(cpu.model()).n_layer() == 6);
    // The grown blocks' parameters after 20 steps of training: on the GPU as on the CPU, and
    // moved (zero_out starts their output projections at zero).
    gpu.backend().download_all();
    double grown_diff = 0.0, proj_max = 0.0;
    const auto& pg = gpu.model().params();
    const auto& pc = cpu.model().params();
    REQUIRE(pg.size() == pc.size());
    for (size_t i = 0; i < pg.size(); ++i) {
        if (pg[i].name.rfind("block4.", 0) != 0 && pg[i].name.rfind("block5.", 0) != 0) continue;
        for (int64_t j = 0; j < pg[i].value->numel(); ++j) {
            const float a = pg[i].value->data()[j], b = pc[i].value->data()[j];
            grown_diff = std::max(grown_diff, double(std::fabs(a - b)));
            if (pg[i].name == "block5.attn.proj.weight")
                proj_max = std::max(proj_max, double(std::fabs(a)));
        }
    }
    // AdamW moves a parameter by about lr (0.003) per step whatever its gradient's size, so where
    // a gradient is near zero the two runs' rounding can send a step either way: a few steps'
    // worth (an H100, 2026-12-07: 2.3e-3 with copy, 2.1e-3 with zero_out). A GPU step that did
    // not train the grown blocks would be 20 steps off.
    CHECK(grown_diff < 0.01);
    CHECK(proj_max > 1e-4);
    std::fprintf(stderr,
                 "grow_depth on the gpu (%s): max |gpu - cpu| loss %.3g, grown parameters %.3g\n",
                 std::string(depth_init_name(init)).c_str(), max_diff, grown_diff);
    // Resumed on the GPU before the growth (step 6) and after it (step 12).
    for (const int64_t at : {6, 12}) {
        INFO("resumed at " << at);
        std::vector<double> resumed;
        Trainer t(config("cuda"));
        t.load_checkpoint(dir / "gpu" / "checkpoints" / std::to_string(at));
        test::run_loop(t, {}, [&](const StepReport&) { resumed.push_back(t.last_step().loss); });
        REQUIRE(resumed.size() == size_t(30 - at));
        for (size_t i = 0; i < resumed.size(); ++i)
            CHECK(close(resumed[i], gpu_loss[size_t(at) + i], kGpuGpuTol, kGpuGpuTol));
        CHECK(dynamic_cast<TransformerModel&>(t.model()).n_layer() == 6);
    }
    fs::remove_all(dir);
}

// The reserved room on the GPU: 20 extra units (computed as 24: the padding rows stay zero) and
// one extra head per block, as a CPU-grown host or initial_extra_units/heads put them in use.
// fp32 tracks the CPU step by step (a GPU step that skipped the room would change the function
// at step 1), bf16 tracks fp32, and the room's parameters train as on the CPU.
TEST_CASE("the transformer's extra units and heads train on the GPU as on the CPU",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    auto config = [](const std::string& device, const std::string& precision) {
        Config c = transformer_config(device, precision);
        c.run.max_steps = 30;
        c.model.transformer.initial_extra_units = 20;
        c.model.transformer.initial_extra_heads = 1;
        return c;
    };
    Trainer cpu(config("cpu", "fp32"));
    Trainer fp32(config("cuda", "fp32"));
    Trainer bf16(config("cuda", "bf16"));
    REQUIRE(fp32.backend().name() == "cuda");
    REQUIRE(dynamic_cast<TransformerModel&>(fp32.model()).extra_units(0) == 20);
    std::vector<float> before;
    for (const ParamRef& p : fp32.model().params())
        if (p.name == "block0.mlp.extra.proj.weight_t" || p.name == "block0.attn.extra_heads")
            before.insert(before.end(), p.value->data(), p.value->data() + p.value->numel());
    double max_fp32 = 0.0, max_bf16 = 0.0;
    for (int i = 0; i < 30; ++i) {
        const TrainStep a = cpu.step();
        const TrainStep b = fp32.step();
        const TrainStep c = bf16.step();
        INFO("step " << a.step << " cpu " << a.loss << " fp32 " << b.loss << " bf16 " << c.loss);
        REQUIRE(std::isfinite(c.loss));
        CHECK(close(b.loss, a.loss, 0.005, 0.002));
        CHECK(close(c.loss, b.loss, 0.02, 0.01));
        max_fp32 = std::max(max_fp32, std::fabs(a.loss - b.loss));
        max_bf16 = std::max(max_bf16, std::fabs(c.loss - b.loss));
    }
    CHECK(close(fp32.evaluate().loss, cpu.evaluate().loss, 0.005, 0.002));
    fp32.backend().download_all();
    const int64_t C = 128;
    double room_diff = 0.0, moved = 0.0, padding = 0.0;
    std::vector<float> after;
    const auto& pg = fp32.model().params();
    const auto& pc = cpu.model().params();
    REQUIRE(pg.size() == pc.size());
    for (size_t i = 0; i < pg.size(); ++i) {
        const std::string& nm = pg[i].name;
        const bool units = nm.find("mlp.extra.") != std::string::npos;
        if (!units && nm.find("attn.extra_heads") == std::string::npos) continue;
        // Units' tensors are [64 rows, C] or [64]: rows 20.. are room not in use.
        const int64_t row_floats = nm.find(".bias") != std::string::npos ? 1 : C;
        for (int64_t j = 0; j < pg[i].value->numel(); ++j) {
            const float a = pg[i].value->data()[j], b = pc[i].value->data()[j];
            if (units && j / row_floats >= 20) {
                padding = std::max(padding, double(std::fabs(a)));
                continue;
            }
            room_diff = std::max(room_diff, double(std::fabs(a - b)));
        }
        if (nm == "block0.mlp.extra.proj.weight_t" || nm == "block0.attn.extra_heads")
            after.insert(after.end(), pg[i].value->data(),
                         pg[i].value->data() + pg[i].value->numel());
    }
    REQUIRE(after.size() == before.size());
    for (size_t j = 0; j < after.size(); ++j)
        moved = std::max(moved, double(std::fabs(after[j] - before[j])));
    CHECK(room_diff < 0.01);  // AdamW's lr-sized steps, as in the depth test above
    CHECK(moved > 1e-3);      // the room trained on the GPU
    CHECK(padding == 0.0);    // the padding rows stayed zero
    std::fprintf(stderr,
                 "extra units and heads on the gpu: max |fp32 - cpu| loss %.3g, max |bf16 - fp32| "
                 "%.3g, room parameters %.3g\n",
                 max_fp32, max_bf16, room_diff);
    SECTION("units that do not fit the room in groups of 8 are refused") {
        Config c = config("cuda", "bf16");
        c.model.transformer.max_extra_units = 62;
        c.model.transformer.initial_extra_units = 61;
        CHECK_THROWS_WITH(Trainer(c), Catch::Contains("groups of 8") &&
                                          Catch::Contains("max_extra_units must be at least 64"));
    }
}

// grow_width on the GPU (20 units and a head per block at step 10; 20 units run as 24): fp32
// tracks the CPU step by step through the growth (the new output sides start at zero, so a GPU
// step that ignored the new room would still track at step 10 but drift after), and the grown
// units' output side trains on the GPU as on the CPU.
TEST_CASE("the transformer grows its width mid-run on the GPU as on the CPU",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    auto config = [](const std::string& device) {
        Config c = transformer_config(device, "fp32");
        c.run.max_steps = 30;
        c.model.transformer.grow_width = {20, 1, 10};
        return c;
    };
    Trainer cpu(config("cpu"));
    Trainer gpu(config("cuda"));
    REQUIRE(gpu.backend().name() == "cuda");
    double max_diff = 0.0;
    for (int i = 0; i < 30; ++i) {
        const TrainStep a = cpu.step();
        const TrainStep b = gpu.step();
        INFO("step " << a.step << " cpu " << a.loss << " gpu " << b.loss);
        CHECK(close(b.loss, a.loss, 0.005, 0.002));
        max_diff = std::max(max_diff, std::fabs(a.loss - b.loss));
    }
    CHECK(dynamic_cast<TransformerModel&>(gpu.model()).extra_units(3) == 20);
    gpu.backend().download_all();
    double out_max = 0.0, out_diff = 0.0;
    const auto& pg = gpu.model().params();
    const auto& pc = cpu.model().params();
    for (size_t i = 0; i < pg.size(); ++i) {
        if (pg[i].name != "block3.mlp.extra.proj.weight_t") continue;
        for (int64_t j = 0; j < 20 * 128; ++j) {
            out_max = std::max(out_max, double(std::fabs(pg[i].value->data()[j])));
            out_diff = std::max(out_diff,
                                double(std::fabs(pg[i].value->data()[j] - pc[i].value->data()[j])));
        }
    }
    CHECK(out_max > 1e-3);   // zero at step 10, trained since
    CHECK(out_diff < 0.01);  // as on the CPU (AdamW's lr-sized steps)
    std::fprintf(stderr, "grow_width on the gpu: max |gpu - cpu| loss %.3g, grown U %.3g\n",
                 max_diff, out_diff);
}

// Where the GPU transformer does not germinate: in bf16 a LoRA seed whose rank is not a multiple
// of 8 (examples/transformer_text.yaml's 4) is refused with a one-line reason, before anything
// changes; the host still trains.
TEST_CASE(
    "germinating a LoRA seed the GPU transformer cannot run is refused with a one-line reason",
    "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Trainer gpu(transformer_config("cuda", "bf16"));
    const Outcome o = gpu.apply(test::operator_germinate(1, 0, BlueprintKind::kLora));
    INFO(o.reason);
    CHECK_FALSE(o.applied());
    CHECK(o.reason.find("blueprints.lora.rank a multiple of 8 (it is 4") != std::string::npos);
    CHECK(o.reason.find('\n') == std::string::npos);
    CHECK(gpu.seeds().table(1).stage(0) == SeedStage::kDormant);
    const TrainStep s = gpu.step();  // the host still trains
    CHECK(std::isfinite(s.loss));
    SECTION("mlp_units that the GPU step cannot group by 8 are refused") {
        Config c = transformer_config("cuda", "bf16");
        c.blueprints.mlp_units.units = 20;
        Trainer odd(c);
        const Outcome o = odd.apply(test::operator_germinate(1, 0, BlueprintKind::kMlpUnits));
        CHECK_FALSE(o.applied());
        CHECK(o.reason.find("multiples of 8") != std::string::npos);
    }
}

// MLP units and a LoRA adapter (rank 8) germinated at block 0's widening site and a head at
// block 1's, at step 5, on
// timer-driven stages whose gates still read the measured contribution (a seed that hurts is
// culled): the GPU walks the CPU's stages step for step, its losses track the CPU's while the
// seeds train behind the host, graft in and join it, both devices take the same decision for
// each seed from their own telemetry (on the H100, 2026-12-07: the units fossilized and folded,
// the head was culled at evaluation), and the GPU's seed telemetry (gradient norm, contribution,
// activation moments; for the seeds not running, the block's MLP hidden units) tracks the CPU's.
TEST_CASE(
    "a germination of MLP units, a head and LoRA on the GPU transformer walks the CPU's stages",
    "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const std::string precision = GENERATE(std::string("fp32"), std::string("bf16"));
    const bool fp32 = precision == "fp32";
    auto config = [&](const std::string& device) {
        Config c = transformer_config(device, device == "cpu" ? "fp32" : precision);
        c.run.max_steps = 40;
        c.blueprints.lora.rank = 8;  // bf16 operands: a multiple of 8 (germination_refusal)
        test::timer_driven_lifecycle(c, 4);
        return c;
    };
    Trainer cpu(config("cpu"));
    Trainer gpu(config("cuda"));
    REQUIRE(gpu.backend().name() == "cuda");
    auto& mc = dynamic_cast<TransformerModel&>(cpu.model());
    auto& mg = dynamic_cast<TransformerModel&>(gpu.model());
    // Units and a LoRA adapter on block 0, a head on block 1.
    const Germination seeds[] = {{mc.widening_layer(0), 0, BlueprintKind::kMlpUnits},
                                 {mc.widening_layer(1), 0, BlueprintKind::kAttentionHead},
                                 {mc.widening_layer(0), 1, BlueprintKind::kLora}};
    const double abs_tol = fp32 ? 0.005 : 0.03, rel_tol = fp32 ? 0.002 : 0.01;
    const double tel_tol = fp32 ? 0.03 : 0.1;  // relative, telemetry sums over a window
    double max_diff = 0.0;
    bool saw_grafting = false, folded = false, head_decided = false;
    int compared = 0;
    for (int i = 0; i < 40; ++i) {
        lockstep(cpu, gpu, seeds, i, abs_tol, rel_tol, max_diff);
        for (const Germination& sd : seeds)
            saw_grafting =
                saw_grafting || cpu.seeds().table(sd.layer).stage(sd.seed) == SeedStage::kGrafting;
        folded = folded || mc.extra_units(0) > 0;
        head_decided = head_decided || mc.extra_heads(1) > 0 ||
                       cpu.seeds().table(seeds[1].layer).stage(0) == SeedStage::kCulled;
        CHECK(mg.extra_units(0) == mc.extra_units(0));
        CHECK(mg.extra_heads(1) == mc.extra_heads(1));
        if (i % 4 != 3) continue;
        // The telemetry windows of the last 4 steps, side by side (the widening sites).
        compared += compare_telemetry(cpu, gpu, {seeds[0].layer, seeds[1].layer}, tel_tol);
    }
    CHECK(saw_grafting);
    CHECK(compared > 0);
    // Both seeds decided (the stages above were equal at every step): the units fossilized and
    // folded into block 0's room, the head folded into block 1's or was culled; either way its
    // slot is free again.
    REQUIRE(folded);
    CHECK(mc.extra_units(0) == 32);
    CHECK(head_decided);
    for (const auto& sd : seeds) CHECK(gpu.seeds().table(sd.layer).slot(sd.seed) == -1);
    gpu.backend().download_all();
    double room_diff = 0.0, room_max = 0.0;
    const auto& pg = gpu.model().params();
    const auto& pc = cpu.model().params();
    for (size_t i = 0; i < pg.size(); ++i) {
        const std::string& nm = pg[i].name;
        if (nm != "block0.mlp.extra.proj.weight_t" && nm != "block1.attn.extra_heads") continue;
        for (int64_t j = 0; j < pg[i].value->numel(); ++j) {
            room_max = std::max(room_max, double(std::fabs(pc[i].value->data()[j])));
            room_diff = std::max(
                room_diff, double(std::fabs(pg[i].value->data()[j] - pc[i].value->data()[j])));
        }
    }
    CHECK(room_max > 1e-3);                   // the seeds learnt an output side
    CHECK(room_diff < (fp32 ? 0.01 : 0.03));  // as on the CPU (AdamW's lr-sized steps)
    CHECK(close(gpu.evaluate().loss, cpu.evaluate().loss, abs_tol, rel_tol));
    std::fprintf(stderr,
                 "germination on the gpu transformer (%s): max |gpu - cpu| loss %.3g, folded room "
                 "%.3g of %.3g, %d telemetry records compared\n",
                 precision.c_str(), max_diff, room_diff, room_max, compared);
}

// Chunk seeds over the blocks' MLP hidden units — residual_mlp on block 0, lowrank on block 1,
// scale_shift on block 2, beside MLP units on block 0's widening site — germinated at step 5 on
// timer-driven stages: the GPU runs them in the fused seed kernels (fp32, in either precision),
// walks the CPU's stages step for step, and its losses, the chunk sites' telemetry (every seed's,
// before, while and after the seeds run) and the trained blueprints track the CPU's.
TEST_CASE("chunk seeds on the GPU transformer walk the CPU's stages",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const std::string precision = GENERATE(std::string("fp32"), std::string("bf16"));
    const bool fp32 = precision == "fp32";
    auto config = [&](const std::string& device) {
        Config c = transformer_config(device, device == "cpu" ? "fp32" : precision);
        c.run.max_steps = 40;
        test::timer_driven_lifecycle(c, 4);
        return c;
    };
    Trainer cpu(config("cpu"));
    Trainer gpu(config("cuda"));
    REQUIRE(gpu.backend().name() == "cuda");
    auto& mc = dynamic_cast<TransformerModel&>(cpu.model());
    const Germination seeds[] = {{mc.chunk_layer(0), 0, BlueprintKind::kResidualMlp},
                                 {mc.chunk_layer(1), 2, BlueprintKind::kLowrank},
                                 {mc.chunk_layer(2), 5, BlueprintKind::kScaleShift},
                                 {mc.widening_layer(0), 0, BlueprintKind::kMlpUnits}};
    const std::vector<int32_t> chunk_layers = {mc.chunk_layer(0), mc.chunk_layer(1),
                                               mc.chunk_layer(2), mc.chunk_layer(3)};
    const double abs_tol = fp32 ? 0.005 : 0.03, rel_tol = fp32 ? 0.002 : 0.01;
    const double tel_tol = fp32 ? 0.03 : 0.1;
    double max_diff = 0.0;
    bool saw_grafting = false, saw_decided = false;
    int compared = 0, before = 0;
    for (int i = 0; i < 40; ++i) {
        lockstep(cpu, gpu, seeds, i, abs_tol, rel_tol, max_diff);
        for (const Germination& sd : seeds) {
            if (sd.kind == BlueprintKind::kMlpUnits) continue;
            const SeedStage st = cpu.seeds().table(sd.layer).stage(sd.seed);
            saw_grafting = saw_grafting || st == SeedStage::kGrafting;
            saw_decided = saw_decided || st == SeedStage::kFossilized || st == SeedStage::kCulled;
        }
        if (i % 4 != 3) continue;
        const int n = compare_telemetry(cpu, gpu, chunk_layers, tel_tol);
        if (i == 3) before = n;  // no seed runs yet: the chunk moments' telemetry
        compared += n;
    }
    CHECK(saw_grafting);
    CHECK(saw_decided);
    CHECK(before > 0);
    CHECK(compared > before);  // and the seed kernels' telemetry while the seeds run
    // The trained blueprints: the chunk seeds' arena slots (those not culled) as on the CPU.
    gpu.backend().download_all();
    double diff = 0.0, scale = 0.0;
    for (int k = 0; k < 3; ++k) {
        const auto& sd = seeds[k];
        if (cpu.seeds().table(sd.layer).slot(sd.seed) < 0) continue;
        const std::span<const float> pc =
            cpu.seeds().arenas(sd.layer).params(sd.kind, cpu.seeds().table(sd.layer).slot(sd.seed));
        const std::span<const float> pg =
            gpu.seeds().arenas(sd.layer).params(sd.kind, gpu.seeds().table(sd.layer).slot(sd.seed));
        REQUIRE(pc.size() == pg.size());
        for (size_t j = 0; j < pc.size(); ++j) {
            scale = std::max(scale, double(std::fabs(pc[j])));
            diff = std::max(diff, double(std::fabs(pg[j] - pc[j])));
        }
    }
    CHECK(scale > 1e-3);
    CHECK(diff < (fp32 ? 0.01 : 0.03));
    CHECK(close(gpu.evaluate().loss, cpu.evaluate().loss, abs_tol, rel_tol));
    std::fprintf(stderr,
                 "chunk seeds on the gpu transformer (%s): max |gpu - cpu| loss %.3g, blueprints "
                 "%.3g of %.3g, %d telemetry records compared\n",
                 precision.c_str(), max_diff, diff, scale, compared);
}

namespace {

// The seeds' state of a GPU trainer after a download: the widening arenas and the room they fold
// into (blocks 0 and 1), and block 0's residual_mlp chunk arena.
std::vector<float> widening_state(Trainer& t) {
    t.backend().download_all();
    std::vector<float> out;
    auto& m = dynamic_cast<TransformerModel&>(t.model());
    for (const int32_t block : {0, 1}) {
        BlueprintArenas& a = t.seeds().arenas(m.widening_layer(block));
        for (const BlueprintKind k : {BlueprintKind::kMlpUnits, BlueprintKind::kAttentionHead}) {
            if (!a.serves(k)) continue;
            const std::span<const float> p = a.all_params(k);
            out.insert(out.end(), p.begin(), p.end());
        }
    }
    const std::span<const float> chunk =
        t.seeds().arenas(m.chunk_layer(0)).all_params(BlueprintKind::kResidualMlp);
    out.insert(out.end(), chunk.begin(), chunk.end());
    for (const ParamRef& p : t.model().params())
        if (p.name.rfind("block0.mlp.extra.", 0) == 0 || p.name == "block1.attn.extra_heads")
            out.insert(out.end(), p.value->data(), p.value->data() + p.value->numel());
    return out;
}

}  // namespace

// The seeds' parameters and optimizer moments live on the device while they run: a checkpoint
// takes them from there, and a resumed run puts them back, so it continues as the run that was
// not interrupted. A resume that lost the moments (AdamW restarting from zero at a late step
// count) would move every trained seed parameter by about the rate per step differently; the
// mean difference over the seeds' parameters stays far below that.
TEST_CASE("a GPU transformer checkpoint with live widening and chunk seeds resumes on the GPU",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    Config c = transformer_config("cuda", "fp32");
    c.run.max_steps = 24;
    test::timer_driven_lifecycle(c, 4);
    const fs::path dir = scratch_dir("tckpt");
    auto germinate = [](Trainer& t) {
        auto& m = dynamic_cast<TransformerModel&>(t.model());
        REQUIRE(t.apply(test::operator_germinate(m.widening_layer(0), 0, BlueprintKind::kMlpUnits))
                    .applied());
        REQUIRE(
            t.apply(test::operator_germinate(m.widening_layer(1), 0, BlueprintKind::kAttentionHead))
                .applied());
        REQUIRE(t.apply(test::operator_germinate(m.chunk_layer(0), 0, BlueprintKind::kResidualMlp))
                    .applied());
    };
    Trainer straight(c);
    const int32_t wl = dynamic_cast<TransformerModel&>(straight.model()).widening_layer(0);
    std::vector<double> losses;
    int saved = -1;  // the steps done at the checkpoint
    for (int i = 0; i < 24; ++i) {
        if (i == 5) germinate(straight);
        losses.push_back(straight.step().loss);
        // The checkpoint: the units' second step of GRAFTING (they train, and blend in).
        const SeedTable& t = straight.seeds().table(wl);
        if (saved < 0 && t.stage(0) == SeedStage::kGrafting && t.steps_in_stage(0) == 1) {
            straight.save_checkpoint(dir / "ck");
            saved = i + 1;
        }
    }
    REQUIRE(saved > 0);
    const std::vector<float> want = widening_state(straight);
    Trainer resumed(c);
    resumed.load_checkpoint(dir / "ck");
    REQUIRE(resumed.steps_done() == saved);
    REQUIRE(resumed.seeds().table(wl).stage(0) == SeedStage::kGrafting);
    for (int i = saved; i < 24; ++i) {
        const double loss = resumed.step().loss;
        INFO("step " << i + 1 << " straight " << losses[size_t(i)] << " resumed " << loss);
        CHECK(close(loss, losses[size_t(i)], kGpuGpuTol, kGpuGpuTol));
    }
    const std::vector<float> got = widening_state(resumed);
    REQUIRE(got.size() == want.size());
    double sum = 0.0, scale = 0.0;
    int64_t n = 0;
    for (size_t i = 0; i < got.size(); ++i) {
        if (got[i] == 0.0f && want[i] == 0.0f) continue;
        sum += std::fabs(double(got[i]) - double(want[i]));
        scale = std::max(scale, double(std::fabs(want[i])));
        ++n;
    }
    REQUIRE(n > 0);
    const double mean = sum / double(n);
    std::fprintf(stderr,
                 "resumed gpu transformer with seeds: mean |resumed - straight| %.3g over %lld "
                 "seed parameters (largest %.3g)\n",
                 mean, static_cast<long long>(n), scale);
    CHECK(mean < 1e-4);
    fs::remove_all(dir);
}

namespace {

// One run of the captured-step tests below: a 2×64 transformer (T = 32, or `seq_scale` times
// that) over a fixed sequence of batches and rates, with or without the step graph.
struct GraphRun {
    std::vector<double> losses;
    std::vector<int32_t> correct;
    std::vector<float> params;  // every parameter after the last step, Model::params() order
    double eval_loss = 0.0;
    int64_t captures = 0;
};

GraphRun run_transformer_steps(const std::string& precision, bool graph, int32_t seq_scale = 1) {
    Config c;
    c.run.seed = 3;
    c.run.precision = precision;
    c.run.cuda_graph = graph;
    c.model.kind = ModelKind::kTransformer;
    c.model.seeds_per_layer = 1;
    c.model.transformer.n_layer = 2;
    c.model.transformer.n_head = 2;
    c.model.transformer.d_model = 64;
    c.model.transformer.context = 32 * seq_scale;
    c.model.transformer.widening_seeds = 0;
    c.model.transformer.max_extra_units = 0;
    c.model.transformer.max_extra_heads = 0;
    c.optimizer.kind = OptimizerKind::kAdamw;
    c.optimizer.weight_decay = 0.1;
    c.optimizer.grad_clip = 1.0;
    TransformerModel model(c.model, c.run.seed);
    Optimizer opt(c.optimizer, model.params(), model.seed_layer_widths());
    CudaTransformerBackend gpu(c, model, opt, 8 * 32 * seq_scale, 8 * 32 * seq_scale);
    Telemetry tel(std::vector<int32_t>(model.seed_sites().size(), 1));
    // (samples, seq, lr): a rate change at step 3, a smaller batch, a shorter sequence, and the
    // first shape again (its graph is kept). A shape's first step runs uncaptured, its second is
    // captured, later ones replay.
    struct Step {
        int32_t samples, seq;
        double lr;
    };
    const Step steps[] = {{8, 32, 1e-3}, {8, 32, 1e-3}, {8, 32, 3e-4}, {5, 32, 3e-4}, {5, 32, 2e-4},
                          {8, 16, 2e-4}, {8, 16, 2e-4}, {8, 32, 1e-4}, {8, 32, 1e-4}};
    Rng rng(11);
    GraphRun out;
    for (Step st : steps) {
        st.seq *= seq_scale;
        const int32_t rows = st.samples * st.seq;
        std::vector<int32_t> tokens(static_cast<size_t>(rows)), targets(static_cast<size_t>(rows));
        // Targets follow the tokens (next byte = token + 1), so the model has something to learn.
        for (int32_t i = 0; i < rows; ++i) {
            tokens[size_t(i)] = int32_t(rng.below(64));
            targets[size_t(i)] = (tokens[size_t(i)] + 1) % 256;
        }
        const StepRates rates{st.lr, st.lr, {}};
        const StepResult r = gpu.run_step(
            Batch{st.samples, nullptr, tokens.data(), targets.data(), rows}, rates, tel);
        gpu.commit_step(rates);
        out.losses.push_back(r.loss);
        out.correct.push_back(r.correct);
        if (out.losses.size() == 7) {  // an evaluation batch between two captured steps
            out.eval_loss =
                gpu.eval_batch(Batch{4, nullptr, tokens.data(), targets.data(), 4 * st.seq}).loss;
        }
    }
    gpu.download_all();
    for (const ParamRef& p : model.params())
        out.params.insert(out.params.end(), p.value->data(), p.value->data() + p.value->numel());
    out.captures = gpu.graph_captures();
    return out;
}

}  // namespace

// The replayed graph runs the very kernels of the uncaptured step on the same inputs; the one
// order-dependent sum is the gradient sum of squares (double atomics) that sets the clipping
// scale, so losses and parameters agree within 1e-6 (bitwise in practice: the count is printed).
TEST_CASE("the transformer step replayed as a CUDA graph equals the uncaptured step",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const std::string precision = GENERATE("bf16", "fp32");
    const GraphRun direct = run_transformer_steps(precision, false);
    const GraphRun replay = run_transformer_steps(precision, true);
    CHECK(direct.captures == 0);
    CHECK(replay.captures == 3);  // (8, 32), (5, 32), (8, 16); (8, 32) again replays its graph
    REQUIRE(replay.losses.size() == direct.losses.size());
    for (size_t i = 0; i < direct.losses.size(); ++i) {
        INFO(precision << " step " << i << " direct " << direct.losses[i] << " graph "
                       << replay.losses[i]);
        REQUIRE(std::isfinite(replay.losses[i]));
        CHECK(std::fabs(replay.losses[i] - direct.losses[i]) <= 1e-6);
        CHECK(replay.correct[i] == direct.correct[i]);
    }
    CHECK(replay.losses.back() < replay.losses.front());  // the steps did update the weights
    CHECK(std::fabs(replay.eval_loss - direct.eval_loss) <= 1e-6);
    REQUIRE(replay.params.size() == direct.params.size());
    double max_diff = 0.0;
    size_t bitwise = 0;
    for (size_t i = 0; i < direct.params.size(); ++i) {
        max_diff = std::max(max_diff, double(std::fabs(replay.params[i] - direct.params[i])));
        bitwise += std::memcmp(&replay.params[i], &direct.params[i], sizeof(float)) == 0;
    }
    CHECK(max_diff <= 1e-6);
    std::fprintf(stderr,
                 "transformer graph replay (%s): max |param diff| = %.3g, %zu of %zu parameters "
                 "bitwise equal, losses %s\n",
                 precision.c_str(), max_diff, bitwise, direct.params.size(),
                 replay.losses == direct.losses ? "bitwise equal" : "differ");
}

// At T = 128 and 64 the bf16 step's attention runs on cuDNN's fused kernels (kAuto from 128
// positions, where cuDNN is loadable) and the own ones: the plans are built in the uncaptured
// first step of a shape and executed inside the capture of the second. cuDNN's backward adds dQ
// with atomics, so the replay matches the uncaptured step within a tolerance, not bitwise.
TEST_CASE("the bf16 transformer step with cuDNN's attention replays as a CUDA graph",
          "[kasmina][cuda_backend][transformer][gpu]") {
    ESPER_REQUIRE_DEVICE();
    const GraphRun direct = run_transformer_steps("bf16", false, 4);
    const GraphRun replay = run_transformer_steps("bf16", true, 4);
    std::fprintf(stderr, "attention backends: %s\n",
                 esper::kernels::attention_cudnn_status().c_str());
    CHECK(replay.captures == 3);
    REQUIRE(replay.losses.size() == direct.losses.size());
    double max_loss = 0.0, max_param = 0.0;
    for (size_t i = 0; i < direct.losses.size(); ++i) {
        INFO("step " << i << " direct " << direct.losses[i] << " graph " << replay.losses[i]);
        REQUIRE(std::isfinite(replay.losses[i]));
        CHECK(std::fabs(replay.losses[i] - direct.losses[i]) <= 1e-4);
        max_loss = std::max(max_loss, std::fabs(replay.losses[i] - direct.losses[i]));
    }
    CHECK(replay.losses.back() < replay.losses.front());
    REQUIRE(replay.params.size() == direct.params.size());
    for (size_t i = 0; i < direct.params.size(); ++i)
        max_param = std::max(max_param, double(std::fabs(replay.params[i] - direct.params[i])));
    CHECK(max_param <= 1e-4);
    std::fprintf(stderr, "bf16 T=128 graph replay: max |loss diff| %.3g, max |param diff| %.3g\n",
                 max_loss, max_param);
}
