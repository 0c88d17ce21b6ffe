// Bus input into the agents' cores with bounded trust (issue 18): Kasmina's command intake
// (to_command: ids in range, unset unions, batch caps) and Tamiyo's intake (TamiyoIngest: only its
// run's executor, only inside the announced shape, every drop counted by reason).
#include <capnp/message.h>

#include <catch2/catch.hpp>
#include <functional>
#include <set>
#include <string>

#include "agents/kasmina_bus.h"
#include "agents/tamiyo_ingest.h"
#include "bus/envelope.h"

using namespace esper;
using esper::agents::IngestDrop;
using esper::agents::TamiyoIngest;

namespace {

// The reason a wire command is refused ("" when it converts).
std::string refusal(const std::function<void(schema::Command::Builder)>& fill) {
    capnp::MallocMessageBuilder m;
    auto c = m.initRoot<schema::Command>();
    c.setCommandId("t-1");
    fill(c);
    auto r = agents::to_command(c.asReader(), kasmina::Config{});
    const auto* why = std::get_if<std::string>(&r);
    return why ? *why : "";
}

}  // namespace

TEST_CASE("wire layer and seed ids beyond int32 are out of range, never read as negative",
          "[agents][intake]") {
    // 4294967295 was read as layer -1 ("unknown layer -1").
    CHECK(refusal([](auto c) { c.initCull().setLayer(4294967295u); }) ==
          "layer 4294967295 out of range");
    CHECK(refusal([](auto c) { c.initCancel().setSeed(2147483648u); }) ==
          "seed 2147483648 out of range");
    CHECK(refusal([](auto c) { c.initGerminate().setSeed(4000000000u); }) ==
          "seed 4000000000 out of range");
    auto t = [](auto c) {
        auto tr = c.initTransition();
        tr.setLayer(3000000000u);
        tr.setToStage(schema::SeedStage::GRAFTING);
    };
    CHECK(refusal(t) == "layer 3000000000 out of range");
    CHECK(refusal([](auto c) { c.initSetAlphaSchedule().setLayer(2147483648u); }) ==
          "layer 2147483648 out of range");
    // The largest id in range converts (the executor then says whether the seed exists).
    CHECK(refusal([](auto c) { c.initCull().setSeed(2147483647u); }).empty());
}

TEST_CASE("a command without an action is malformed, not germinate(0, 0)", "[agents][intake]") {
    // The union was never set: it reads as its first member with a null struct.
    CHECK(refusal([](auto) {}) == "malformed command: no action set");
    CHECK(refusal([](auto c) { c.initGerminate(); }).empty());
}

TEST_CASE("an empty, oversized or nested batch is refused whole", "[agents][intake]") {
    CHECK(refusal([](auto c) { c.initBatch(0); }) == "empty batch: nothing to apply");
    // The outside test's 200,000-item batch stalled the executor for a second.
    CHECK(refusal([](auto c) {
              auto b = c.initBatch(agents::kMaxBatchItems + 1);
              for (auto item : b) item.initCull();
          }) == "batch of 1025 items exceeds the limit of 1024");
    CHECK(refusal([](auto c) {
              auto b = c.initBatch(agents::kMaxBatchItems);
              for (auto item : b) item.initCull();
          }).empty());
    CHECK(refusal([](auto c) {
              auto b = c.initBatch(2);
              b[0].initCull();
              b[1].initBatch(1)[0].initCull();
          }) == "batch item 1: a batch cannot hold a batch");
    CHECK(refusal([](auto c) {
              auto b = c.initBatch(3);
              b[0].initCull();
              b[1].initTransition().setToStage(static_cast<schema::SeedStage>(77));
              b[2].initCull();
          }) == "batch item 1: unknown stage 77");
    CHECK(refusal([](auto c) {
              auto b = c.initBatch(2);
              b[0].initCull();
          }) == "batch item 1: malformed command: no action set");
}

// ---- Tamiyo's intake ----

namespace {

constexpr const char* kRun = "r1";

struct Wire {
    capnp::MallocMessageBuilder message;
    schema::Envelope::Builder envelope = message.initRoot<schema::Envelope>();
    schema::Envelope::Payload::Builder payload() { return envelope.getPayload(); }
};

struct Feed {
    TamiyoIngest ingest;
    uint64_t config_seq = 0, seq = 0;

    explicit Feed(tamiyo::ViewConfig view = {})
        : ingest({.run_id = kRun, .executor = "kasmina/0", .view = view}) {}

    void send(const std::string& topic, const std::function<void(Wire&)>& fill,
              const std::string& sender = "kasmina/0", const std::string& run = kRun,
              uint64_t sequence = 0) {
        Wire w;
        fill(w);
        bus::stamp_envelope(w.envelope, sender, run, sequence ? sequence : ++seq);
        ingest.ingest(topic, w.envelope.getSequence(), w.envelope.asReader());
    }
    // The executor's RunConfig: `layers` seed layers of `seeds` seeds.
    void announce(unsigned layers, uint32_t seeds, uint64_t sequence = 0) {
        send(
            std::string("config.") + kRun,
            [&](Wire& w) {
                auto rc = w.payload().initRunConfig();
                rc.setRunId(kRun);
                rc.setSteps(100000);
                auto l = rc.initLayers(layers);
                for (auto x : l) x.setSeeds(seeds);
            },
            "kasmina/0", kRun, sequence ? sequence : ++config_seq);
    }
    void telemetry(uint32_t layer, uint32_t seed, uint64_t step,
                   const std::string& sender = "kasmina/0", const std::string& run = kRun) {
        send(
            "telemetry.seeds." + run + "." + std::to_string(layer),
            [&](Wire& w) {
                auto b = w.payload().initSeedTelemetry();
                b.setLayer(layer);
                b.setStepEnd(step);
                auto r = b.initSeeds(1)[0];
                r.setSeed(seed);
                r.setStage(schema::SeedStage::DORMANT);
            },
            sender, run);
    }
    void status(uint64_t step) {
        send(std::string("telemetry.run.") + kRun, [&](Wire& w) {
            auto s = w.payload().initRunStatus();
            s.setStep(step);
            s.setLoss(1.0f);
            s.setLossMeasured(true);
        });
    }
    uint64_t counter(const std::string& reason) const {
        for (const bus::Count& c : ingest.counters())
            if (c.name == "esper_tamiyo_dropped_total" && c.reason == reason) return c.value;
        FAIL("no counter for reason " << reason);
        return 0;
    }
};

}  // namespace

