// Reliable request/reply between named agents through the broker's ROUTER endpoint.
// RpcClient: request(agent, idempotency_key, fill) waits up to timeout_ms per attempt and retries
// with exponential backoff; the key travels as the envelope's correlationId (use the command's
// commandId). RpcWorker: registers a name, heartbeats, hands each request to a handler and caches
// the encoded reply by key in a bounded window, so a retried request is answered from the cache
// and applied once. Requests are handled one at a time, in arrival order.
//
//   bus::RpcWorker worker(ctx, {.endpoint = rpc, .name = "kasmina/0"});
//   worker.poll(100, [&](schema::Envelope::Reader req, schema::Envelope::Payload::Builder rep) {
//       rep.initCommandAck().setOutcome(schema::CommandOutcome::APPLIED); });
//   bus::RpcClient client(ctx, {.endpoint = rpc, .sender = "tamiyo"});
//   auto r = client.request("kasmina/0", "cmd-17", [&](auto p) { p.initCommand() ... });
//   if (r.ok()) use(r.reply->envelope().getPayload().getCommandAck());
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <zmq.hpp>

#include "bus/envelope.h"

namespace esper::bus {

// ---- client ----

struct RpcClientConfig {
    std::string endpoint{};  // broker rpc endpoint
    std::string sender{};
    std::string run_id{};
    int timeout_ms = 500;          // per attempt
    int max_attempts = 5;
    int backoff_initial_ms = 20;   // doubled after each failed attempt
    int backoff_max_ms = 1000;
    DecodeLimits limits{};
};

enum class RpcStatus { kOk, kTimeout, kUnknownAgent, kMalformedReply };
std::string_view rpc_status_name(RpcStatus status);

struct RpcReply {
    RpcStatus status = RpcStatus::kTimeout;
    std::optional<Decoded> reply;  // set iff ok()
    std::string error{};             // broker or decode reason
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

// ---- worker ----

struct RpcWorkerConfig {
    std::string endpoint{};  // broker rpc endpoint
    std::string name{};      // e.g. "kasmina/0", "tamiyo"
    std::string run_id{};
    int heartbeat_ms = 1000;        // keep below the broker's agent_expiry_ms / 2
    size_t dedup_capacity = 4096;   // most recent keys whose replies are kept
    DecodeLimits limits{};
    int drop_first_replies = 0;     // fault injection for tests: handle, cache, don't send
};

struct RpcWorkerStats {
    uint64_t requests = 0;    // frames received
    uint64_t handled = 0;     // handler calls
    uint64_t duplicates = 0;  // answered from the dedup window
    uint64_t malformed = 0;   // undecodable requests (answered with an error reply)
    uint64_t handler_errors = 0;
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
    std::unordered_map<std::string, std::string> replies_;  // key -> encoded reply envelope
    std::deque<std::string> order_;                         // keys, oldest first
};

}  // namespace esper::bus
