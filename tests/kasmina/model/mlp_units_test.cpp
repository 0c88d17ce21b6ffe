// The MLP host's true widening (model.widening_seeds, model.max_extra_units; docs/kasmina.md):
// an mlp_units seed germinates without changing the function, folds into the host's reserved
// room at FOSSILIZED with the outputs it had at α = 1, leaves a host with the parameter count and
// FLOPs of a static host of the final shape, survives a checkpoint resume, and the config refuses
// what cannot work with a reason.
#include <catch2/catch.hpp>
#include <filesystem>
#include <vector>

#include "kasmina/io/config.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/model/mlp.h"
#include "kasmina/train/trainer.h"
#include "tests/kasmina/model/gradmax_test_util.h"
#include "tests/kasmina/train/loop_test_util.h"
#include "tests/kasmina/train/teacher_test_util.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper;
using namespace esper::kasmina;

namespace {

// The teacher task (16 features, 4 classes) on a 16-24-20-4 host with an 8-unit mlp_units seed
// per hidden layer and room for 16 folded units each; stages walk on timers.
Config units_config() {
    Config c = test::timer_driven_teacher_config();
    c.model.widening_seeds = 1;
    c.model.max_extra_units = 16;
    c.blueprints.mlp_units = {8, 1};
    return c;
}

// Steps until seed 0 of `layer` is FOSSILIZED (not yet folded: that happens at the next step).
void run_until_fossilized(Trainer& t, int32_t layer) {
    while (!t.done() && t.seeds().table(layer).stage(0) != SeedStage::kFossilized) {
        REQUIRE(t.boundary());
        t.step();
        t.after_step();
    }
    REQUIRE(t.seeds().table(layer).stage(0) == SeedStage::kFossilized);
}

}  // namespace

TEST_CASE(
    "an MLP mlp_units seed germinates without changing the loss and folds into the host with the "
    "outputs it had at alpha 1",
    "[kasmina][mlp_units]") {
    for (int32_t hidden : {0, 1}) {  // into the next hidden layer, and into the head
        Trainer t(units_config());
        auto& m = dynamic_cast<MlpModel&>(t.model());
        const int32_t layer = m.widening_layer(hidden);
        REQUIRE(layer == 2 + hidden);  // after the two chunk sites
        const int64_t host_before = m.param_count();
        const int64_t in = hidden == 0 ? 16 : 24, out = hidden == 0 ? 20 : 4;
        const int64_t price = t.seeds().germination_params({layer, 0}, BlueprintKind::kMlpUnits);
        CHECK(price == 8 * in + 8 + out * 8);
        for (int i = 0; i < 5; ++i) {  // a host that is not at its initialisation
            REQUIRE(t.boundary());
            t.step();
            t.after_step();
        }
        const double before = t.evaluate().loss;
        REQUIRE(t.apply(test::operator_germinate(layer, 0, BlueprintKind::kMlpUnits)).applied());
        CHECK(t.evaluate().loss == before);  // the output side starts at zero
        // A chunk kind is not served on a widening site.
        CHECK_FALSE(
            t.apply(test::operator_germinate(layer, 0, BlueprintKind::kResidualMlp)).applied());

        run_until_fossilized(t, layer);
        const EvalResult seeded = t.evaluate();  // the seed at α = 1
        const int32_t slot = t.seeds().table(layer).slot(0);
        REQUIRE(slot >= 0);
        REQUIRE(m.fold_widening(layer, BlueprintKind::kMlpUnits,
                                t.seeds().arenas(layer).params(BlueprintKind::kMlpUnits, slot)));
        t.seeds().release_folded({layer, 0});
        const EvalResult folded = t.evaluate();
        CHECK(folded.loss == Approx(seeded.loss).epsilon(1e-5));
        CHECK(folded.accuracy == Approx(seeded.accuracy).margin(1e-3));
        CHECK(m.extra_units(hidden) == 8);
        CHECK(m.param_count() == host_before + price);
        CHECK(t.seeds().blueprint_params_in_layer(layer) == 0);
        // The folded units train as host parameters: the walk goes on without the slot.
        REQUIRE(t.boundary());
        t.step();
        t.after_step();
        CHECK(std::isfinite(t.last_step().loss));
    }
}

