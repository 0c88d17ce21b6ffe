// Reliable request/reply between named agents through the broker's ROUTER endpoint.
// RpcClient: request(agent, idempotency_key, fill) waits up to timeout_ms per attempt and retries
// with exponential backoff; the key travels as the envelope's correlationId (use the command's
// commandId). It blocks, so it is for tools and threads without an event loop; an agent's loop
// uses AsyncRpcClient, the same protocol driven by the loop (send() returns at once, a callback
// gets the reply). RpcWorker: registers a name, heartbeats, hands each request to a handler and
// caches the encoded reply by key in a bounded window, so a retried request is answered from the
// cache and applied once. Requests are handled one at a time, in arrival order.
//
//   bus::RpcWorker worker(ctx, {.endpoint = rpc, .name = "kasmina/0"});
//   worker.poll(100, [&](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
//       rep.initCommandAck().setOutcome(schema::CommandOutcome::APPLIED); });
//   bus::RpcClient client(ctx, {.endpoint = rpc, .sender = "tamiyo"});
//   auto r = client.request("kasmina/0", "cmd-17", [&](auto p) { p.initCommand() ... });
//   if (r.ok()) use(r.reply->envelope().getPayload().getCommandAck());
//   bus::AsyncRpcClient async(ctx, loop, {.endpoint = rpc, .sender = "tamiyo"});
//   bool queued = async.send("kasmina/0", "cmd-18", [&](auto p) { p.initCommand() ... },
//                            [&](bus::RpcReply r) { if (r.ok()) use(r.reply->envelope()); });
#pragma once

#include <capnp/message.h>

#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <zmq.hpp>

#include "bus/envelope.h"
#include "bus/event_loop.h"
#include "bus/security.h"

namespace esper::bus {

// ---- client ----

struct RpcClientConfig {
    std::string endpoint{};  // broker rpc endpoint
    std::string sender{};
    std::string run_id{};
    int timeout_ms = 500;  // per attempt
    int max_attempts = 5;
    int backoff_initial_ms = 20;  // doubled after each failed attempt
    int backoff_max_ms = 1000;
    DecodeLimits limits{};
    size_t max_in_flight = 16;  // AsyncRpcClient: requests sent and not yet finished
    size_t max_queued = 1024;   // AsyncRpcClient: requests waiting for a slot; more are refused
    ClientSecurity security{};  // CURVE keys (bus/security.h); empty = none
};

enum class RpcStatus { kOk, kTimeout, kUnknownAgent, kMalformedReply };
std::string_view rpc_status_name(RpcStatus status);

struct RpcReply {
    RpcStatus status = RpcStatus::kTimeout;
    std::optional<Decoded> reply;  // set iff ok()
    std::string error{};           // broker or decode reason
    int attempts = 0;
    bool ok() const { return status == RpcStatus::kOk; }
};

class RpcClient {
public:
    RpcClient(zmq::context_t& context, RpcClientConfig config);
    RpcClient(const RpcClient&) = delete;
    RpcClient& operator=(const RpcClient&) = delete;

    // Sends a request built by `fill(schema::Envelope::Payload::Builder)` to `agent`. An empty
    // key disables deduplication on the worker (then retries may apply twice).
    template <typename Fill>
    RpcReply request(std::string_view agent, std::string_view idempotency_key, Fill&& fill) {
        capnp::MallocMessageBuilder message;
        fill(message.initRoot<schema::Envelope>().getPayload());
        return request_message(agent, idempotency_key, message);
    }
    RpcReply request_message(std::string_view agent, std::string_view idempotency_key,
                             capnp::MallocMessageBuilder& message);

    const RpcClientConfig& config() const { return config_; }

private:
    enum class Wait { kReply, kError, kNothing };
    Wait wait_for(uint64_t request_no, int64_t deadline_ns, RpcReply& out);

    RpcClientConfig config_;
    zmq::socket_t socket_;
    uint64_t request_no_ = 0;
    uint64_t sequence_ = 0;
};

// ---- non-blocking client, for an agent's event loop ----

struct AsyncRpcStats {
    uint64_t attempts = 0;  // requests put on the wire, retries included
    uint64_t retries = 0;
    uint64_t completed = 0;  // callbacks run (any status)
    uint64_t timeouts = 0;   // attempts that got no reply in time
    uint64_t stale = 0;      // replies to requests already finished
    uint64_t refused = 0;    // send() calls refused because the queue was full
};

// The RpcClient protocol without blocking. send() queues the request and returns at once; the
// client's socket is watched by `loop` and a timer drives timeouts and retries (same key,
// exponential backoff; a late reply to an earlier attempt is taken). `done` runs on the loop
// thread when the request finishes, in completion order, with the same RpcReply RpcClient would
// return. Requests to one agent go out one at a time in send() order, so a retry never overtakes
// a later request (control messages are applied in order per target); requests to different
// agents overlap, up to max_in_flight; the rest wait in a queue of max_queued.
// Use it from the loop's thread only. Destroying the client drops unfinished requests without
// calling their callbacks; do not destroy it from inside one.
class AsyncRpcClient {
public:
    using Callback = std::function<void(RpcReply reply)>;

    AsyncRpcClient(zmq::context_t& context, EventLoop& loop, RpcClientConfig config);
    ~AsyncRpcClient();
    AsyncRpcClient(const AsyncRpcClient&) = delete;
    AsyncRpcClient& operator=(const AsyncRpcClient&) = delete;

