// Tests of the decision loop: the heuristic policy (plateau → germinate, gates approved or
// culled), budgets and cooldowns with recorded refusals, sanity checks, policy load/rollback
// history, and a throwing or slow policy disabled with the previous one restored.
#include "tamiyo/controller.h"

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <random>
#include <thread>

#include "core/error.h"
#include "tamiyo/heuristic_policy.h"
#include "tamiyo_test_util.h"

using namespace esper;
using namespace esper::tamiyo;
using esper::tamiyo::test::Recorder;

namespace {

ViewConfig fast_plateau() {
    ViewConfig cfg;
    cfg.plateau.patience_steps = 200;
    cfg.plateau.min_delta = 0.01;
    return cfg;
}

// A policy whose behaviour the test sets.
class ScriptedPolicy final : public Policy {
public:
    enum class Mode { kOk, kThrow, kSlow };
    ScriptedPolicy(std::string name, Mode mode) : name_(std::move(name)), mode_(mode) {}
    std::string name() const override { return name_; }
    std::string kind() const override { return "test"; }
    std::vector<Decision> decide(const View& view, uint64_t) override {
        ++calls;
        if (mode_ == Mode::kThrow) ESPER_THROW(kFailed, "scripted failure in ", name_);
        if (mode_ == Mode::kSlow) std::this_thread::sleep_for(std::chrono::milliseconds(30));
        std::vector<Decision> out;
        for (const auto& [id, lv] : view.layers())
            for (const SeedView& s : lv.seeds)
                if (s.known && s.stage == SeedStage::kDormant) {
                    Decision d;
                    d.layer = s.layer;
                    d.seed = s.seed;
                    d.reason = "scripted";
                    out.push_back(d);
                }
        return out;
    }
    int calls = 0;

private:
    std::string name_;
    Mode mode_;
};

}  // namespace

TEST_CASE("heuristic germinates the lowest-health dormant seed per layer only after a plateau",
          "[tamiyo][controller][heuristic]") {
    View v(fast_plateau());
    Recorder r{v, {}};
    std::mt19937 rng(31);
    test::populate(r, rng, 2, 6, 10);
    Controller c({}, std::make_unique<HeuristicPolicy>());

    double loss = 2.0;
    for (uint64_t step = 50; step <= 300; step += 50) r.status(test::status_at(step, loss -= 0.05));
    CHECK(c.decide(v, 300).empty());  // improving: no growth
    for (uint64_t step = 350; step <= 600; step += 50) r.status(test::status_at(step, loss));
    REQUIRE(v.run().plateau);
    const auto ds = c.decide(v, 600);
    REQUIRE(ds.size() == 2);
    for (const Decision& d : ds) {
        CHECK(d.kind == DecisionKind::kGerminate);
        CHECK(d.policy == "heuristic");
        CHECK(d.to_stage == SeedStage::kGerminated);
        CHECK(d.reason.find("plateau") != std::string::npos);
        // It is the minimum-health dormant seed of its layer.
        double min_health = 10.0;
        for (const SeedView& s : v.layer(d.layer)->seeds)
            min_health = std::min(min_health, *s.latest.health);
        CHECK(*v.seed(d.layer, d.seed)->latest.health == min_health);
    }
    CHECK(ds[0].layer != ds[1].layer);
    // Sent but not yet confirmed: the same seeds are not proposed twice.
    CHECK(c.pending_count() == 2);
    CHECK(c.decide(v, 650).empty());
    CHECK(c.journal().back().refusal.find("pending") != std::string::npos);
}

