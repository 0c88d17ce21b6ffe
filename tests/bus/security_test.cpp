// The secured bus (bus/security.h) end to end over loopback tcp (CURVE does not apply to
// inproc): allowlisted keys connect and the worker sees their role; an unknown key, no key and
// another broker's key are refused at the handshake and counted; an observer may subscribe but
// not publish or command; a replayed command frame from another key is refused; only agent keys
// register names, and a live name is never taken over; replies come only from the worker the
// request went to.
#include "bus/security.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>
#include <zmq_addon.hpp>

#include "bus/broker.h"
#include "bus/pubsub.h"
#include "bus/rpc.h"
#include "bus/rpc_protocol.h"
#include "core/clock.h"

using namespace esper;

namespace {

struct Keys {
    bus::CurveKeyPair broker = bus::generate_curve_key_pair();
    bus::CurveKeyPair agent = bus::generate_curve_key_pair();
    bus::CurveKeyPair op = bus::generate_curve_key_pair();
    bus::CurveKeyPair observer = bus::generate_curve_key_pair();
    bus::CurveKeyPair stranger = bus::generate_curve_key_pair();  // not in the allowlist

    bus::ServerSecurity server() const {
        std::map<std::string, bus::AllowedKey> allow = {
            {agent.public_key, {bus::Role::kAgent, "agent"}},
            {op.public_key, {bus::Role::kOperator, "operator"}},
            {observer.public_key, {bus::Role::kObserver, "observer"}}};
        return {broker, [allow](std::string_view k) -> std::optional<bus::AllowedKey> {
                    auto it = allow.find(std::string(k));
                    if (it == allow.end()) return std::nullopt;
                    return it->second;
                }};
    }
    bus::ClientSecurity as(const bus::CurveKeyPair& own) const { return {broker.public_key, own}; }
};

// A broker on ephemeral loopback ports, run by its own thread; stats after stop().
struct SecureBroker {
    std::atomic<bool> stop_flag{false};
    bus::BrokerEndpoints endpoints;
    bus::BrokerStats stats;
    std::thread thread;
    SecureBroker(zmq::context_t& ctx, bus::ServerSecurity security, int expiry_ms = 3000) {
        std::atomic<bool> ready{false};
        thread = std::thread([&, security] {
            bus::Broker broker(ctx, {.pub_endpoint = "tcp://127.0.0.1:*",
                                     .sub_endpoint = "tcp://127.0.0.1:*",
                                     .rpc_endpoint = "tcp://127.0.0.1:*",
                                     .agent_expiry_ms = expiry_ms,
                                     .security = security});
            endpoints = broker.endpoints();
            ready = true;
            broker.run(stop_flag);
            stats = broker.stats();
        });
        while (!ready) std::this_thread::yield();
    }
    const bus::BrokerStats& stop() {
        if (thread.joinable()) {
            stop_flag = true;
            thread.join();
        }
        return stats;
    }
    ~SecureBroker() { stop(); }
};

// A worker that applies commands, remembering who sent each one (peer as the broker saw it).
struct PeerWorker {
    std::atomic<bool> stop{false};
    std::atomic<int> applied{0};
    std::mutex mutex;
    std::vector<bus::Peer> peers;
    bus::RpcWorkerStats stats;
    std::thread thread;
    PeerWorker(zmq::context_t& ctx, const std::string& endpoint, bus::ClientSecurity security,
               uint64_t step_offset = 0) {
        std::atomic<bool> ready{false};
        thread = std::thread([&, endpoint, security, step_offset] {
            const std::string name = "kasmina/0";
            bus::RpcWorker worker(
                ctx, {.endpoint = endpoint,
                      .name = name,
                      .heartbeat_ms = 50,
                      .security = security,
                      .authorize = [](const bus::Peer& p,
                                      schema::Envelope::Reader) -> std::optional<std::string> {
                          if (p.allowed({bus::Role::kOperator, bus::Role::kAgent}))
                              return std::nullopt;
                          return "commands need an operator or agent key";
                      }});
            ready = true;
            while (!stop) {
                worker.poll(20, [&](schema::Envelope::Reader,
                                    schema::Envelope::Payload::Builder rep) {
                    {
                        std::lock_guard<std::mutex> lock(mutex);
                        peers.push_back(worker.peer());
                    }
                    rep.initCommandAck().setStep(step_offset + static_cast<uint64_t>(++applied));
                });
            }
            stats = worker.stats();
        });
        while (!ready) std::this_thread::yield();
    }
    void join() {
        if (thread.joinable()) {
            stop = true;
            thread.join();
        }
    }
    ~PeerWorker() { join(); }
};

auto cull(const std::string& id) {
    return [id](schema::Envelope::Payload::Builder p) {
        auto c = p.initCommand();
        c.setCommandId(id);
        c.initCull().setSeed(1);
    };
}

bus::RpcClientConfig client_config(const std::string& endpoint, bus::ClientSecurity s) {
    return {.endpoint = endpoint,
            .sender = "test",
            .timeout_ms = 300,
            .max_attempts = 2,
            .backoff_initial_ms = 5,
            .security = std::move(s)};
}

// Waits until `agent` answers a ping-like request from `client` (the worker has registered).
bool wait_registered(bus::RpcClient& client, const std::string& agent) {
    for (int i = 0; i < 50; ++i) {
        auto r = client.request(agent, "", [](auto p) { p.initControlRequest().setPing("x"); });
        if (r.ok()) return true;
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return false;
}

}  // namespace

TEST_CASE("peers encode into the worker's frame and decode back; garbage decodes unauthenticated",
          "[bus][security]") {
    bus::Peer p{.role = bus::Role::kOperator, .name = "alice", .key = std::string(40, 'a')};
    bus::Peer d = bus::decode_peer(bus::encode_peer(p), "conn1");
    CHECK(d.role == bus::Role::kOperator);
    CHECK(d.name == "alice");
    CHECK(d.key == p.key);
    CHECK(d.identity() == "key:" + p.key);
    CHECK(d.allowed({bus::Role::kOperator}));
    CHECK_FALSE(d.allowed({bus::Role::kAgent}));
    bus::Peer none = bus::decode_peer("", "conn2");
    CHECK_FALSE(none.authenticated());
    CHECK(none.allowed({bus::Role::kAgent}));  // no keys: nothing to check against
    CHECK(none.identity() == "conn:conn2");
    CHECK_FALSE(bus::decode_peer("wizard x y", "c").authenticated());
    CHECK_FALSE(bus::decode_peer("operator", "c").authenticated());
    CHECK(bus::is_z85_key(bus::generate_curve_key_pair().secret_key));
    CHECK_FALSE(bus::is_z85_key("short"));
}

TEST_CASE("with keys an allowlisted operator's command reaches the worker with its role and key",
          "[bus][security]") {
    REQUIRE(bus::curve_available());
    Keys k;
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, k.server());
    PeerWorker worker(ctx, broker.endpoints.rpc, k.as(k.agent));
    bus::RpcClient client(ctx, client_config(broker.endpoints.rpc, k.as(k.op)));
    REQUIRE(wait_registered(client, "kasmina/0"));
    auto r = client.request("kasmina/0", "c1", cull("c1"));
    REQUIRE(r.ok());
    CHECK(r.reply->envelope().getPayload().getCommandAck().getStep() == 2);
    worker.join();
    REQUIRE(worker.peers.size() == 2);
    CHECK(worker.peers[1].role == bus::Role::kOperator);
    CHECK(worker.peers[1].name == "operator");
    CHECK(worker.peers[1].key == k.op.public_key);
    CHECK(broker.stop().auth_allowed >= 2);
}

