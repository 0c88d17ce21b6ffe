// SeedManager: commands through the one validator, automatic transitions, auto gates, decision
// timeouts, embargo, all-or-nothing batches, events.jsonl lines, snapshots and the governor's
// rollback. Small minimum times keep every walk to a few dozen steps.
#include "kasmina/lifecycle/seed_manager.h"

#include <catch2/catch.hpp>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/io/config.h"
#include "kasmina/io/event_log.h"

using namespace esper;
using namespace esper::kasmina;
using S = SeedStage;

namespace {

Config small_config(bool auto_gates = true) {
    Config c;
    c.model.seeds_per_layer = 4;
    c.lifecycle.training_steps = 3;
    c.lifecycle.stabilization_steps = 2;
    c.lifecycle.evaluation_steps = 2;
    c.lifecycle.fine_tuning_steps = 2;
    c.lifecycle.embargo_steps = 5;
    c.lifecycle.max_training_per_layer = 1;
    c.lifecycle.max_active_per_layer = 3;
    c.lifecycle.decision_timeout_steps = 3;
    c.lifecycle.auto_gates = auto_gates;
    c.lifecycle.grafting.ramp_steps = 4;
    return c;
}

StepMetrics measured(const SeedManager& m, double loss, double health, double contribution,
                     std::optional<double> improvement = std::nullopt) {
    StepMetrics sm;
    sm.loss = loss;
    for (int32_t l = 0; l < m.num_layers(); ++l) {
        auto& layer = sm.seeds.emplace_back(static_cast<size_t>(m.table(l).num_seeds()));
        for (SeedMetrics& x : layer) {
            x.gradient_health = health;
            x.contribution = contribution;
            x.improvement = improvement;
        }
    }
    return sm;
}

Command germinate(int32_t layer, int32_t seed, BlueprintKind kind = BlueprintKind::kResidualMlp) {
    Command c;
    c.body = GerminateCommand{SeedRef{layer, seed}, kind, std::nullopt};
    return c;
}
Command to_stage(int32_t layer, int32_t seed, S to) {
    Command c;
    c.body = TransitionCommand{SeedRef{layer, seed}, to};
    return c;
}
template <typename T>
Command simple(int32_t layer, int32_t seed) {
    Command c;
    c.body = T{SeedRef{layer, seed}};
    return c;
}

struct Edge {
    int64_t step;
    S from, to;
    TransitionOrigin origin;
    bool operator==(const Edge&) const = default;
};
std::vector<Edge> edges_of(const std::vector<LifecycleEvent>& ev, int32_t layer, int32_t seed) {
    std::vector<Edge> out;
    for (const auto& e : ev) {
        if (e.layer == layer && e.seed == seed) out.push_back({e.step, e.from, e.to, e.origin});
    }
    return out;
}

}  // namespace

namespace Catch {
template <>
struct StringMaker<Edge> {
    static std::string convert(const Edge& e) {
        return std::to_string(e.step) + ":" + std::string(stage_name(e.from)) + "→" +
               std::string(stage_name(e.to)) + "(" + std::string(origin_name(e.origin)) + ")";
    }
};
}  // namespace Catch

TEST_CASE("a seed walks the whole lifecycle under auto gates, one event per transition",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32, 20});
    REQUIRE(m.apply(germinate(0, 1)).applied());
    for (int64_t step = 0; step <= 14; ++step) m.on_step_end(step, measured(m, 1.0, 0.9, 0.5, 0.1));
    const auto a = TransitionOrigin::kAuto;
    const std::vector<Edge> expect = {
        {0, S::kDormant, S::kGerminated, TransitionOrigin::kController},
        {0, S::kGerminated, S::kTraining, a},
        {3, S::kTraining, S::kGrafting, a},       // training_steps 3, health 0.9 >= 0.7
        {8, S::kGrafting, S::kStabilization, a},  // linear R=4: α 0, .25, .5, .75, 1 at 4..8
        {10, S::kStabilization, S::kEvaluating, a},
        {12, S::kEvaluating, S::kFineTuning, a},  // contribution 0.5 > 0
        {14, S::kFineTuning, S::kFossilized, a},  // improvement 0.1 >= 0
    };
    const auto events = m.drain_events();
    CHECK(edges_of(events, 0, 1) == expect);
    CHECK(events.size() == expect.size());
    CHECK(m.events_written() == static_cast<int64_t>(expect.size()));
    CHECK(m.table(0).stage(1) == S::kFossilized);
    CHECK(m.table(0).slot(1) == 0);  // fossilized seeds keep their blueprint
    CHECK(m.table(0).alpha(1) == 1.0f);
    CHECK(m.drain_events().empty());
}

