// The rendezvous kv worker behind an in-process broker: kvSet/kvGet round trips with binary
// values, keys kept per run, anything else refused with a reason, and the broker answering
// "unknown agent kv" once the worker is gone (it does not serve kv itself).
#include "agents/kv_service.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>
#include <zmq.hpp>

#include "bus/broker.h"
#include "bus/rpc.h"
#include "schemas/control.capnp.h"

using namespace esper;

namespace {

struct BrokerThread {
    std::atomic<bool> stop{false};
    bus::BrokerEndpoints endpoints;
    std::thread thread;
    BrokerThread(zmq::context_t& ctx, const std::string& name) {
        std::atomic<bool> ready{false};
        thread = std::thread([this, &ctx, name, &ready] {
            bus::Broker broker(ctx, {.pub_endpoint = "inproc://" + name + "-pub",
                                     .sub_endpoint = "inproc://" + name + "-sub",
                                     .rpc_endpoint = "inproc://" + name + "-rpc",
                                     .agent_expiry_ms = 1000});
            endpoints = broker.endpoints();
            ready = true;
            broker.run(stop);
        });
        while (!ready) std::this_thread::yield();
    }
    ~BrokerThread() {
        stop = true;
        thread.join();
    }
};

bus::RpcReply kv_set(bus::RpcClient& client, const std::string& key, const std::string& value) {
    return client.request("kv", "", [&](schema::Envelope::Payload::Builder p) {
        auto s = p.initControlRequest().initKvSet();
        s.setKey(key);
        s.setValue(
            capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(value.data()), value.size()));
    });
}

// The value under `key`, "<missing>" when absent.
std::string kv_get(bus::RpcClient& client, const std::string& key) {
    bus::RpcReply r = client.request("kv", "", [&](schema::Envelope::Payload::Builder p) {
        p.initControlRequest().setKvGet(key);
    });
    REQUIRE(r.ok());
    auto c = r.reply->envelope().getPayload().getControlReply();
    REQUIRE(c.getOk());
    REQUIRE(c.isKvValue());
    if (!c.getKvValue().getFound()) return "<missing>";
    auto v = c.getKvValue().getValue();
    return std::string(reinterpret_cast<const char*>(v.begin()), v.size());
}

}  // namespace

TEST_CASE("the kv worker stores and returns values per run behind the broker", "[agents][kv]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "kv-basic");
    agents::KvServiceThread kv(ctx, broker.endpoints.rpc, 100);
    bus::RpcClient run_a(ctx, {.endpoint = broker.endpoints.rpc,
                               .sender = "rank/0",
                               .run_id = "a",
                               .timeout_ms = 1000,
                               .max_attempts = 5});
    bus::RpcClient run_b(ctx, {.endpoint = broker.endpoints.rpc,
                               .sender = "rank/0",
                               .run_id = "b",
                               .timeout_ms = 1000,
                               .max_attempts = 5});
    const std::string value("gloo\x00\x01\xff addr", 11);
    CHECK(kv_get(run_a, "a/0/gloo/1") == "<missing>");
    bus::RpcReply set = kv_set(run_a, "a/0/gloo/1", value);
    REQUIRE(set.ok());
    CHECK(std::string(set.reply->envelope().getSender().cStr()) == "kv");
    CHECK(set.reply->envelope().getPayload().getControlReply().getOk());
    CHECK(kv_get(run_a, "a/0/gloo/1") == value);
    CHECK(kv_get(run_b, "a/0/gloo/1") == "<missing>");  // another run's keys are its own
    REQUIRE(kv_set(run_a, "a/0/gloo/1", "v2").ok());    // a later set replaces the value
    CHECK(kv_get(run_a, "a/0/gloo/1") == "v2");

    SECTION("anything but kvSet/kvGet is refused with a reason") {
        bus::RpcReply ping = run_a.request("kv", "", [](schema::Envelope::Payload::Builder p) {
            p.initControlRequest().setPing("x");
        });
        REQUIRE(ping.ok());
        auto c = ping.reply->envelope().getPayload().getControlReply();
        CHECK_FALSE(c.getOk());
        CHECK(c.isUnimplemented());
        bus::RpcReply other = run_a.request("kv", "", [](schema::Envelope::Payload::Builder p) {
            p.initAnnotation().setText("not a control request");
        });
        REQUIRE(other.ok());
        CHECK_FALSE(other.reply->envelope().getPayload().getControlReply().getOk());
        CHECK(kv_get(run_a, "a/0/gloo/1") == "v2");  // and the worker keeps serving
    }
    SECTION("once the worker stops, the broker answers unknown agent kv") {
        kv.stop();
        bus::RpcClient late(ctx, {.endpoint = broker.endpoints.rpc,
                                  .sender = "t",
                                  .timeout_ms = 200,
                                  .max_attempts = 1});
        bus::RpcReply r = kv_set(late, "k", "v");
        CHECK(r.status == bus::RpcStatus::kUnknownAgent);
        CHECK_THAT(r.error, Catch::Contains("unknown agent kv"));
    }
}

