// Publish/subscribe with the envelope. A Publisher stamps every message with sender, run, a
// sequence number per (sender, topic) starting at 1, wall time and the payload's type id, and
// sends [topic, Envelope] to the broker's XSUB endpoint. A Subscriber connects to the XPUB
// endpoint, decodes with bus::decode() and counts gaps, reorders and malformed frames per
// (sender, topic). Neither is thread-safe: one event-loop thread owns each (STYLE §2.4).
//
//   bus::Publisher pub(ctx, {.endpoint = "tcp://127.0.0.1:5555", .sender = "kasmina/0"});
//   pub.publish("telemetry.run.r1", [&](schema::Envelope::Payload::Builder p) {
//       p.initRunStatus().setLoss(0.5f); });
//   bus::Subscriber sub(ctx, {.endpoint = "tcp://127.0.0.1:5556", .prefixes = {"telemetry."}});
//   if (auto m = sub.poll(100)) use(m->topic, m->envelope());
#pragma once

#include <capnp/message.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>
#include <zmq.hpp>

#include "bus/envelope.h"
#include "bus/security.h"

namespace esper::bus {

// Metrics: best effort, never blocks, drops counted (sequence still advances, so subscribers
// see the gap). Control: waits up to control_send_timeout_ms for room, never drops silently.
enum class Reliability { kMetrics, kControl };

enum class PublishResult { kSent, kDropped };

struct PublisherConfig {
    std::string endpoint{};  // broker pub endpoint, e.g. tcp://127.0.0.1:5555
    std::string sender{};    // agent name
    std::string run_id{};
    Reliability reliability = Reliability::kMetrics;
    int send_hwm = 10000;  // messages queued before metrics are dropped
    int control_send_timeout_ms = 2000;
    bool bind = false;  // bind instead of connect (tests without a broker)
    // First segment of a topic's first message; later ones are sized from the topic's last
    // message, so each fits one segment and goes out without a copy (bus::FrameBuilder).
    size_t first_segment_words = 1024;
    ClientSecurity security{};  // CURVE keys (bus/security.h); empty = none
};

struct PublisherStats {
    uint64_t sent = 0;
    uint64_t dropped = 0;
};

class Publisher {
public:
    Publisher(zmq::context_t& context, PublisherConfig config);
    Publisher(const Publisher&) = delete;
    Publisher& operator=(const Publisher&) = delete;

    // Builds the payload with `fill(schema::Envelope::Payload::Builder)` and sends it without
    // copying the message (bus::FrameBuilder). An exception from `fill` propagates before
    // anything is sent or a sequence is used.
    template <typename Fill>
    PublishResult publish(std::string_view topic, Fill&& fill,
                          std::string_view correlation_id = {}) {
        FrameBuilder message(stream(topic).segment_words, frames_.get());
        auto envelope = message.initRoot<schema::Envelope>();
        fill(envelope.getPayload());
        return send(topic, message, correlation_id);
    }
    // Sends an already-built Envelope message; stamps its header fields. The message is copied
    // into the frame (the caller keeps it).
    PublishResult send(std::string_view topic, capnp::MessageBuilder& message,
                       std::string_view correlation_id = {});
    // The same, without the copy: `message` is spent (bus::FrameBuilder::release_frame).
    PublishResult send(std::string_view topic, FrameBuilder& message,
                       std::string_view correlation_id = {});

    // Waits until the broker has forwarded a subscription that matches `topic` (so a one-shot
    // publisher does not publish into the void). False on timeout.
    bool wait_for_subscriber(std::string_view topic, int timeout_ms);