TEST_CASE("alpha follows the strategy during grafting and is 1 from stabilization on",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32});
    REQUIRE(m.apply(germinate(0, 2)).applied());
    std::vector<float> alphas;
    for (int64_t step = 0; step <= 9; ++step) {
        m.on_step_end(step, measured(m, 1.0, 0.9, 0.5));
        alphas.push_back(m.table(0).alpha(2));
    }
    // steps 0..3: germinated/training (α 0); GRAFTING from step 3; STABILIZATION at 8.
    CHECK(alphas == std::vector<float>{0, 0, 0, 0, 0, 0.25f, 0.5f, 0.75f, 1, 1});
}

TEST_CASE("training slots and the active budget limit a layer", "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32, 20});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    REQUIRE(m.apply(germinate(0, 1)).applied());
    REQUIRE(m.apply(germinate(0, 2)).applied());
    const Outcome o = m.apply(germinate(0, 3));
    CHECK_FALSE(o.applied());
    CHECK(o.reason == "gate failed: layer has 3 active seeds (max_active_per_layer 3)");
    CHECK(m.apply(germinate(1, 3)).applied());  // another layer has its own budget
    m.on_step_end(0, {});
    CHECK(m.table(0).stage(0) == S::kTraining);
    CHECK(m.table(0).stage(1) == S::kGerminated);  // max_training_per_layer = 1
    CHECK(m.table(0).stage(2) == S::kGerminated);
    CHECK(m.table(1).stage(3) == S::kTraining);
    REQUIRE(m.apply(simple<CullCommand>(0, 0)).applied());
    m.on_step_end(1, {});
    CHECK(m.table(0).stage(1) == S::kTraining);  // the freed training slot goes in seed order
    CHECK(m.table(0).stage(2) == S::kGerminated);
}

TEST_CASE("rejected commands change nothing and write no event", "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32, 20});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    m.on_step_end(0, measured(m, 1.0, 0.9, 0.0));
    m.drain_events();
    const uint64_t digest = m.digest();
    const int32_t free_slots = m.arenas(0).free_slots(BlueprintKind::kResidualMlp);
    struct Case {
        Command cmd;
        std::string reason;
    };
    const std::vector<Case> cases = {
        {germinate(7, 0), "unknown layer 7 (the run has 2 seed layers)"},
        {germinate(1, 4), "unknown seed 4 in layer 1 (the layer has 4 seeds)"},
        {germinate(0, 0), "invalid transition TRAINING→GERMINATED"},
        {to_stage(0, 0, S::kFossilized), "invalid transition TRAINING→FOSSILIZED"},
        {to_stage(0, 0, S::kGrafting), "insufficient time in TRAINING: 0 < 3"},
        {simple<RollbackCommand>(0, 0), "invalid transition TRAINING→ROLLED_BACK"},
        {simple<CullCommand>(0, 2), "invalid transition DORMANT→CULLED"},
        {to_stage(0, 2, S::kGerminated),
         "transition to GERMINATED needs a germinate command (with a blueprint kind)"},
        {to_stage(0, 2, static_cast<S>(42)), "invalid transition DORMANT→?"},
        {to_stage(0, 0, S::kStabilization), "invalid transition TRAINING→STABILIZATION"},
    };
    for (const Case& c : cases) {
        INFO(c.reason);
        const Outcome o = m.apply(c.cmd);
        CHECK_FALSE(o.applied());
        CHECK(o.reason == c.reason);
    }
    CHECK(m.digest() == digest);
    CHECK(m.arenas(0).free_slots(BlueprintKind::kResidualMlp) == free_slots);
    CHECK(m.drain_events().empty());
}

