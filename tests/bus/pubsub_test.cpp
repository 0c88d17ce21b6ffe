// Publisher/Subscriber over inproc: envelope stamping, per-(sender, topic) sequences, gap and
// reorder accounting, malformed frames dropped and counted, and drops counted (never blocking)
// when the telemetry queue is full.
#include "bus/pubsub.h"

#include <capnp/message.h>

#include <catch2/catch.hpp>
#include <zmq.hpp>

#include "bus/envelope.h"
#include "core/clock.h"

using namespace esper;

TEST_CASE("sequence tracker counts gaps and reorders per sender and topic", "[bus][pubsub]") {
    bus::SequenceTracker t;
    CHECK(t.observe("a", "x", 5).first);  // a late joiner: baseline, no gap
    CHECK(t.observe("a", "x", 6).missing == 0);
    CHECK(t.observe("a", "x", 9).missing == 2);
    CHECK(t.observe("b", "x", 1).first);  // another sender: its own stream
    CHECK(t.observe("a", "y", 1).first);  // another topic: its own stream
    CHECK(t.observe("a", "x", 8).reordered);
    CHECK(t.observe("a", "x", 10).missing == 0);
    CHECK(t.observe("b", "x", 4).missing == 2);
    CHECK(t.gaps() == 4);
    CHECK(t.reordered() == 1);
    CHECK(t.streams() == 3);
}

TEST_CASE("sequence tracker keeps at most max_streams streams; the rest are counted untracked",
          "[bus][pubsub]") {
    // Sender names and topics come from the wire: one forged name per message must not grow the
    // subscriber without bound.
    bus::SequenceTracker t(100);
    for (int i = 0; i < 10000; ++i) t.observe("forged-" + std::to_string(i), "x", 1);
    CHECK(t.streams() == 100);
    CHECK(t.untracked() == 9900);
    CHECK(t.observe("forged-5", "x", 3).missing == 1);  // tracked ones still count gaps
}

namespace {

struct InprocPair {
    zmq::context_t ctx{1};
    bus::Publisher pub;
    bus::Subscriber sub;
    explicit InprocPair(const std::string& name, int hwm = 10000)
        : pub(ctx, {.endpoint = "inproc://" + name,
                    .sender = "kasmina/0",
                    .run_id = "r1",
                    .send_hwm = hwm,
                    .bind = true}),
          sub(ctx, {.endpoint = "inproc://" + name, .prefixes = {"telemetry."}}) {
        REQUIRE(pub.wait_for_subscriber("telemetry.run.r1", 2000));
    }
};

}  // namespace

TEST_CASE("published messages arrive stamped, in order, with per-topic sequences",
          "[bus][pubsub]") {
    InprocPair p("pubsub-order");
    for (int i = 0; i < 10; ++i) {
        const char* topic = i % 2 ? "telemetry.run.r1" : "telemetry.seeds.r1.0";
        auto r = p.pub.publish(topic, [&](schema::Envelope::Payload::Builder b) {
            b.initRunStatus().setStep(static_cast<uint64_t>(100 + i));
        });
        REQUIRE(r == bus::PublishResult::kSent);
    }
    p.pub.publish("events.lifecycle.r1.0", [](auto b) { b.initAnnotation(); });  // not subscribed
    for (int i = 0; i < 10; ++i) {
        auto m = p.sub.poll(2000);
        REQUIRE(m);
        auto env = m->envelope();
        CHECK(m->topic == (i % 2 ? "telemetry.run.r1" : "telemetry.seeds.r1.0"));
        CHECK(env.getSequence() == static_cast<uint64_t>(i / 2 + 1));
        CHECK(env.getPayload().getRunStatus().getStep() == static_cast<uint64_t>(100 + i));
        CHECK(std::string(env.getSender().cStr()) == "kasmina/0");
        CHECK(std::string(env.getRunId().cStr()) == "r1");
        CHECK(env.getTypeId() == capnp::typeId<schema::RunStatus>());
        CHECK(env.getSentAtNs() > 0);
        CHECK(m->missing_before == 0);
    }
    CHECK_FALSE(p.sub.poll(50));
    CHECK(p.sub.sequences().gaps() == 0);
}

TEST_CASE("messages of a topic that grow and shrink arrive intact, copied or not",
          "[bus][pubsub]") {
    // publish() sizes each topic's first segment from its last message: a larger message spills
    // into more segments (sent with a copy), the next of that size leaves without one. Every
    // case must deliver the same records.
    InprocPair p("pubsub-sizes");
    const unsigned sizes[] = {4, 600, 600, 3, 2000, 2000, 1};
    for (unsigned n : sizes) {
        auto r = p.pub.publish("telemetry.seeds.r1.0", [&](schema::Envelope::Payload::Builder b) {
            auto seeds = b.initSeedTelemetry().initSeeds(n);
            for (unsigned i = 0; i < n; ++i) seeds[i].setSeed(n * 10000 + i);
        });
        REQUIRE(r == bus::PublishResult::kSent);
    }
    // A caller's own builder is copied and stays the caller's.
    capnp::MallocMessageBuilder own;
    own.initRoot<schema::Envelope>().getPayload().initSeedTelemetry().initSeeds(5)[4].setSeed(9);
    REQUIRE(p.pub.send("telemetry.seeds.r1.0", own) == bus::PublishResult::kSent);
    CHECK(own.getRoot<schema::Envelope>().getSequence() == 8);
    for (unsigned n : sizes) {
        auto m = p.sub.poll(2000);
        REQUIRE(m);
        auto seeds = m->envelope().getPayload().getSeedTelemetry().getSeeds();
        REQUIRE(seeds.size() == n);
        for (unsigned i = 0; i < n; ++i) CHECK(seeds[i].getSeed() == n * 10000 + i);
    }
    auto m = p.sub.poll(2000);
    REQUIRE(m);
    CHECK(m->envelope().getPayload().getSeedTelemetry().getSeeds()[4].getSeed() == 9);
    CHECK(p.sub.sequences().gaps() == 0);
}

