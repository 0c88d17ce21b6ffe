// Request/reply through an in-process broker: replies routed back, unknown agents answered,
// a dropped reply retried and applied once (dedup window), requests handled in order, and
// malformed requests answered without harming the worker.
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <zmq.hpp>

#include "bus/broker.h"
#include "bus/rpc.h"
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
    CountingWorker(zmq::context_t& ctx, const std::string& endpoint, int drop_first = 0) {
        std::atomic<bool> ready{false};
        thread = std::thread([this, &ctx, endpoint, drop_first, &ready] {
            bus::RpcWorker worker(ctx, {.endpoint = endpoint, .name = "kasmina/0",
                                        .heartbeat_ms = 100, .drop_first_replies = drop_first});
            ready = true;
            while (!stop) {
                worker.poll(20, [&](schema::Envelope::Reader req,
                                    schema::Envelope::Payload::Builder rep) {
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
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo",
                                .timeout_ms = 200, .max_attempts = 2, .backoff_initial_ms = 5});
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
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo",
                                .timeout_ms = 100, .max_attempts = 5, .backoff_initial_ms = 10});
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

TEST_CASE("a timeout is reported after every attempt when the agent never answers",
          "[bus][rpc]") {
    zmq::context_t ctx(1);
    BrokerThread broker(ctx, "rpc-timeout");
    CountingWorker worker(ctx, broker.endpoints.rpc, /*drop_first=*/100);
    bus::RpcClient client(ctx, {.endpoint = broker.endpoints.rpc, .sender = "tamiyo",
                                .timeout_ms = 50, .max_attempts = 3, .backoff_initial_ms = 5});
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

TEST_CASE("the broker forwards a kv request it cannot parse like any other request",
          "[bus][rpc]") {
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
    REQUIRE(forwarded.size() == 4);
    CHECK(forwarded[0] == "REQ");
    CHECK(forwarded[2] == "2.1");
    CHECK(forwarded[3] == "not an envelope");
}
