// Tests of the plugin policy: the example plugin (built by examples/policies) loads and decides
// through the C ABI, libraries with another ABI version or a missing symbol are refused, and a
// library's symbols are checked from its file before any of its code runs.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>

#include "core/error.h"
#include "tamiyo/controller.h"
#include "tamiyo/esper_policy_v1.h"
#include "tamiyo/plugin_policy.h"
#include "tamiyo_test_util.h"

// The C ABI layout is frozen for v1.
static_assert(sizeof(esper_policy_seed_v1) == 52);
static_assert(offsetof(esper_policy_seed_v1, steps_in_stage) == 12);
static_assert(sizeof(esper_policy_run_v1) == 56);
static_assert(sizeof(esper_policy_decision_v1) == 180);

using namespace esper;
using namespace esper::tamiyo;
using esper::tamiyo::test::Recorder;

TEST_CASE("the example plugin loads and decides through the C ABI", "[tamiyo][plugin]") {
    auto p = PluginPolicy::load(ESPER_EXAMPLE_PLUGIN);
    CHECK(p->name() == "example_plugin");
    CHECK(p->kind() == "plugin");
    CHECK(p->source() == ESPER_EXAMPLE_PLUGIN);

    ViewConfig cfg;
    cfg.plateau.patience_steps = 100;
    View v(cfg);
    Recorder r{v, {}};
    std::mt19937 rng(21);
    test::populate(r, rng, 2, 5, 10);
    SeedTelemetry t = test::random_telemetry(rng, 0, 4, 500, SeedStage::kTraining, 250);
    t.metrics.gradient_health = 0.91;
    r.telemetry(t);
    t = test::random_telemetry(rng, 1, 3, 500, SeedStage::kEvaluating, 120);
    t.metrics.contribution = -0.07;  // hurts: the plugin culls it
    r.telemetry(t);

    auto ds = p->decide(v, 500);
    REQUIRE(ds.size() == 2);  // no plateau yet: only the gates
    CHECK(ds[0].kind == DecisionKind::kApprove);
    CHECK(ds[0].layer == 0);
    CHECK(ds[0].seed == 4);
    CHECK(ds[0].reason == "example_plugin: gradient health >= 0.7");
    CHECK(ds[1].kind == DecisionKind::kCull);
    CHECK(ds[1].seed == 3);

    for (uint64_t step = 100; step <= 400; step += 100) r.status(test::status_at(step, 1.0));
    REQUIRE(v.run().plateau);
    ds = p->decide(v, 500);
    // Layer 0 has an active seed; layer 1 only an EVALUATING one (active too): no germination.
    CHECK(ds.size() == 2);
    t = test::random_telemetry(rng, 1, 3, 600, SeedStage::kDormant, 0);
    r.telemetry(t);
    ds = p->decide(v, 600);
    REQUIRE(ds.size() == 2);
    CHECK(ds[1].kind == DecisionKind::kGerminate);
    CHECK(ds[1].layer == 1);
    double min_health = 10.0;
    for (const SeedView& s : v.layer(1)->seeds) min_health = std::min(min_health, *s.latest.health);
    CHECK(*v.seed(1, ds[1].seed)->latest.health == min_health);

    // Through the controller, decisions carry the plugin's name.
    Controller c({}, std::move(p));
    for (const Decision& d : c.decide(v, 600)) CHECK(d.policy == "example_plugin");
}

TEST_CASE("a plugin config the plugin rejects makes its init fail cleanly", "[tamiyo][plugin]") {
    CHECK_NOTHROW(PluginPolicy::load(ESPER_EXAMPLE_PLUGIN, "training_steps=50"));
    CHECK_THROWS_WITH(PluginPolicy::load(ESPER_EXAMPLE_PLUGIN, "bogus"),
                      Catch::Contains("policy plugin init failed"));
}

TEST_CASE("plugins with another ABI version, a missing symbol or no file are refused",
          "[tamiyo][plugin]") {
    CHECK_THROWS_WITH(PluginPolicy::load(ESPER_BAD_VERSION_PLUGIN),
                      Catch::Contains("ABI version 2 does not match this build's esper_policy_v1"));
    CHECK_THROWS_WITH(PluginPolicy::load(ESPER_MISSING_SYMBOL_PLUGIN),
                      Catch::Contains("missing symbol 'esper_policy_decide'"));
    CHECK_THROWS_WITH(PluginPolicy::load("/nonexistent/libnothing.so"),
                      Catch::Contains("cannot load policy plugin"));
    try {
        PluginPolicy::load(ESPER_BAD_VERSION_PLUGIN);
    } catch (const esper::Error& e) {
        CHECK(e.kind() == esper::ErrorKind::kInvalidInput);
        CHECK(e.message().rfind(ESPER_BAD_VERSION_PLUGIN, 0) == 0);
    }
}

TEST_CASE("a plugin is checked from its file before any of its code runs", "[tamiyo][plugin]") {
    const std::string marker = "/tmp/esper-evil-marker-" + std::to_string(::getpid());
    std::remove(marker.c_str());
    ::setenv("ESPER_EVIL_MARKER", marker.c_str(), 1);
    CHECK_NOTHROW(check_plugin_file(ESPER_EXAMPLE_PLUGIN));
    CHECK_THROWS_WITH(check_plugin_file(ESPER_EVIL_PLUGIN),
                      Catch::Contains("missing symbol 'esper_policy_decide'"));
    CHECK_THROWS_WITH(PluginPolicy::load(ESPER_EVIL_PLUGIN),
                      Catch::Contains("missing symbol 'esper_policy_decide'"));
    // Refused without its constructor having run in this process.
    CHECK_FALSE(std::ifstream(marker).good());
    // Not a shared library for this machine: a text file, a directory, an executable.
    const std::string text = marker + ".so";
    std::ofstream(text) << "not an ELF file\n";
    CHECK_THROWS_WITH(check_plugin_file(text), Catch::Contains("not an ELF file"));
    CHECK_THROWS_WITH(check_plugin_file("/tmp"), Catch::Contains("not a regular file"));
    CHECK_THROWS_WITH(check_plugin_file("/bin/sh"),
                      Catch::Contains("not a shared library") || Catch::Contains("missing symbol"));
    std::remove(text.c_str());
    ::unsetenv("ESPER_EVIL_MARKER");
}