TEST_CASE(
    "an MLP grown by mlp_units has the parameter count and FLOPs of a static MLP of its shape",
    "[kasmina][mlp_units]") {
    ModelConfig grown_cfg;
    grown_cfg.hidden = {8, 6};
    grown_cfg.seeds_per_layer = 2;
    grown_cfg.widening_seeds = 1;
    grown_cfg.max_extra_units = 12;
    MlpModel grown(grown_cfg, 16, 4, 1);
    ModelConfig narrow_cfg = grown_cfg;
    narrow_cfg.widening_seeds = 0;
    narrow_cfg.max_extra_units = 0;
    CHECK(grown.param_count() == MlpModel(narrow_cfg, 16, 4, 1).param_count());  // room: 0
    auto fold = [&grown](int32_t l, int64_t in, int64_t k, int64_t out) {
        const std::vector<float> slot(size_t(k * in + k + out * k), 0.25f);
        return grown.fold_widening(grown.widening_layer(l), BlueprintKind::kMlpUnits, slot);
    };
    // Layer 0 grows by 12 in two folds (its output goes into layer 1's 6 units), layer 1 by 5
    // (into the head's 4 classes, reading layer 0's 8 outputs: the seed layer keeps its width).
    CHECK(fold(0, 16, 8, 6));
    CHECK(fold(0, 16, 4, 6));
    CHECK_FALSE(fold(0, 16, 1, 6));  // no room left: the seed would stay a frozen blueprint
    CHECK(fold(1, 8, 5, 4));
    CHECK(grown.extra_units(0) == 12);
    CHECK(grown.extra_units(1) == 5);
    // Each folded unit counts its input weights, its bias and its outgoing weights (with several
    // hidden layers the rooms of consecutive layers are not connected to each other).
    const int64_t grown_params =
        (16 * 8 + 8 + 8 * 6 + 6 + 6 * 4 + 4) + 12 * (16 + 1 + 6) + 5 * (8 + 1 + 4);
    CHECK(grown.param_count() == grown_params);
    const MlpModel one_layer_wide(
        [] {
            ModelConfig c;
            c.hidden = {64 + 128};
            c.seeds_per_layer = 1;
            return c;
        }(),
        784, 10, 1);
    ModelConfig narrow784;
    narrow784.hidden = {64};
    narrow784.seeds_per_layer = 1;
    narrow784.widening_seeds = 1;
    narrow784.max_extra_units = 128;
    MlpModel grown784(narrow784, 784, 10, 1);
    const std::vector<float> slot(size_t(128 * 784 + 128 + 10 * 128), 0.0f);
    REQUIRE(grown784.fold_widening(grown784.widening_layer(0), BlueprintKind::kMlpUnits, slot));
    // The bench's grown 784-64-10 + 128 units is a 784-192-10: 152,650 parameters, same FLOPs.
    CHECK(grown784.param_count() == 152650);
    CHECK(one_layer_wide.param_count() == 152650);
    CHECK(grown784.train_flops(128, 128) == one_layer_wide.train_flops(128, 128));
}

TEST_CASE("an MLP checkpoint written after an mlp_units fold resumes bit-identically",
          "[kasmina][mlp_units][checkpoint]") {
    const fs::path dir = scratch_dir("mlp_units_resume");
    Config c = units_config();
    c.run.max_steps = 60;
    c.run.checkpoint_every_steps = 40;
    auto germ = [](Trainer& t) {
        if (t.steps_done() == 2) {
            auto& m = dynamic_cast<MlpModel&>(t.model());
            REQUIRE(
                t.apply(test::operator_germinate(m.widening_layer(0), 0, BlueprintKind::kMlpUnits))
                    .applied());
        }
    };
    std::vector<double> full;
    {
        TrainerOptions o;
        o.run_dir = (dir / "a").string();
        Trainer t(c, o);
        test::run_loop(t, germ, [&](const StepReport&) {
            full.push_back(t.last_step().loss);
            if (t.steps_done() == 40)  // folded before the checkpoint
                CHECK(dynamic_cast<MlpModel&>(t.model()).extra_units(0) == 8);
        });
    }
    std::vector<double> resumed;
    {
        Trainer t(c);
        t.load_checkpoint(dir / "a" / "checkpoints" / "40");
        CHECK(dynamic_cast<MlpModel&>(t.model()).extra_units(0) == 8);
        test::run_loop(t, germ, [&](const StepReport&) { resumed.push_back(t.last_step().loss); });
    }
    REQUIRE(full.size() == 60);
    REQUIRE(resumed.size() == 20);
    for (size_t i = 0; i < 20; ++i) CHECK(resumed[i] == full[40 + i]);
    fs::remove_all(dir);
}

