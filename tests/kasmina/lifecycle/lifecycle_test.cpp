// The lifecycle validator: every legal edge accepted when its minimum time and gate hold, every
// other (from, to) pair refused as an invalid transition, and each minimum time and gate refused
// with its own reason. ROLLED_BACK bypasses the minimums; CULLED/ROLLED_BACK wait the embargo.
#include "kasmina/lifecycle/lifecycle.h"

#include <catch2/catch.hpp>
#include <set>
#include <utility>

using namespace esper;
using namespace esper::kasmina;
using S = SeedStage;

namespace {
const std::set<std::pair<S, S>> kLegal = {
    {S::kDormant, S::kGerminated},       {S::kGerminated, S::kTraining},
    {S::kGerminated, S::kCancelled},     {S::kTraining, S::kGrafting},
    {S::kTraining, S::kCulled},          {S::kTraining, S::kCancelled},
    {S::kGrafting, S::kStabilization},   {S::kGrafting, S::kRolledBack},
    {S::kStabilization, S::kEvaluating}, {S::kStabilization, S::kRolledBack},
    {S::kEvaluating, S::kFineTuning},    {S::kEvaluating, S::kCulled},
    {S::kEvaluating, S::kRolledBack},    {S::kFineTuning, S::kFossilized},
    {S::kFineTuning, S::kCulled},        {S::kFineTuning, S::kRolledBack},
    {S::kCulled, S::kDormant},           {S::kCancelled, S::kDormant},
    {S::kRolledBack, S::kDormant},
};

// Facts under which every gate holds and plenty of time has passed.
TransitionFacts good_facts(S from) {
    TransitionFacts f;
    f.from = from;
    f.steps_in_stage = 100000;
    f.step = 100000;
    f.embargo_until_step = 0;
    f.alpha = 1.0f;
    f.gradient_health = 0.95;
    return f;
}
}  // namespace

TEST_CASE("stage names round-trip and values are fixed", "[kasmina][lifecycle]") {
    for (int i = 0; i < kNumSeedStages; ++i) {
        const auto s = static_cast<S>(i);
        REQUIRE(parse_stage(stage_name(s)) == s);
    }
    CHECK(stage_name(S::kFineTuning) == "FINE_TUNING");
    CHECK(static_cast<int>(S::kRolledBack) == 10);
    CHECK(parse_stage("grafting") == S::kGrafting);
    CHECK_FALSE(parse_stage("BLENDING"));
    CHECK(origin_name(TransitionOrigin::kGovernor) == "governor");
    CHECK(parse_origin("operator") == TransitionOrigin::kOperator);
}

TEST_CASE("every legal transition is accepted when its time and gate hold",
          "[kasmina][lifecycle]") {
    const LifecycleConfig cfg;
    for (const auto& [from, to] : kLegal) {
        INFO(stage_name(from) << "→" << stage_name(to));
        CHECK(is_legal_transition(from, to));
        CHECK(validate_transition(to, good_facts(from), cfg) == "");
    }
}

TEST_CASE("every other pair of stages is refused as an invalid transition",
          "[kasmina][lifecycle]") {
    const LifecycleConfig cfg;
    int refused = 0;
    for (int a = 0; a < kNumSeedStages; ++a) {
        for (int b = 0; b < kNumSeedStages; ++b) {
            const auto from = static_cast<S>(a);
            const auto to = static_cast<S>(b);
            if (kLegal.count({from, to})) continue;
            INFO(stage_name(from) << "→" << stage_name(to));
            CHECK_FALSE(is_legal_transition(from, to));
            CHECK(validate_transition(to, good_facts(from), cfg) ==
                  "invalid transition " + std::string(stage_name(from)) + "→" +
                      std::string(stage_name(to)));
            ++refused;
        }
    }
    CHECK(refused == kNumSeedStages * kNumSeedStages - static_cast<int>(kLegal.size()));
    // A few that matter: no skipping, nothing leaves FOSSILIZED, no re-germination while culled.
    CHECK(validate_transition(S::kFossilized, good_facts(S::kTraining), cfg) ==
          "invalid transition TRAINING→FOSSILIZED");
    CHECK(validate_transition(S::kCulled, good_facts(S::kFossilized), cfg) ==
          "invalid transition FOSSILIZED→CULLED");
    CHECK(validate_transition(S::kGerminated, good_facts(S::kCulled), cfg) ==
          "invalid transition CULLED→GERMINATED");
    CHECK(validate_transition(S::kRolledBack, good_facts(S::kTraining), cfg) ==
          "invalid transition TRAINING→ROLLED_BACK");
}

