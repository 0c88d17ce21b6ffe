// The rendezvous key-value worker "kv" that `esper broker` hosts, then `esper run --ranks 2`
// end to end: a broker, Tamiyo and two Kasmina ranks (Gloo over loopback,
// rendezvous through a FileKvStore in the run directory) on a small teacher task whose lifecycle
// timers let the heuristic germinate, cull and fossilize seeds within seconds. Both ranks train,
// the run completes, seed-table digests are compared every 20 steps, and the final digests that
// both ranks log are equal.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>

#include "bus/rpc.h"
#include "schemas/control.capnp.h"
#include "tests/integration/fixtures.h"

using namespace esper;
using namespace esper::test;
namespace fs = std::filesystem;

namespace {

const char* const kTwoRankConfig =
    "run: {seed: 5, epochs: 0, max_steps: 600, telemetry_interval_steps: 10, "
    "digest_every_steps: 20}\n"
    "data:\n"
    "  dataset: teacher\n"
    "  batch_size: 32\n"
    "  teacher: {train_samples: 4096, test_samples: 512, features: 16, classes: 4, hidden: 32}\n"
    "model: {hidden: [32, 32], activation: gelu, seeds_per_layer: 4}\n"
    "optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}\n"
    "lifecycle: {training_steps: 30, stabilization_steps: 10, evaluation_steps: 10,\n"
    "            fine_tuning_steps: 30, embargo_steps: 50, decision_timeout_steps: 60,\n"
    "            grafting: {strategy: linear, ramp_steps: 10}}\n"
    "tamiyo:\n"
    "  decision_interval_steps: 10\n"
    "  plateau: {patience_steps: 20, min_delta: 0.01}\n"
    "  heuristic: {training_patience_steps: 200, cull_contribution: -1.0}\n";

std::string text_of(const fs::path& p) {
    std::ifstream in(p);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The "final digest=N" a rank logs after its last step ("" when absent).
std::string final_digest(const fs::path& log) {
    static const std::regex re("final digest=([0-9]+)");
    std::smatch m;
    const std::string text = text_of(log);
    return std::regex_search(text, m, re) ? m[1].str() : "";
}

}  // namespace

TEST_CASE("esper run --ranks 2 trains both ranks to the same seed tables", "[integration][dist]") {
    fs::path dir = scratch_dir();
    std::ofstream(dir / "run.yaml") << kTwoRankConfig;
    const fs::path run_dir = dir / "run";
    const int rc =
        run_to_exit({kEsper, "run", "--ranks", "2", "--config", (dir / "run.yaml").string(),
                     "--run-dir", run_dir.string(), "--bus-port-base", "0"},
                    dir / "run.log", 90000);
    INFO(text_of(dir / "run.log"));
    INFO(text_of(run_dir / "logs" / "kasmina-0.log"));
    INFO(text_of(run_dir / "logs" / "kasmina-1.log"));
    REQUIRE(rc == 0);
    int64_t last_step = 0;
    for (const auto& m : json_lines(run_dir / "metrics.jsonl"))
        last_step = m.value("step", last_step);
    CHECK(last_step == 600);
    int germinated = 0;
    for (const auto& e : json_lines(run_dir / "events.jsonl"))
        if (e.value("to", "") == "GERMINATED") ++germinated;
    CHECK(germinated > 0);  // the tables changed on rank 0 and had to be replicated
    const std::string d0 = final_digest(run_dir / "logs" / "kasmina-0.log");
    const std::string d1 = final_digest(run_dir / "logs" / "kasmina-1.log");
    CHECK(!d0.empty());
    CHECK(d0 == d1);
    CHECK_THAT(text_of(run_dir / "logs" / "kasmina-1.log"), Catch::Contains("rank=1 world=2"));
    std::error_code ec;
    fs::remove_all(dir, ec);
}

TEST_CASE("esper broker hosts the kv worker that serves kvSet and kvGet", "[integration][dist]") {
    BrokerProcess broker;
    zmq::context_t ctx;
    bus::RpcClient client(ctx, {.endpoint = broker.rpc, .sender = "test", .timeout_ms = 2000});
    const std::string value = std::string("addr\x01\x00\xff", 7) + std::to_string(::getpid());
    auto get = [&](const std::string& key) {
        bus::RpcReply r = client.request("kv", "", [&](schema::Envelope::Payload::Builder p) {
            p.initControlRequest().setKvGet(key);
        });
        REQUIRE(r.ok());
        auto c = r.reply->envelope().getPayload().getControlReply();
        REQUIRE(c.getOk());
        REQUIRE(c.isKvValue());
        if (!c.getKvValue().getFound()) return std::string("<missing>");
        auto v = c.getKvValue().getValue();
        return std::string(reinterpret_cast<const char*>(v.begin()), v.size());
    };
    CHECK(get("job/0/gloo/1") == "<missing>");
    bus::RpcReply set = client.request("kv", "", [&](schema::Envelope::Payload::Builder p) {
        auto s = p.initControlRequest().initKvSet();
        s.setKey("job/0/gloo/1");
        s.setValue(
            capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(value.data()), value.size()));
    });
    REQUIRE(set.ok());
    CHECK(set.reply->envelope().getPayload().getControlReply().getOk());
    CHECK(get("job/0/gloo/1") == value);
    CHECK(get("job/0/gloo/2") == "<missing>");
    // Anything else addressed to kv is refused by the worker with a reason.
    bus::RpcReply ping = client.request("kv", "", [&](schema::Envelope::Payload::Builder p) {
        p.initControlRequest().setPing("x");
    });
    REQUIRE(ping.ok());
    CHECK_FALSE(ping.reply->envelope().getPayload().getControlReply().getOk());
}
