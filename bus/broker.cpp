// Broker implementation; see broker.h. One thread owns all three sockets.
#include "bus/broker.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstring>
#include <iterator>
#include <optional>
#include <zmq_addon.hpp>

#include "bus/rpc_protocol.h"
#include "core/check.h"
#include "core/clock.h"
#include "core/error.h"
#include "core/log.h"

namespace esper::bus {

namespace {

Logger& broker_log() { return logger("bus.broker"); }

std::string_view view(const zmq::message_t& m) {
    return std::string_view(static_cast<const char*>(m.data()), m.size());
}

zmq::message_t frame(std::string_view s) { return zmq::message_t(s.data(), s.size()); }

// ZAP domains of the three endpoints: what a key may do depends on where it connects.
constexpr std::string_view kPubDomain = "esper.pub";
constexpr std::string_view kSubDomain = "esper.sub";
constexpr std::string_view kRpcDomain = "esper.rpc";

// Messages a peer's queue may hold so that it holds at most ~queue_bytes of frames of up to
// frame_bytes each (ZeroMQ's HWM counts messages only).
int queue_messages(int64_t queue_bytes, int64_t frame_bytes, int hwm) {
    const int64_t n = queue_bytes / std::max<int64_t>(1, frame_bytes);
    return static_cast<int>(std::clamp<int64_t>(n, 16, std::max(16, hwm)));
}

}  // namespace

std::vector<Count> broker_counters(const BrokerStats& s) {
    return {
        {"esper_broker_forwarded_total", "", s.forwarded},
        {"esper_broker_requests_total", "", s.requests},
        {"esper_broker_replies_total", "", s.replies},
        {"esper_broker_dropped_total", "oversized", s.oversized},
        {"esper_broker_dropped_total", "malformed", s.malformed},
        {"esper_broker_dropped_total", "unknown_agent", s.unknown_agent},
        {"esper_broker_dropped_total", "agent_busy", s.agent_busy},
        {"esper_broker_dropped_total", "undeliverable", s.undeliverable},
        {"esper_broker_registrations_total", "", s.registrations},
        {"esper_broker_registrations_refused_total", "", s.refused_registrations},
        {"esper_broker_subscriptions_refused_total", "", s.refused_subscriptions},
        {"esper_broker_agents_expired_total", "", s.expired},
    };
}

Broker::Broker(zmq::context_t& context, BrokerConfig config)
    : config_(std::move(config)),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub),
      router_(context, zmq::socket_type::router) {
    // ZeroMQ's own cap disconnects a peer before reading its frame; below it, frames over the
    // path's limit are read, dropped and counted (forward, handle_rpc).
    const int64_t hard_cap = 4 * std::max(config_.max_frame_bytes, config_.max_pubsub_frame_bytes);
    const int pubsub_queue =
        queue_messages(config_.max_queue_bytes, config_.max_pubsub_frame_bytes, config_.hwm);
    const int rpc_queue =
        queue_messages(config_.max_queue_bytes, config_.max_frame_bytes, config_.hwm);
    for (zmq::socket_t* s : {&xsub_, &xpub_, &router_}) {
        const int q = s == &router_ ? rpc_queue : pubsub_queue;
        s->set(zmq::sockopt::linger, 0);
        s->set(zmq::sockopt::sndhwm, q);
        s->set(zmq::sockopt::rcvhwm, q);
        s->set(zmq::sockopt::maxmsgsize, hard_cap);
    }
    // Every published message is read by the XSUB and written by the XPUB: with two or more I/O
    // threads, pin their connections to different ones, so the two directions run in parallel
    // (ZeroMQ would otherwise pick by load at connect time, and often picks the same thread).
    if (zmq_ctx_get(context.handle(), ZMQ_IO_THREADS) >= 2) {
        xsub_.set(zmq::sockopt::affinity, uint64_t{1});
        xpub_.set(zmq::sockopt::affinity, uint64_t{2});
    }
    started_ns_ = monotonic_ns();
    router_.set(zmq::sockopt::router_mandatory, 1);
    if (config_.security.enabled()) {
        ESPER_REQUIRE(static_cast<bool>(config_.security.lookup), "security without an allowlist");
        ESPER_CHECK_INPUT(curve_available(), "this libzmq has no CURVE support");
        ESPER_CHECK_INPUT(is_z85_key(config_.security.own.secret_key),
                          "broker secret key is not a Z85 key");
        // One ZAP handler per context (the endpoint name is fixed by RFC 27).
        zap_ = std::make_unique<zmq::socket_t>(context, zmq::socket_type::rep);
        zap_->set(zmq::sockopt::linger, 0);
        zap_->bind("inproc://zeromq.zap.01");
        const std::pair<zmq::socket_t*, std::string_view> domains[] = {
            {&xsub_, kPubDomain}, {&xpub_, kSubDomain}, {&router_, kRpcDomain}};
        for (const auto& [s, domain] : domains) {
            s->set(zmq::sockopt::curve_server, true);
            s->set(zmq::sockopt::curve_secretkey, config_.security.own.secret_key);
            s->set(zmq::sockopt::zap_domain, std::string(domain));
            // Failed handshakes (no key, another broker's key) never reach ZAP: count them from
            // the socket's monitor.
            const std::string monitor = "inproc://esper-broker-monitor-" +
                                        std::to_string(reinterpret_cast<uintptr_t>(this)) + "-" +
                                        std::string(domain);
            if (zmq_socket_monitor(s->handle(), monitor.c_str(),
                                   ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                       ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) != 0)
                ESPER_THROW(kFailed, "zmq_socket_monitor: ", zmq_strerror(zmq_errno()));
            zmq::socket_t& m = monitors_.emplace_back(context, zmq::socket_type::pair);
            m.set(zmq::sockopt::linger, 0);
            m.connect(monitor);
        }
    }
    xsub_.bind(config_.pub_endpoint);
    xpub_.bind(config_.sub_endpoint);
    router_.bind(config_.rpc_endpoint);
    endpoints_.pub = xsub_.get(zmq::sockopt::last_endpoint);
    endpoints_.sub = xpub_.get(zmq::sockopt::last_endpoint);
    endpoints_.rpc = router_.get(zmq::sockopt::last_endpoint);
    // After reading last_endpoint, which would otherwise name this one.
    if (!config_.local_rpc_endpoint.empty()) router_.bind(config_.local_rpc_endpoint);
}

