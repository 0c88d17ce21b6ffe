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