TEST_CASE("an unknown key, no key and another broker's key are refused at the handshake",
          "[bus][security]") {
    Keys k;
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, k.server());
    PeerWorker worker(ctx, broker.endpoints.rpc, k.as(k.agent));
    {
        bus::RpcClient op(ctx, client_config(broker.endpoints.rpc, k.as(k.op)));
        REQUIRE(wait_registered(op, "kasmina/0"));
    }
    const int before = worker.applied;
    bus::RpcClient stranger(ctx, client_config(broker.endpoints.rpc, k.as(k.stranger)));
    CHECK(stranger.request("kasmina/0", "s1", cull("s1")).status == bus::RpcStatus::kTimeout);
    bus::RpcClient nokey(ctx, client_config(broker.endpoints.rpc, {}));
    CHECK(nokey.request("kasmina/0", "n1", cull("n1")).status == bus::RpcStatus::kTimeout);
    bus::ClientSecurity wrong_broker = k.as(k.op);
    wrong_broker.server_key = k.stranger.public_key;
    bus::RpcClient impostor(ctx, client_config(broker.endpoints.rpc, wrong_broker));
    CHECK(impostor.request("kasmina/0", "i1", cull("i1")).status == bus::RpcStatus::kTimeout);
    worker.join();
    CHECK(worker.applied == before);  // nothing changed
    const bus::BrokerStats& s = broker.stop();
    CHECK(s.auth_denied >= 1);       // the stranger's key
    CHECK(s.handshake_failed >= 2);  // no key, and a HELLO encrypted for another broker
}