Broker::~Broker() {
    if (!monitors_.empty())
        for (zmq::socket_t* s : {&xsub_, &xpub_, &router_})
            zmq_socket_monitor(s->handle(), nullptr, 0);
}

std::string Broker::endpoints_line() const {
    return "broker pub=" + endpoints_.pub + " sub=" + endpoints_.sub + " rpc=" + endpoints_.rpc;
}

void Broker::run(const std::atomic<bool>& stop_requested) {
    while (!stop_requested.load(std::memory_order_relaxed)) poll_once(50);
}

void Broker::poll_once(int timeout_ms) {
    std::vector<zmq::pollitem_t> items = {
        {xsub_.handle(), 0, ZMQ_POLLIN, 0},
        {xpub_.handle(), 0, ZMQ_POLLIN, 0},
        {router_.handle(), 0, ZMQ_POLLIN, 0},
    };
    if (zap_) items.push_back({zap_->handle(), 0, ZMQ_POLLIN, 0});
    for (zmq::socket_t& m : monitors_) items.push_back({m.handle(), 0, ZMQ_POLLIN, 0});
    try {
        zmq::poll(items.data(), items.size(), std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;
        return;
    }
    // ZAP first: a handshake waiting for its answer holds up that peer's traffic.
    if (zap_ && (items[3].revents & ZMQ_POLLIN)) handle_zap();
    if (items[0].revents & ZMQ_POLLIN) forward(xsub_, xpub_, false);
    if (items[1].revents & ZMQ_POLLIN) forward(xpub_, xsub_, true);
    if (items[2].revents & ZMQ_POLLIN) handle_rpc();
    if (!monitors_.empty()) drain_monitors();
    expire_agents();
    if (config_.heartbeat_ms > 0 &&
        monotonic_ns() - last_heartbeat_ns_ >= int64_t{config_.heartbeat_ms} * 1000000)
        publish_heartbeat();
}

void Broker::publish_heartbeat() {
    last_heartbeat_ns_ = monotonic_ns();
    capnp::MallocMessageBuilder message;
    auto envelope = message.initRoot<schema::Envelope>();
    auto h = envelope.getPayload().initHeartbeat();
    h.setAgent("broker");
    h.setRole("broker");
    h.setPid(static_cast<uint32_t>(::getpid()));
    h.setUptimeMs(static_cast<uint64_t>((last_heartbeat_ns_ - started_ns_) / 1000000));
    h.setState("agents=" + std::to_string(agents_.size()));
    const std::vector<Count> counts = broker_counters(stats_);
    fill_counters(h.initCounters(static_cast<unsigned>(counts.size())), counts);
    stamp_envelope(envelope, "broker", "", ++heartbeat_sequence_);
    // Straight to the subscribers, like a forwarded message: never blocks, dropped at a full peer.
    zmq::message_t topic = frame("heartbeat.broker");
    zmq::message_t body = encode(message);
    if (xpub_.send(topic, zmq::send_flags::sndmore | zmq::send_flags::dontwait))
        (void)xpub_.send(body, zmq::send_flags::dontwait);
}

void Broker::handle_zap() {
    for (;;) {
        std::vector<zmq::message_t> req;
        if (!zmq::recv_multipart(*zap_, std::back_inserter(req), zmq::recv_flags::dontwait)) return;
        // RFC 27: version, request id, domain, address, identity, mechanism, credentials...
        std::string status = "400", text = "CURVE key required", user;
        std::string address = req.size() > 3 ? req[3].to_string() : "";
        if (req.size() == 7 && view(req[0]) == "1.0" && view(req[5]) == "CURVE" &&
            req[6].size() == 32) {
            std::array<char, 41> z85{};
            zmq_z85_encode(z85.data(), static_cast<const uint8_t*>(req[6].data()), 32);
            const std::string key(z85.data(), 40);
            const std::string_view domain = view(req[2]);
            std::optional<AllowedKey> allowed = config_.security.lookup(key);
            if (!allowed || allowed->role == Role::kNone) {
                text = "key not in the allowlist";
            } else if (domain == kPubDomain && allowed->role == Role::kObserver) {
                text = "role observer may not publish";
            } else {
                status = "200";
                text = "OK";
                Peer peer{.role = allowed->role, .name = allowed->name, .key = key};
                user = encode_peer(peer);
            }
            if (status != "200")
                ESPER_LOG_WARN_RATE(broker_log(), 5, "refused key=", key, " from=", address,
                                    " endpoint=", domain, ": ", text);
        }
        if (status == "200")
            ++stats_.auth_allowed;
        else
            ++stats_.auth_denied;
        std::vector<zmq::message_t> rep;
        rep.push_back(frame("1.0"));
        rep.push_back(req.size() > 1 ? std::move(req[1]) : frame(""));
        rep.push_back(frame(status));
        rep.push_back(frame(text));
        rep.push_back(frame(user));
        rep.push_back(frame(""));  // no metadata
        zmq::send_multipart(*zap_, rep);
    }
}

void Broker::drain_monitors() {
    for (zmq::socket_t& m : monitors_) {
        for (;;) {
            std::vector<zmq::message_t> ev;
            if (!zmq::recv_multipart(m, std::back_inserter(ev), zmq::recv_flags::dontwait)) break;
            if (ev.size() != 2 || ev[0].size() < 6) continue;
            uint16_t event = 0;  // libzmq's monitor frame: event (16 bits), value (32 bits)
            std::memcpy(&event, ev[0].data(), sizeof event);
            ++stats_.handshake_failed;
            ESPER_LOG_WARN_RATE(broker_log(), 5, "handshake failed endpoint=", ev[1].to_string(),
                                " event=", event,
                                " (a client without keys, or with another broker's key)");
        }
    }
}

void Broker::forward(zmq::socket_t& from, zmq::socket_t& to, bool subscriptions) {
    // Bounded batch so one busy direction cannot starve the others.
    std::vector<zmq::message_t>& parts = parts_;  // reused: no allocation per message
    for (int i = 0; i < 4096; ++i) {
        parts.clear();
        if (!zmq::recv_multipart(from, std::back_inserter(parts), zmq::recv_flags::dontwait))
            return;
        size_t bytes = 0;
        for (const auto& p : parts) bytes += p.size();
        if (subscriptions && !admit_subscription(parts)) continue;
        if (!subscriptions && static_cast<int64_t>(bytes) > config_.max_pubsub_frame_bytes) {
            ++stats_.oversized;
            ESPER_LOG_WARN_RATE(broker_log(), 5, "dropped oversized message bytes=", bytes,
                                " limit=", config_.max_pubsub_frame_bytes, " topic=",
                                printable(parts.empty() ? std::string_view() : view(parts[0])),
                                " oversized_total=", stats_.oversized);
            continue;
        }
        for (size_t k = 0; k < parts.size(); ++k) {
            // XPUB drops for a subscriber at its HWM instead of blocking; XSUB never blocks.
            const bool more = k + 1 < parts.size();
            (void)to.send(parts[k], more ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                         : zmq::send_flags::dontwait);
        }
        if (subscriptions)
            ++stats_.subscriptions;
        else
            ++stats_.forwarded;
    }
}

// A subscription frame is 1 (subscribe) or 0 (unsubscribe) followed by the prefix. Publishers
// keep every prefix they are passed, so their number and length are bounded here.
bool Broker::admit_subscription(const std::vector<zmq::message_t>& parts) {
    if (parts.size() != 1 || parts[0].size() == 0) return true;  // not ours to judge
    const std::string_view f = view(parts[0]);
    const std::string_view prefix = f.substr(1);
    if (f[0] == 0) {
        subscriptions_.erase(std::string(prefix));
        return true;
    }
    if (f[0] != 1) return true;
    const bool known = subscriptions_.count(std::string(prefix)) != 0;
    if (prefix.size() > config_.max_subscription_bytes ||
        (!known && subscriptions_.size() >= config_.max_subscriptions)) {
        ++stats_.refused_subscriptions;
        ESPER_LOG_WARN_RATE(broker_log(), 5, "subscription not passed on bytes=", prefix.size(),
                            " prefix=", printable(prefix),
                            " refused_total=", stats_.refused_subscriptions);
        return false;
    }
    subscriptions_.emplace(prefix);
    return true;
}

Broker::Sent Broker::send_frames(std::vector<zmq::message_t>& frames) {
    try {
        for (size_t i = 0; i < frames.size(); ++i) {
            auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
            // With router_mandatory, a full peer is EAGAIN (false) and a gone one EHOSTUNREACH.
            if (!router_.send(frames[i], flags | zmq::send_flags::dontwait)) return Sent::kFull;
        }
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH) return Sent::kGone;
        throw;
    }
    return Sent::kOk;
}

