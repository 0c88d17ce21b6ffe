// Tests of the Tamiyo view: plateau detection, stage bookkeeping, "not measured", stale
// telemetry, and a view rebuilt by replaying the ingested messages equals the original.
#include "tamiyo/view.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "tamiyo_test_util.h"

using namespace esper;
using namespace esper::tamiyo;
using esper::tamiyo::test::Recorder;

TEST_CASE("plateau is declared after patience steps without a min_delta improvement",
          "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.plateau.patience_steps = 300;
    cfg.plateau.min_delta = 0.01;
    View v(cfg);
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> noise(-0.0005, 0.0005);

    // Improving phase: loss falls by 0.05 per 100 steps.
    double loss = 2.0;
    for (uint64_t step = 100; step <= 1000; step += 100) {
        loss -= 0.05;
        v.ingest_run_status(test::status_at(step, loss + noise(rng)));
        REQUIRE_FALSE(v.run().plateau);
    }
    const uint64_t best_step = v.run().best_step;
    CHECK(best_step == 1000);
    // Flat phase: changes smaller than min_delta never count as improvement.
    v.ingest_run_status(test::status_at(1100, loss - 0.005));
    v.ingest_run_status(test::status_at(1200, loss + 0.003));
    CHECK_FALSE(v.run().plateau);
    v.ingest_run_status(test::status_at(1300, loss - 0.009));
    CHECK(v.run().plateau);
    CHECK(v.run().plateau_since_step == 1300);
    CHECK(v.run().plateaus == 1);
    CHECK(v.run().steps_since_improvement() == 300);
    // Still flat: the onset stays where it was.
    v.ingest_run_status(test::status_at(1400, loss));
    CHECK(v.run().plateau_since_step == 1300);
    CHECK(v.run().plateaus == 1);
    // A real improvement ends the plateau; the next one is counted again.
    v.ingest_run_status(test::status_at(1500, loss - 0.1));
    CHECK_FALSE(v.run().plateau);
    CHECK(v.run().best_step == 1500);
    for (uint64_t step = 1600; step <= 1800; step += 100)
        v.ingest_run_status(test::status_at(step, loss - 0.1 + noise(rng)));
    CHECK(v.run().plateau);
    CHECK(v.run().plateaus == 2);
    CHECK(v.run().loss_curve.size() == 18);
}

TEST_CASE("run status without a loss does not move the plateau detector", "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.plateau.patience_steps = 100;
    View v(cfg);
    v.ingest_run_status(test::status_at(100, 1.5));
    RunStatus no_loss;
    no_loss.step = 500;
    v.ingest_run_status(no_loss);
    CHECK_FALSE(v.run().plateau);
    CHECK(v.run().loss_curve.size() == 1);
    CHECK(v.run().step == 500);
}

TEST_CASE("not measured stays distinct from zero and bad values become not measured",
          "[tamiyo][view]") {
    View v;
    SeedTelemetry t;
    t.layer = 1;
    t.seed = 2;
    t.step = 50;
    t.metrics.contribution = 0.0;     // measured zero
    t.metrics.health = std::nan("");  // garbage
    t.metrics.act_var = -0.25;        // impossible
    v.ingest_telemetry(t);
    const SeedView* s = v.seed(1, 2);
    REQUIRE(s != nullptr);
    CHECK(s->latest.contribution.has_value());
    CHECK(*s->latest.contribution == 0.0);
    CHECK_FALSE(s->latest.health.has_value());
    CHECK_FALSE(s->latest.act_var.has_value());
    CHECK_FALSE(s->latest.gradient_health.has_value());
    CHECK(v.rejected_values() == 2);
    CHECK(v.seed(1, 0) == nullptr);  // a placeholder, never named
    CHECK(v.seed(0, 0) == nullptr);
}

