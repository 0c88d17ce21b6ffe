// Tests of the rules policy: the shipped example files load, every kind of mistake is reported
// as file:line: field: reason, conditions and rate limits evaluate as documented, the
// plateau_germinate rules agree with the heuristic, and the fixed schedule fires on time.
#include <algorithm>
#include <catch2/catch.hpp>
#include <random>
#include <set>
#include <tuple>

#include "core/error.h"
#include "tamiyo/controller.h"
#include "tamiyo/heuristic_policy.h"
#include "tamiyo/rules_policy.h"
#include "tamiyo_test_util.h"
#include "tests/support/paths.h"

using namespace esper;
using namespace esper::tamiyo;
using esper::tamiyo::test::Recorder;

namespace {

const std::string kExamples = esper::testing::test_data("examples/policies/");

std::string error_of(const std::string& text) {
    try {
        parse_rules(text, "t.yaml");
    } catch (const esper::Error& e) {
        CHECK(e.kind() == esper::ErrorKind::kInvalidInput);
        return e.message();
    }
    return "(no error)";
}

std::set<std::tuple<int, uint32_t, uint32_t>> keys(const std::vector<Decision>& ds) {
    std::set<std::tuple<int, uint32_t, uint32_t>> out;
    for (const Decision& d : ds) out.insert({static_cast<int>(d.kind), d.layer, d.seed});
    return out;
}

const char* kHeader = "version: 1\nname: t\nrules:\n";

}  // namespace

TEST_CASE("the shipped rules files load", "[tamiyo][rules]") {
    const RulesConfig plateau = load_rules_file(kExamples + "plateau_germinate.yaml");
    CHECK(plateau.name == "plateau_germinate");
    CHECK(plateau.rules.size() == 8);
    CHECK(plateau.rules.back().action == DecisionKind::kGerminate);
    CHECK(plateau.rules.back().limits.per_layer == 1);
    const RulesConfig fixed = load_rules_file(kExamples + "fixed_schedule.yaml");
    CHECK(fixed.name == "fixed_schedule");
    CHECK(fixed.rules.size() == 5);
    CHECK(fixed.rules[0].when.size() == 5);
    const RulesConfig quality =
        load_rules_file(esper::testing::test_data("bench/quality/fixed_schedule.yaml"));
    CHECK(quality.name == "fixed_schedule_quality");
    CHECK(quality.rules.size() == 3);  // no fossilize rule: the seed fine-tunes to the end
    CHECK_THROWS_WITH(load_rules_file(kExamples + "no_such_file.yaml"),
                      Catch::Contains("no_such_file.yaml: cannot open"));
}

TEST_CASE("stage values in conditions, and so in reasons, are spelled the vocabulary's way",
          "[tamiyo][rules]") {
    const RulesConfig c = parse_rules(std::string(kHeader) +
                                          "  - name: r\n    action: cull\n    when:\n"
                                          "      - \"seed.stage == fine_tuning\"\n"
                                          "      - \"seed.stage not in [training, Evaluating]\"\n",
                                      "t.yaml");
    REQUIRE(c.rules.size() == 1);
    REQUIRE(c.rules[0].when.size() == 2);
    CHECK(c.rules[0].when[0].text == "seed.stage == FINE_TUNING");
    CHECK(c.rules[0].when[1].text == "seed.stage not in [TRAINING, EVALUATING]");
}

