// Request/reply through an in-process broker: replies routed back, unknown agents answered,
// a dropped reply retried and applied once (dedup window), requests handled in order, and
// malformed requests answered without harming the worker. The same for AsyncRpcClient driven by
// an event loop, which must never block it: a dead agent times out while timers keep ticking.
#include "bus/rpc.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>
#include <zmq.hpp>

#include "bus/broker.h"
#include "bus/event_loop.h"
#include "core/clock.h"

using namespace esper;

namespace {

struct BrokerThread {
    zmq::context_t& ctx;
    std::atomic<bool> stop{false};
    bus::BrokerEndpoints endpoints;
    std::thread thread;
    explicit BrokerThread(zmq::context_t& c, const std::string& name) : ctx(c) {
        std::atomic<bool> ready{false};
        thread = std::thread([this, name, &ready] {
            bus::Broker broker(ctx, {.pub_endpoint = "inproc://" + name + "-pub",
                                     .sub_endpoint = "inproc://" + name + "-sub",
                                     .rpc_endpoint = "inproc://" + name + "-rpc"});
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

// Applies each command once and answers with the number of commands applied so far.
struct CountingWorker {
    std::atomic<bool> stop{false};
    std::atomic<int> applied{0};
    std::atomic<uint64_t> duplicates{0};
    std::thread thread;
    CountingWorker(zmq::context_t& ctx, const std::string& endpoint, int drop_first = 0,
                   const std::string& name = "kasmina/0") {
        std::atomic<bool> ready{false};
        thread = std::thread([this, &ctx, endpoint, drop_first, name, &ready] {
            bus::RpcWorker worker(ctx, {.endpoint = endpoint,
                                        .name = name,
                                        .heartbeat_ms = 100,
                                        .drop_first_replies = drop_first});
            ready = true;
            while (!stop) {
                worker.poll(
                    20, [&](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
                        auto ack = rep.initCommandAck();
                        ack.setCommandId(req.getPayload().getCommand().getCommandId());
                        ack.setOutcome(schema::CommandOutcome::APPLIED);
                        ack.setStep(static_cast<uint64_t>(++applied));
                    });
                duplicates = worker.stats().duplicates;
            }
        });
        while (!ready) std::this_thread::yield();
    }
    ~CountingWorker() {
        stop = true;
        thread.join();
    }
};

auto cull(const char* id, uint32_t seed) {
    return [id, seed](schema::Envelope::Payload::Builder p) {
        auto c = p.initCommand();
        c.setCommandId(id);
        c.setTarget("kasmina/0");
        c.initCull().setSeed(seed);
    };
}

}  // namespace

TEST_CASE("a request reaches the named agent and its reply comes back", "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-basic");
    CountingWorker worker(ctx, broker.endpoints.rpc);
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo"});
    for (int i = 1; i <= 5; ++i) {
        std::string id = "cmd-" + std::to_string(i);
        auto r = client.request("kasmina/0", id, cull(id.c_str(), 3));
        REQUIRE(r.ok());
        auto env = r.reply->envelope();
        CHECK(std::string(env.getCorrelationId().cStr()) == id);
        CHECK(std::string(env.getSender().cStr()) == "kasmina/0");
        CHECK(env.getPayload().getCommandAck().getStep() == static_cast<uint64_t>(i));
        CHECK(std::string(env.getPayload().getCommandAck().getCommandId().cStr()) == id);
    }
    CHECK(worker.applied == 5);
}

TEST_CASE("a request to an unregistered agent is answered unknown agent", "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-unknown");
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 200,
                                .max_attempts = 2,
                                .backoff_initial_ms = 5});
    Stopwatch sw;
    auto r = client.request("nobody", "k1", cull("k1", 1));
    CHECK(r.status == bus::RpcStatus::kUnknownAgent);
    CHECK_THAT(r.error, Catch::Contains("unknown agent nobody"));
    CHECK(r.attempts == 2);
    CHECK(sw.elapsed_s() < 0.3);  // an error reply does not wait for the timeout
}

