// Bus integration: the real `esper broker` on 127.0.0.1 with ephemeral ports, driven by the real
// `esper pub`/`esper tap` and by in-test clients. Covers pub->tap, request/reply through the
// broker, a dropped reply retried and applied once, a stalled subscriber not slowing a
// publisher, malformed frames dropped while agents keep running (DESIGN §10), and a frame
// captured by an independent SUB socket decoding with `capnp convert` to the same content as tap.
#include <capnp/message.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "agents/process.h"
#include "bus/envelope.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "core/clock.h"
#include "tests/integration/fixtures.h"

using namespace esper;
using esper::agents::ChildProcess;
using namespace esper::test;
using std::chrono::milliseconds;

namespace {

void run_worker(zmq::context_t& ctx, const std::string& rpc, std::atomic<bool>& stop,
                std::atomic<int>& applied, int drop_first) {
    bus::RpcWorker worker(ctx, {.endpoint = rpc,
                                .name = "kasmina/0",
                                .heartbeat_ms = 200,
                                .drop_first_replies = drop_first});
    while (!stop) {
        worker.poll(20, [&](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
            auto ack = rep.initCommandAck();
            ack.setCommandId(req.getPayload().getCommand().getCommandId());
            ack.setOutcome(schema::CommandOutcome::APPLIED);
            ack.setStep(static_cast<uint64_t>(++applied));
        });
    }
}

auto cull(std::string id) {
    return [id](schema::Envelope::Payload::Builder p) {
        auto c = p.initCommand();
        c.setCommandId(id);
        c.initCull().setSeed(4);
    };
}

// Case and underscores dropped: capnp's "grafting" and the vocabulary's "GRAFTING" (tap's
// spelling of stages, kinds, strategies and origins) name the same enumerant.
std::string fold_enum(const std::string& s) {
    std::string out;
    for (char c : s)
        if (c != '_') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// Treats a string of digits and the number it spells as equal (capnp's tool quotes 64-bit ints),
// and an enumerant's capnp and vocabulary spellings.
bool same_json(const nlohmann::json& a, const nlohmann::json& b) {
    if (a.is_string() && b.is_string())
        return fold_enum(a.get<std::string>()) == fold_enum(b.get<std::string>());
    if (a.is_string() && b.is_number()) return a.get<std::string>() == b.dump();
    if (a.is_number() && b.is_string()) return same_json(b, a);
    if (a.is_object() && b.is_object()) {
        if (a.size() != b.size()) return false;
        for (auto it = a.begin(); it != a.end(); ++it)
            if (!b.contains(it.key()) || !same_json(it.value(), b.at(it.key()))) return false;
        return true;
    }
    if (a.is_array() && b.is_array()) {
        if (a.size() != b.size()) return false;
        for (size_t i = 0; i < a.size(); ++i)
            if (!same_json(a[i], b[i])) return false;
        return true;
    }
    if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
    return a == b;
}

}  // namespace

TEST_CASE("esper pub reaches esper tap through the broker", "[integration][bus]") {
    BrokerProcess broker;
    auto dir = broker.dir;
    ChildProcess tap("tap",
                     {kEsper, "tap", "--bus", broker.sub, "--count", "2", "--timeout-ms", "8000",
                      "events.", "telemetry.run."},
                     dir / "tap.log");
    CHECK(run_to_exit({kEsper, "pub", "--bus", broker.pub, "events.annotations.r1", "--type",
                       "annotation", "--run", "r1", "--json",
                       R"({"kind":"note","text":"lr drop","step":"18446744073709551615"})"},
                      dir / "pub1.log") == 0);
    CHECK(run_to_exit({kEsper, "pub", "--bus", broker.pub, "heartbeat.x", "--type", "heartbeat",
                       "--json", R"({"agent":"x"})", "--wait-ms", "100"},
                      dir / "pub2.log") == 0);  // not subscribed: tap must not print it
    CHECK(run_to_exit({kEsper, "pub", "--bus", broker.pub, "telemetry.run.r1", "--type",
                       "runStatus", "--json", R"({"step":42,"loss":0.25,"seedsPerStage":[3,1]})"},
                      dir / "pub3.log") == 0);
    auto rc = tap.wait_for(milliseconds(8000));
    REQUIRE(rc.has_value());
    CHECK(*rc == 0);
    auto lines = json_lines(dir / "tap.log");
    REQUIRE(lines.size() == 2);
    CHECK(lines[0]["topic"] == "events.annotations.r1");
    CHECK(lines[0]["type"] == "annotation");
    CHECK(lines[0]["sender"] == "pub");
    CHECK(lines[0]["seq"] == 1);
    CHECK(lines[0]["run_id"] == "r1");
    CHECK(lines[0]["sent_at_ns"].get<int64_t>() > 0);
    CHECK(lines[0]["payload"]["text"] == "lr drop");
    CHECK(lines[0]["payload"]["step"].get<uint64_t>() == 18446744073709551615ull);
    CHECK(lines[1]["type"] == "runStatus");
    CHECK(lines[1]["payload"]["step"] == 42);
    CHECK(lines[1]["payload"]["loss"] == 0.25);
    CHECK(lines[1]["payload"]["seedsPerStage"] == nlohmann::json::array({3, 1}));
}

TEST_CASE("esper tap exits 1 after its timeout when nothing arrives", "[integration][bus]") {
    BrokerProcess broker;
    Stopwatch sw;
    // A prefix no one publishes: a publisher of another test that reconnects to this broker's
    // reused port (ZeroMQ reconnects on its own) cannot make something arrive.
    CHECK(run_to_exit({kEsper, "tap", "--bus", broker.sub, "--timeout-ms", "300",
                       "test.nothing.publishes.this."},
                      broker.dir / "tap.log") == 1);
    CHECK(sw.elapsed_s() < 5);
    CHECK(run_to_exit({kEsper, "pub", "--bus", broker.pub, "t", "--type", "annotation", "--json",
                       R"({"txt":"x"})"},
                      broker.dir / "pub.log") == 2);
    bool named = false;
    for (const auto& l : read_lines(broker.dir / "pub.log"))
        named = named || l.find("annotation.txt") != std::string::npos;
    CHECK(named);
}

TEST_CASE("requests reach a named agent through the broker binary and replies come back",
          "[integration][bus]") {
    BrokerProcess broker;
    zmq::context_t ctx(1);
    std::atomic<bool> stop{false};
    std::atomic<int> applied{0};
    std::thread worker([&] { run_worker(ctx, broker.rpc, stop, applied, 0); });
    bus::RpcClient client(ctx, {.endpoint = broker.rpc, .sender = "tamiyo"});
    for (int i = 1; i <= 20; ++i) {
        std::string id = std::to_string(i * 1000);  // (GCC 12 -Wrestrict misfires on "c" + str)
        auto r = client.request("kasmina/0", id, cull(id));
        REQUIRE(r.ok());
        CHECK(r.reply->envelope().getPayload().getCommandAck().getStep() ==
              static_cast<uint64_t>(i));
    }
    bus::RpcClient impatient(
        ctx, {.endpoint = broker.rpc, .sender = "t", .timeout_ms = 200, .max_attempts = 1});
    auto unknown = impatient.request("tamiyo", "x", cull("x"));
    CHECK(unknown.status == bus::RpcStatus::kUnknownAgent);
    stop = true;
    worker.join();
    CHECK(applied == 20);
}

TEST_CASE("a reply lost between broker and client is retried and applied once",
          "[integration][bus]") {
    BrokerProcess broker;
    zmq::context_t ctx(1);
    std::atomic<bool> stop{false};
    std::atomic<int> applied{0};
    std::thread worker([&] { run_worker(ctx, broker.rpc, stop, applied, 1); });
    bus::RpcClient client(ctx, {.endpoint = broker.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 150,
                                .max_attempts = 6,
                                .backoff_initial_ms = 10});
    auto r = client.request("kasmina/0", "germinate-7", cull("germinate-7"));
    stop = true;
    worker.join();
    REQUIRE(r.ok());
    CHECK(r.attempts >= 2);
    CHECK(applied == 1);
    CHECK(r.reply->envelope().getPayload().getCommandAck().getStep() == 1);
}

TEST_CASE("a stalled subscriber never slows a telemetry publisher", "[integration][bus]") {
    BrokerProcess broker;
    zmq::context_t ctx(1);
    zmq::socket_t stalled(ctx, zmq::socket_type::sub);  // connects and never reads
    stalled.set(zmq::sockopt::rcvhwm, 10);
    stalled.set(zmq::sockopt::rcvbuf, 4096);
    stalled.set(zmq::sockopt::subscribe, "");
    stalled.connect(broker.sub);
    bus::TelemetryPublisher pub(
        ctx, {.endpoint = broker.pub, .sender = "kasmina/0", .run_id = "r1", .send_hwm = 1000});
    REQUIRE(pub.wait_for_subscriber("telemetry.seeds.r1.0", 5000));
    auto publish = [&] {
        return pub.publish("telemetry.seeds.r1.0", [](schema::Envelope::Payload::Builder p) {
            auto seeds = p.initSeedTelemetry().initSeeds(64);
            for (unsigned i = 0; i < seeds.size(); ++i) seeds[i].setSeed(i + 1);
        });
    };
    constexpr int kMessages = 20000;  // ~60 MB: far more than the stalled path can buffer
    int64_t worst_ns = 0;
    Stopwatch total;
    for (int i = 0; i < kMessages; ++i) {
        int64_t t0 = monotonic_ns();
        publish();
        worst_ns = std::max(worst_ns, monotonic_ns() - t0);
    }
    double seconds = total.elapsed_s();
    INFO("total_s=" << seconds << " worst_ms=" << worst_ns / 1e6
                    << " dropped=" << pub.stats().dropped);
    CHECK(seconds < 5.0);
    CHECK(worst_ns < 250'000'000);  // no publish waits for the subscriber (loose: 2 shared cores)
    CHECK(pub.stats().sent + pub.stats().dropped == static_cast<uint64_t>(kMessages));
    CHECK(broker.child->running());
}

TEST_CASE("malformed frames through the broker are dropped and counted; agents keep running",
          "[integration][bus]") {
    BrokerProcess broker;
    auto dir = broker.dir;
    ChildProcess tap(
        "tap", {kEsper, "tap", "--bus", broker.sub, "--count", "1", "--timeout-ms", "8000", "bad."},
        dir / "tap.log");
    zmq::context_t ctx(1);
    zmq::socket_t raw(ctx, zmq::socket_type::xpub);  // sees tap's subscription when it arrives
    raw.connect(broker.pub);
    zmq::message_t sub_msg;
    zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, milliseconds(5000));
    REQUIRE(raw.recv(sub_msg, zmq::recv_flags::dontwait));
    raw.send(zmq::str_buffer("bad.single"), zmq::send_flags::none);
    raw.send(zmq::str_buffer("bad.garbage"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("\x01\x02\x03\x04garbage!"), zmq::send_flags::none);
    {
        capnp::MallocMessageBuilder m;
        auto env = m.initRoot<schema::Envelope>();
        env.getPayload().initAnnotation().setText("old");
        bus::stamp_envelope(env, "x", "r", 1);
        env.setVersion(7);
        raw.send(zmq::str_buffer("bad.version"), zmq::send_flags::sndmore);
        raw.send(bus::encode(m), zmq::send_flags::none);
    }
    capnp::MallocMessageBuilder m;
    auto env = m.initRoot<schema::Envelope>();
    env.getPayload().initAnnotation().setText("still alive");
    bus::stamp_envelope(env, "x", "r", 1);
    raw.send(zmq::str_buffer("bad.good"), zmq::send_flags::sndmore);
    raw.send(bus::encode(m), zmq::send_flags::none);

    auto rc = tap.wait_for(milliseconds(8000));
    REQUIRE(rc.has_value());
    CHECK(*rc == 0);
    auto lines = json_lines(dir / "tap.log");
    REQUIRE(lines.size() == 1);
    CHECK(lines[0]["payload"]["text"] == "still alive");
    bool counted = false;
    for (const auto& l : read_lines(dir / "tap.log"))
        counted = counted || l.find("malformed=3") != std::string::npos;
    CHECK(counted);
    // Junk on the request/reply endpoint does not take the broker down either.
    zmq::socket_t junk(ctx, zmq::socket_type::dealer);
    junk.connect(broker.rpc);
    junk.send(zmq::str_buffer("NONSENSE"), zmq::send_flags::none);
    std::this_thread::sleep_for(milliseconds(100));
    CHECK(broker.child->running());
}

TEST_CASE("a frame captured by an independent subscriber decodes with capnp convert like tap",
          "[integration][bus]") {
    BrokerProcess broker;
    auto dir = broker.dir;
    zmq::context_t ctx(1);
    // A raw XPUB as publisher: it sees each distinct subscription, so the test knows when both
    // tap ("telemetry.") and the capture socket ("telemetry.seeds.") are attached.
    zmq::socket_t pub(ctx, zmq::socket_type::xpub);
    pub.connect(broker.pub);
    auto wait_subscription = [&](std::string_view prefix) {
        Stopwatch sw;
        while (sw.elapsed_s() < 8) {
            zmq::pollitem_t it{pub.handle(), 0, ZMQ_POLLIN, 0};
            zmq::poll(&it, 1, milliseconds(100));
            zmq::message_t s;
            while (pub.recv(s, zmq::recv_flags::dontwait))
                if (s.size() > 0 && s.to_string_view().substr(1) == prefix) return true;
        }
        return false;
    };
    ChildProcess tap(
        "tap",
        {kEsper, "tap", "--bus", broker.sub, "--count", "1", "--timeout-ms", "8000", "telemetry."},
        dir / "tap.log");
    REQUIRE(wait_subscription("telemetry."));
    zmq::socket_t capture(ctx, zmq::socket_type::sub);
    capture.set(zmq::sockopt::subscribe, "telemetry.seeds.");
    capture.connect(broker.sub);
    REQUIRE(wait_subscription("telemetry.seeds."));
    {
        capnp::MallocMessageBuilder message;
        auto env = message.initRoot<schema::Envelope>();
        auto batch = env.getPayload().initSeedTelemetry();
        batch.setLayer(1);
        batch.setStepBegin(100);
        batch.setStepEnd(9007199254740993ull);
        auto seeds = batch.initSeeds(3);
        for (unsigned i = 0; i < 3; ++i) {
            seeds[i].setSeed(i + 10);
            seeds[i].setStage(schema::SeedStage::GRAFTING);
            seeds[i].setAlpha(0.25f * static_cast<float>(i + 1));
            seeds[i].setContribution(-0.5f);
            seeds[i].setGradientMeasured(true);
        }
        bus::stamp_envelope(env, "kasmina/0", "r9", 1);
        pub.send(zmq::str_buffer("telemetry.seeds.r9.1"), zmq::send_flags::sndmore);
        pub.send(bus::encode(message), zmq::send_flags::none);
    }
    zmq::pollitem_t item{capture.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, milliseconds(5000));
    zmq::message_t topic, body;
    REQUIRE(capture.recv(topic, zmq::recv_flags::dontwait));
    REQUIRE(capture.recv(body, zmq::recv_flags::none));
    {
        std::ofstream out(dir / "frame.bin", std::ios::binary);
        out.write(static_cast<const char*>(body.data()), static_cast<std::streamsize>(body.size()));
    }
    std::string cmd = "capnp convert binary:json -I/usr/include " +
                      esper::testing::test_data("schemas/envelope.capnp") + " Envelope < " +
                      (dir / "frame.bin").string() + " > " + (dir / "frame.json").string() +
                      " 2>&1";
    REQUIRE(std::system(cmd.c_str()) == 0);
    std::ifstream in(dir / "frame.json");
    nlohmann::json reference = nlohmann::json::parse(in);

    auto rc = tap.wait_for(milliseconds(8000));
    REQUIRE(rc.has_value());
    REQUIRE(*rc == 0);
    auto lines = json_lines(dir / "tap.log");
    REQUIRE(lines.size() == 1);
    const auto& t = lines[0];
    INFO("capnp: " << reference.dump() << "\ntap: " << t.dump());
    CHECK(t["topic"] == topic.to_string());
    CHECK(same_json(reference["sender"], t["sender"]));
    CHECK(same_json(reference["runId"], t["run_id"]));
    CHECK(same_json(reference["sequence"], t["seq"]));
    CHECK(same_json(reference["sentAtNs"], t["sent_at_ns"]));
    REQUIRE(reference["payload"].contains("seedTelemetry"));
    // Tap shows an unmeasured value as null and no *Measured flag (capnp's codec shows both).
    const std::vector<std::pair<std::string, std::vector<std::string>>> flags = {
        {"activationMeasured", {"actMean", "actVar", "deadFraction", "health"}},
        {"gradientMeasured", {"gradNorm", "blueprintGradNorm"}},
        {"contributionMeasured", {"contribution"}},
        {"gradientHealthMeasured", {"gradientHealth"}}};
    for (auto& seed : reference["payload"]["seedTelemetry"]["seeds"])
        for (const auto& [flag, fields] : flags) {
            if (!seed.value(flag, false))
                for (const std::string& f : fields) seed[f] = nullptr;
            seed.erase(flag);
        }
    CHECK(same_json(reference["payload"]["seedTelemetry"], t["payload"]));
    CHECK(t["payload"]["seeds"][0]["contribution"].is_null());  // set, but its flag is false
    CHECK(t["payload"]["seeds"][0]["gradNorm"] == 0.0);         // measured, and 0
    CHECK(t["payload"]["stepEnd"].dump() == "9007199254740993");
    CHECK(reference["payload"]["seedTelemetry"]["seeds"][0]["stage"] == "grafting");
    CHECK(t["payload"]["seeds"][0]["stage"] == "GRAFTING");  // the vocabulary's spelling
}