    // Sends a request built by `fill(schema::Envelope::Payload::Builder)` to `agent`. False
    // (and `done` is never called) when max_queued requests are already waiting.
    template <typename Fill>
    [[nodiscard]] bool send(std::string_view agent, std::string_view idempotency_key, Fill&& fill,
                            Callback done) {
        capnp::MallocMessageBuilder message;
        fill(message.initRoot<schema::Envelope>().getPayload());
        return send_message(agent, idempotency_key, message, std::move(done));
    }
    [[nodiscard]] bool send_message(std::string_view agent, std::string_view idempotency_key,
                                    capnp::MallocMessageBuilder& message, Callback done);

    size_t in_flight() const { return active_.size(); }
    size_t queued() const { return queue_.size(); }
    const AsyncRpcStats& stats() const { return stats_; }
    const RpcClientConfig& config() const { return config_; }

private:
    using Clock = std::chrono::steady_clock;
    struct Request {
        uint64_t request_no = 0;
        std::string agent, key;
        std::string body;  // the encoded envelope, resent as is
        Callback done;
        int attempt = 0;
        int backoff_ms = 0;
        bool waiting_reply = false;  // false: backing off before the next attempt
        Clock::time_point deadline{};
        RpcReply last;  // the outcome of the last failed attempt
    };

    void pump();                // starts queued requests whose agent is free
    void transmit(Request& r);  // puts the next attempt on the wire
    void failed_attempt(Request& r, RpcStatus status, std::string error);
    void finish(uint64_t request_no, RpcReply reply);
    void on_readable();
    void on_timer();
    void arm_timer();

    RpcClientConfig config_;
    EventLoop& loop_;
    zmq::socket_t socket_;
    boost::asio::steady_timer timer_;
    bool timer_armed_ = false;
    // Timer handlers that outlive the client see this gone.
    std::shared_ptr<int> alive_ = std::make_shared<int>(0);
    std::map<uint64_t, Request> active_;  // by request number
    std::deque<Request> queue_;
    std::unordered_set<std::string> busy_agents_;
    uint64_t request_no_ = 0;
    uint64_t sequence_ = 0;
    AsyncRpcStats stats_;
};

// ---- worker ----

struct RpcWorkerConfig {
    std::string endpoint{};  // broker rpc endpoint
    std::string name{};      // e.g. "kasmina/0", "tamiyo"
    std::string run_id{};
    int heartbeat_ms = 1000;       // keep below the broker's agent_expiry_ms / 2
    size_t dedup_capacity = 4096;  // most recent keys whose replies are kept
    DecodeLimits limits{};
    int drop_first_replies = 0;  // fault injection for tests: handle, cache, don't send
    ClientSecurity security{};   // CURVE keys (bus/security.h); empty = none
    // Decides, before the dedup window and the handler, whether the request's sender may make
    // it: nullopt = yes, else the reason. A refusal is answered controlReply {ok: false, error:
    // "forbidden: <reason>"}, counted in stats().forbidden and never cached, so nothing changes.
    std::function<std::optional<std::string>(const Peer& peer, schema::Envelope::Reader request)>
        authorize{};
};

struct RpcWorkerStats {
    uint64_t requests = 0;    // frames received
    uint64_t handled = 0;     // handler calls
    uint64_t duplicates = 0;  // answered from the dedup window
    uint64_t malformed = 0;   // undecodable requests (answered with an error reply)
    uint64_t handler_errors = 0;
    uint64_t forbidden = 0;  // refused by `authorize`
    uint64_t refused = 0;    // REFUSED frames: the broker did not register our name
};

class RpcWorker {
public:
    using Handler = std::function<void(schema::Envelope::Reader request,
                                       schema::Envelope::Payload::Builder reply)>;

    RpcWorker(zmq::context_t& context, RpcWorkerConfig config);
    ~RpcWorker();  // says BYE
    RpcWorker(const RpcWorker&) = delete;
    RpcWorker& operator=(const RpcWorker&) = delete;

    // Handles every request already queued (never blocks) and heartbeats when due.
    // Returns the number of requests answered. For event loops: call when socket() is readable
    // and from a timer every heartbeat_ms.
    int process(const Handler& handler);
    // Waits up to timeout_ms for a request, then process().
    int poll(int timeout_ms, const Handler& handler);
    void heartbeat();

    const RpcWorkerStats& stats() const { return stats_; }
    const RpcWorkerConfig& config() const { return config_; }
    zmq::socket_t& socket() { return socket_; }
    // The sender of the request being handled, as the broker authenticated it (role, key name,
    // public key, connection). Valid inside the handler and `authorize`; Peer::identity() is
    // the stable "who" for idempotency keys.
    const Peer& peer() const { return peer_; }
    // Why the broker last refused our registration ("" if never): another live connection
    // holds the name, or our key lacks the agent role.
    const std::string& refusal() const { return refusal_; }

private:
    void answer(std::vector<zmq::message_t>& frames, const Handler& handler);
    void send_reply(const zmq::message_t& client, const zmq::message_t& req_id,
                    const std::string& body);
    void remember(std::string key, std::string body);
    void reply_error(schema::Envelope::Builder reply, std::string_view why);

    RpcWorkerConfig config_;
    zmq::socket_t socket_;
    RpcWorkerStats stats_;
    int64_t last_heartbeat_ns_ = 0;
    uint64_t sequence_ = 0;
    int drops_left_ = 0;
    Peer peer_;
    std::string refusal_;
    std::unordered_map<std::string, std::string> replies_;  // key -> encoded reply envelope
    std::deque<std::string> order_;                         // keys, oldest first
};

}  // namespace esper::bus
