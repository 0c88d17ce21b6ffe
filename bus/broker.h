// The broker (DESIGN §6): an XSUB endpoint publishers connect to, an XPUB endpoint subscribers
// connect to, and a ROUTER endpoint for request/reply between named agents, Majordomo-style.
// It routes on frames and never decodes a payload. A slow subscriber only loses its own
// messages (XPUB drops at its HWM), so publishers are never slowed by it.
//
// Bounded memory (issue 18): a frame above max_pubsub_frame_bytes (pub/sub) or max_frame_bytes
// (a request) is dropped, counted and logged (rate-limited); ZeroMQ disconnects a peer whose
// frame exceeds 4x the larger limit before it is read. The queue towards one peer holds at most
// max(16, max_queue_bytes / frame limit) messages, so a stalled subscriber or worker pins at most
// ~max_queue_bytes of the broker's memory however large its frames (ZeroMQ's HWM counts messages
// only). Agent names are at most max_agent_name_bytes, at most max_agents are registered, and any
// name or topic from the wire reaches a log line escaped and cut (bus::printable). Every second
// the broker publishes heartbeat.broker (a Heartbeat with its counters) on its own XPUB.
//
// Request/reply frames on the ROUTER endpoint (after ZeroMQ's identity frame; see rpc_protocol.h):
//   worker -> broker  HELLO name                 register or heartbeat (expires after
//   agent_expiry_ms) worker -> broker  BYE name                   unregister client -> broker  REQ
//   agent req_id envelope  forwarded as  REQ client_id req_id envelope worker -> broker  REP
//   client_id req_id env   forwarded as  REP req_id envelope broker -> client  ERR req_id reason
//   e.g. "unknown agent kasmina/0"
// Security (bus/security.h): with `security` set every tcp endpoint is a CURVE server and the
// broker answers ZAP requests itself (its poll loop owns the handler socket): a key must be in the
// allowlist, and publishing needs an operator or agent key. Names are bound to their owner: a
// HELLO for a name registered by another live connection is refused (REFUSED name reason), and
// with keys only an agent key may register, and only the key that holds a live name may take it
// over. Requests reach the worker with the sender's authenticated role and key as a fifth frame
// (REQ client_id req_id envelope peer; bus::decode_peer); a reply is forwarded only from the
// worker the request went to. Peers on the in-process endpoint are trusted ("internal").
// Services such as the rendezvous key-value store are ordinary workers behind the router (the
// `kv` worker that `esper broker` hosts, agents/kv_service.h); a process that hosts one next to
// the broker connects it through `local_rpc_endpoint`.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>
#include <zmq.hpp>

#include "bus/envelope.h"
#include "bus/security.h"