TEST_CASE("every kind of mistake in a rules file is reported as file:line: field: reason",
          "[tamiyo][rules]") {
    struct Case {
        std::string text;
        std::string where;   // "t.yaml:LINE: FIELD"
        std::string reason;  // a substring of the reason
    };
    const std::string h = kHeader;
    const std::string rule = "  - name: r\n    action: germinate\n";
    auto c = GENERATE_COPY(values<Case>({
        {"version: 1\nname: t\nrules: [\n", "t.yaml:4: yaml", ""},
        {"name: t\nrules:\n" + rule, "t.yaml:1: version", "missing"},
        {"version: 2\nname: t\nrules:\n" + rule, "t.yaml:1: version", "out of range"},
        {"version: 1\nrules:\n" + rule, "t.yaml:1: name", "missing"},
        {"version: 1\nname: t\nnmae: u\nrules:\n" + rule, "t.yaml:3: policy.nmae", "unknown key"},
        {"version: 1\nname: t\nrules: []\n", "t.yaml:3: rules", "non-empty list"},
        {"version: 1\nname: t\n", "t.yaml:1: rules", "missing"},
        {h + "  - 42\n", "t.yaml:4: rules[0]", "expected a mapping"},
        {h + "  - name: r\n", "t.yaml:4: rules[0].action", "missing"},
        {h + "  - name: r\n    action: explode\n", "t.yaml:5: rules[0].action", "unknown action"},
        {h + rule + "    colour: red\n", "t.yaml:6: rules[0].colour", "unknown key"},
        {h + rule + "    when: \"seed.health < 1\"\n", "t.yaml:6: rules[0].when", "list"},
        {h + rule + "    when:\n      - \"seed.helth < 0.5\"\n", "t.yaml:7: rules[0].when[0]",
         "unknown metric 'seed.helth'"},
        {h + rule + "    when:\n      - \"seed.health\"\n", "t.yaml:7: rules[0].when[0]",
         "expected \"<metric> <op> <value>\""},
        {h + rule + "    when:\n      - \"seed.health =~ 0.5\"\n", "t.yaml:7: rules[0].when[0]",
         "unknown operator '=~'"},
        {h + rule + "    when:\n      - \"seed.health < lots\"\n", "t.yaml:7: rules[0].when[0]",
         "expected a number, got 'lots'"},
        {h + rule + "    when:\n      - \"seed.health < 0.5 0.6\"\n", "t.yaml:7: rules[0].when[0]",
         "expected one value"},
        {h + rule + "    when:\n      - \"seed.stage < TRAINING\"\n", "t.yaml:7: rules[0].when[0]",
         "only be compared with == or !="},
        {h + rule + "    when:\n      - \"seed.stage == SLEEPING\"\n", "t.yaml:7: rules[0].when[0]",
         "not a stage name (DORMANT, GERMINATED, TRAINING, GRAFTING, STABILIZATION, EVALUATING, "
         "FINE_TUNING, FOSSILIZED, CULLED, CANCELLED, ROLLED_BACK)"},
        {h + rule + "    when:\n      - \"run.plateau == maybe\"\n", "t.yaml:7: rules[0].when[0]",
         "true or false"},
        {h + rule + "    when:\n      - \"seed.id in 3\"\n", "t.yaml:7: rules[0].when[0]",
         "expected a list"},
        {h + rule + "    when:\n      - \"seed.id in [1, , 2]\"\n", "t.yaml:7: rules[0].when[0]",
         "empty item"},
        {h + rule + "    when:\n      - \"seed.health is tall\"\n", "t.yaml:7: rules[0].when[0]",
         "'is measured' or 'is unmeasured'"},
        {h + "  - name: r\n    action: cull\n    blueprint: lowrank\n",
         "t.yaml:6: rules[0].blueprint", "only valid with action: germinate"},
        {h + rule + "    blueprint: hypernet\n", "t.yaml:6: rules[0].blueprint",
         "unknown blueprint"},
        {h + rule + "    strategy: warp\n", "t.yaml:6: rules[0].strategy",
         "unknown strategy 'warp'"},
        {h + rule + "    size: -3\n", "t.yaml:6: rules[0].size", "non-negative integer"},
        {h + rule + "    order_by: seed.wisdom\n", "t.yaml:6: rules[0].order_by", "unknown metric"},
        {h + rule + "    order_by: seed.stage\n", "t.yaml:6: rules[0].order_by", "not a number"},
        {h + rule + "    limit:\n      per_layer: 0\n", "t.yaml:7: rules[0].limit.per_layer",
         "out of range"},
        {h + rule + "    limit:\n      often: 3\n", "t.yaml:7: rules[0].limit.often",
         "unknown key"},
        {h + rule + "    limit: 3\n", "t.yaml:6: rules[0].limit", "expected a mapping"},
        {h + rule + rule, "t.yaml:6: rules[1].name", "duplicate rule name 'r'"},
        {"version: 1\nname: t\ndefaults:\n  strategy: slow\nrules:\n" + rule,
         "t.yaml:4: defaults.strategy", "unknown strategy"},
    }));
    const std::string msg = error_of(c.text);
    INFO("text:\n" << c.text << "\nerror: " << msg);
    CHECK(msg.rfind(c.where + ": ", 0) == 0);
    CHECK(msg.find(c.reason) != std::string::npos);
}