TEST_CASE("heuristic approves and culls gates from gradient health and contribution",
          "[tamiyo][controller][heuristic]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(5);
    HeuristicConfig hc;  // training 200, evaluation 100, fine-tuning 200, min health 0.7
    Controller c({}, std::make_unique<HeuristicPolicy>(hc));

    auto seed_at = [&](uint32_t seed, SeedStage stage, uint32_t steps,
                       std::optional<double> grad_health, std::optional<double> contribution) {
        SeedTelemetry t = test::random_telemetry(rng, 0, seed, 1000, stage, steps);
        t.metrics.gradient_health = grad_health;
        t.metrics.contribution = contribution;
        r.telemetry(t);
    };
    seed_at(0, SeedStage::kTraining, 250, 0.83, std::nullopt);  // healthy, due → approve
    seed_at(1, SeedStage::kTraining, 250, 0.41, std::nullopt);  // unhealthy, not stuck yet → wait
    seed_at(2, SeedStage::kTraining, 150, 0.95, std::nullopt);  // healthy, not due → wait
    seed_at(3, SeedStage::kTraining, 700, 0.41, std::nullopt);  // unhealthy for long → cull
    seed_at(4, SeedStage::kTraining, 250, std::nullopt, std::nullopt);  // unmeasured → wait
    seed_at(5, SeedStage::kEvaluating, 120, 0.9, 0.031);   // helps → approve FINE_TUNING
    seed_at(6, SeedStage::kEvaluating, 120, 0.9, -0.017);  // does not help → cull
    seed_at(7, SeedStage::kEvaluating, 40, 0.9, 0.5);      // not due → wait
    seed_at(8, SeedStage::kFineTuning, 230, 0.9, 0.02);    // done → fossilize
    seed_at(9, SeedStage::kFineTuning, 50, 0.9, -0.2);     // hurts → cull at once
    seed_at(10, SeedStage::kFineTuning, 50, 0.9, 0.2);     // fine, not done → wait
    seed_at(11, SeedStage::kGrafting, 50, 0.9, -0.3);      // no gate → nothing

    const auto ds = c.decide(v, 1000);
    std::map<uint32_t, Decision> by_seed;
    for (const Decision& d : ds) by_seed[d.seed] = d;
    CHECK(by_seed.size() == ds.size());
    REQUIRE(by_seed.count(0));
    CHECK(by_seed[0].kind == DecisionKind::kApprove);
    CHECK(by_seed[0].to_stage == SeedStage::kGrafting);
    CHECK(by_seed.count(1) == 0);
    CHECK(by_seed.count(2) == 0);
    REQUIRE(by_seed.count(3));
    CHECK(by_seed[3].kind == DecisionKind::kCull);
    CHECK(by_seed.count(4) == 0);
    REQUIRE(by_seed.count(5));
    CHECK(by_seed[5].kind == DecisionKind::kApprove);
    CHECK(by_seed[5].to_stage == SeedStage::kFineTuning);
    REQUIRE(by_seed.count(6));
    CHECK(by_seed[6].kind == DecisionKind::kCull);
    CHECK(by_seed[6].to_stage == SeedStage::kCulled);
    CHECK(by_seed.count(7) == 0);
    REQUIRE(by_seed.count(8));
    CHECK(by_seed[8].kind == DecisionKind::kFossilize);
    CHECK(by_seed[8].to_stage == SeedStage::kFossilized);
    REQUIRE(by_seed.count(9));
    CHECK(by_seed[9].kind == DecisionKind::kCull);
    CHECK(by_seed.count(10) == 0);
    CHECK(by_seed.count(11) == 0);
    CHECK(ds.size() == 6);
}

TEST_CASE("budgets cap active seeds per layer and blueprint parameters, with reasons",
          "[tamiyo][controller][budget]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(77);
    test::populate(r, rng, 2, 8, 10);  // chunk width 4
    // Two seeds of layer 0 already active.
    for (uint32_t s : {0u, 1u})
        r.telemetry(test::random_telemetry(rng, 0, s, 20, SeedStage::kTraining, 10));

    SECTION("max active per layer") {
        ControllerConfig cc;
        cc.budget.max_active_per_layer = 3;
        Controller c(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));
        const auto ds = c.decide(v, 30);
        size_t layer0 = 0, layer1 = 0;
        for (const Decision& d : ds) (d.layer == 0 ? layer0 : layer1)++;
        CHECK(layer0 == 1);  // 2 active + 1
        CHECK(layer1 == 3);
        size_t refused = 0;
        for (const DecisionRecord& rec : c.journal())
            if (!rec.accepted) {
                ++refused;
                CHECK(rec.refusal.find("active seeds (max 3)") != std::string::npos);
            }
        CHECK(refused == 5 + 5);
        // Pending germinations still count on the next round.
        CHECK(c.decide(v, 31).empty());
    }
    SECTION("max blueprint parameters per layer, priced with the published numbers") {
        ControllerConfig cc;
        cc.budget.max_active_per_layer = 100;
        const int64_t one = test::kResidualMlpPrice;
        cc.budget.max_blueprint_params_per_layer = 3 * one + one / 2;
        Controller c(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));
        const auto ds = c.decide(v, 30);
        size_t layer0 = 0, layer1 = 0;
        for (const Decision& d : ds) (d.layer == 0 ? layer0 : layer1)++;
        CHECK(layer0 == 3);  // each layer has its own cap
        CHECK(layer1 == 3);
        const DecisionRecord& last = c.journal().back();
        CHECK_FALSE(last.accepted);
        CHECK(last.refusal.find("blueprint parameters 3000 + 1000 > max 3500") !=
              std::string::npos);
    }
    SECTION("a seed without a published price is not germinated") {
        View bare;
        for (uint32_t s = 0; s < 3; ++s) {
            SeedTelemetry t = test::random_telemetry(rng, 0, s, 10);
            if (s != 1) t.germination_params = {};
            bare.ingest_telemetry(t);
        }
        ControllerConfig cc;
        cc.budget.max_active_per_layer = 100;
        Controller c(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));
        const auto ds = c.decide(bare, 30);
        REQUIRE(ds.size() == 1);
        CHECK(ds[0].seed == 1);
        size_t unpriced = 0;
        for (const DecisionRecord& rec : c.journal())
            if (!rec.accepted &&
                rec.refusal.find("no residual_mlp germination price published for seed 0/") !=
                    std::string::npos)
                ++unpriced;
        CHECK(unpriced == 2);
    }
    SECTION("per-decision germination cap") {
        ControllerConfig cc;
        cc.budget.max_active_per_layer = 100;
        cc.budget.max_germinations_per_decision = 2;
        Controller c(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));
        CHECK(c.decide(v, 30).size() == 2);
    }
}

