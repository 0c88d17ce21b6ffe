// The broker's bounds (issue 18): oversized frames dropped and counted, a flooded agent answered
// "busy" instead of forgotten, wire names escaped and cut in its logs, subscriptions bounded,
// and its counters published on heartbeat.broker.
#include "bus/broker.h"

#include <capnp/message.h>
#include <stdlib.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "bus/pubsub.h"
#include "bus/rpc_protocol.h"
#include "core/clock.h"
#include "core/log.h"

using namespace esper;

namespace {

// A broker on its own thread; stats() is read after stop().
struct Broker {
    zmq::context_t& ctx;
    std::atomic<bool> stop_flag{false};
    bus::BrokerEndpoints endpoints;
    bus::BrokerStats final_stats;
    std::thread thread;
    Broker(zmq::context_t& c, const std::string& name, bus::BrokerConfig config) : ctx(c) {
        config.pub_endpoint = "inproc://" + name + "-pub";
        config.sub_endpoint = "inproc://" + name + "-sub";
        config.rpc_endpoint = "inproc://" + name + "-rpc";
        std::atomic<bool> ready{false};
        thread = std::thread([this, config, &ready] {
            bus::Broker broker(ctx, config);
            endpoints = broker.endpoints();
            ready = true;
            broker.run(stop_flag);
            final_stats = broker.stats();
        });
        while (!ready) std::this_thread::yield();
    }
    const bus::BrokerStats& stop() {
        if (thread.joinable()) {
            stop_flag = true;
            thread.join();
        }
        return final_stats;
    }
    ~Broker() { stop(); }
};

zmq::message_t frame(std::string_view s) { return zmq::message_t(s.data(), s.size()); }

void send_frames(zmq::socket_t& s, std::vector<std::string> parts) {
    for (size_t i = 0; i < parts.size(); ++i)
        REQUIRE(s.send(frame(parts[i]),
                       i + 1 < parts.size() ? zmq::send_flags::sndmore : zmq::send_flags::none));
}

std::string read_file(const std::string& path) {
    std::ifstream in(path);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("a published frame over the limit is dropped and counted; smaller ones pass",
          "[bus][broker]") {
    zmq::context_t ctx(1);
    Broker broker(ctx, "broker-oversized", {.max_pubsub_frame_bytes = 4096, .heartbeat_ms = 0});
    bus::Subscriber sub(ctx, {.endpoint = broker.endpoints.sub, .prefixes = {"events."}});
    bus::Publisher pub(ctx, {.endpoint = broker.endpoints.pub,
                             .sender = "pub",
                             .reliability = bus::Reliability::kControl});
    REQUIRE(pub.wait_for_subscriber("events.x", 2000));
    pub.publish("events.x", [](auto p) { p.initAnnotation().setText(std::string(8000, 'x')); });
    pub.publish("events.x", [](auto p) { p.initAnnotation().setText("small"); });
    auto m = sub.poll(2000);
    REQUIRE(m);
    CHECK(std::string(m->envelope().getPayload().getAnnotation().getText().cStr()) == "small");
    CHECK(broker.stop().oversized == 1);
    CHECK(broker.final_stats.forwarded == 1);
}

TEST_CASE("a flood that fills an agent's queue is answered busy; the agent stays registered",
          "[bus][broker]") {
    zmq::context_t ctx(1);
    // 16 KiB per peer over 1 KiB frames: the queue towards the agent holds 16 requests.
    Broker broker(ctx, "broker-flood",
                  {.max_frame_bytes = 1024, .max_queue_bytes = 16 * 1024, .heartbeat_ms = 0});
    // An agent that registers and then never reads (its own queue holds one message).
    zmq::socket_t agent(ctx, zmq::socket_type::dealer);
    agent.set(zmq::sockopt::rcvhwm, 1);
    agent.connect(broker.endpoints.rpc);
    send_frames(agent, {std::string(bus::proto::kHello), "kasmina/0"});
    zmq::socket_t client(ctx, zmq::socket_type::dealer);
    client.connect(broker.endpoints.rpc);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    for (int i = 0; i < 200; ++i)
        send_frames(client,
                    {std::string(bus::proto::kRequest), "kasmina/0", std::to_string(i), "payload"});
    std::vector<std::string> errors;
    // Every answer the broker gives; it has given them all once nothing came for 300 ms.
    for (Stopwatch sw, quiet; sw.elapsed_s() < 10 && quiet.elapsed_s() < 0.3;) {
        std::vector<zmq::message_t> in;
        if (!zmq::recv_multipart(client, std::back_inserter(in), zmq::recv_flags::dontwait)) {
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
            continue;
        }
        quiet.reset();
        if (in.size() == 3 && in[0].to_string() == bus::proto::kError)
            errors.push_back(in[2].to_string());
    }
    REQUIRE(errors.size() >= 150);
    // The outside test's 10,000-request floods made the broker forget a busy agent: every later
    // request was "unknown agent" until its next heartbeat.
    for (const std::string& e : errors) CHECK(e == "agent busy kasmina/0 (its queue is full)");
    const bus::BrokerStats& s = broker.stop();
    CHECK(s.agent_busy == errors.size());
    CHECK(s.unknown_agent == 0);
}

TEST_CASE("names from the wire reach the broker's log escaped and cut; bad names never register",
          "[bus][broker]") {
    char log_path[] = "/tmp/esper-broker-log-XXXXXX";
    const int fd = ::mkstemp(log_path);
    REQUIRE(fd >= 0);
    std::FILE* log = ::fdopen(fd, "w");
    REQUIRE(log != nullptr);
    set_log_file(log);
    {
        zmq::context_t ctx(1);
        Broker broker(ctx, "broker-names", {.max_agents = 2, .heartbeat_ms = 0});
        zmq::socket_t peer(ctx, zmq::socket_type::dealer);
        peer.connect(broker.endpoints.rpc);
        const std::string binary = std::string("evil\x01\n\xff", 7) + std::string(100000, 'A');
        send_frames(peer, {std::string(bus::proto::kHello), binary});
        send_frames(peer, {std::string(bus::proto::kHello), "a\nb"});
        send_frames(peer, {std::string(bus::proto::kHello), "c"});
        send_frames(peer, {std::string(bus::proto::kHello), "d"});  // max_agents reached
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        const bus::BrokerStats& s = broker.stop();
        CHECK(s.registrations == 2);
        CHECK(s.refused_registrations == 2);
    }
    set_log_file(nullptr);
    std::fclose(log);
    const std::string text = read_file(log_path);
    std::remove(log_path);
    INFO(text);
    CHECK(text.find("agent=\"a\\nb\" registered") != std::string::npos);
    CHECK(text.find("\"evil\\x01\\n\\xffAAA") != std::string::npos);
    CHECK(text.find("(100007 bytes)") != std::string::npos);
    CHECK(text.find(std::string(1000, 'A')) == std::string::npos);  // cut, not 100 KB lines
    CHECK(text.find('\x01') == std::string::npos);
    for (size_t start = 0, end; (end = text.find('\n', start)) != std::string::npos;
         start = end + 1)
        CHECK(end - start < 400);
}

TEST_CASE("subscriptions passed on to publishers are bounded in length and number",
          "[bus][broker]") {
    zmq::context_t ctx(1);
    Broker broker(ctx, "broker-subs",
                  {.max_subscription_bytes = 64, .max_subscriptions = 3, .heartbeat_ms = 0});
    bus::Publisher pub(ctx, {.endpoint = broker.endpoints.pub, .sender = "p"});
    std::vector<std::unique_ptr<bus::Subscriber>> subs;
    for (std::string prefix : {std::string(100, 'x'), std::string("a."), std::string("b."),
                               std::string("c."), std::string("d.")})
        subs.push_back(std::make_unique<bus::Subscriber>(
            ctx, bus::SubscriberConfig{.endpoint = broker.endpoints.sub, .prefixes = {prefix}}));
    CHECK(pub.wait_for_subscriber("c.1", 2000));
    CHECK_FALSE(pub.wait_for_subscriber("d.1", 300));  // the fourth distinct prefix
    CHECK_FALSE(pub.wait_for_subscriber(std::string(100, 'x'), 100));
    CHECK(broker.stop().refused_subscriptions == 2);
}

TEST_CASE("the broker publishes its counters on heartbeat.broker", "[bus][broker]") {
    zmq::context_t ctx(1);
    Broker broker(ctx, "broker-heartbeat", {.heartbeat_ms = 50});
    bus::Subscriber sub(ctx, {.endpoint = broker.endpoints.sub, .prefixes = {"heartbeat.broker"}});
    auto m = sub.poll(3000);
    REQUIRE(m);
    CHECK(m->topic == "heartbeat.broker");
    auto h = m->envelope().getPayload().getHeartbeat();
    CHECK(std::string(h.getAgent().cStr()) == "broker");
    bool oversized = false;
    for (auto c : h.getCounters())
        oversized = oversized || (std::string(c.getName().cStr()) == "esper_broker_dropped_total" &&
                                  std::string(c.getReason().cStr()) == "oversized");
    CHECK(oversized);
}