TEST_CASE("transitions update stage counts and older telemetry does not undo them",
          "[tamiyo][view]") {
    View v;
    std::mt19937 rng(11);
    Recorder r{v, {}};
    test::populate(r, rng, 2, 5, 100);
    CHECK(v.layer(0)->stage_counts[0] == 5);
    CHECK(v.layer(0)->chunk_width == 4);

    TransitionEvent e;
    e.layer = 0;
    e.seed = 3;
    e.step = 120;
    e.from = SeedStage::kDormant;
    e.to = SeedStage::kGerminated;
    e.blueprint = BlueprintKind::kLowrank;
    e.blueprint_size = 2;
    r.transition(e);
    const SeedView* s = v.seed(0, 3);
    CHECK(s->stage == SeedStage::kGerminated);
    // Priced with what the executor published for this seed and kind, not a formula.
    CHECK(s->blueprint_params == test::kLowrankPrice);
    CHECK(v.layer(0)->active_seeds() == 1);
    CHECK(v.layer(0)->last_germination_step == 120u);
    CHECK(v.live_blueprint_params() == s->blueprint_params);

    // Telemetry from before the transition (step 110) arrives late: stage unchanged.
    r.telemetry(test::random_telemetry(rng, 0, 3, 110, SeedStage::kDormant));
    CHECK(v.seed(0, 3)->stage == SeedStage::kGerminated);
    // Newer telemetry is authoritative.
    r.telemetry(test::random_telemetry(rng, 0, 3, 150, SeedStage::kTraining, 20));
    CHECK(v.seed(0, 3)->stage == SeedStage::kTraining);
    CHECK(v.seed(0, 3)->steps_in_stage(200) == 70);
    CHECK(v.layer(0)->stage_counts[static_cast<size_t>(SeedStage::kTraining)] == 1);
    CHECK(v.layer(0)->stage_counts[0] == 4);

    // A seed first named by a transition: late telemetry from before it changes nothing either.
    TransitionEvent first;
    first.layer = 1;
    first.seed = 7;
    first.step = 130;
    first.to = SeedStage::kGerminated;
    r.transition(first);
    r.telemetry(test::random_telemetry(rng, 1, 7, 125, SeedStage::kDormant));
    CHECK(v.seed(1, 7)->stage == SeedStage::kGerminated);
    CHECK(v.seed(1, 7)->has_telemetry);

    e.step = 300;
    e.from = SeedStage::kTraining;
    e.to = SeedStage::kCulled;
    r.transition(e);
    CHECK(v.seed(0, 3)->culls == 1);
    CHECK(v.live_blueprint_params() == 0);
    CHECK(v.layer(0)->active_seeds() == 0);
}

TEST_CASE("germination prices are the executor's, per seed and kind, newest report wins",
          "[tamiyo][view]") {
    View v;
    SeedTelemetry t;
    t.layer = 0;
    t.seed = 2;
    t.step = 10;
    v.ingest_telemetry(t);
    const SeedView* s = v.seed(0, 2);
    REQUIRE(s != nullptr);
    for (const auto& price : s->germination_params) CHECK_FALSE(price.has_value());

    // Seeds of one layer differ (chunk widths differ), and a partial list leaves the rest unset.
    t.germination_params = {5300, std::nullopt, 42};
    t.step = 20;
    v.ingest_telemetry(t);
    CHECK(s->germination_params[0] == 5300);
    CHECK_FALSE(s->germination_params[1].has_value());
    CHECK(s->germination_params[2] == 42);

    // A negative price is not a price: the old one stays and the value is counted as rejected.
    const uint64_t rejected = v.rejected_values();
    t.germination_params = {-1, 700, std::nullopt};
    t.step = 30;
    v.ingest_telemetry(t);
    CHECK(s->germination_params[0] == 5300);
    CHECK(s->germination_params[1] == 700);
    CHECK(s->germination_params[2] == 42);
    CHECK(v.rejected_values() == rejected + 1);

    // A germination without a parameter count takes the published price of its kind.
    TransitionEvent e;
    e.layer = 0;
    e.seed = 2;
    e.step = 40;
    e.to = SeedStage::kGerminated;
    e.blueprint = BlueprintKind::kResidualMlp;
    v.ingest_transition(e);
    CHECK(s->blueprint_params == 5300);
    CHECK(v.layer(0)->blueprint_params() == 5300);
}