TEST_CASE(
    "controller decisions pass the gates; without auto gates a waiting seed times out "
    "to the safe default",
    "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config(/*auto_gates=*/false)), {32});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    REQUIRE(m.apply(germinate(0, 1)).applied());
    m.on_step_end(0, {});  // seed 0 → TRAINING
    StepMetrics unmeasured;
    for (int64_t step = 1; step <= 3; ++step) m.on_step_end(step, unmeasured);
    // Decision due (3 steps in TRAINING) but no telemetry yet: unmeasured is not zero.
    CHECK(m.apply(to_stage(0, 0, S::kGrafting)).reason ==
          "gate failed: gradient health never measured");
    StepMetrics low = measured(m, 1.0, 0.4, 0.0);
    m.on_step_end(4, low);
    CHECK(m.apply(to_stage(0, 0, S::kGrafting)).reason == "gate failed: gradient health 0.4 < 0.7");
    const auto pending = m.pending_gates();
    REQUIRE(pending.size() == 1);
    CHECK(pending[0].seed == SeedRef{0, 0});
    CHECK(pending[0].stage == S::kTraining);
    CHECK(pending[0].waiting_steps == 1);        // 4 steps in TRAINING, due after 3
    CHECK(pending[0].timeout_in_steps == 3);     // safe default once waiting > 3
    CHECK(m.table(0).stage(0) == S::kTraining);  // no auto gate
    for (int64_t step = 5; step <= 6; ++step) m.on_step_end(step, low);
    CHECK(m.table(0).stage(0) == S::kTraining);
    m.on_step_end(7, low);  // waited 4 > decision_timeout_steps 3
    CHECK(m.table(0).stage(0) == S::kCulled);
    const auto ev = m.drain_events();
    REQUIRE(ev.size() >= 2);
    const LifecycleEvent& culled = ev[ev.size() - 2];
    CHECK(culled.step == 7);
    CHECK(culled.from == S::kTraining);
    CHECK(culled.to == S::kCulled);
    CHECK(culled.origin == TransitionOrigin::kAuto);
    CHECK(culled.reason ==
          "decision timeout: no controller decision within 3 steps (safe default: cull)");
    CHECK(m.table(0).slot(0) == -1);
    // The freed training slot went to seed 1 in the same step end.
    CHECK(ev.back().seed == 1);
    CHECK(ev.back().to == S::kTraining);

    m.on_step_end(8, measured(m, 1.0, 0.8, 0.0));
    m.on_step_end(9, measured(m, 1.0, 0.8, 0.0));
    CHECK(m.apply(to_stage(0, 1, S::kGrafting)).reason == "insufficient time in TRAINING: 2 < 3");
    m.on_step_end(10, measured(m, 1.0, 0.8, 0.0));
    Command ok = to_stage(0, 1, S::kGrafting);
    ok.reason = "policy heuristic";
    REQUIRE(m.apply(ok).applied());
    const auto ev2 = m.drain_events();
    REQUIRE_FALSE(ev2.empty());
    CHECK(ev2.back().step == 11);
    CHECK(ev2.back().origin == TransitionOrigin::kController);
    CHECK(ev2.back().reason == "controller decision: policy heuristic");
}

TEST_CASE("a timed-out evaluation is culled as unproven", "[kasmina][seed_manager]") {
    Config cfg = small_config(false);
    cfg.lifecycle.training_steps = 0;
    SeedManager m(seed_manager_config(cfg), {32});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    int64_t step = 0;
    m.on_step_end(step++, measured(m, 1.0, 0.9, 0.0));         // → TRAINING (health restarts)
    m.on_step_end(step++, measured(m, 1.0, 0.9, 0.0));         // health measured in TRAINING
    REQUIRE(m.apply(to_stage(0, 0, S::kGrafting)).applied());  // no minimum configured
    while (m.table(0).stage(0) != S::kEvaluating) m.on_step_end(step++, measured(m, 1.0, 0.9, 0.0));
    const int64_t entered = step - 1;
    while (m.table(0).stage(0) == S::kEvaluating) m.on_step_end(step++, measured(m, 1.0, 0.9, 0.0));
    CHECK(m.table(0).stage(0) == S::kCulled);
    CHECK(step - 1 - entered == 2 + 3 + 1);  // evaluation_steps, then waiting > timeout
}