TEST_CASE("a dropped reply is retried and the command applied once", "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-retry");
    CountingWorker worker(ctx, broker.endpoints.rpc, /*drop_first=*/2);
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 100,
                                .max_attempts = 5,
                                .backoff_initial_ms = 10});
    auto r = client.request("kasmina/0", "germinate-1", cull("germinate-1", 9));
    REQUIRE(r.ok());
    CHECK(r.attempts == 3);
    CHECK(worker.applied == 1);
    CHECK(r.reply->envelope().getPayload().getCommandAck().getStep() == 1);
    // The same key again later (a duplicate from the controller) is not applied again.
    auto again = client.request("kasmina/0", "germinate-1", cull("germinate-1", 9));
    REQUIRE(again.ok());
    CHECK(worker.applied == 1);
    auto other = client.request("kasmina/0", "germinate-2", cull("germinate-2", 9));
    REQUIRE(other.ok());
    CHECK(worker.applied == 2);
}

TEST_CASE("a key another client already used is that client's own request, applied on its own",
          "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-two-clients");
    CountingWorker worker(ctx, broker.endpoints.rpc);
    bus::RpcClient tamiyo(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo"});
    bus::RpcClient intruder(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo"});
    // The outside test pre-answered Tamiyo's predictable keys from another client: 60 of 62
    // controller commands then got the intruder's cached "applied" and never ran.
    auto first = intruder.request("kasmina/0", "tamiyo-1", cull("tamiyo-1", 1));
    auto second = tamiyo.request("kasmina/0", "tamiyo-1", cull("tamiyo-1", 2));
    REQUIRE(first.ok());
    REQUIRE(second.ok());
    CHECK(worker.applied == 2);
    CHECK(first.reply->envelope().getPayload().getCommandAck().getStep() == 1);
    CHECK(second.reply->envelope().getPayload().getCommandAck().getStep() == 2);
}

TEST_CASE("a client reusing its key for a different request is refused; its retry still is not",
          "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-reuse");
    CountingWorker worker(ctx, broker.endpoints.rpc);
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "operator"});
    auto first = client.request("kasmina/0", "op-1", cull("op-1", 1));
    auto other = client.request("kasmina/0", "op-1", cull("op-1", 2));
    auto retry = client.request("kasmina/0", "op-1", cull("op-1", 1));
    REQUIRE(first.ok());
    REQUIRE(other.ok());
    REQUIRE(retry.ok());
    CHECK(worker.applied == 1);
    auto refused = other.reply->envelope().getPayload().getCommandAck();
    CHECK(refused.getOutcome() == schema::CommandOutcome::REJECTED);
    CHECK_THAT(std::string(refused.getReason().cStr()), Catch::Contains("different request"));
    // A retry of the first request (new sequence and send time) is still answered from the
    // cache with the first reply.
    CHECK(retry.reply->envelope().getPayload().getCommandAck().getOutcome() ==
          schema::CommandOutcome::APPLIED);
    CHECK(retry.reply->envelope().getPayload().getCommandAck().getStep() == 1);
    // The worker thread copies its stats after poll() returns, that is after the reply went out:
    // wait for the copy (bounded) instead of racing it (a TSan run lost that race in CI).
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (worker.duplicates != 1 && std::chrono::steady_clock::now() < until)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    CHECK(worker.duplicates == 1);
}

TEST_CASE("command keys are random 128-bit values, never repeated", "[bus][rpc]") {
    std::set<std::string> keys;
    for (int i = 0; i < 1000; ++i) keys.insert(bus::random_key("tamiyo"));
    CHECK(keys.size() == 1000);
    const std::string k = *keys.begin();
    CHECK(k.rfind("tamiyo-", 0) == 0);
    CHECK(k.size() == std::string("tamiyo-").size() + 32);
}

TEST_CASE("a timeout is reported after every attempt when the agent never answers", "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-timeout");
    CountingWorker worker(ctx, broker.endpoints.rpc, /*drop_first=*/100);
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 50,
                                .max_attempts = 3,
                                .backoff_initial_ms = 5});
    auto r = client.request("kasmina/0", "c", cull("c", 1));
    CHECK(r.status == bus::RpcStatus::kTimeout);
    CHECK(r.attempts == 3);
    CHECK(worker.applied == 1);
}