TEST_CASE(
    "blueprints.init gradmax starts an mlp_units seed's first units along the gradient's top "
    "directions",
    "[kasmina][mlp_units][gradmax]") {
    // Writing into hidden layer 1 (20 wide: 8 of 8 units placed) and into the 4-class head (the
    // cross-entropy gradient's rows sum to zero over the classes: rank 3).
    for (int32_t hidden : {0, 1}) {
        CAPTURE(hidden);
        const int32_t layer = 2 + hidden;  // after the two chunk sites
        const int64_t in = hidden == 0 ? 16 : 24, out = hidden == 0 ? 20 : 4;
        const test::PlacedUnits random =
            test::place_units(units_config(), BlueprintInit::kRandom, layer, in, out);
        const test::PlacedUnits gradmax =
            test::place_units(units_config(), BlueprintInit::kGradmax, layer, in, out);
        test::check_gradmax_placement(random, gradmax, in, out, hidden == 0 ? 8 : 3);
    }
}

TEST_CASE("the config refuses MLP mlp_units seeds that cannot fold or run, with the reason",
          "[kasmina][mlp_units][config]") {
    const std::string base =
        "model: {hidden: [32], seeds_per_layer: 1, widening_seeds: 1, max_extra_units: 64}\n";
    CHECK_NOTHROW(parse_config(base + "blueprints: {mlp_units: {units: 64, slots: 1}}\n"));
    CHECK_THROWS_WITH(parse_config(base + "blueprints: {mlp_units: {units: 96, slots: 1}}\n"),
                      Catch::Contains("model.max_extra_units") &&
                          Catch::Contains("64 leaves no room for one mlp_units seed of 96 units"));
    CHECK_THROWS_WITH(parse_config("model: {hidden: [32], widening_seeds: 1}\n"),
                      Catch::Contains("0 leaves no room for one mlp_units seed"));
    CHECK_THROWS_WITH(parse_config(base + "blueprints: {mlp_units: {units: 8}}\n"
                                          "run: {device: cuda}\n"),
                      Catch::Contains("run.device") &&
                          Catch::Contains("cuda does not run the MLP's mlp_units seeds"));
    CHECK_THROWS_WITH(parse_config("model: {hidden: [32], widening_seeds: -1}\n"),
                      Catch::Contains("model.widening_seeds"));
    CHECK_THROWS_WITH(
        parse_config("data: {dataset: text}\nmodel: {kind: transformer, max_extra_units: 8}\n"),
        Catch::Contains("model.max_extra_units") && Catch::Contains("is for the MLP host"));
    // GradMax places mlp_units seeds' units: nothing to place without them.
    CHECK_NOTHROW(parse_config(base + "blueprints: {mlp_units: {units: 64}, init: gradmax}\n"));
    CHECK_THROWS_WITH(
        parse_config("model: {hidden: [32]}\nblueprints: {init: gradmax}\n"),
        Catch::Contains("blueprints.init") && Catch::Contains("this MLP has no widening site"));
    CHECK_NOTHROW(
        parse_config("data: {dataset: text}\nmodel: {kind: transformer}\n"
                     "blueprints: {init: gradmax}\n"));
    CHECK_THROWS_WITH(
        parse_config("data: {dataset: text}\nmodel: {kind: transformer, "
                     "transformer: {widening_seeds: 0}}\nblueprints: {init: gradmax}\n"),
        Catch::Contains("blueprints.init") &&
            Catch::Contains("this transformer has no widening site"));
    // The keys round-trip through the effective config.
    const Config c = parse_config(base + "blueprints: {mlp_units: {units: 16}}\n");
    CHECK(parse_config(config_to_yaml(c)).model == c.model);
}