TEST_CASE("rules match conditions in order with one decision per seed", "[tamiyo][rules]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(101);
    test::populate(r, rng, 2, 4, 10);
    r.telemetry(test::random_telemetry(rng, 1, 2, 400, SeedStage::kTraining, 300));
    auto p = RulesPolicy::from_string(
        std::string(kHeader) +
            "  - name: graft\n"
            "    when: [\"seed.stage == TRAINING\", \"seed.steps_in_stage >= 250\"]\n"
            "    action: approve\n"
            "  - name: everything-in-layer-1\n"
            "    when: [\"layer.id == 1\", \"seed.health is measured\"]\n"
            "    action: germinate\n"
            "    blueprint: lowrank\n"
            "    size: 3\n"
            "    strategy: cosine\n"
            "  - name: never\n"
            "    when: [\"seed.contribution < 0\", \"seed.stage == DORMANT\"]\n"
            "    action: cull\n",
        "t.yaml");
    const auto ds = p->decide(v, 400);
    REQUIRE(ds.size() == 4);
    CHECK(ds[0].kind == DecisionKind::kApprove);
    CHECK(ds[0].layer == 1);
    CHECK(ds[0].seed == 2);
    CHECK(ds[0].reason == "t/graft: seed.stage == TRAINING and seed.steps_in_stage >= 250");
    for (size_t i = 1; i < ds.size(); ++i) {
        CHECK(ds[i].kind == DecisionKind::kGerminate);
        CHECK(ds[i].layer == 1);
        CHECK(ds[i].seed != 2);  // already decided by the first rule
        CHECK(ds[i].blueprint == BlueprintKind::kLowrank);
        CHECK(ds[i].blueprint_size == 3);
        CHECK(ds[i].strategy == "cosine");
    }
}

TEST_CASE("rule rate limits: per decision, per layer, every N steps, max total, with ordering",
          "[tamiyo][rules]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(55);
    test::populate(r, rng, 3, 6, 10);
    auto rules = [](const std::string& limit, const std::string& order) {
        return RulesPolicy::from_string(std::string(kHeader) + "  - name: g\n" +
                                            "    when: [\"seed.stage == DORMANT\"]\n" +
                                            "    action: germinate\n" + order + limit,
                                        "t.yaml");
    };
    SECTION("per_decision with order_by health ascending") {
        auto p = rules("    limit:\n      per_decision: 2\n", "    order_by: seed.health\n");
        const auto ds = p->decide(v, 100);
        REQUIRE(ds.size() == 2);
        std::vector<double> health;
        for (const auto& [id, lv] : v.layers())
            for (const SeedView& s : lv.seeds) health.push_back(*s.latest.health);
        std::sort(health.begin(), health.end());
        CHECK(*v.seed(ds[0].layer, ds[0].seed)->latest.health == health[0]);
        CHECK(*v.seed(ds[1].layer, ds[1].seed)->latest.health == health[1]);
    }
    SECTION("per_layer with order_by health descending") {
        auto p = rules("    limit:\n      per_layer: 1\n", "    order_by: -seed.health\n");
        const auto ds = p->decide(v, 100);
        REQUIRE(ds.size() == 3);
        for (const Decision& d : ds) {
            double best = -1.0;
            for (const SeedView& s : v.layer(d.layer)->seeds)
                best = std::max(best, *s.latest.health);
            CHECK(*v.seed(d.layer, d.seed)->latest.health == best);
        }
    }
    SECTION("every_steps and max_total") {
        auto p = rules(
            "    limit:\n      per_decision: 1\n      every_steps: 100\n      max_total: 3\n", "");
        CHECK(p->decide(v, 100).size() == 1);
        CHECK(p->decide(v, 150).empty());
        CHECK(p->decide(v, 199).empty());
        CHECK(p->decide(v, 200).size() == 1);
        CHECK(p->decide(v, 300).size() == 1);
        CHECK(p->decide(v, 400).empty());  // max_total reached
        CHECK(p->decide(v, 10000).empty());
    }
}