namespace esper::bus {

struct BrokerConfig {
    std::string pub_endpoint = "tcp://127.0.0.1:5555";  // XSUB: publishers connect here
    std::string sub_endpoint = "tcp://127.0.0.1:5556";  // XPUB: subscribers connect here
    std::string rpc_endpoint = "tcp://127.0.0.1:5557";  // ROUTER: request/reply
    // Optional second bind of the ROUTER (e.g. "inproc://broker-rpc") for workers hosted in the
    // broker's own process: they reach it whatever address the tcp endpoint binds.
    std::string local_rpc_endpoint{};
    int agent_expiry_ms = 3000;
    int hwm = 100000;                                   // per-peer queue, messages (upper bound)
    int64_t max_frame_bytes = int64_t{16} << 20;        // request/reply frames
    int64_t max_pubsub_frame_bytes = int64_t{4} << 20;  // published frames
    int64_t max_queue_bytes = int64_t{1} << 30;         // per peer, see above
    size_t max_agents = 4096;
    size_t max_agent_name_bytes = 128;
    // Subscriptions passed on to publishers (each keeps them): prefixes of at most this many
    // bytes, at most max_subscriptions distinct ones; others reach no publisher (counted).
    size_t max_subscription_bytes = 1024;
    size_t max_subscriptions = 65536;
    int heartbeat_ms = 1000;        // heartbeat.broker with the counters (0 = never)
    ServerSecurity security{};      // empty: no CURVE (bind loopback only)
    int pending_reply_ms = 120000;  // forget a forwarded request after this long
};

struct BrokerEndpoints {
    std::string pub, sub, rpc;  // resolved (port 0 / * replaced by the bound port)
};

struct BrokerStats {
    uint64_t forwarded = 0;      // pub/sub messages
    uint64_t subscriptions = 0;  // subscription frames passed upstream
    uint64_t requests = 0;
    uint64_t replies = 0;
    uint64_t unknown_agent = 0;
    uint64_t undeliverable = 0;          // the peer was gone when we sent
    uint64_t agent_busy = 0;             // the agent's queue was full: the client got an error
    uint64_t malformed = 0;              // rpc frames that fit no command
    uint64_t oversized = 0;              // frames over the limits (dropped or refused)
    uint64_t refused_subscriptions = 0;  // too long, or max_subscriptions reached
    uint64_t registrations = 0;
    uint64_t refused_registrations = 0;  // bad name or max_agents reached
    uint64_t expired = 0;
    uint64_t auth_allowed = 0;      // ZAP: known key, role fits the endpoint
    uint64_t auth_denied = 0;       // ZAP: unknown key, or an observer publishing
    uint64_t handshake_failed = 0;  // no key, wrong broker key, bad protocol (socket monitor)
    uint64_t forbidden = 0;         // HELLO/BYE from a key without the agent role
    uint64_t name_conflicts = 0;    // HELLO for a name another live connection holds
    uint64_t forged_replies = 0;    // REP from a peer the request was not forwarded to
};

class Broker {
public:
    Broker(zmq::context_t& context, BrokerConfig config);
    Broker(const Broker&) = delete;
    Broker& operator=(const Broker&) = delete;

    const BrokerEndpoints& endpoints() const { return endpoints_; }
    // One line for logs and for tests that parse it: "broker pub=... sub=... rpc=...".
    std::string endpoints_line() const;

    ~Broker();

    // Runs until `stop_requested` is true (checked at least every 50 ms).
    void run(const std::atomic<bool>& stop_requested);
    // Waits up to timeout_ms for traffic, then moves everything queued.
    void poll_once(int timeout_ms);

    std::vector<std::string> agents() const;
    const BrokerStats& stats() const { return stats_; }

private:
    enum class Sent { kOk, kFull, kGone };
    struct Agent {
        std::string identity;
        std::string key;  // the public key that registered it ("" without keys)
        int64_t last_seen_ns = 0;
    };
    void forward(zmq::socket_t& from, zmq::socket_t& to, bool subscriptions);
    bool admit_subscription(const std::vector<zmq::message_t>& parts);
    void handle_rpc();
    void handle_hello(const std::string& identity, const std::string& name, const Peer& peer,
                      int64_t now);
    void refuse(const std::string& identity, const std::string& name, const std::string& why);
    bool reachable(const std::string& identity);
    void expire_agents();
    Sent send_frames(std::vector<zmq::message_t>& frames);
    void publish_heartbeat();
    Peer peer_of(const zmq::message_t& frame, const std::string& identity) const;
    void handle_zap();
    void drain_monitors();

    BrokerConfig config_;
    // The ZAP handler is bound before the CURVE sockets, so no handshake can miss it.
    std::unique_ptr<zmq::socket_t> zap_;
    zmq::socket_t xsub_, xpub_, router_;
    std::vector<zmq::socket_t> monitors_;  // handshake-failure events of the three sockets
    BrokerEndpoints endpoints_;
    std::unordered_map<std::string, Agent> agents_;  // name -> agent
    // Forwarded requests awaiting their reply: client id + req id -> worker identity.
    std::unordered_map<std::string, std::string> pending_;
    std::deque<std::pair<int64_t, std::string>> pending_order_;  // (forwarded at, key)
    int64_t last_expiry_ns_ = 0;
    std::unordered_set<std::string> subscriptions_;  // prefixes passed on to publishers
    std::vector<zmq::message_t> parts_;              // forward()'s message being moved
    BrokerStats stats_;
    int64_t started_ns_ = 0;
    int64_t last_heartbeat_ns_ = 0;
    uint64_t heartbeat_sequence_ = 0;
};

// The broker's counters as the heartbeat carries them (esper_broker_*_total).
std::vector<Count> broker_counters(const BrokerStats& stats);

}  // namespace esper::bus