TEST_CASE("minimum times are enforced with the configured values", "[kasmina][lifecycle]") {
    LifecycleConfig cfg;
    cfg.training_steps = 20;
    cfg.stabilization_steps = 10;
    cfg.evaluation_steps = 11;
    cfg.fine_tuning_steps = 12;
    cfg.embargo_steps = 50;
    struct Case {
        S from, to;
        int64_t need;
    };
    const Case cases[] = {
        {S::kTraining, S::kGrafting, 20},     {S::kStabilization, S::kEvaluating, 10},
        {S::kEvaluating, S::kFineTuning, 11}, {S::kFineTuning, S::kFossilized, 12},
        {S::kCulled, S::kDormant, 50},        {S::kRolledBack, S::kDormant, 50}};
    for (const Case& c : cases) {
        INFO(stage_name(c.from) << "→" << stage_name(c.to));
        CHECK(minimum_steps(c.from, c.to, cfg) == c.need);
        TransitionFacts f = good_facts(c.from);
        f.steps_in_stage = c.need - 1;
        CHECK(validate_transition(c.to, f, cfg) ==
              "insufficient time in " + std::string(stage_name(c.from)) + ": " +
                  std::to_string(c.need - 1) + " < " + std::to_string(c.need));
        f.steps_in_stage = c.need;
        CHECK(validate_transition(c.to, f, cfg) == "");
    }
    // Exits without a minimum.
    TransitionFacts f = good_facts(S::kTraining);
    f.steps_in_stage = 0;
    CHECK(validate_transition(S::kCulled, f, cfg) == "");
    CHECK(validate_transition(S::kCancelled, f, cfg) == "");
    f = good_facts(S::kCancelled);
    f.steps_in_stage = 0;
    CHECK(validate_transition(S::kDormant, f, cfg) == "");
}

TEST_CASE("ROLLED_BACK bypasses every minimum time", "[kasmina][lifecycle]") {
    LifecycleConfig cfg;
    cfg.stabilization_steps = 1000;
    cfg.evaluation_steps = 1000;
    cfg.fine_tuning_steps = 1000;
    for (S from : {S::kGrafting, S::kStabilization, S::kEvaluating, S::kFineTuning}) {
        INFO(stage_name(from));
        TransitionFacts f = good_facts(from);
        f.steps_in_stage = 0;
        f.alpha = 0.1f;
        CHECK(minimum_steps(from, S::kRolledBack, cfg) == 0);
        CHECK(validate_transition(S::kRolledBack, f, cfg) == "");
    }
}

TEST_CASE("gates refuse with their own reasons", "[kasmina][lifecycle]") {
    LifecycleConfig cfg;
    cfg.max_active_per_layer = 4;
    cfg.max_training_per_layer = 2;
    SECTION("embargo") {
        TransitionFacts f = good_facts(S::kDormant);
        f.step = 699;
        f.embargo_until_step = 700;
        CHECK(validate_transition(S::kGerminated, f, cfg) ==
              "gate failed: in embargo until step 700");
        f.step = 700;
        CHECK(validate_transition(S::kGerminated, f, cfg) == "");
    }
    SECTION("layer active budget, arena slot, parameter budget") {
        TransitionFacts f = good_facts(S::kDormant);
        f.active_in_layer = 4;
        CHECK(validate_transition(S::kGerminated, f, cfg) ==
              "gate failed: layer has 4 active seeds (max_active_per_layer 4)");
        f.active_in_layer = 3;
        f.arena_slot_free = false;
        f.blueprint_name = "lowrank";
        CHECK(validate_transition(S::kGerminated, f, cfg) ==
              "gate failed: no free lowrank arena slot");
        f.arena_slot_free = true;
        f.param_budget_ok = false;
        CHECK(validate_transition(S::kGerminated, f, cfg) ==
              "gate failed: blueprint parameter budget of the layer exceeded");
    }
    SECTION("training slots") {
        TransitionFacts f = good_facts(S::kGerminated);
        f.training_in_layer = 2;
        CHECK(validate_transition(S::kTraining, f, cfg) ==
              "gate failed: no free training slot (2/2)");
        f.training_in_layer = 1;
        CHECK(validate_transition(S::kTraining, f, cfg) == "");
    }
    SECTION("gradient health: unmeasured is not zero, and both refuse") {
        TransitionFacts f = good_facts(S::kTraining);
        f.gradient_health.reset();
        CHECK(validate_transition(S::kGrafting, f, cfg) ==
              "gate failed: gradient health never measured");
        f.gradient_health = 0.5;
        CHECK(validate_transition(S::kGrafting, f, cfg) ==
              "gate failed: gradient health 0.5 < 0.7");
        f.gradient_health = 0.7;
        CHECK(validate_transition(S::kGrafting, f, cfg) == "");
    }
    SECTION("grafting ends only when alpha reaches 1") {
        TransitionFacts f = good_facts(S::kGrafting);
        f.alpha = 0.75f;
        CHECK(validate_transition(S::kStabilization, f, cfg) ==
              "gate failed: alpha 0.75 < 1 (ramp not complete)");
    }
    SECTION("time is checked before the gate") {
        TransitionFacts f = good_facts(S::kTraining);
        f.steps_in_stage = 3;
        f.gradient_health.reset();
        CHECK(validate_transition(S::kGrafting, f, cfg) ==
              "insufficient time in TRAINING: 3 < 200");
    }
}