TEST_CASE("an observer may subscribe but not publish", "[bus][security]") {
    Keys k;
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, k.server());
    bus::Subscriber sub(
        ctx,
        {.endpoint = broker.endpoints.sub, .prefixes = {"events."}, .security = k.as(k.observer)});
    bus::Publisher agent(
        ctx, {.endpoint = broker.endpoints.pub, .sender = "kasmina/0", .security = k.as(k.agent)});
    bus::Publisher observer(
        ctx,
        {.endpoint = broker.endpoints.pub, .sender = "observer", .security = k.as(k.observer)});
    REQUIRE(agent.wait_for_subscriber("events.x", 3000));
    CHECK_FALSE(observer.wait_for_subscriber("events.x", 300));  // never connected
    observer.publish("events.x", [](auto p) { p.initAnnotation().setText("forged"); });
    agent.publish("events.x", [](auto p) { p.initAnnotation().setText("real"); });
    auto m = sub.poll(2000);
    REQUIRE(m.has_value());
    CHECK(std::string(m->envelope().getSender().cStr()) == "kasmina/0");
    CHECK_FALSE(sub.poll(200).has_value());
    CHECK(broker.stop().auth_denied >= 1);
}

TEST_CASE("an observer's command and its replay of a captured frame are forbidden and counted",
          "[bus][security]") {
    Keys k;
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, k.server());
    PeerWorker worker(ctx, broker.endpoints.rpc, k.as(k.agent));
    bus::RpcClient op(ctx, client_config(broker.endpoints.rpc, k.as(k.op)));
    REQUIRE(wait_registered(op, "kasmina/0"));
    REQUIRE(op.request("kasmina/0", "cmd-1", cull("cmd-1")).ok());
    const int applied = worker.applied;

    bus::RpcClient observer(ctx, client_config(broker.endpoints.rpc, k.as(k.observer)));
    auto r = observer.request("kasmina/0", "cmd-2", cull("cmd-2"));
    REQUIRE(r.ok());
    auto reply = r.reply->envelope().getPayload().getControlReply();
    CHECK_FALSE(reply.getOk());
    CHECK_THAT(std::string(reply.getError().cStr()), Catch::StartsWith("forbidden:"));

    // The operator's frame, byte for byte, sent again from the observer's connection: refused
    // before the dedup window, so it is neither applied nor answered with the cached ack.
    capnp::MallocMessageBuilder message;
    cull("cmd-1")(message.initRoot<schema::Envelope>().getPayload());
    bus::stamp_envelope(message.getRoot<schema::Envelope>(), "test", "", 1, "cmd-1");
    zmq::message_t captured = bus::encode(message);
    zmq::socket_t raw(ctx, zmq::socket_type::dealer);
    bus::apply_client_security(raw, k.as(k.observer));
    raw.connect(broker.endpoints.rpc);
    std::vector<zmq::message_t> frames;
    frames.emplace_back(bus::proto::kRequest.data(), bus::proto::kRequest.size());
    frames.emplace_back("kasmina/0", 9);
    frames.emplace_back("99.1", 4);
    frames.push_back(std::move(captured));
    zmq::send_multipart(raw, frames);
    std::vector<zmq::message_t> in;
    zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(3000));
    REQUIRE(zmq::recv_multipart(raw, std::back_inserter(in), zmq::recv_flags::dontwait));
    REQUIRE(in.size() == 3);
    auto d = bus::decode(std::move(in[2]));
    REQUIRE(d.ok());
    CHECK_FALSE(d.value->envelope().getPayload().getControlReply().getOk());

    worker.join();
    CHECK(worker.applied == applied);
    CHECK(worker.stats.forbidden == 2);
}