Peer Broker::peer_of(const zmq::message_t& frame, const std::string& identity) const {
    Peer p;
    p.connection = identity;
    if (!config_.security.enabled()) return p;
    // Our ZAP handler sets the User-Id of every tcp peer; in-process peers (the hosted kv
    // worker) have none and are part of the broker.
    const char* user = zmq_msg_gets(frame.handle(), "User-Id");
    if (user == nullptr || *user == '\0') {
        p.role = Role::kAgent;
        p.name = "internal";
        return p;
    }
    p = decode_peer(user, identity);
    if (!p.authenticated()) p.role = Role::kObserver;  // never "unauthenticated" with keys on
    return p;
}

bool Broker::reachable(const std::string& identity) {
    std::vector<zmq::message_t> out;
    out.push_back(frame(identity));
    out.push_back(frame(proto::kPing));
    try {
        // A full queue (EAGAIN) still means the connection is there.
        (void)router_.send(out[0], zmq::send_flags::sndmore | zmq::send_flags::dontwait);
        (void)router_.send(out[1], zmq::send_flags::dontwait);
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH) return false;
        throw;
    }
    return true;
}

void Broker::refuse(const std::string& identity, const std::string& name, const std::string& why) {
    // The log names the name escaped, cut and with its full size; the reply echoes it cut.
    ESPER_LOG_WARN_RATE(broker_log(), 5, "agent=", printable(name), " registration refused: ", why);
    std::vector<zmq::message_t> out;
    out.push_back(frame(identity));
    out.push_back(frame(proto::kRefused));
    // The answer names at most max_agent_name_bytes of it (the log line notes the full length).
    out.push_back(frame(std::string_view(name).substr(0, config_.max_agent_name_bytes)));
    out.push_back(frame(why));
    (void)send_frames(out);
}