TEST_CASE("auto gates cull a seed that hurts and one that does not improve",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    int64_t step = 0;
    while (m.table(0).stage(0) != S::kEvaluating)
        m.on_step_end(step++, measured(m, 1.0, 0.9, -0.2));
    while (m.table(0).stage(0) == S::kEvaluating)
        m.on_step_end(step++, measured(m, 1.0, 0.9, -0.2));
    CHECK(m.table(0).stage(0) == S::kCulled);
    CHECK(m.drain_events().back().reason == "auto gate: contribution -0.2 < -0");

    SeedManager n(seed_manager_config(small_config()), {32});
    REQUIRE(n.apply(germinate(0, 0)).applied());
    step = 0;
    while (n.table(0).stage(0) != S::kFineTuning) n.on_step_end(step++, measured(n, 1.0, 0.9, 0.3));
    while (n.table(0).stage(0) == S::kFineTuning)
        n.on_step_end(step++, measured(n, 1.0, 0.9, 0.3, -0.05));
    CHECK(n.table(0).stage(0) == S::kCulled);
    CHECK(n.drain_events().back().reason == "auto gate: improvement -0.05 < 0");
}

TEST_CASE("culled and rolled-back seeds wait the embargo; cancelled ones return at once",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    REQUIRE(m.apply(germinate(0, 1)).applied());
    m.on_step_end(0, {});
    REQUIRE(m.apply(simple<CullCommand>(0, 0)).applied());  // stamped 1
    REQUIRE(m.apply(simple<CancelCommand>(0, 1)).applied());
    CHECK(m.table(0).slot(0) == -1);
    CHECK(m.arenas(0).free_slots(BlueprintKind::kResidualMlp) == 8);
    CHECK(m.table(0).embargo_until_step(0) == 6);
    CHECK(m.apply(germinate(0, 0)).reason == "invalid transition CULLED→GERMINATED");
    m.on_step_end(1, {});
    CHECK(m.table(0).stage(1) == S::kDormant);
    for (int64_t step = 2; step <= 4; ++step) m.on_step_end(step, {});
    CHECK(m.table(0).stage(0) == S::kCulled);
    CHECK(m.apply(to_stage(0, 0, S::kDormant)).reason == "insufficient time in CULLED: 4 < 5");
    m.on_step_end(5, {});
    CHECK(m.table(0).stage(0) == S::kDormant);
    const auto ev = m.drain_events();
    CHECK(ev.back().reason == "embargo over");
    CHECK(ev.back().step == 5);
    CHECK(m.apply(germinate(0, 0)).applied());
}

TEST_CASE("rollback bypasses the minimum time in every stage that allows it",
          "[kasmina][seed_manager]") {
    Config cfg = small_config();
    cfg.lifecycle.stabilization_steps = 50;
    SeedManager m(seed_manager_config(cfg), {32});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    int64_t step = 0;
    while (m.table(0).stage(0) != S::kGrafting) m.on_step_end(step++, measured(m, 1.0, 0.9, 0.5));
    REQUIRE(m.apply(simple<RollbackCommand>(0, 0)).applied());
    CHECK(m.table(0).stage(0) == S::kRolledBack);
    CHECK(m.table(0).slot(0) == -1);
    CHECK(m.table(0).alpha(0) == 0.0f);

    SeedManager n(seed_manager_config(cfg), {32});
    REQUIRE(n.apply(germinate(0, 0)).applied());
    step = 0;
    while (n.table(0).stage(0) != S::kStabilization)
        n.on_step_end(step++, measured(n, 1.0, 0.9, 0.5));
    CHECK(n.apply(to_stage(0, 0, S::kEvaluating)).reason ==
          "insufficient time in STABILIZATION: 0 < 50");
    Command op = simple<RollbackCommand>(0, 0);
    op.origin = TransitionOrigin::kOperator;
    REQUIRE(n.apply(op).applied());
    const auto ev = n.drain_events();
    CHECK(ev.back().origin == TransitionOrigin::kOperator);
    CHECK(ev.back().reason == "operator rollback");
}