TEST_CASE("only an agent key registers a name, and a live name is not taken over",
          "[bus][security]") {
    Keys k;
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, k.server());
    PeerWorker real(ctx, broker.endpoints.rpc, k.as(k.agent));
    bus::RpcClient op(ctx, client_config(broker.endpoints.rpc, k.as(k.op)));
    REQUIRE(wait_registered(op, "kasmina/0"));
    {
        // An operator tries to register kasmina/0 (and tamiyo): refused, counted.
        bus::RpcWorker impostor(
            ctx, {.endpoint = broker.endpoints.rpc, .name = "kasmina/0", .security = k.as(k.op)});
        // Another agent-keyed process tries to take the live name.
        bus::RpcWorker rival(
            ctx,
            {.endpoint = broker.endpoints.rpc, .name = "kasmina/0", .security = k.as(k.agent)});
        auto noop = [](schema::Envelope::Reader, schema::Envelope::Payload::Builder) {};
        for (int i = 0; i < 100 && (impostor.stats().refused == 0 || rival.stats().refused == 0);
             ++i) {
            impostor.poll(10, noop);
            rival.poll(10, noop);
        }
        CHECK(impostor.stats().refused >= 1);
        CHECK_THAT(impostor.refusal(), Catch::Contains("needs role agent"));
        CHECK(rival.stats().refused >= 1);
        CHECK_THAT(rival.refusal(), Catch::Contains("in use by another live connection"));
        // Requests still reach the real worker.
        const int before = real.applied;
        REQUIRE(op.request("kasmina/0", "after", cull("after")).ok());
        CHECK(real.applied == before + 1);
    }
    const bus::BrokerStats& s = broker.stop();
    CHECK(s.forbidden >= 1);
    CHECK(s.name_conflicts >= 1);
}

TEST_CASE("without keys a second HELLO for a live name is refused until its owner is gone",
          "[bus][security]") {
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, {});
    bus::RpcClient client(ctx, client_config(broker.endpoints.rpc, {}));
    auto first = std::make_unique<PeerWorker>(ctx, broker.endpoints.rpc, bus::ClientSecurity{});
    REQUIRE(wait_registered(client, "kasmina/0"));
    // A second process says HELLO kasmina/0 every 50 ms; its replies carry steps from 1000.
    PeerWorker second(ctx, broker.endpoints.rpc, {}, 1000);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    auto r = client.request("kasmina/0", "x1", cull("x1"));
    REQUIRE(r.ok());
    CHECK(r.reply->envelope().getPayload().getCommandAck().getStep() < 1000);  // not hijacked
    // Once the owner is gone (its socket closed), the name moves at the next HELLO.
    first.reset();
    bool moved = false;
    for (int i = 0; i < 100 && !moved; ++i) {
        auto m = client.request("kasmina/0", "", cull("probe"));
        moved = m.ok() && m.reply->envelope().getPayload().getCommandAck().getStep() > 1000;
        if (!moved) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    CHECK(moved);
    second.join();
    CHECK(second.stats.refused >= 1);
    CHECK(broker.stop().name_conflicts >= 1);
}

TEST_CASE("a reply from a peer the request was not forwarded to is dropped and counted",
          "[bus][security]") {
    zmq::context_t ctx(1);
    SecureBroker broker(ctx, {});
    PeerWorker worker(ctx, broker.endpoints.rpc, {});
    bus::RpcClient client(ctx, client_config(broker.endpoints.rpc, {}));
    REQUIRE(wait_registered(client, "kasmina/0"));
    // A forger guesses the client's routing id and request id and sends a REP for it.
    zmq::socket_t forger(ctx, zmq::socket_type::dealer);
    forger.connect(broker.endpoints.rpc);
    for (uint32_t guess = 0; guess < 64; ++guess) {
        std::string id(5, '\0');
        std::memcpy(id.data() + 1, &guess, 4);
        std::vector<zmq::message_t> f;
        f.emplace_back(bus::proto::kReply.data(), bus::proto::kReply.size());
        f.emplace_back(id.data(), id.size());
        f.emplace_back("2.1", 3);
        f.emplace_back("forged", 6);
        zmq::send_multipart(forger, f);
    }
    REQUIRE(client.request("kasmina/0", "real", cull("real")).ok());
    CHECK(broker.stop().forged_replies >= 64);
}