void Broker::handle_hello(const std::string& identity, const std::string& name, const Peer& peer,
                          int64_t now) {
    if (config_.security.enabled() && peer.role != Role::kAgent) {
        ++stats_.forbidden;
        refuse(identity, name,
               "forbidden: a key with role " + std::string(role_name(peer.role)) +
                   " may not register an agent name (needs role agent)");
        return;
    }
    auto it = agents_.find(name);
    if (it == agents_.end()) {  // a new name: bounded in length and in number
        const bool bad_name = name.empty() || name.size() > config_.max_agent_name_bytes;
        if (bad_name || agents_.size() >= config_.max_agents) {
            ++stats_.refused_registrations;
            refuse(identity, name,
                   bad_name ? "bad name (empty or longer than " +
                                  std::to_string(config_.max_agent_name_bytes) + " bytes)"
                            : "too many agents");
            return;
        }
    }
    if (it != agents_.end() && it->second.identity != identity) {
        // One owner per name: a second HELLO is refused while the first connection lives, and
        // with keys only the same key may take over a name it held until that name expires.
        if (reachable(it->second.identity)) {
            ++stats_.name_conflicts;
            refuse(identity, name, "name in use by another live connection");
            return;
        }
        if (config_.security.enabled() && it->second.key != peer.key) {
            ++stats_.name_conflicts;
            refuse(identity, name, "name held by another key until it expires");
            return;
        }
    }
    if (it == agents_.end() || it->second.identity != identity) {
        ++stats_.registrations;
        ESPER_LOG_INFO(broker_log(), "agent=", printable(name), " registered",
                       peer.authenticated() ? " key=" + peer.name : std::string());
        it = agents_.insert_or_assign(name, Agent{identity, peer.key, now}).first;
    }
    it->second.last_seen_ns = now;
}