TEST_CASE("a batch is applied all or nothing", "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32, 20});
    const uint64_t digest = m.digest();
    Command bad;
    bad.body = BatchCommand{{germinate(0, 0), germinate(1, 2), germinate(0, 0)}};
    const Outcome o = m.apply(bad);
    CHECK_FALSE(o.applied());
    CHECK(o.reason == "batch item 2: invalid transition GERMINATED→GERMINATED");
    CHECK(m.digest() == digest);
    CHECK(m.arenas(0).free_slots(BlueprintKind::kResidualMlp) == 8);
    CHECK(m.arenas(1).free_slots(BlueprintKind::kResidualMlp) == 8);
    CHECK(m.drain_events().empty());

    Command good;
    good.body = BatchCommand{{germinate(0, 0), germinate(1, 2, BlueprintKind::kLowrank)}};
    REQUIRE(m.apply(good).applied());
    CHECK(m.table(1).stage(2) == S::kGerminated);
    CHECK(m.table(1).kind(2) == BlueprintKind::kLowrank);
    CHECK(m.drain_events().size() == 2);
}

TEST_CASE("the layer parameter budget and arena capacity gate germination",
          "[kasmina][seed_manager]") {
    Config cfg = small_config();
    cfg.blueprints.max_params_per_layer = 100;
    cfg.blueprints.scale_shift.slots = 1;
    SeedManager m(seed_manager_config(cfg), {32});
    CHECK(m.apply(germinate(0, 0)).reason ==
          "gate failed: blueprint parameter budget of the layer exceeded");
    REQUIRE(m.apply(germinate(0, 0, BlueprintKind::kScaleShift)).applied());
    CHECK(m.blueprint_params_in_layer(0) == 16);
    CHECK(m.apply(germinate(0, 1, BlueprintKind::kScaleShift)).reason ==
          "gate failed: no free scale_shift arena slot");
}

TEST_CASE("the germination price the executor publishes is what the germination then costs",
          "[kasmina][seed_manager]") {
    // Uneven chunks (30 = 8+8+7+7, 13 = 4+3+3+3), every kind, chunk and widening arenas: the
    // price of a dormant seed must equal seed_blueprint_params once it germinated (Tamiyo's
    // budget charges the price, the executor's budget the actual count).
    for (BlueprintInput input : {BlueprintInput::kChunk, BlueprintInput::kLayer}) {
        for (int k = 0; k < kNumBlueprintKinds; ++k) {
            const auto kind = static_cast<BlueprintKind>(k);
            Config cfg = small_config();
            cfg.blueprints.input = input;
            cfg.lifecycle.max_active_per_layer = 4;
            SeedManager m(seed_manager_config(cfg), {30, 13}, nullptr, {784, 30});
            if (blueprint_is_widening(kind)) {  // not on a chunk site: no price, refused
                CHECK(m.germination_params({0, 0}, kind) == -1);
                CHECK_THAT(m.apply(germinate(0, 0, kind)).reason,
                           Catch::Contains("not available on layer 0 (a chunk site)"));
                continue;
            }
            for (int32_t l = 0; l < m.num_layers(); ++l) {
                std::vector<int64_t> prices;
                for (int32_t s = 0; s < m.table(l).num_seeds(); ++s) {
                    INFO("input=" << blueprint_input_name(input) << " kind="
                                  << blueprint_kind_name(kind) << " layer=" << l << " seed=" << s);
                    const int64_t price = m.germination_params({l, s}, kind);
                    const int64_t before = m.blueprint_params_in_layer(l);
                    REQUIRE(m.apply(germinate(l, s, kind)).applied());
                    CHECK(m.seed_blueprint_params({l, s}) == price);
                    CHECK(m.blueprint_params_in_layer(l) == before + price);
                    prices.push_back(price);
                }
                // Prices are per seed: the first chunk is wider than the last one.
                CHECK(prices.front() > prices.back());
            }
        }
    }
}