TEST_CASE("a subscriber counts sequence gaps from a sender", "[bus][pubsub]") {
    zmq::context_t ctx(1);
    zmq::socket_t raw(ctx, zmq::socket_type::pub);
    raw.bind("inproc://pubsub-gaps");
    bus::Subscriber sub(ctx, {.endpoint = "inproc://pubsub-gaps", .prefixes = {}});
    auto send = [&](uint64_t seq) {
        capnp::MallocMessageBuilder m;
        auto env = m.initRoot<schema::Envelope>();
        env.getPayload().initHeartbeat().setStep(seq);
        bus::stamp_envelope(env, "kasmina/1", "r1", seq);
        raw.send(zmq::str_buffer("heartbeat.kasmina/1"), zmq::send_flags::sndmore);
        raw.send(bus::encode(m), zmq::send_flags::none);
    };
    for (uint64_t s : {1, 2, 3, 7, 8, 10}) send(s);
    uint64_t missing = 0;
    for (int i = 0; i < 6; ++i) {
        auto m = sub.poll(2000);
        REQUIRE(m);
        missing += m->missing_before;
    }
    CHECK(missing == 4);
    CHECK(sub.sequences().gaps() == 4);
    CHECK(sub.stats().received == 6);
}

TEST_CASE("malformed frames are dropped and counted and the subscriber keeps going",
          "[bus][pubsub]") {
    zmq::context_t ctx(1);
    zmq::socket_t raw(ctx, zmq::socket_type::pub);
    raw.bind("inproc://pubsub-bad");
    bus::SubscriberConfig config{.endpoint = "inproc://pubsub-bad", .prefixes = {}};
    config.limits.max_frame_bytes = 4096;
    bus::Subscriber sub(ctx, config);
    auto good = [&](uint64_t seq) {
        capnp::MallocMessageBuilder m;
        auto env = m.initRoot<schema::Envelope>();
        env.getPayload().initAnnotation().setText("ok");
        bus::stamp_envelope(env, "x", "r", seq);
        return bus::encode(m);
    };
    raw.send(zmq::str_buffer("t.single"), zmq::send_flags::none);  // one part
    raw.send(zmq::str_buffer("t.garbage"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("not capnp at all"), zmq::send_flags::none);
    zmq::message_t cut = good(1);
    raw.send(zmq::str_buffer("t.truncated"), zmq::send_flags::sndmore);
    raw.send(zmq::buffer(cut.data(), cut.size() - 8), zmq::send_flags::none);
    std::vector<char> big(8192, 'x');
    raw.send(zmq::str_buffer("t.big"), zmq::send_flags::sndmore);
    raw.send(zmq::buffer(big), zmq::send_flags::none);
    {
        capnp::MallocMessageBuilder m;
        auto env = m.initRoot<schema::Envelope>();
        bus::stamp_envelope(env, "x", "r", 1);
        env.setVersion(9);
        raw.send(zmq::str_buffer("t.version"), zmq::send_flags::sndmore);
        raw.send(bus::encode(m), zmq::send_flags::none);
    }
    raw.send(zmq::str_buffer("t.parts"), zmq::send_flags::sndmore);
    raw.send(good(1), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("extra"), zmq::send_flags::none);
    raw.send(zmq::str_buffer("t.good"), zmq::send_flags::sndmore);
    raw.send(good(2), zmq::send_flags::none);

    auto m = sub.poll(2000);
    REQUIRE(m);
    CHECK(m->topic == "t.good");
    CHECK(sub.stats().malformed == 6);
    CHECK(sub.stats().wrong_version == 1);
    CHECK(sub.stats().oversized == 1);
    CHECK(sub.stats().received == 1);
}

TEST_CASE("a full telemetry queue drops and counts instead of blocking", "[bus][pubsub]") {
    zmq::context_t ctx(1);
    bus::TelemetryPublisher pub(ctx, {.endpoint = "inproc://pubsub-full",
                                      .sender = "k",
                                      .run_id = "r",
                                      .send_hwm = 10,
                                      .bind = true});
    // A subscriber that never reads: its queue fills up.
    zmq::socket_t stalled(ctx, zmq::socket_type::sub);
    stalled.set(zmq::sockopt::rcvhwm, 10);
    stalled.set(zmq::sockopt::subscribe, "");
    stalled.connect("inproc://pubsub-full");
    REQUIRE(pub.wait_for_subscriber("telemetry.x", 2000));
    Stopwatch sw;
    for (int i = 0; i < 2000; ++i)
        pub.publish("telemetry.x", [](auto b) { b.initRunStatus().setStep(1); });
    CHECK(sw.elapsed_s() < 1.0);
    CHECK(pub.stats().dropped > 0);
    CHECK(pub.stats().sent + pub.stats().dropped == 2000);
}