void Broker::handle_rpc() {
    for (int i = 0; i < 1024; ++i) {
        std::vector<zmq::message_t> in;
        if (!zmq::recv_multipart(router_, std::back_inserter(in), zmq::recv_flags::dontwait))
            return;
        if (in.size() < 2) {
            ++stats_.malformed;
            continue;
        }
        std::string identity = in[0].to_string();
        std::string_view tag = view(in[1]);
        int64_t now = monotonic_ns();
        if (tag == proto::kHello && in.size() == 3) {
            handle_hello(identity, in[2].to_string(), peer_of(in[1], identity), now);
        } else if (tag == proto::kBye && in.size() == 3) {
            auto it = agents_.find(in[2].to_string());
            if (it != agents_.end() && it->second.identity == identity) agents_.erase(it);
        } else if (tag == proto::kRequest && in.size() == 5) {
            ++stats_.requests;
            std::string agent = in[2].to_string();
            std::string req_id = in[3].to_string();
            auto it = agents_.find(agent);
            std::vector<zmq::message_t> out;
            auto error = [&](const std::string& why) {
                out.clear();
                out.push_back(frame(identity));
                out.push_back(frame(proto::kError));
                out.push_back(frame(req_id));
                out.push_back(frame(why));
            };
            if (static_cast<int64_t>(in[4].size()) > config_.max_frame_bytes) {
                ++stats_.oversized;
                ESPER_LOG_WARN_RATE(broker_log(), 5,
                                    "refused oversized request bytes=", in[4].size(),
                                    " limit=", config_.max_frame_bytes, " agent=", printable(agent),
                                    " oversized_total=", stats_.oversized);
                error("request too large: " + std::to_string(in[4].size()) + " bytes > " +
                      std::to_string(config_.max_frame_bytes));
            } else if (it != agents_.end()) {
                const std::string worker = it->second.identity;
                const std::string pending_key = identity + '\0' + req_id;
                out.push_back(frame(worker));
                out.push_back(frame(proto::kRequest));
                out.push_back(frame(identity));
                out.push_back(std::move(in[3]));
                out.push_back(std::move(in[4]));
                out.push_back(frame(encode_peer(peer_of(in[1], identity))));
                const Sent sent = send_frames(out);
                if (sent == Sent::kOk) {
                    pending_.insert_or_assign(pending_key, worker);
                    pending_order_.emplace_back(now, pending_key);
                    continue;
                }
                if (sent == Sent::kFull) {
                    // A flood filled the agent's queue: it is busy, not gone (a registered agent
                    // is never forgotten because someone sent it too much).
                    ++stats_.agent_busy;
                    error("agent busy " + printable(agent) + " (its queue is full)");
                } else {
                    ++stats_.undeliverable;
                    agents_.erase(it);
                    error("agent unreachable " + printable(agent));
                }
            } else {
                ++stats_.unknown_agent;
                error("unknown agent " + printable(agent));
            }
            if (send_frames(out) != Sent::kOk) ++stats_.undeliverable;
        } else if (tag == proto::kReply && in.size() == 5) {
            // Only the worker a request went to may answer it: anyone else could forge acks.
            auto p = pending_.find(in[2].to_string() + '\0' + in[3].to_string());
            if (p == pending_.end() || p->second != identity) {
                ++stats_.forged_replies;
                ESPER_LOG_WARN_RATE(broker_log(), 5,
                                    "dropped a reply to a request not forwarded to its sender");
                continue;
            }
            pending_.erase(p);
            ++stats_.replies;
            std::vector<zmq::message_t> out;
            out.push_back(std::move(in[2]));
            out.push_back(frame(proto::kReply));
            out.push_back(std::move(in[3]));
            out.push_back(std::move(in[4]));
            if (send_frames(out) != Sent::kOk) ++stats_.undeliverable;
        } else {
            ++stats_.malformed;
            ESPER_LOG_WARN_RATE(broker_log(), 5, "dropped rpc frame tag_bytes=", tag.size(),
                                " parts=", in.size());
        }
    }
}