TEST_CASE("Tamiyo takes nothing before its executor announced the run's shape",
          "[agents][intake]") {
    Feed f;
    f.telemetry(0, 1, 50);
    f.status(50);
    CHECK(f.ingest.view().layers().empty());
    CHECK_FALSE(f.ingest.view().run().has_status);
    CHECK(f.counter("unannounced") == 2);
    f.announce(2, 4);
    f.telemetry(0, 1, 100);
    f.status(100);
    CHECK(f.ingest.view().seed(0, 1) != nullptr);
    CHECK(f.ingest.view().run().has_status);
}

TEST_CASE("only the run's executor is believed: other senders and runs are dropped and counted",
          "[agents][intake]") {
    Feed f;
    f.announce(1, 4);
    f.telemetry(0, 1, 10, "tap");
    f.telemetry(0, 1, 10, "kasmina/1");
    f.telemetry(0, 1, 10, "kasmina/0", "r2");
    // A forged announcement from another sender does not change the shape either.
    f.send(
        std::string("config.") + kRun,
        [](Wire& w) { w.payload().initRunConfig().initLayers(3)[2].setSeeds(4194304); },
        "intruder");
    CHECK(f.ingest.view().layers().empty());
    CHECK(f.counter("unregistered_sender") == 3);
    CHECK(f.counter("wrong_run") == 1);
    CHECK(f.ingest.view().shape()->seeds_per_layer.size() == 1);
}

TEST_CASE("telemetry naming a seed outside the announced shape grows nothing", "[agents][intake]") {
    Feed f;
    f.announce(2, 4);
    // The outside test's 208-byte packet: seed 4,194,303 grew Tamiyo by 3.1 GB.
    f.telemetry(0, 4194303, 50);
    f.telemetry(5, 0, 50);
    CHECK(f.ingest.view().layers().empty());
    CHECK(f.counter("out_of_shape") == 2);
    // A batch with more records than its layer has seeds is refused whole.
    f.send(std::string("telemetry.seeds.") + kRun + ".0", [](Wire& w) {
        auto b = w.payload().initSeedTelemetry();
        b.setStepEnd(60);
        auto recs = b.initSeeds(5);
        for (unsigned i = 0; i < 5; ++i) recs[i].setSeed(i % 4);
    });
    CHECK(f.ingest.view().layers().empty());
    CHECK(f.counter("out_of_shape") == 3);
    // A forged run status far ahead moves nothing.
    f.status(50);
    f.status(uint64_t{1} << 62);
    CHECK(f.ingest.view().step() == 50);
    CHECK(f.counter("step_beyond_run") == 1);
}

TEST_CASE("an announcement beyond the view's bounds or a changed shape is refused",
          "[agents][intake]") {
    tamiyo::ViewConfig cfg;
    cfg.max_seeds_per_layer = 1000;
    Feed f(cfg);
    f.announce(1, 4194304);
    CHECK_FALSE(f.ingest.view().shape().has_value());
    CHECK(f.counter("bad_shape") == 1);
    f.announce(2, 8);
    f.announce(2, 8);  // the periodic re-announcement
    f.announce(3, 8);  // the same executor cannot change its shape
    CHECK(f.ingest.view().shape()->seeds_per_layer.size() == 2);
    CHECK(f.counter("shape_changed") == 1);
}

TEST_CASE("a restarted executor (its announcements start over) gets a fresh view",
          "[agents][intake]") {
    Feed f;
    f.announce(1, 4);
    f.status(5000);
    f.telemetry(0, 2, 5000);
    CHECK(f.ingest.view().step() == 5000);
    const uint64_t gen = f.ingest.generation();
    // Resumed from an older checkpoint: its steps are behind the old process's.
    f.announce(1, 4, /*sequence=*/1);
    CHECK(f.ingest.generation() == gen + 1);
    CHECK(f.ingest.view().layers().empty());
    f.status(3000);
    CHECK(f.ingest.view().run().step == 3000);
}

TEST_CASE("Tamiyo's counters name every drop reason, the view's and the agent's",
          "[agents][intake]") {
    Feed f;
    std::set<std::string> reasons;
    for (const bus::Count& c : f.ingest.counters())
        if (c.name == "esper_tamiyo_dropped_total") reasons.insert(c.reason);
    CHECK(reasons == std::set<std::string>{"wrong_run", "unregistered_sender", "unannounced",
                                           "bad_shape", "shape_changed", "unknown_stage",
                                           "malformed", "out_of_shape", "step_beyond_run",
                                           "step_jump", "stale"});
    f.telemetry(0, 0, 1);
    CHECK(f.ingest.dropped() == 1);
}