TEST_CASE("a malformed request is answered with an error and the worker keeps serving",
          "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-bad");
    CountingWorker worker(ctx, broker.endpoints.rpc);
    zmq::socket_t raw(ctx, zmq::socket_type::dealer);
    raw.connect(broker.endpoints.rpc);
    // Wait until the worker is registered by asking through a real client.
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "t"});
    REQUIRE(client.request("kasmina/0", "warm", cull("warm", 1)).ok());
    raw.send(zmq::str_buffer("REQ"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("kasmina/0"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("1.1"), zmq::send_flags::sndmore);
    raw.send(zmq::str_buffer("garbage!"), zmq::send_flags::none);
    std::vector<zmq::message_t> reply;
    zmq::pollitem_t item{raw.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, std::chrono::milliseconds(2000));
    zmq::message_t part;
    do {
        REQUIRE(raw.recv(part, zmq::recv_flags::none));
        reply.emplace_back(part.data(), part.size());
    } while (part.more());
    REQUIRE(reply.size() == 3);
    auto d = bus::decode(std::move(reply[2]));
    REQUIRE(d.ok());
    auto cr = d.value->envelope().getPayload().getControlReply();
    CHECK_FALSE(cr.getOk());
    CHECK_THAT(std::string(cr.getError().cStr()), Catch::Contains("malformed"));
    // Junk frames on the broker are dropped and counted too.
    raw.send(zmq::str_buffer("WHAT"), zmq::send_flags::none);
    REQUIRE(client.request("kasmina/0", "after", cull("after", 1)).ok());
    CHECK(worker.applied == 2);
}

TEST_CASE("the broker forwards a kv request it cannot parse like any other request", "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-kv");
    zmq::socket_t client(ctx, zmq::socket_type::dealer);
    client.connect(broker.endpoints.rpc);
    auto send_request = [&](const char* req_id) {
        client.send(zmq::str_buffer("REQ"), zmq::send_flags::sndmore);
        client.send(zmq::str_buffer("kv"), zmq::send_flags::sndmore);
        client.send(zmq::buffer(std::string_view(req_id)), zmq::send_flags::sndmore);
        client.send(zmq::str_buffer("not an envelope"), zmq::send_flags::none);
    };
    auto receive = [](zmq::socket_t& s) {
        std::vector<std::string> parts;
        zmq::pollitem_t item{s.handle(), 0, ZMQ_POLLIN, 0};
        if (zmq::poll(&item, 1, std::chrono::milliseconds(2000)) == 0) return parts;
        zmq::message_t part;
        do {
            REQUIRE(s.recv(part, zmq::recv_flags::none));
            parts.push_back(part.to_string());
        } while (part.more());
        return parts;
    };
    // No kv worker: "kv" is a name like any other, and nobody has it.
    send_request("1.1");
    CHECK(receive(client) == std::vector<std::string>{"ERR", "1.1", "unknown agent kv"});
    // A worker registered as kv gets the bytes untouched.
    zmq::socket_t worker(ctx, zmq::socket_type::dealer);
    worker.connect(broker.endpoints.rpc);
    worker.send(zmq::str_buffer("HELLO"), zmq::send_flags::sndmore);
    worker.send(zmq::str_buffer("kv"), zmq::send_flags::none);
    std::vector<std::string> forwarded;
    for (int i = 0; i < 50 && forwarded.empty(); ++i) {  // until the HELLO has been routed
        send_request("2.1");
        forwarded = receive(worker);
        if (forwarded.empty()) CHECK(receive(client).at(0) == "ERR");
    }
    REQUIRE(forwarded.size() == 5);
    CHECK(forwarded[0] == "REQ");
    CHECK(forwarded[2] == "2.1");
    CHECK(forwarded[3] == "not an envelope");
    CHECK(forwarded[4].empty());  // the sender's peer frame: nothing authenticated without keys
}

