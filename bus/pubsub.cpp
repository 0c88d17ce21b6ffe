// Publisher, TelemetryPublisher, SequenceTracker and Subscriber; see pubsub.h.
#include "bus/pubsub.h"

#include <chrono>

#include "core/check.h"
#include "core/clock.h"
#include "core/log.h"

namespace esper::bus {

namespace {
Logger& bus_log() { return logger("bus"); }
}  // namespace

Publisher::Publisher(zmq::context_t& context, PublisherConfig config)
    : config_(std::move(config)),
      frames_(FramePool::create()),
      socket_(context, zmq::socket_type::xpub) {
    ESPER_REQUIRE(!config_.endpoint.empty(), "publisher needs an endpoint");
    socket_.set(zmq::sockopt::sndhwm, config_.send_hwm);
    socket_.set(zmq::sockopt::linger, config_.reliability == Reliability::kControl ? 2000 : 200);
    // A PUB/XPUB drops silently at the HWM; NODROP turns that into EAGAIN so we can count it.
    socket_.set(zmq::sockopt::xpub_nodrop, 1);
    if (config_.reliability == Reliability::kControl)
        socket_.set(zmq::sockopt::sndtimeo, config_.control_send_timeout_ms);
    if (config_.bind) {
        socket_.bind(config_.endpoint);
    } else {
        apply_client_security(socket_, config_.security);
        socket_.connect(config_.endpoint);
    }
}

std::string Publisher::endpoint() const {
    return config_.bind ? socket_.get(zmq::sockopt::last_endpoint) : config_.endpoint;
}

Publisher::Stream& Publisher::stream(std::string_view topic) {
    auto it = streams_.find(topic);
    if (it == streams_.end())
        it = streams_.emplace(std::string(topic), Stream{0, config_.first_segment_words}).first;
    return it->second;
}

template <typename MakeFrame>
PublishResult Publisher::send_stamped(std::string_view topic, capnp::MessageBuilder& message,
                                      std::string_view correlation_id, MakeFrame&& make_frame) {
    if (++sends_since_drain_ >= 256) drain_subscriptions();
    Stream& s = stream(topic);
    uint64_t sequence = s.sequence + 1;
    auto envelope = message.getRoot<schema::Envelope>();
    stamp_envelope(envelope, config_.sender, config_.run_id, sequence, correlation_id);
    zmq::message_t body = make_frame(s);

    bool metrics = config_.reliability == Reliability::kMetrics;
    zmq::send_flags flags = metrics ? zmq::send_flags::dontwait : zmq::send_flags::none;
    zmq::send_result_t r = socket_.send(zmq::const_buffer(topic.data(), topic.size()),
                                        flags | zmq::send_flags::sndmore);
    if (r) r = socket_.send(std::move(body), flags);
    if (metrics) s.sequence = sequence;  // a dropped metric leaves a visible gap
    if (!r) {
        ++stats_.dropped;
        return PublishResult::kDropped;
    }
    s.sequence = sequence;
    ++stats_.sent;
    return PublishResult::kSent;
}

PublishResult Publisher::send(std::string_view topic, capnp::MessageBuilder& message,
                              std::string_view correlation_id) {
    return send_stamped(topic, message, correlation_id, [&](Stream&) { return encode(message); });
}

PublishResult Publisher::send(std::string_view topic, FrameBuilder& message,
                              std::string_view correlation_id) {
    return send_stamped(topic, message, correlation_id, [&](Stream& s) {
        // The next message of this topic gets a first segment that fits this one with some room,
        // so it too leaves without a copy (its size drifts little: same layer, same seeds).
        const size_t words = message.size_words();
        s.segment_words = words + words / 8 + 16;
        return message.release_frame();
    });
}

void Publisher::drain_subscriptions() {
    sends_since_drain_ = 0;
    zmq::message_t msg;
    while (socket_.recv(msg, zmq::recv_flags::dontwait)) {
        if (msg.size() == 0) continue;
        const char* data = static_cast<const char*>(msg.data());
        std::string prefix(data + 1, msg.size() - 1);
        if (data[0] == 1)
            subscriptions_.insert(std::move(prefix));
        else if (data[0] == 0)
            subscriptions_.erase(prefix);
    }
}

bool Publisher::wait_for_subscriber(std::string_view topic, int timeout_ms) {
    auto matches = [&] {
        for (const auto& p : subscriptions_)
            if (topic.substr(0, p.size()) == p) return true;
        return false;
    };
    int64_t deadline = monotonic_ns() + int64_t{timeout_ms} * 1000000;
    for (;;) {
        drain_subscriptions();
        if (matches()) return true;
        int64_t left_ms = (deadline - monotonic_ns()) / 1000000;
        if (left_ms <= 0) return false;
        if (!poll_in(socket_, static_cast<long>(left_ms))) return false;
    }
}

TelemetryPublisher::TelemetryPublisher(zmq::context_t& context, PublisherConfig config)
    : Publisher(context, [&] {
          config.reliability = Reliability::kMetrics;
          return std::move(config);
      }()) {}

// ---- SequenceTracker ----

SequenceTracker::Outcome SequenceTracker::observe(std::string_view sender, std::string_view topic,
                                                  uint64_t sequence) {
    // The key is built in a kept buffer: no allocation per message once a stream is known.
    key_.assign(sender);
    key_.push_back('\0');
    key_.append(topic);
    Outcome out;
    auto it = last_.find(key_);
    if (it == last_.end()) {
        if (last_.size() >= max_streams_)
            ++untracked_;
        else
            last_.emplace(key_, sequence);
        out.first = true;
        return out;
    }
    uint64_t& last = it->second;
    if (sequence > last) {
        out.missing = sequence - last - 1;
        gaps_ += out.missing;
        last = sequence;
    } else {
        out.reordered = true;
        ++reordered_;
        if (sequence == 1) last = sequence;  // the sender restarted: new baseline
    }
    return out;
}

// ---- Subscriber ----

Subscriber::Subscriber(zmq::context_t& context, SubscriberConfig config)
    : config_(std::move(config)),
      socket_(context, zmq::socket_type::sub),
      tracker_(config_.max_streams) {
    ESPER_REQUIRE(!config_.endpoint.empty(), "subscriber needs an endpoint");
    socket_.set(zmq::sockopt::rcvhwm, config_.receive_hwm);
    socket_.set(zmq::sockopt::linger, 0);
    if (config_.prefixes.empty()) socket_.set(zmq::sockopt::subscribe, "");
    for (const auto& p : config_.prefixes) socket_.set(zmq::sockopt::subscribe, p);
    apply_client_security(socket_, config_.security);
    socket_.connect(config_.endpoint);
}

void Subscriber::subscribe(std::string_view prefix) {
    socket_.set(zmq::sockopt::subscribe, zmq::const_buffer(prefix.data(), prefix.size()));
}

std::optional<Message> Subscriber::try_receive() {
    for (;;) {
        zmq::message_t topic;
        if (!socket_.recv(topic, zmq::recv_flags::dontwait)) return std::nullopt;
        if (!topic.more()) {
            ++stats_.malformed;
            ESPER_LOG_WARN_RATE(bus_log(), 5, "dropped frame=single_part bytes=", topic.size());
            continue;
        }
        zmq::message_t body;
        (void)socket_.recv(body, zmq::recv_flags::none);  // parts of a message arrive together
        if (body.more()) {
            zmq::message_t extra;
            while (body.more() || extra.more()) {
                if (!socket_.recv(extra, zmq::recv_flags::none) || !extra.more()) break;
            }
            ++stats_.malformed;
            ESPER_LOG_WARN_RATE(bus_log(), 5,
                                "dropped frame=too_many_parts topic=", topic.to_string_view());
            continue;
        }
        DecodeResult d = decode(std::move(body), config_.limits);
        if (!d.ok()) {
            ++stats_.malformed;
            if (d.status == DecodeStatus::kWrongVersion) ++stats_.wrong_version;
            if (d.status == DecodeStatus::kOversized) ++stats_.oversized;
            ESPER_LOG_WARN_RATE(bus_log(), 5, "dropped frame=", decode_status_name(d.status),
                                " topic=", topic.to_string_view(), " detail=", d.detail);
            continue;
        }
        Message m{topic.to_string(), std::move(*d.value), 0};
        auto env = m.envelope();
        auto outcome =
            tracker_.observe(std::string_view(env.getSender().cStr(), env.getSender().size()),
                             m.topic, env.getSequence());
        m.missing_before = outcome.missing;
        ++stats_.received;
        return m;
    }
}

std::optional<Message> Subscriber::poll(int timeout_ms) {
    int64_t deadline = timeout_ms < 0 ? -1 : monotonic_ns() + int64_t{timeout_ms} * 1000000;
    for (;;) {
        if (auto m = try_receive()) return m;
        long wait_ms = -1;
        if (deadline >= 0) {
            wait_ms = static_cast<long>((deadline - monotonic_ns()) / 1000000);
            if (wait_ms <= 0) return std::nullopt;
        }
        if (!poll_in(socket_, wait_ms)) return std::nullopt;  // interrupted by a signal
    }
}

bool poll_in(zmq::socket_t& socket, long timeout_ms) {
    zmq::pollitem_t item{socket.handle(), 0, ZMQ_POLLIN, 0};
    try {
        zmq::poll(&item, 1, std::chrono::milliseconds(timeout_ms));
    } catch (const zmq::error_t& e) {
        if (e.num() == EINTR) return false;
        throw;
    }
    return true;
}

}  // namespace esper::bus
