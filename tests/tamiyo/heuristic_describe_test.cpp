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
View seed_view(SeedStage stage, uint64_t steps, double contribution) {
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