// ---- AsyncRpcClient ----

namespace {

// Runs `loop` until `done()` holds (checked every 5 ms) or 10 s pass.
void run_until(bus::EventLoop& loop, const std::function<bool()>& done) {
    loop.every(std::chrono::milliseconds(5), [&] {
        if (done()) loop.stop();
    });
    loop.after(std::chrono::milliseconds(10000), [&] { loop.stop(); });  // guard
    loop.run();
}

}  // namespace

TEST_CASE("an async request's reply arrives through the event loop", "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-basic");
    CountingWorker worker(ctx, broker.endpoints.rpc);
    bus::EventLoop loop;
    bus::AsyncRpcClient client(ctx, loop, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo"});
    std::optional<bus::RpcReply> reply;
    REQUIRE(client.send("kasmina/0", "cmd-1", cull("cmd-1", 3),
                        [&](bus::RpcReply r) { reply = std::move(r); }));
    CHECK_FALSE(reply);  // send() returns before anything comes back
    CHECK(client.in_flight() == 1);
    run_until(loop, [&] { return reply.has_value(); });
    REQUIRE(reply);
    REQUIRE(reply->ok());
    CHECK(reply->attempts == 1);
    auto env = reply->reply->envelope();
    CHECK(std::string(env.getCorrelationId().cStr()) == "cmd-1");
    CHECK(env.getPayload().getCommandAck().getStep() == 1);
    CHECK(client.in_flight() == 0);
    CHECK(worker.applied == 1);
}

TEST_CASE("an async request whose reply is lost is retried with its key and applied once",
          "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-retry");
    CountingWorker worker(ctx, broker.endpoints.rpc, /*drop_first=*/2);
    bus::EventLoop loop;
    bus::AsyncRpcClient client(ctx, loop,
                               {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 100,
                                .max_attempts = 5,
                                .backoff_initial_ms = 10});
    // Two commands to one agent: the second waits for the first, so the retries of the first
    // can never land after it (applied in order per target).
    std::vector<std::pair<std::string, bus::RpcReply>> done;
    for (const char* id : {"germinate-1", "germinate-2"})
        REQUIRE(client.send("kasmina/0", id, cull(id, 9),
                            [&done, id](bus::RpcReply r) { done.emplace_back(id, std::move(r)); }));
    CHECK(client.in_flight() == 1);
    CHECK(client.queued() == 1);
    run_until(loop, [&] { return done.size() == 2; });
    REQUIRE(done.size() == 2);
    CHECK(done[0].first == "germinate-1");
    REQUIRE(done[0].second.ok());
    CHECK(done[0].second.attempts == 3);
    CHECK(done[0].second.reply->envelope().getPayload().getCommandAck().getStep() == 1);
    REQUIRE(done[1].second.ok());
    CHECK(done[1].second.attempts == 1);
    CHECK(done[1].second.reply->envelope().getPayload().getCommandAck().getStep() == 2);
    CHECK(worker.applied == 2);     // each key applied once
    CHECK(worker.duplicates == 2);  // the two retries were answered from the dedup window
    CHECK(client.stats().retries == 2);
}