TEST_CASE("set_alpha_schedule changes the strategy of a live seed only",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32});
    Command c;
    c.body = SetAlphaScheduleCommand{SeedRef{0, 0}, GraftingStrategy::kCosine, 10};
    CHECK(m.apply(c).reason ==
          "set_alpha_schedule: seed is DORMANT (allowed in GERMINATED, TRAINING, GRAFTING)");
    REQUIRE(m.apply(germinate(0, 0)).applied());
    REQUIRE(m.apply(c).applied());
    CHECK(m.table(0).strategy(0) == GraftingStrategy::kCosine);
    CHECK(m.table(0).graft(0).ramp_steps == 10);
    c.body = SetAlphaScheduleCommand{SeedRef{0, 0}, GraftingStrategy::kLinear, 0};
    CHECK(m.apply(c).reason == "set_alpha_schedule: ramp_steps must be in [1, 2^30], got 0");
}

TEST_CASE("events.jsonl gets one flushed JSON line per transition", "[kasmina][seed_manager]") {
    const std::string path = std::string(ESPER_BINARY_DIR) + "/kasmina_events_test.jsonl";
    std::remove(path.c_str());
    {
        EventLog log(path);
        SeedManager m(seed_manager_config(small_config()), {32}, &log);
        Command c = germinate(0, 3);
        c.reason = "say \"hi\"";
        REQUIRE(m.apply(c).applied());
        m.on_step_end(0, {});
        // Flushed per line: readable while the log is still open.
        std::ifstream in(path);
        std::string l1, l2;
        std::getline(in, l1);
        std::getline(in, l2);
        // The documented fields in order, then kind, schema and the wall time.
        CHECK(l1.rfind(R"({"step":0,"layer":0,"seed":3,"from":"DORMANT","to":"GERMINATED",)"
                       R"("reason":"germinate residual_mlp: say \"hi\"","origin":"controller",)"
                       R"("kind":"transition","schema":1,"time":"20)",
                       0) == 0);
        CHECK(l2.rfind(R"({"step":0,"layer":0,"seed":3,"from":"GERMINATED","to":"TRAINING",)"
                       R"("reason":"training slot free","origin":"auto","kind":"transition",)",
                       0) == 0);
        CHECK(l2.size() - l2.rfind("\"time\":\"") ==
              std::string("\"time\":\"2025-01-31T12:34:56.789Z\"}").size());
        CHECK(log.lines_written() == 2);
    }
    std::remove(path.c_str());
    CHECK_THROWS_WITH(EventLog("/nonexistent-dir/events.jsonl"),
                      Catch::Contains("/nonexistent-dir"));
}

TEST_CASE("an event line escapes any reason and keeps UTF-8", "[kasmina][seed_manager]") {
    LifecycleEvent e;
    e.step = 9'000'000'000;  // beyond 32 bits
    e.from = S::kEvaluating;
    e.to = S::kFineTuning;
    e.origin = TransitionOrigin::kOperator;
    e.reason = "a\\b \"q\"\n\t\x01 EVALUATING→FINE_TUNING";
    const std::string line = event_to_json(e);
    CHECK(line.find('\n') == std::string::npos);
    CHECK_THAT(line, Catch::Contains(R"("from":"EVALUATING","to":"FINE_TUNING")") &&
                         Catch::Contains(R"(\u0001)") && Catch::Contains("→"));
    CHECK(line.rfind(R"({"step":9000000000,)", 0) == 0);
    CHECK(line.find(R"("origin":"operator",)") != std::string::npos);
    // Invalid UTF-8 in a reason (bus input) is replaced, never a throw.
    e.reason = "bad \xff byte";
    CHECK_NOTHROW(event_to_json(e));
}

