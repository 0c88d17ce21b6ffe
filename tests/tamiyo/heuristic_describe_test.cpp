// The heuristic's self-description says what decide() does: the EVALUATING rule culls at
// contribution <= min_benefit and the description says so (it once printed a different rule).
#include <catch2/catch.hpp>

#include "tamiyo/heuristic_policy.h"
#include "tamiyo/policy_factory.h"
#include "tamiyo/view.h"

using namespace esper;
using namespace esper::tamiyo;

namespace {

// One seed of layer 0 at `stage` for `steps` steps with the given contribution.
View seed_view(SeedStage stage, uint64_t steps, double contribution, int64_t params = -1) {
    View v(ViewConfig{});
    SeedTelemetry t;
    t.layer = 0;
    t.seed = 0;
    t.step = 1000;
    t.stage = stage;
    t.steps_in_stage = static_cast<uint32_t>(steps);
    t.chunk_width = 4;
    t.metrics.contribution = contribution;
    t.metrics.gradient_health = 1.0;
    t.blueprint_params = params;
    v.ingest_telemetry(t);
    RunStatus s;
    s.step = 1000;
    s.loss = 1.0;
    v.ingest_run_status(s);
    return v;
}

}  // namespace

TEST_CASE("the heuristic's description states the comparisons its decisions use",
          "[tamiyo][policy]") {
    HeuristicConfig c;
    c.min_benefit = 0.0;
    c.cull_contribution = -0.05;  // as in examples/fashion_mnist.yaml
    HeuristicPolicy h(c);
    const std::string text = describe_policy(h);
    CHECK_THAT(text, Catch::Contains("approve if contribution > 0, cull if contribution <= 0") &&
                         Catch::Contains("FINE_TUNING: cull if contribution < -0.05"));

    // At the EVALUATING gate a contribution of exactly 0 is culled, as described.
    View at_zero = seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.0);
    auto d = h.decide(at_zero, 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kCull);
    View helps = seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.01);
    d = h.decide(helps, 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kApprove);
    // In FINE_TUNING, -0.01 is above -0.05: kept (fossilized once its steps are done).
    View fine = seed_view(SeedStage::kFineTuning, c.fine_tuning_steps, -0.01);
    d = h.decide(fine, 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kFossilize);
}

TEST_CASE("the heuristic's rent raises both contribution bars by the seed's parameters",
          "[tamiyo][policy]") {
    HeuristicConfig c;
    c.min_benefit = 0.0;
    c.cull_contribution = -0.05;
    c.rent_per_param = 1e-5;  // a 2,000-parameter seed must help by more than 0.02
    HeuristicPolicy h(c);
    CHECK_THAT(describe_policy(h), Catch::Contains("rent: both contribution thresholds rise by "
                                                   "1e-05 per blueprint parameter"));
    // EVALUATING: 0.01 helps but not by its rent of 0.02 → culled; 0.03 pays → approved.
    auto d = h.decide(seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.01, 2000), 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kCull);
    CHECK_THAT(d[0].reason, Catch::Contains("contribution 0.01 <= 0.02 (rent 0.02 for 2000 "
                                            "parameters)"));
    d = h.decide(seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.03, 2000), 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kApprove);
    // A seed of 200 parameters pays 0.002: 0.01 is enough.
    d = h.decide(seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.01, 200), 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kApprove);
    // FINE_TUNING: the cull bar −0.05 becomes −0.03 at 2,000 parameters.
    d = h.decide(seed_view(SeedStage::kFineTuning, 1, -0.04, 2000), 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kCull);
    CHECK_THAT(d[0].reason, Catch::Contains("does not pay its rent"));
    d = h.decide(seed_view(SeedStage::kFineTuning, 1, -0.04, 200), 1000);
    CHECK(d.empty());  // −0.04 ≥ −0.048: kept, still fine-tuning
    // No rent: the bars are the plain thresholds whatever the size.
    HeuristicPolicy free_seeds(HeuristicConfig{});
    d = free_seeds.decide(seed_view(SeedStage::kEvaluating, c.evaluation_steps, 0.01, 2000), 1000);
    REQUIRE(d.size() == 1);
    CHECK(d[0].kind == DecisionKind::kApprove);
}
