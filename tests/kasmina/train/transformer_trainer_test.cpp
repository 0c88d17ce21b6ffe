// The transformer host through the whole trainer on a small text file it writes itself: the
// validation loss falls and the metrics carry bits per byte, a widening seed germinates without
// changing the loss and walks to FOSSILIZED where it folds into the host, and a checkpoint
// resumes bit-identically on the CPU.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "kasmina/model/transformer.h"
#include "kasmina/train/trainer.h"
#include "kernels/seed_layer.h"
#include "tests/kasmina/model/gradmax_test_util.h"
#include "tests/kasmina/train/loop_test_util.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper;
using namespace esper::kasmina;

namespace {

// A text with structure a small model picks up in a few dozen steps.
std::string corpus_text() {
    const char* lines[] = {"the cat sat on the mat.\n", "the dog sat on the log.\n",
                           "a bird sang in the tree.\n", "the sun rose over the hill.\n"};
    std::string s;
    for (int i = 0; i < 400; ++i) s += lines[(i * 7 + i / 3) % 4];
    return s;
}

Config text_config(const fs::path& dir) {
    const fs::path corpus = dir / "corpus.txt";
    std::ofstream(corpus) << corpus_text();
    Config c;
    c.run.seed = 3;
    c.run.max_steps = 60;
    c.run.eval_every_steps = 20;
    c.data.dataset = "text";
    c.data.path = corpus.string();
    c.data.batch_size = 8;
    c.data.text.eval_windows = 16;
    c.model.kind = ModelKind::kTransformer;
    c.model.transformer.n_layer = 2;
    c.model.transformer.n_head = 2;
    c.model.transformer.d_model = 32;
    c.model.transformer.context = 16;
    c.model.transformer.widening_seeds = 2;
    c.model.transformer.max_extra_units = 16;
    c.model.transformer.max_extra_heads = 1;
    c.model.seeds_per_layer = 4;
    c.optimizer.kind = OptimizerKind::kAdamw;
    c.optimizer.lr = 3e-3;
    c.optimizer.blueprint_lr = 3e-3;
    c.blueprints.mlp_units = {8, 1};
    test::timer_driven_lifecycle(c, 4);
    c.governor.snapshot_every_steps = 5;
    return c;
}

Command germinate(int32_t layer, int32_t seed, BlueprintKind kind) {
    Command c;
    c.origin = TransitionOrigin::kOperator;
    c.body = GerminateCommand{SeedRef{layer, seed}, kind, std::nullopt};
    return c;
}

}  // namespace

TEST_CASE("a transformer learns a text file: validation loss falls, metrics carry bits per byte",
          "[kasmina][trainer][transformer]") {
    const fs::path dir = scratch_dir("learn");
    TrainerOptions o;
    o.run_dir = (dir / "run").string();
    Trainer t(text_config(dir), o);
    CHECK(t.data().bytes());
    const EvalResult first = t.evaluate();
    test::run_loop(t);
    const EvalResult last = t.evaluate();
    CHECK(first.loss == Approx(std::log(256.0)).epsilon(0.05));  // untrained: ~uniform
    CHECK(last.loss < first.loss - 1.0);
    REQUIRE(last.bits_per_byte.has_value());
    CHECK(*last.bits_per_byte == Approx(last.loss / std::log(2.0)));
    CHECK(*last.perplexity == Approx(std::exp(last.loss)));
    std::ifstream metrics(dir / "run" / "metrics.jsonl");
    int test_lines = 0;
    for (std::string line; std::getline(metrics, line);) {
        const auto j = nlohmann::json::parse(line);
        if (j["split"] != "test") continue;
        ++test_lines;
        CHECK(j["bits_per_byte"].get<double>() == Approx(j["loss"].get<double>() / std::log(2.0)));
    }
    CHECK(test_lines == 3);  // steps 20, 40, 60
    fs::remove_all(dir);
}