TEST_CASE("a snapshot restores a manager that then continues identically",
          "[kasmina][seed_manager]") {
    std::mt19937 rng(7);
    std::uniform_real_distribution<double> u(0.5, 1.0);
    auto metrics = [&](const SeedManager& m) {
        return measured(m, u(rng), u(rng), u(rng) - 0.6, 0.01);
    };
    Config cfg = small_config();
    cfg.lifecycle.grafting.strategy = GraftingStrategy::kMomentum;
    SeedManager a(seed_manager_config(cfg), {32, 20});
    REQUIRE(a.apply(germinate(0, 0)).applied());
    REQUIRE(a.apply(germinate(1, 1, BlueprintKind::kLowrank)).applied());
    int64_t step = 0;
    for (; step < 6; ++step) a.on_step_end(step, metrics(a));
    const SeedManagerSnapshot snap = a.snapshot();
    CHECK(snap.layers.size() == 2);
    CHECK(snap.layers[1].rows[1].kind == BlueprintKind::kLowrank);
    CHECK(snap.layers[1].measured[1].gradient_health.has_value());
    CHECK(snap.loss_window.size() == 6);

    SeedManager b(seed_manager_config(cfg), {32, 20});
    b.restore(snap);
    CHECK(b.snapshot() == snap);
    CHECK(b.digest() == a.digest());
    CHECK(b.next_step() == a.next_step());
    for (int k = 0; k < 3; ++k) {
        CHECK(b.arenas(0).free_slots(static_cast<BlueprintKind>(k)) ==
              a.arenas(0).free_slots(static_cast<BlueprintKind>(k)));
    }
    for (; step < 20; ++step) {
        const StepMetrics sm = metrics(a);
        a.on_step_end(step, sm);
        b.on_step_end(step, sm);
        REQUIRE(b.digest() == a.digest());
    }
    SECTION("snapshots of another shape or with inconsistent slots are refused, changing nothing") {
        const SeedManagerSnapshot before = b.snapshot();
        auto refused = [&](const SeedManagerSnapshot& bad, const std::string& why) {
            try {
                b.restore(bad);
                FAIL("restored: " << why);
            } catch (const Error& e) {
                CHECK(e.kind() == ErrorKind::kIntegrity);
                CHECK_THAT(std::string(e.what()), Catch::Contains(why));
            }
            CHECK(b.snapshot() == before);
        };
        SeedManager other(seed_manager_config(cfg), {32});
        CHECK_THROWS_WITH(other.restore(snap), Catch::Contains("layers"));
        SeedManagerSnapshot bad = snap;
        bad.layers[1].width = 21;
        refused(bad, "width 21");
        bad = snap;
        bad.layers[0].rows.pop_back();
        refused(bad, "seeds 3");
        bad = snap;
        bad.layers[0].rows[0].slot = -1;  // a TRAINING seed without a slot
        refused(bad, "slot/stage mismatch");
        bad = snap;
        bad.layers[0].rows[1] = bad.layers[0].rows[0];  // two seeds on one arena slot
        refused(bad, "shared arena slot");
        bad = snap;
        bad.loss_window.assign(21, 1.0);
        refused(bad, "loss window");
    }
}

TEST_CASE("the governor rolls back every non-terminal seed that changed since the snapshot",
          "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {32, 20});
    REQUIRE(m.apply(germinate(0, 0)).applied());
    REQUIRE(m.apply(germinate(1, 0)).applied());
    m.on_step_end(0, measured(m, 1.0, 0.9, 0.5));
    const SeedManagerSnapshot good = m.snapshot();  // (0,0) and (1,0) TRAINING
    for (int64_t step = 1; step <= 4; ++step) m.on_step_end(step, measured(m, 1.0, 0.9, 0.5));
    REQUIRE(m.table(0).stage(0) == S::kGrafting);               // changed
    REQUIRE(m.apply(germinate(0, 2)).applied());                // changed: new since the snapshot
    REQUIRE(m.apply(simple<RollbackCommand>(1, 0)).applied());  // changed, no longer active
    m.drain_events();
    CHECK(m.governor_rollback(good, "non-finite loss at step 4") == 2);
    CHECK(m.table(0).stage(0) == S::kRolledBack);
    CHECK(m.table(0).stage(2) == S::kCancelled);
    const auto ev = m.drain_events();
    REQUIRE(ev.size() == 2);
    for (const auto& e : ev) {
        CHECK(e.origin == TransitionOrigin::kGovernor);
        CHECK(e.reason == "governor rollback: non-finite loss at step 4");
    }
    CHECK(m.arenas(0).free_slots(BlueprintKind::kResidualMlp) == 8);
    // restore() brings back the exact snapshot state.
    m.restore(good);
    CHECK(m.table(0).stage(0) == S::kTraining);
    CHECK(m.table(0).stage(2) == S::kDormant);
    CHECK(m.arenas(0).free_slots(BlueprintKind::kResidualMlp) == 7);
}