namespace {

// Calls KvService::handle directly with a kvSet of `bytes` bytes for `run`; the reply's error.
std::string direct_set(agents::KvService& kv, const std::string& run, const std::string& key,
                       size_t bytes) {
    capnp::MallocMessageBuilder req_msg, rep_msg;
    auto req = req_msg.initRoot<schema::Envelope>();
    req.setRunId(run);
    auto s = req.getPayload().initControlRequest().initKvSet();
    s.setKey(key);
    std::string value(bytes, 'x');
    s.setValue(
        capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(value.data()), value.size()));
    auto rep = rep_msg.initRoot<schema::Envelope>();
    kv.handle(req.asReader(), rep.getPayload());
    auto c = rep.getPayload().getControlReply();
    return c.getOk() ? "" : c.getError().cStr();
}

}  // namespace

TEST_CASE("the kv store refuses writes past its per-run and total caps; replacing a value is free",
          "[agents][kv]") {
    agents::KvService kv({.max_run_bytes = 1000, .max_total_bytes = 2500, .max_value_bytes = 950});
    CHECK(direct_set(kv, "a", "k1", 500).empty());
    CHECK(direct_set(kv, "a", "k1", 590).empty());  // replaces: 2 + 590 bytes
    CHECK_THAT(direct_set(kv, "a", "k2", 500), Catch::Contains("store full: run a"));
    CHECK_THAT(direct_set(kv, "a", "k3", 990), Catch::Contains("over the cap"));
    CHECK(direct_set(kv, "b", "k", 900).empty());
    CHECK(direct_set(kv, "c", "k", 900).empty());
    // Another run id does not escape the total cap: growing the store is bounded.
    CHECK_THAT(direct_set(kv, "d", "k", 900), Catch::Contains("all runs"));
    CHECK(kv.size() == 3);
    CHECK(kv.bytes() == (2 + 590) + (1 + 900) + (1 + 900));
}

TEST_CASE("with keys only agents write to the kv store and observers cannot read it",
          "[agents][kv]") {
    capnp::MallocMessageBuilder set_msg, get_msg;
    auto set = set_msg.initRoot<schema::Envelope>();
    set.getPayload().initControlRequest().initKvSet().setKey("r/0/gloo/0");
    auto get = get_msg.initRoot<schema::Envelope>();
    get.getPayload().initControlRequest().setKvGet("r/0/gloo/0");
    const bus::Peer none{}, agent{.role = bus::Role::kAgent, .name = "agent"},
        op{.role = bus::Role::kOperator, .name = "operator"},
        observer{.role = bus::Role::kObserver, .name = "observer"};
    using agents::KvService;
    CHECK_FALSE(KvService::authorize(none, set.asReader()));  // no keys: loopback trust
    CHECK_FALSE(KvService::authorize(agent, set.asReader()));
    CHECK_THAT(*KvService::authorize(op, set.asReader()), Catch::Contains("need an agent key"));
    CHECK(KvService::authorize(observer, set.asReader()).has_value());
    CHECK_FALSE(KvService::authorize(op, get.asReader()));
    CHECK(KvService::authorize(observer, get.asReader()).has_value());
}