TEST_CASE("a view rebuilt from a replay of the ingested messages equals the original",
          "[tamiyo][view]") {
    View original;
    Recorder r{original, {}};
    std::mt19937 rng(2026);
    std::uniform_int_distribution<uint32_t> pick_seed(0, 7), pick_layer(0, 2);
    test::populate(r, rng, 3, 8, 0);
    double loss = 2.3;
    for (uint64_t step = 50; step <= 3000; step += 50) {
        loss *= 0.99;
        r.status(test::status_at(step, loss));
        const uint32_t l = pick_layer(rng), s = pick_seed(rng);
        r.telemetry(test::random_telemetry(rng, l, s, step, SeedStage::kTraining, 10));
        if (step % 400 == 0) {
            TransitionEvent e;
            e.layer = l;
            e.seed = s;
            e.step = step;
            e.from = SeedStage::kTraining;
            e.to = step % 800 == 0 ? SeedStage::kGrafting : SeedStage::kCulled;
            r.transition(e);
        }
    }
    View rebuilt;
    test::replay(rebuilt, r.log);
    CHECK(rebuilt == original);

    // A different history gives a different view (the comparison can fail).
    View other;
    test::replay(other, std::vector<test::Message>(r.log.begin(), r.log.end() - 3));
    CHECK_FALSE(other == original);
}

TEST_CASE("seed ids beyond the configured bound are ignored", "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.max_seeds_per_layer = 64;
    View v(cfg);
    SeedTelemetry t;
    t.seed = 4000000000u;
    v.ingest_telemetry(t);
    CHECK(v.ignored_messages() == 1);
    CHECK(v.layers().empty());
}

// ---- bounded trust (issue 18): the announced shape, steps, memory ----

namespace {

RunShape shape_of(std::vector<uint32_t> seeds, uint64_t total_steps = 0) {
    RunShape s;
    s.seeds_per_layer = std::move(seeds);
    s.total_steps = total_steps;
    return s;
}

}  // namespace

TEST_CASE(
    "with an announced shape, telemetry naming a seed or layer outside it is dropped unstored",
    "[tamiyo][view]") {
    View v;
    REQUIRE_FALSE(v.announce(shape_of({4, 4}, 10000)));
    std::mt19937 rng(3);
    // The outside test's packet: one record naming seed 4,194,303 grew Tamiyo by 3.1 GB.
    CHECK(v.ingest_telemetry(test::random_telemetry(rng, 0, 4194303, 50)) == Drop::kOutOfShape);
    CHECK(v.ingest_telemetry(test::random_telemetry(rng, 0, 4, 50)) == Drop::kOutOfShape);
    CHECK(v.ingest_telemetry(test::random_telemetry(rng, 2, 0, 50)) == Drop::kOutOfShape);
    TransitionEvent e;
    e.layer = 7;
    e.seed = 1;
    e.step = 60;
    e.to = SeedStage::kGerminated;
    CHECK(v.ingest_transition(e) == Drop::kOutOfShape);
    CHECK(v.layers().empty());
    CHECK(v.drops(Drop::kOutOfShape) == 4);
    CHECK(v.step() == 0);  // a dropped message does not move the clock either
    // Inside the shape: taken, and the layer holds no more slots than the seed named.
    CHECK_FALSE(v.ingest_telemetry(test::random_telemetry(rng, 1, 3, 50)));
    CHECK(v.layer(1)->seeds.size() == 4);
    CHECK(v.seed(1, 3) != nullptr);
}