TEST_CASE("the kernels' view points at the live table and arenas", "[kasmina][seed_manager]") {
    SeedManager m(seed_manager_config(small_config()), {30});
    REQUIRE(m.apply(germinate(0, 2, BlueprintKind::kLowrank)).applied());
    const kernels::SeedLayerView v = m.view(0, 16);
    CHECK(v.batch == 16);
    CHECK(v.width == 30);
    CHECK(v.num_seeds == 4);
    CHECK(v.chunk_offset[4] == 30);
    CHECK(v.chunk_offset[2] == 16);  // 8, 8, 7, 7
    CHECK(v.stage[2] == static_cast<uint8_t>(S::kGerminated));
    CHECK(v.kind[2] == static_cast<uint8_t>(BlueprintKind::kLowrank));
    CHECK(v.slot[2] == 0);
    CHECK(v.slot[1] == -1);
    CHECK(v.arenas[1].capacity == 8);
    CHECK(v.arenas[1].hidden == 4);
    CHECK(v.arenas[1].max_width == 8);
}

TEST_CASE("a newly grafted seed changes nothing in the forward pass", "[kasmina][seed_manager]") {
    Config cfg = small_config();
    cfg.lifecycle.grafting.ramp_steps = 2;
    cfg.lifecycle.max_training_per_layer = 3;
    SeedManager m(seed_manager_config(cfg), {30});
    for (int s = 0; s < 3; ++s) {
        const auto kind = static_cast<BlueprintKind>(s);
        REQUIRE(m.apply(germinate(0, s, kind)).applied());
    }
    int64_t step = 0;
    // Drive one seed of each kind into GRAFTING with α > 0.
    while (!(m.table(0).stage(0) == S::kGrafting && m.table(0).alpha(0) > 0.0f)) {
        m.on_step_end(step++, measured(m, 1.0, 0.9, 0.5));
    }
    for (int s = 0; s < 3; ++s) {
        REQUIRE(m.table(0).stage(s) == S::kGrafting);
        REQUIRE(m.table(0).alpha(s) == 0.5f);
    }
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int batch = 5;
    std::vector<float> h(batch * 30), y(batch * 30, -99.0f);
    for (float& x : h) x = nd(rng);
    kernels::seed_forward_reference(m.view(0, batch), h.data(), y.data(), nullptr);
    CHECK(y == h);  // U and b2 are zero at birth: bit-identical
}

TEST_CASE(
    "a widening site prices and germinates only the widening kinds, and a folded fossil "
    "gives its slot back",
    "[kasmina][seed_manager]") {
    Config cfg = small_config();
    cfg.blueprints.mlp_units = {4, 1};
    cfg.blueprints.attention_head = {1};
    cfg.blueprints.lora = {2, 1};
    cfg.lifecycle.max_active_per_layer = 4;
    const std::vector<SeedSite> sites = {{32, 8, SiteKind::kChunk, 0},
                                         {3, 8, SiteKind::kWidening, 4}};
    SeedManager m(seed_manager_config(cfg), sites);
    REQUIRE(m.num_layers() == 2);
    CHECK(m.table(1).num_seeds() == 3);
    CHECK(m.site_kind(1) == SiteKind::kWidening);
    CHECK(m.germination_params({1, 0}, BlueprintKind::kResidualMlp) == -1);
    CHECK_THAT(m.apply(germinate(1, 0, BlueprintKind::kResidualMlp)).reason,
               Catch::Contains("not available on layer 1 (a widening site)"));
    const BlueprintKind kinds[] = {BlueprintKind::kMlpUnits, BlueprintKind::kAttentionHead,
                                   BlueprintKind::kLora};
    const int64_t want[] = {2 * 4 * 8 + 4, 4 * 4 * 8 + 3 * 4, 2 * 8 + 3 * 8 * 2};
    for (int32_t s = 0; s < 3; ++s) {
        INFO(blueprint_kind_name(kinds[s]));
        CHECK(m.germination_params({1, s}, kinds[s]) == want[s]);
        REQUIRE(m.apply(germinate(1, s, kinds[s])).applied());
        CHECK(m.seed_blueprint_params({1, s}) == want[s]);
    }
    // release_folded refuses anything but a FOSSILIZED widening seed.
    CHECK_FALSE(m.release_folded({1, 0}));
    CHECK_FALSE(m.release_folded({0, 0}));
    CHECK_FALSE(m.release_folded({7, 0}));
}
