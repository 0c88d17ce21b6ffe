// Tests of policy construction from a spec ("heuristic", rules YAML, plugin .so[:config]) and of
// the invariant the agent relies on: a policy that fails to load never replaces the active one.
#include "tamiyo/policy_factory.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>

#include "core/error.h"
#include "tamiyo/controller.h"

using namespace esper;
using namespace esper::tamiyo;

TEST_CASE("policy specs pick the heuristic, a rules file or a plugin", "[tamiyo][policy]") {
    const std::string examples = std::string(ESPER_SOURCE_DIR) + "/examples/policies/";
    auto h = make_policy("heuristic");
    CHECK(h->kind() == "heuristic");
    CHECK(describe_policy(*h).find("TRAINING, after 200 steps") != std::string::npos);

    auto r = make_policy(examples + "plateau_germinate.yaml");
    CHECK(r->kind() == "rules");
    CHECK(r->name() == "plateau_germinate");
    const std::string text = describe_policy(*r);
    CHECK(text.find("rule germinate-on-plateau") != std::string::npos);
    CHECK(text.find("when run.plateau == true") != std::string::npos);

    auto p = make_policy(std::string(ESPER_EXAMPLE_PLUGIN) + ":training_steps=10");
    CHECK(p->kind() == "plugin");
    CHECK(p->source() == ESPER_EXAMPLE_PLUGIN);

    CHECK_THROWS_WITH(make_policy("policy.json"), Catch::Contains("expected 'heuristic'"));
}

TEST_CASE("an invalid policy is refused with file:line and the active one keeps running",
          "[tamiyo][policy]") {
    const std::string path = std::string(ESPER_BINARY_DIR) + "/tamiyo_invalid_policy_test.yaml";
    {
        std::ofstream out(path);
        out << "version: 1\nname: broken\nrules:\n  - name: r\n    action: germinate\n"
               "    when:\n      - \"seed.health < high\"\n";
    }
    Controller c({}, make_policy("heuristic"));
    try {
        c.load(make_policy(path));
        FAIL("the invalid policy loaded");
    } catch (const esper::Error& e) {
        CHECK(e.message() == path + ":7: rules[0].when[0]: expected a number, got 'high'");
    }
    std::remove(path.c_str());
    CHECK(c.active().name() == "heuristic");
    CHECK(c.history().size() == 1);
}
