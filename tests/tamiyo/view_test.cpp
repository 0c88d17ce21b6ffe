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
