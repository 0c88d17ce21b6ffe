// The dashboard's model of a run (agents/dash_state.h) from hand-built bus messages: curves,
// swimlane and grid, events with their cursor, deltas for open pages, /metrics; and the CLI's
// endpoint normalisation and did-you-mean.
#include <capnp/message.h>
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <string>

#include "agents/cli.h"
#include "agents/dash_state.h"
#include "agents/tool_json.h"

using namespace esper;
using nlohmann::json;

namespace {

// Builds one envelope of run `run` from tool JSON (the same path `esper pub` takes).
struct Msg {
    capnp::MallocMessageBuilder m;
    Msg(const std::string& run, const std::string& type, const std::string& payload) {
        auto env = m.initRoot<schema::Envelope>();
        env.setRunId(run);
        env.setSender("test");
        env.setSentAtNs(1'700'000'000'000'000'000);
        agents::payload_from_json(type, payload, env.getPayload());
    }
    schema::Envelope::Reader reader() { return m.getRoot<schema::Envelope>().asReader(); }
};

void feed(agents::DashState& s, const std::string& run, const std::string& type,
          const std::string& payload, int64_t now_ns = 1'700'000'000'000'000'000) {
    Msg msg(run, type, payload);
    s.ingest("t", msg.reader(), now_ns);
}

}  // namespace

TEST_CASE("the dashboard state turns run statuses and transitions into curves and lanes",
          "[agents][dash]") {
    agents::DashState s;
    feed(
        s, "r1", "runConfig",
        R"({"runId":"r1","backend":"cpu","worldSize":2,"steps":100,"layers":[{"width":32,"seeds":4}]})");
    for (int step : {10, 20, 30})
        feed(s, "r1", "runStatus",
             fmt::format(R"({{"step":{},"loss":{},"totalSteps":100{}}})", step, 2.0 - step * 0.01,
                         step == 20 ? R"(,"testStep":20,"testLoss":1.5,"testAccuracy":0.6)" : ""),
             1'700'000'000'000'000'000 + step * 100'000'000LL);
    feed(
        s, "r1", "lifecycleTransition",
        R"({"step":12,"layer":0,"seed":2,"from":"DORMANT","to":"GERMINATED","reason":"plateau","origin":"controller"})");
    feed(s, "r1", "lifecycleTransition",
         R"({"step":14,"layer":0,"seed":2,"from":"GERMINATED","to":"TRAINING","origin":"auto"})");
    feed(
        s, "r1", "seedTelemetry",
        R"({"layer":0,"stepEnd":30,"seeds":[{"seed":2,"stage":"GRAFTING","alpha":0.5,"contribution":0.25},{"seed":3,"stage":"DORMANT"}]})");
    feed(s, "r2", "runStatus", R"({"step":999,"loss":9})");  // another run: ignored

    const json snap = s.snapshot(1'700'000'010'000'000'000);
    CHECK(s.run_id() == "r1");
    REQUIRE(snap["train"].size() == 3);
    CHECK(snap["train"][1]["step"] == 20);
    CHECK(snap["train"][1]["loss"].get<double>() == Approx(1.8));
    REQUIRE(snap["test"].size() == 1);  // one evaluation, repeated by later statuses
    CHECK(snap["test"][0]["accuracy"].get<double>() == Approx(0.6));
    CHECK(snap["run"]["world"] == 2);
    // The lane of seed 0:2: GERMINATED, TRAINING, then GRAFTING at α 0.5 from telemetry.
    const json& lane = snap["lanes"]["0:2"];
    REQUIRE(lane.size() == 3);
    CHECK(lane[0] == json::array({12, 1, 0.0}));
    CHECK(lane[2][1] == 3);
    CHECK(lane[2][2].get<double>() == Approx(0.5));
    CHECK_FALSE(snap["lanes"].contains("0:3"));  // never left DORMANT
    REQUIRE(snap["grid"].size() == 1);
    CHECK(snap["grid"][0]["stages"] == json::array({0, 0, 3, 0}));
    CHECK(snap["status"]["eta_s"].get<double>() > 0);
    const json seed = s.seeds_json(0, 2)["seeds"][0];
    CHECK(seed["stage"] == "GRAFTING");
    CHECK(seed["metrics"]["contribution"].get<double>() == Approx(0.25));
    CHECK_FALSE(seed["metrics"].contains("health"));  // not measured: absent, not 0
}