void Broker::expire_agents() {
    int64_t now = monotonic_ns();
    if (now - last_expiry_ns_ < 10'000'000) return;  // at most every 10 ms
    last_expiry_ns_ = now;
    int64_t expiry_ns = int64_t{config_.agent_expiry_ms} * 1000000;
    for (auto it = agents_.begin(); it != agents_.end();) {
        if (now - it->second.last_seen_ns > expiry_ns) {
            ESPER_LOG_WARN(broker_log(), "agent=", printable(it->first), " expired (no heartbeat)");
            ++stats_.expired;
            it = agents_.erase(it);
        } else {
            ++it;
        }
    }
    // Forget answered requests, and those whose reply never came (a dead worker); a runaway
    // table loses its oldest entries.
    const int64_t pending_ns = int64_t{config_.pending_reply_ms} * 1000000;
    while (!pending_order_.empty()) {
        const auto& [at, key] = pending_order_.front();
        auto it = pending_.find(key);
        const bool keep =
            it != pending_.end() && now - at <= pending_ns && pending_order_.size() <= 1'000'000;
        if (keep) break;
        if (it != pending_.end()) pending_.erase(it);
        pending_order_.pop_front();
    }
}

std::vector<std::string> Broker::agents() const {
    std::vector<std::string> names;
    for (const auto& [name, agent] : agents_) names.push_back(name);
    return names;
}

}  // namespace esper::bus