TEST_CASE(
    "a widening seed germinates without changing the loss and folds into the host once "
    "fossilized",
    "[kasmina][trainer][transformer]") {
    const fs::path dir = scratch_dir("fold");
    Config c = text_config(dir);
    c.run.max_steps = 40;
    Trainer t(c);
    auto& m = dynamic_cast<TransformerModel&>(t.model());
    const int32_t layer = m.widening_layer(1);
    const int64_t host_before = t.model().param_count();
    const int64_t price = t.seeds().germination_params({layer, 0}, BlueprintKind::kMlpUnits);
    CHECK(price == 2 * 8 * 32 + 8);
    const double before = t.evaluate().loss;
    REQUIRE(t.apply(germinate(layer, 0, BlueprintKind::kMlpUnits)).applied());
    CHECK(t.evaluate().loss == before);  // germination leaves the function unchanged
    std::vector<SeedStage> walked{t.seeds().table(layer).stage(0)};
    test::run_loop(t, {}, [&](const StepReport&) {
        const SeedStage s = t.seeds().table(layer).stage(0);
        if (s != walked.back()) walked.push_back(s);
    });
    const std::vector<SeedStage> want = {SeedStage::kGerminated, SeedStage::kTraining,
                                         SeedStage::kGrafting,   SeedStage::kStabilization,
                                         SeedStage::kEvaluating, SeedStage::kFineTuning,
                                         SeedStage::kFossilized};
    CHECK(walked == want);
    // Folded at the next step: the units are the host's, the slot is free again.
    CHECK(t.seeds().table(layer).slot(0) == -1);
    CHECK(m.extra_units(1) == 8);
    CHECK(t.model().param_count() == host_before + price);
    CHECK(t.seeds().blueprint_params_in_layer(layer) == 0);
    fs::remove_all(dir);
}

TEST_CASE("a transformer checkpoint resumes bit-identically on the CPU",
          "[kasmina][trainer][transformer]") {
    const fs::path dir = scratch_dir("resume");
    Config c = text_config(dir);
    c.run.max_steps = 24;
    c.run.checkpoint_every_steps = 12;
    auto germ = [](Trainer& t) {  // a widening seed grows across the checkpoint
        if (t.steps_done() == 2) {
            auto& m = dynamic_cast<TransformerModel&>(t.model());
            REQUIRE(t.apply(germinate(m.widening_layer(0), 1, BlueprintKind::kAttentionHead))
                        .applied());
        }
    };
    std::vector<double> full;
    {
        TrainerOptions o;
        o.run_dir = (dir / "a").string();
        Trainer t(c, o);
        test::run_loop(t, germ, [&](const StepReport&) { full.push_back(t.last_step().loss); });
    }
    std::vector<double> resumed;
    {
        Trainer t(c);
        t.load_checkpoint(dir / "a" / "checkpoints" / "12");
        CHECK(t.steps_done() == 12);
        test::run_loop(t, germ, [&](const StepReport&) { resumed.push_back(t.last_step().loss); });
    }
    REQUIRE(full.size() == 24);
    REQUIRE(resumed.size() == 12);
    for (size_t i = 0; i < 12; ++i) CHECK(resumed[i] == full[12 + i]);
    // Another context (or any other model key) is refused before anything changes.
    Config longer = c;
    longer.model.transformer.context *= 2;
    Trainer other(longer);
    CHECK_THROWS_WITH(other.load_checkpoint(dir / "a" / "checkpoints" / "12"),
                      Catch::Contains("was written by another model (model.transformer.context "
                                      "is 32 in this config, 16 in the checkpoint)"));
    CHECK(other.steps_done() == 0);
    fs::remove_all(dir);
}

TEST_CASE("blueprints.init gradmax places a transformer mlp_units seed along the residual gradient",
          "[kasmina][trainer][transformer][gradmax]") {
    // Block 0's units read LN2's output (32 features) and write into the residual stream (32):
    // G has full rank, so all 8 units are placed.
    const fs::path dir = scratch_dir("gradmax");
    const Config c = text_config(dir);
    const int32_t layer = 1;  // block 0's widening site, after its chunk site
    const test::PlacedUnits random = test::place_units(c, BlueprintInit::kRandom, layer, 32, 32);
    const test::PlacedUnits gradmax = test::place_units(c, BlueprintInit::kGradmax, layer, 32, 32);
    test::check_gradmax_placement(random, gradmax, 32, 32, 8);
    fs::remove_all(dir);
}