TEST_CASE("cooldown spaces germinations in a layer, counting from the view after a restart",
          "[tamiyo][controller][budget]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(8);
    test::populate(r, rng, 1, 8, 10);
    ControllerConfig cc;
    cc.budget.max_active_per_layer = 100;
    cc.budget.germination_cooldown_steps = 500;
    cc.pending_timeout_steps = 100000;
    Controller c(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));

    auto ds = c.decide(v, 1000);
    REQUIRE(ds.size() == 1);  // the first one only; the rest wait for the cooldown
    CHECK(c.journal().back().refusal.find("next allowed at step 1500") != std::string::npos);
    CHECK(c.decide(v, 1499).empty());
    CHECK(c.decide(v, 1500).size() == 1);

    // A fresh controller (restart) learns the last germination from the view's transitions.
    TransitionEvent e;
    e.layer = 0;
    e.seed = 5;
    e.step = 2000;
    e.to = SeedStage::kGerminated;
    e.blueprint = BlueprintKind::kResidualMlp;
    r.transition(e);
    Controller fresh(cc, std::make_unique<ScriptedPolicy>("greedy", ScriptedPolicy::Mode::kOk));
    CHECK(fresh.decide(v, 2400).empty());
    CHECK(fresh.decide(v, 2500).size() == 1);
}

TEST_CASE("decisions for unknown seeds, wrong stages or duplicates are refused and recorded",
          "[tamiyo][controller]") {
    class Bad final : public Policy {
    public:
        std::string name() const override { return "bad"; }
        std::string kind() const override { return "test"; }
        std::vector<Decision> decide(const View&, uint64_t) override {
            auto make = [](DecisionKind k, uint32_t layer, uint32_t seed) {
                Decision d;
                d.kind = k;
                d.layer = layer;
                d.seed = seed;
                return d;
            };
            Decision unknown = make(DecisionKind::kCull, 9, 9);
            Decision wrong = make(DecisionKind::kFossilize, 0, 0);  // seed 0 is DORMANT
            Decision germ = make(DecisionKind::kGerminate, 0, 1);
            Decision dup = make(DecisionKind::kGerminate, 0, 1);
            Decision strat = make(DecisionKind::kGerminate, 0, 2);
            strat.strategy = "warp_speed";
            return {unknown, wrong, germ, dup, strat};
        }
    };
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(3);
    test::populate(r, rng, 1, 4, 10);
    Controller c({}, std::make_unique<Bad>());
    const auto ds = c.decide(v, 20);
    REQUIRE(ds.size() == 1);
    CHECK(ds[0].seed == 1);
    const auto& j = c.journal();
    REQUIRE(j.size() == 5);
    CHECK(j[0].refusal == "unknown seed 9/9");
    CHECK(j[1].refusal.find("needs a seed in FINE_TUNING") != std::string::npos);
    CHECK(j[2].accepted);
    CHECK(j[3].refusal.find("duplicate") != std::string::npos);
    CHECK(j[4].refusal.find("warp_speed") != std::string::npos);
}

TEST_CASE("policies swap between decisions and roll back, with a timestamped history",
          "[tamiyo][controller]") {
    Controller c({}, std::make_unique<HeuristicPolicy>());
    CHECK(c.active().name() == "heuristic");
    CHECK_THROWS_AS(c.rollback(), esper::Error);
    c.load(std::make_unique<ScriptedPolicy>("first", ScriptedPolicy::Mode::kOk), "operator", 10);
    c.load(std::make_unique<ScriptedPolicy>("second", ScriptedPolicy::Mode::kOk), "operator", 20);
    CHECK(c.active().name() == "second");
    c.rollback("operator rollback", 30);
    CHECK(c.active().name() == "first");
    const auto& h = c.history();
    REQUIRE(h.size() == 4);
    CHECK(h[0].action == PolicyAction::kLoad);
    CHECK(h[0].name == "heuristic");
    CHECK(h[2].affected == "second");
    CHECK(h[3].action == PolicyAction::kRollback);
    CHECK(h[3].affected == "second");
    CHECK(h[3].name == "first");
    CHECK(h[3].step == 30);
    CHECK(h[3].wall_ns >= h[0].wall_ns);
    CHECK(h[0].wall_ns > 0);
}

