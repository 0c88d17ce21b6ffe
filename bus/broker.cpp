// Broker implementation; see broker.h. One thread owns all three sockets.
#include "bus/broker.h"

#include <chrono>
#include <iterator>
#include <zmq_addon.hpp>

#include "bus/rpc_protocol.h"
#include "core/clock.h"
#include "core/log.h"

namespace esper::bus {

namespace {

Logger& broker_log() { return logger("bus.broker"); }

std::string_view view(const zmq::message_t& m) {
    return std::string_view(static_cast<const char*>(m.data()), m.size());
}

zmq::message_t frame(std::string_view s) { return zmq::message_t(s.data(), s.size()); }

}  // namespace

Broker::Broker(zmq::context_t& context, BrokerConfig config)
    : config_(std::move(config)),
      xsub_(context, zmq::socket_type::xsub),
      xpub_(context, zmq::socket_type::xpub),
      router_(context, zmq::socket_type::router) {
    for (zmq::socket_t* s : {&xsub_, &xpub_, &router_}) {
        s->set(zmq::sockopt::linger, 0);
        s->set(zmq::sockopt::sndhwm, config_.hwm);
        s->set(zmq::sockopt::rcvhwm, config_.hwm);
        s->set(zmq::sockopt::maxmsgsize, config_.max_frame_bytes);
    }
    router_.set(zmq::sockopt::router_mandatory, 1);
    xsub_.bind(config_.pub_endpoint);
    xpub_.bind(config_.sub_endpoint);
    router_.bind(config_.rpc_endpoint);
    endpoints_.pub = xsub_.get(zmq::sockopt::last_endpoint);
    endpoints_.sub = xpub_.get(zmq::sockopt::last_endpoint);
    endpoints_.rpc = router_.get(zmq::sockopt::last_endpoint);
    // After reading last_endpoint, which would otherwise name this one.
    if (!config_.local_rpc_endpoint.empty()) router_.bind(config_.local_rpc_endpoint);
}

std::string Broker::endpoints_line() const {
    return "broker pub=" + endpoints_.pub + " sub=" + endpoints_.sub + " rpc=" + endpoints_.rpc;
}

void Broker::run(const std::atomic<bool>& stop_requested) {
    while (!stop_requested.load(std::memory_order_relaxed)) poll_once(50);
}

void Broker::poll_once(int timeout_ms) {
    zmq::pollitem_t items[] = {
        {xsub_.handle(), 0, ZMQ_POLLIN, 0},
        {xpub_.handle(), 0, ZMQ_POLLIN, 0},
        {router_.handle(), 0, ZMQ_POLLIN, 0},
    };
    try {
        zmq::poll(items, 3, std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
        if (e.num() != EINTR) throw;
        return;
    }
    if (items[0].revents & ZMQ_POLLIN) forward(xsub_, xpub_, false);
    if (items[1].revents & ZMQ_POLLIN) forward(xpub_, xsub_, true);
    if (items[2].revents & ZMQ_POLLIN) handle_rpc();
    expire_agents();
}

void Broker::forward(zmq::socket_t& from, zmq::socket_t& to, bool subscriptions) {
    // Bounded batch so one busy direction cannot starve the others.
    for (int i = 0; i < 4096; ++i) {
        zmq::message_t part;
        if (!from.recv(part, zmq::recv_flags::dontwait)) return;
        for (;;) {
            bool more = part.more();
            // XPUB drops for a subscriber at its HWM instead of blocking; XSUB never blocks.
            (void)to.send(part, more ? zmq::send_flags::sndmore | zmq::send_flags::dontwait
                                     : zmq::send_flags::dontwait);
            if (!more) break;
            (void)from.recv(part, zmq::recv_flags::none);
        }
        if (subscriptions)
            ++stats_.subscriptions;
        else
            ++stats_.forwarded;
    }
}

bool Broker::send_frames(std::vector<zmq::message_t>& frames) {
    try {
        for (size_t i = 0; i < frames.size(); ++i) {
            auto flags = i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none;
            if (!router_.send(frames[i], flags | zmq::send_flags::dontwait)) return false;
        }
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH) return false;
        throw;
    }
    return true;
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
            std::string name = in[2].to_string();
            auto [it, inserted] = agents_.try_emplace(name);
            if (inserted || it->second.identity != identity) {
                ++stats_.registrations;
                ESPER_LOG_INFO(broker_log(), "agent=", name, " registered");
            }
            it->second.identity = identity;
            it->second.last_seen_ns = now;
        } else if (tag == proto::kBye && in.size() == 3) {
            auto it = agents_.find(in[2].to_string());
            if (it != agents_.end() && it->second.identity == identity) agents_.erase(it);
        } else if (tag == proto::kRequest && in.size() == 5) {
            ++stats_.requests;
            std::string agent = in[2].to_string();
            std::string req_id = in[3].to_string();
            auto it = agents_.find(agent);
            std::vector<zmq::message_t> out;
            if (it != agents_.end()) {
                out.push_back(frame(it->second.identity));
                out.push_back(frame(proto::kRequest));
                out.push_back(std::move(in[0]));
                out.push_back(std::move(in[3]));
                out.push_back(std::move(in[4]));
                if (send_frames(out)) continue;
                ++stats_.undeliverable;
                agents_.erase(it);
                out.clear();
                out.push_back(frame(identity));
                out.push_back(frame(proto::kError));
                out.push_back(frame(req_id));
                out.push_back(frame("agent unreachable " + agent));
            } else {
                ++stats_.unknown_agent;
                out.push_back(frame(identity));
                out.push_back(frame(proto::kError));
                out.push_back(frame(req_id));
                out.push_back(frame("unknown agent " + agent));
            }
            if (!send_frames(out)) ++stats_.undeliverable;
        } else if (tag == proto::kReply && in.size() == 5) {
            ++stats_.replies;
            std::vector<zmq::message_t> out;
            out.push_back(std::move(in[2]));
            out.push_back(frame(proto::kReply));
            out.push_back(std::move(in[3]));
            out.push_back(std::move(in[4]));
            if (!send_frames(out)) ++stats_.undeliverable;
        } else {
            ++stats_.malformed;
            ESPER_LOG_WARN_RATE(broker_log(), 5, "dropped rpc frame tag_bytes=", tag.size(),
                                " parts=", in.size());
        }
    }
}

void Broker::expire_agents() {
    int64_t now = monotonic_ns();
    int64_t expiry_ns = int64_t{config_.agent_expiry_ms} * 1000000;
    for (auto it = agents_.begin(); it != agents_.end();) {
        if (now - it->second.last_seen_ns > expiry_ns) {
            ESPER_LOG_WARN(broker_log(), "agent=", it->first, " expired (no heartbeat)");
            ++stats_.expired;
            it = agents_.erase(it);
        } else {
            ++it;
        }
    }
}

std::vector<std::string> Broker::agents() const {
    std::vector<std::string> names;
    for (const auto& [name, agent] : agents_) names.push_back(name);
    return names;
}

}  // namespace esper::bus