    const PublisherStats& stats() const { return stats_; }
    const PublisherConfig& config() const { return config_; }
    std::string endpoint() const;  // the bound/connected endpoint (resolved when bound)
    zmq::socket_t& socket() { return socket_; }

private:
    struct Stream {
        uint64_t sequence = 0;     // of the last message sent (or dropped, for metrics)
        size_t segment_words = 0;  // first segment for the next message
    };
    Stream& stream(std::string_view topic);
    // Stamps the header with the next sequence, sends [topic, make_frame()], counts the outcome.
    template <typename MakeFrame>
    PublishResult send_stamped(std::string_view topic, capnp::MessageBuilder& message,
                               std::string_view correlation_id, MakeFrame&& make_frame);
    void drain_subscriptions();
    struct StringHash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
    };
    PublisherConfig config_;
    // Blocks of sent frames, reused. Declared before the socket, so it is closed after it;
    // frames still queued in ZeroMQ keep the pool until they are done.
    FramePool::Handle frames_;
    zmq::socket_t socket_;
    std::unordered_map<std::string, Stream, StringHash, std::equal_to<>> streams_;
    std::unordered_set<std::string> subscriptions_;
    PublisherStats stats_;
    uint64_t sends_since_drain_ = 0;
};

// The never-blocking publisher for telemetry: a Publisher fixed to Reliability::kMetrics.
class TelemetryPublisher : public Publisher {
public:
    TelemetryPublisher(zmq::context_t& context, PublisherConfig config);
};

// Waits up to timeout_ms (-1 = forever) for `socket` to become readable. Returns false when a
// signal interrupted the wait (EINTR), true otherwise (readable or timed out).
bool poll_in(zmq::socket_t& socket, long timeout_ms);

// ---- subscriber ----

// Sequence accounting per (sender, topic). The first message of a stream sets the baseline (a
// subscriber may join late); afterwards seq > last+1 counts the missing ones as gaps and
// seq <= last counts as a reorder/duplicate (or a restarted sender). At most max_streams streams
// are tracked (sender names and topics come from the wire): later ones are counted as untracked.
class SequenceTracker {
public:
    explicit SequenceTracker(size_t max_streams = 16384) : max_streams_(max_streams) {}
    struct Outcome {
        uint64_t missing = 0;  // messages lost right before this one
        bool reordered = false;
        bool first = false;
    };
    Outcome observe(std::string_view sender, std::string_view topic, uint64_t sequence);
    uint64_t gaps() const { return gaps_; }
    uint64_t reordered() const { return reordered_; }
    uint64_t untracked() const { return untracked_; }
    size_t streams() const { return last_.size(); }

private:
    size_t max_streams_;
    std::string key_;  // sender NUL topic of the message being observed
    uint64_t untracked_ = 0;
    std::unordered_map<std::string, uint64_t> last_;
    uint64_t gaps_ = 0;
    uint64_t reordered_ = 0;
};

struct SubscriberConfig {
    std::string endpoint{};               // broker sub endpoint, e.g. tcp://127.0.0.1:5556
    std::vector<std::string> prefixes{};  // empty = everything
    int receive_hwm = 100000;
    DecodeLimits limits{};
    ClientSecurity security{};   // CURVE keys (bus/security.h); empty = none
    size_t max_streams = 16384;  // (sender, topic) pairs whose sequences are tracked
};

struct SubscriberStats {
    uint64_t received = 0;   // decoded and delivered
    uint64_t malformed = 0;  // dropped: bad framing, truncated, garbage, oversized, version
    uint64_t wrong_version = 0;
    uint64_t oversized = 0;
};

struct Message {
    std::string topic{};
    Decoded decoded;
    uint64_t missing_before = 0;  // sequence gap detected right before this message
    schema::Envelope::Reader envelope() const { return decoded.envelope(); }
};

class Subscriber {
public:
    Subscriber(zmq::context_t& context, SubscriberConfig config);
    Subscriber(const Subscriber&) = delete;
    Subscriber& operator=(const Subscriber&) = delete;

    // The next valid message, waiting up to timeout_ms (0 = don't wait, -1 = forever).
    // Malformed frames are dropped, counted and logged (rate-limited) on the way.
    std::optional<Message> poll(int timeout_ms);
    // Non-blocking: the next valid message already queued, if any.
    std::optional<Message> try_receive();

    void subscribe(std::string_view prefix);
    const SubscriberStats& stats() const { return stats_; }
    const SequenceTracker& sequences() const { return tracker_; }
    zmq::socket_t& socket() { return socket_; }

private:
    SubscriberConfig config_;
    zmq::socket_t socket_;
    SequenceTracker tracker_;
    SubscriberStats stats_;
};

}  // namespace esper::bus