TEST_CASE("a policy that throws is disabled and the previous one restored",
          "[tamiyo][controller]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(13);
    test::populate(r, rng, 1, 3, 10);
    Controller c({}, std::make_unique<ScriptedPolicy>("steady", ScriptedPolicy::Mode::kOk));
    c.load(std::make_unique<ScriptedPolicy>("faulty", ScriptedPolicy::Mode::kThrow));
    CHECK(c.decide(v, 20).empty());
    CHECK(c.active().name() == "steady");
    const PolicyHistoryEntry& last = c.history().back();
    CHECK(last.action == PolicyAction::kDisabled);
    CHECK(last.affected == "faulty");
    CHECK(last.reason.find("scripted failure in faulty") != std::string::npos);
    // The restored policy decides on the next round.
    CHECK(c.decide(v, 21).size() == 3);
}

TEST_CASE("a policy that overruns its time budget is disabled and its output discarded",
          "[tamiyo][controller]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(17);
    test::populate(r, rng, 1, 3, 10);
    ControllerConfig cc;
    cc.policy_time_budget_ms = 5.0;
    Controller c(cc, std::make_unique<ScriptedPolicy>("steady", ScriptedPolicy::Mode::kOk));
    c.load(std::make_unique<ScriptedPolicy>("sluggish", ScriptedPolicy::Mode::kSlow));
    CHECK(c.decide(v, 20).empty());
    CHECK(c.active().name() == "steady");
    CHECK(c.history().back().reason.find("time budget exceeded") != std::string::npos);
    CHECK(c.pending_count() == 0);

    // With nothing underneath, a failing policy stays active and the failure is recorded.
    Controller alone(cc, std::make_unique<ScriptedPolicy>("lonely", ScriptedPolicy::Mode::kThrow));
    CHECK(alone.decide(v, 20).empty());
    CHECK(alone.active().name() == "lonely");
    CHECK(alone.history().back().action == PolicyAction::kFailed);
}

TEST_CASE("a rejected germination backs off its kind in its layer instead of being resent",
          "[tamiyo][controller]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(44);
    test::populate(r, rng, 1, 4, 10);
    // Seed 3 holds a residual_mlp slot; the executor's arena of that kind has no other.
    TransitionEvent held;
    held.layer = 0;
    held.seed = 3;
    held.step = 20;
    held.to = SeedStage::kGerminated;
    held.blueprint = BlueprintKind::kResidualMlp;
    r.transition(held);
    ControllerConfig cfg;
    cfg.rejection_backoff_steps = 100;
    Controller c(cfg, std::make_unique<ScriptedPolicy>("grow", ScriptedPolicy::Mode::kOk));

    auto round = [&](uint64_t step) {
        r.status(test::status_at(step, 1.0));
        return c.decide(v, step);
    };
    std::vector<Decision> first = round(100);
    REQUIRE(first.size() == 3);
    for (const Decision& d : first) {
        c.forget_pending(d.layer, d.seed);
        c.germination_answered(d, false, v, 100);  // "gate failed: no free arena slot"
    }
    // The outside test saw the same rejected germination resent 44 times in 3,000 steps.
    CHECK(round(150).empty());
    CHECK(round(199).empty());
    CHECK_THAT(c.journal().back().refusal, Catch::Contains("back off until step 200"));
    // Back-off over: tried again; rejected again, the back-off doubles.
    std::vector<Decision> again = round(200);
    REQUIRE(again.size() == 3);
    for (const Decision& d : again) {
        c.forget_pending(d.layer, d.seed);
        c.germination_answered(d, false, v, 200);
    }
    CHECK(round(399).empty());
    // The held seed is culled: its slot is free, the arena has room, germinations resume at once.
    held.step = 300;
    held.from = SeedStage::kGerminated;
    held.to = SeedStage::kCulled;
    r.transition(held);
    std::vector<Decision> freed = round(310);
    CHECK(freed.size() == 3);
    for (const Decision& d : freed) c.germination_answered(d, true, v, 310);
    CHECK(c.backoffs() == 0);
}