TEST_CASE("an async request to a dead agent times out without blocking the loop",
          "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-dead");
    CountingWorker dead(ctx, broker.endpoints.rpc, /*drop_first=*/1000, "kasmina/0");
    CountingWorker alive(ctx, broker.endpoints.rpc, /*drop_first=*/0, "kasmina/1");
    bus::EventLoop loop;
    bus::AsyncRpcClient client(ctx, loop,
                               {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 100,
                                .max_attempts = 3,
                                .backoff_initial_ms = 10});
    int ticks = 0;
    loop.every(std::chrono::milliseconds(10), [&] { ++ticks; });
    std::vector<std::string> order;
    std::optional<bus::RpcReply> dead_reply;
    int ticks_before_timeout = 0;
    Stopwatch sw;
    REQUIRE(client.send("kasmina/0", "c-dead", cull("c-dead", 1), [&](bus::RpcReply r) {
        order.push_back("kasmina/0");
        dead_reply = std::move(r);
        ticks_before_timeout = ticks;
    }));
    REQUIRE(client.send("kasmina/1", "c-alive", cull("c-alive", 1), [&](bus::RpcReply r) {
        CHECK(r.ok());
        order.push_back("kasmina/1");
    }));
    CHECK(sw.elapsed_s() < 0.1);  // both sends returned before even one timeout could pass
    run_until(loop, [&] { return dead_reply.has_value(); });
    REQUIRE(dead_reply);
    CHECK(dead_reply->status == bus::RpcStatus::kTimeout);
    CHECK(dead_reply->attempts == 3);
    CHECK_THAT(dead_reply->error, Catch::Contains("no reply from kasmina/0"));
    // Completion order: the live agent answered while the dead one was still being retried.
    CHECK(order == std::vector<std::string>{"kasmina/1", "kasmina/0"});
    CHECK(sw.elapsed_s() >= 0.3);       // three timeouts of 100 ms
    CHECK(ticks_before_timeout >= 10);  // and the timer kept ticking (every 10 ms) meanwhile
    CHECK(client.stats().timeouts == 3);
    CHECK(dead.applied == 1);  // every attempt carried the same key
}

TEST_CASE("an async request to an unknown agent fails after its attempts", "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-unknown");
    bus::EventLoop loop;
    bus::AsyncRpcClient client(ctx, loop,
                               {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .timeout_ms = 1000,
                                .max_attempts = 2,
                                .backoff_initial_ms = 5});
    std::optional<bus::RpcReply> reply;
    REQUIRE(
        client.send("nobody", "k", cull("k", 1), [&](bus::RpcReply r) { reply = std::move(r); }));
    Stopwatch sw;
    run_until(loop, [&] { return reply.has_value(); });
    REQUIRE(reply);
    CHECK(reply->status == bus::RpcStatus::kUnknownAgent);
    CHECK_THAT(reply->error, Catch::Contains("unknown agent nobody"));
    CHECK(reply->attempts == 2);
    CHECK(sw.elapsed_s() < 0.9);  // error replies do not wait for the timeout
}

TEST_CASE("the async client refuses requests beyond its queue", "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-full");
    bus::EventLoop loop;
    bus::AsyncRpcClient client(ctx, loop,
                               {.endpoint = broker.endpoints.rpc,
                                .sender = "tamiyo",
                                .max_in_flight = 1,
                                .max_queued = 1});
    auto ignore = [](bus::RpcReply) {};
    CHECK(client.send("a", "1", cull("1", 1), ignore));  // in flight
    CHECK(client.send("b", "2", cull("2", 1), ignore));  // queued: one in flight at most
    CHECK_FALSE(client.send("c", "3", cull("3", 1), ignore));
    CHECK(client.in_flight() == 1);
    CHECK(client.queued() == 1);
    CHECK(client.stats().refused == 1);
}

TEST_CASE("destroying the async client drops its requests without calling back",
          "[bus][rpc][async]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "async-drop");
    CountingWorker dead(ctx, broker.endpoints.rpc, /*drop_first=*/1000);
    bus::EventLoop loop;
    int callbacks = 0;
    {
        bus::AsyncRpcClient client(
            ctx, loop, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo", .timeout_ms = 20});
        REQUIRE(client.send("kasmina/0", "a", cull("a", 1), [&](bus::RpcReply) { ++callbacks; }));
        REQUIRE(client.send("kasmina/0", "b", cull("b", 1), [&](bus::RpcReply) { ++callbacks; }));
        loop.after(std::chrono::milliseconds(30), [&] { loop.stop(); });
        loop.run();  // the first request is mid-retry when the loop stops
    }
    // The loop runs on after the client is gone: its timer and socket handlers stay silent.
    int ticks = 0;
    loop.every(std::chrono::milliseconds(10), [&] {
        if (++ticks == 20) loop.stop();
    });
    loop.run();
    CHECK(ticks == 20);
    CHECK(callbacks == 0);
}