TEST_CASE(
    "lifecycle.contribution ablation measures a transformer's widening seed as the loss without "
    "it minus with it, changing no bit of training",
    "[kasmina][trainer][transformer]") {
    const fs::path dir = scratch_dir("ablation");
    auto make = [&](ContributionMeasure m) {
        Config c = text_config(dir);
        c.run.max_steps = 36;
        c.run.telemetry_interval_steps = 3;
        c.lifecycle.gates.cull_contribution = 1e9;  // the same walk whatever is measured
        c.lifecycle.contribution = m;
        return c;
    };
    Trainer grad(make(ContributionMeasure::kGradient));
    Trainer abl(make(ContributionMeasure::kAblation));
    const int32_t layer = dynamic_cast<TransformerModel&>(abl.model()).widening_layer(1);
    for (Trainer* t : {&grad, &abl})
        REQUIRE(t->apply(germinate(layer, 0, BlueprintKind::kMlpUnits)).applied());
    int measured = 0;
    while (!abl.done()) {
        const int64_t s = abl.steps_done();
        const SeedTable& t = abl.seeds().table(layer);
        std::vector<uint8_t> stage(t.stage_data(), t.stage_data() + t.num_seeds());
        std::vector<float> alpha(t.alpha_data(), t.alpha_data() + t.num_seeds());
        grad.step();
        abl.step();
        if (abl.steps_done() % 3 != 0) continue;
        (void)grad.collect_telemetry();
        std::optional<double> c;
        for (const auto& r : abl.collect_telemetry())
            if (r.layer == layer && r.seed == 0) c = r.contribution;
        const auto st = SeedStage(stage[0]);
        CAPTURE(s, stage_name(st), alpha[0]);
        if (st < SeedStage::kGrafting || st >= SeedStage::kFossilized ||
            esper::kernels::stage_forward_alpha(st, alpha[0]) == 0.0f)
            continue;
        REQUIRE(c.has_value());
        const Batch b = abl.data().train_batch(s);
        std::vector<esper::kernels::SeedLayerView> views;
        for (int32_t l = 0; l < abl.seeds().num_layers(); ++l)
            views.push_back(abl.seeds().view(l, b.rows));
        views[size_t(layer)].stage = stage.data();
        views[size_t(layer)].alpha = alpha.data();
        const double with = abl.model().eval_batch(b, views).loss;
        stage[0] = uint8_t(SeedStage::kDormant);
        const double without = abl.model().eval_batch(b, views).loss;
        CHECK(without != with);
        CHECK(*c == Approx(without - with).margin(1e-6));
        ++measured;
    }
    CHECK(measured >= 2);
    test::check_same_training(abl, grad);
    fs::remove_all(dir);
}

TEST_CASE(
    "grow_depth through the trainer: blocks join at their step, are counted from then, "
    "and a checkpoint on either side resumes bit-identically",
    "[kasmina][trainer][transformer]") {
    const fs::path dir = scratch_dir("grow_depth");
    Config c = text_config(dir);
    c.run.max_steps = 24;
    c.run.checkpoint_every_steps = 6;
    c.model.transformer.grow_depth = {2, 9, DepthInit::kZeroOut};
    std::vector<double> full;
    {
        TrainerOptions o;
        o.run_dir = (dir / "a").string();
        Trainer t(c, o);
        test::run_loop(t, {}, [&](const StepReport&) { full.push_back(t.last_step().loss); });
        CHECK(dynamic_cast<TransformerModel&>(t.model()).n_layer() == 4);
    }
    // metrics.jsonl: the host's parameters and a step's FLOPs rise at step 10 (the step that
    // starts at 9), and only there.
    std::vector<int64_t> params;
    std::vector<double> flops;
    std::ifstream metrics(dir / "a" / "metrics.jsonl");
    for (std::string line; std::getline(metrics, line);) {
        const auto j = nlohmann::json::parse(line);
        if (j["split"] != "train") continue;
        params.push_back(j["host_params"].get<int64_t>());
        flops.push_back(j["flops"].get<double>());
    }
    REQUIRE(params.size() == 24);
    for (size_t i = 1; i < params.size(); ++i) {
        CHECK((params[i] > params[i - 1]) == (i == 9));
        CHECK((flops[i] > flops[i - 1]) == (i == 9));
    }
    // Resumed before the growth (step 6) and after it (step 12): the same losses, bit for bit.
    for (const int64_t at : {6, 12}) {
        std::vector<double> resumed;
        Trainer t(c);
        t.load_checkpoint(dir / "a" / "checkpoints" / std::to_string(at));
        test::run_loop(t, {}, [&](const StepReport&) { resumed.push_back(t.last_step().loss); });
        REQUIRE(resumed.size() == size_t(24 - at));
        for (size_t i = 0; i < resumed.size(); ++i) CHECK(resumed[i] == full[size_t(at) + i]);
    }
    fs::remove_all(dir);
}