TEST_CASE("plateau_germinate rules decide as the built-in heuristic",
          "[tamiyo][rules][heuristic]") {
    ViewConfig cfg;
    cfg.plateau.patience_steps = 200;
    cfg.plateau.min_delta = 0.01;
    View v(cfg);
    Recorder r{v, {}};
    std::mt19937 rng(4242);
    test::populate(r, rng, 3, 10, 10);
    std::uniform_int_distribution<int> stage(2, 6);
    std::uniform_int_distribution<uint32_t> steps(0, 800);
    for (uint32_t l = 0; l < 3; ++l)
        for (uint32_t s = 0; s < 5; ++s)
            r.telemetry(test::random_telemetry(rng, l, s, 900, static_cast<SeedStage>(stage(rng)),
                                               steps(rng)));
    double loss = 2.0;
    for (uint64_t step = 100; step <= 500; step += 100)
        r.status(test::status_at(step, loss -= 0.1));
    HeuristicPolicy heuristic;
    auto rules = RulesPolicy::from_file(kExamples + "plateau_germinate.yaml");
    const auto before = keys(heuristic.decide(v, 1000));
    CHECK(before == keys(rules->decide(v, 1000)));
    CHECK_FALSE(before.empty());

    for (uint64_t step = 600; step <= 1000; step += 100) r.status(test::status_at(step, loss));
    REQUIRE(v.run().plateau);
    const auto after = keys(heuristic.decide(v, 1000));
    CHECK(after == keys(rules->decide(v, 1000)));
    CHECK(after.size() == before.size() + 3);  // one germination per layer
}

TEST_CASE("the fixed schedule germinates the given seeds at the given steps",
          "[tamiyo][rules][schedule]") {
    View v;
    Recorder r{v, {}};
    std::mt19937 rng(99);
    test::populate(r, rng, 2, 16, 0);
    ControllerConfig cc;
    cc.budget.max_active_per_layer = 4;
    Controller c(cc, RulesPolicy::from_file(kExamples + "fixed_schedule.yaml"));
    std::vector<std::pair<uint64_t, std::set<std::pair<uint32_t, uint32_t>>>> fired;
    for (uint64_t step = 0; step <= 1000; step += 50) {
        std::set<std::pair<uint32_t, uint32_t>> germinated;
        for (const Decision& d : c.decide(v, step)) {
            if (d.kind != DecisionKind::kGerminate) continue;
            CHECK(d.policy == "fixed_schedule");
            CHECK(d.reason.rfind("fixed_schedule/step-", 0) == 0);
            germinated.insert({d.layer, d.seed});
            TransitionEvent e;  // the executor applies it
            e.layer = d.layer;
            e.seed = d.seed;
            e.step = step + 1;
            e.from = SeedStage::kDormant;
            e.to = SeedStage::kGerminated;
            e.blueprint = d.blueprint;
            r.transition(e);
        }
        if (!germinated.empty()) fired.emplace_back(step, germinated);
    }
    using S = std::set<std::pair<uint32_t, uint32_t>>;
    REQUIRE(fired.size() == 2);
    CHECK(fired[0].first == 200);
    CHECK(fired[0].second == S{{0, 0}, {1, 0}});
    CHECK(fired[1].first == 400);
    CHECK(fired[1].second == S{{0, 8}, {1, 8}});
}