TEST_CASE("a step beyond the announced run or far ahead of the newest is dropped and counted",
          "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.max_step_jump = 1000;
    View v(cfg);
    REQUIRE_FALSE(v.announce(shape_of({4}, 100000)));
    CHECK_FALSE(v.ingest_run_status(test::status_at(500, 2.0)));
    // The outside test's forged runStatus with step 2^62 silenced the controller for the rest of
    // the run: here it is refused and the view's clock stays where the executor left it.
    CHECK(v.ingest_run_status(test::status_at(uint64_t{1} << 62, 0.1)) == Drop::kStepBeyondRun);
    CHECK(v.ingest_run_status(test::status_at(50000, 0.1)) == Drop::kStepJump);
    std::mt19937 rng(5);
    CHECK(v.ingest_telemetry(test::random_telemetry(rng, 0, 1, 90000)) == Drop::kStepJump);
    CHECK(v.step() == 500);
    CHECK(v.run().step == 500);
    CHECK_FALSE(v.ingest_run_status(test::status_at(1400, 1.9)));
    CHECK(v.step() == 1400);
    // An older run status is stale (counted); older telemetry is consistent and taken.
    CHECK(v.ingest_run_status(test::status_at(1000, 1.9)) == Drop::kStale);
    CHECK_FALSE(v.ingest_telemetry(test::random_telemetry(rng, 0, 1, 1200)));
    CHECK(v.drops(Drop::kStepBeyondRun) == 1);
    CHECK(v.drops(Drop::kStepJump) == 2);
    CHECK(v.drops(Drop::kStale) == 1);
}

TEST_CASE("a sender that truly leapt ahead is followed after consecutive agreeing messages",
          "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.max_step_jump = 1000;
    cfg.resync_messages = 3;
    View v(cfg);
    CHECK_FALSE(v.ingest_run_status(test::status_at(100, 2.0)));
    // One forged far step, then the executor again: the forgery never moves the clock.
    CHECK(v.ingest_run_status(test::status_at(90000, 2.0)) == Drop::kStepJump);
    CHECK_FALSE(v.ingest_run_status(test::status_at(150, 2.0)));
    CHECK(v.ingest_run_status(test::status_at(90050, 2.0)) == Drop::kStepJump);
    CHECK(v.step() == 150);
    // Three in a row that agree with each other: the view follows.
    CHECK(v.ingest_run_status(test::status_at(20000, 2.0)) == Drop::kStepJump);
    CHECK(v.ingest_run_status(test::status_at(20050, 2.0)) == Drop::kStepJump);
    CHECK_FALSE(v.ingest_run_status(test::status_at(20100, 2.0)));
    CHECK(v.step() == 20100);
    CHECK_FALSE(v.ingest_run_status(test::status_at(20150, 2.0)));
}

TEST_CASE("an announcement beyond the view's bounds is refused and a smaller one forgets the rest",
          "[tamiyo][view]") {
    ViewConfig cfg;
    cfg.max_layers = 8;
    cfg.max_seeds_per_layer = 1000;
    cfg.max_seeds = 2000;
    View v(cfg);
    CHECK(v.announce(shape_of({})).has_value());
    CHECK_THAT(*v.announce(shape_of(std::vector<uint32_t>(9, 1))), Catch::Contains("max_layers"));
    CHECK_THAT(*v.announce(shape_of({1001})), Catch::Contains("max_seeds_per_layer"));
    CHECK_THAT(*v.announce(shape_of({1000, 1000, 1})), Catch::Contains("max_seeds"));
    CHECK_FALSE(v.shape().has_value());

    REQUIRE_FALSE(v.announce(shape_of({8, 8})));
    std::mt19937 rng(9);
    for (uint32_t s = 0; s < 8; ++s) v.ingest_telemetry(test::random_telemetry(rng, 1, s, 50));
    CHECK(v.layer(1)->stage_counts[0] == 8);
    REQUIRE_FALSE(v.announce(shape_of({8, 2})));
    CHECK(v.layer(1)->seeds.size() == 2);
    CHECK(v.layer(1)->stage_counts[0] == 2);
    REQUIRE_FALSE(v.announce(shape_of({8})));
    CHECK(v.layer(1) == nullptr);
}