TEST_CASE("the dashboard sends each change once: a snapshot, then deltas", "[agents][dash]") {
    agents::DashState s("r1");
    feed(s, "r1", "runStatus", R"({"step":10,"loss":1.0})");
    CHECK(s.take_delta(0)->at("train").size() == 1);
    CHECK_FALSE(s.take_delta(0));  // nothing new
    feed(s, "r1", "annotation", R"({"kind":"note","text":"lr drop","step":15})");
    feed(s, "r1", "policyChange",
         R"({"name":"grow","kind":"rules","action":"loaded","previous":"heuristic","step":16})");
    const json d = *s.take_delta(0);
    REQUIRE(d["events"].size() == 2);
    CHECK(d["events"][0]["kind"] == "annotation");
    CHECK(d["events"][1]["name"] == "grow");
    CHECK(d["policy"]["active"]["name"] == "grow");
    CHECK_FALSE(d.contains("train"));
    // /api/events?since=N pages through the same events.
    const json first = s.events_since(0, 1);
    CHECK(first["events"].size() == 1);
    CHECK(s.events_since(first["next"].get<uint64_t>(), 10)["events"][0]["kind"] == "policy");
    // The run's end is an event and a state.
    feed(s, "r1", "runStatus", R"({"step":10,"state":"failed","stateReason":"kasmina-0 died"})");
    const json end = *s.take_delta(0);
    CHECK(end["status"]["state"] == "failed");
    CHECK(end["events"][0]["kind"] == "run");
    CHECK(end["events"][0]["reason"] == "kasmina-0 died");
}

TEST_CASE("/metrics has run, layer and stage labels only and no sample for what is unmeasured",
          "[agents][dash]") {
    agents::DashState s;
    feed(s, "r\"1", "runStatus", R"({"step":10,"loss":1.0,"hostParams":100})");
    feed(
        s, "r\"1", "seedTelemetry",
        R"({"layer":1,"stepEnd":10,"seeds":[{"seed":0,"stage":"TRAINING"},{"seed":1,"stage":"TRAINING"}]})");
    const std::string text = s.prometheus({5, 1, 0}, 0);
    CHECK_THAT(text, Catch::Contains("esper_train_loss{run=\"r\\\"1\"} 1\n"));
    CHECK_THAT(text,
               Catch::Contains("esper_seeds{run=\"r\\\"1\",layer=\"1\",stage=\"TRAINING\"} 2"));
    CHECK_THAT(text, Catch::Contains("esper_dash_bus_gaps_total 1"));
    CHECK_THAT(text, !Catch::Contains("esper_test_accuracy_ratio{"));  // no evaluation yet
    CHECK_THAT(text, !Catch::Contains("seed=\""));
}

TEST_CASE("a text run's validation bits per byte reaches the curves, the status and /metrics",
          "[agents][dash]") {
    agents::DashState s("t1");
    feed(s, "t1", "runStatus",
         R"({"step":50,"loss":2.0,"testStep":50,"testLoss":1.5,"testAccuracy":0.4,)"
         R"("testBitsPerByte":2.25,"testBitsPerByteMeasured":true})");
    feed(s, "t1", "runStatus", R"({"step":60,"loss":1.9,"testStep":50,"testLoss":1.5,)"
                               R"("testAccuracy":0.4,"testBitsPerByte":2.25})");
    const json snap = s.snapshot(0);
    REQUIRE(snap["test"].size() == 1);
    CHECK(snap["test"][0]["step"] == 50);
    CHECK(snap["test"][0]["bits_per_byte"].get<double>() == Approx(2.25));
    CHECK(snap["status"]["test_bits_per_byte"].get<double>() == Approx(2.25));
    CHECK_THAT(s.prometheus({}, 0), Catch::Contains("esper_test_bits_per_byte{run=\"t1\"} 2.25\n"));
    // An image run measures no bits per byte: null in the JSON, no sample on /metrics.
    agents::DashState img("i1");
    feed(img, "i1", "runStatus",
         R"({"step":10,"loss":1.0,"testStep":10,"testLoss":0.9,"testAccuracy":0.7})");
    CHECK(img.snapshot(0)["test"][0]["bits_per_byte"].is_null());
    CHECK_THAT(img.prometheus({}, 0), !Catch::Contains("esper_test_bits_per_byte{"));
}

TEST_CASE("bus endpoints accept HOST:PORT and PORT and explain anything else", "[agents][cli]") {
    CHECK(cli::normalize_endpoint("tcp://10.0.0.1:5557", "bus") == "tcp://10.0.0.1:5557");
    CHECK(cli::normalize_endpoint("127.0.0.1:5557", "bus") == "tcp://127.0.0.1:5557");
    CHECK(cli::normalize_endpoint("5557", "bus") == "tcp://127.0.0.1:5557");
    CHECK_THROWS_WITH(cli::normalize_endpoint("http://x:1", "bus"),
                      Catch::Contains("unsupported transport"));
    CHECK_THROWS_WITH(cli::normalize_endpoint("localhost", "bus"),
                      Catch::Contains("expected tcp://HOST:PORT"));
}

TEST_CASE("unknown flags and subcommands get a did-you-mean", "[agents][cli]") {
    CHECK(cli::closest_matches("statu", {"run", "status", "tap"}) ==
          std::vector<std::string>{"status"});
    CHECK(cli::closest_matches("epoch", {"epochs", "seed", "config"}).front() == "epochs");
    CHECK(cli::closest_matches("zzzzzz", {"run", "status"}).empty());
}
