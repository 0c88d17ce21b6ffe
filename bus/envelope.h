// Envelope encode/decode: every frame on the bus is [topic, Envelope]. `decode()` is the only
// place bytes from the wire become capnp readers: it caps the size, sets the traversal and nesting
// limits, copies frames that are not 8-byte aligned, walks the whole message once (so later
// accessors cannot throw on malformed pointers) and checks the version. Bad input is an expected
// outcome here: decode() returns a status and never throws.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>
#include <zmq.hpp>

#include "schemas/envelope.capnp.h"

namespace esper::bus {

inline constexpr uint16_t kEnvelopeVersion = schema::CURRENT_VERSION;

struct DecodeLimits {
    size_t max_frame_bytes = size_t{16} << 20;           // larger frames are refused unread
    uint64_t traversal_limit_words = uint64_t{4} << 20;  // 32 MiB of reads per message
    // ... and at most this many words read per word received (never under the floor): a list of
    // void or empty structs costs nothing to send, so without it a 424-byte frame could claim
    // millions of elements that every reader then walks (the tools' JSON printer spent minutes and
    // gigabytes on one: tests/fuzz/corpus/envelope/amplified-void-list). Reading such a list
    // throws kj::Exception, like a Text without its NUL: bus readers catch it and drop the frame.
    uint64_t traversal_words_per_frame_word = 16;
    uint64_t min_traversal_limit_words = uint64_t{16} << 10;
    int nesting_limit = 32;
};

enum class DecodeStatus { kOk, kEmpty, kOversized, kTruncated, kMalformed, kWrongVersion };
std::string_view decode_status_name(DecodeStatus status);

// An owned, validated Envelope. Movable; the reader stays valid while this object lives.
class Decoded {
public:
    struct Impl;  // internal
    explicit Decoded(std::unique_ptr<Impl> impl);
    Decoded(Decoded&&) noexcept;
    Decoded& operator=(Decoded&&) noexcept;
    ~Decoded();

    schema::Envelope::Reader envelope() const;
    size_t size_bytes() const;

private:
    std::unique_ptr<Impl> impl_;
};

struct DecodeResult {
    DecodeStatus status = DecodeStatus::kMalformed;
    std::string detail;            // why, for logs (empty when ok)
    std::optional<Decoded> value;  // set iff status == kOk
    bool ok() const { return status == DecodeStatus::kOk; }
};

// Takes ownership of the frame (no copy when it is aligned).
DecodeResult decode(zmq::message_t&& frame, const DecodeLimits& limits = {});
// Always copies `bytes`.
DecodeResult decode(std::span<const std::byte> bytes, const DecodeLimits& limits = {});

// Serialises a message into one frame (segment table + segments, the capnp stream format).
zmq::message_t encode(capnp::MessageBuilder& message);

// Blocks for frames that a publisher recycles: ZeroMQ hands a block back (from its I/O thread)
// once its frame is sent or dropped, and a later message is built in it, so a frame costs no
// malloc/free pair and reuses pages already mapped (esper-bench-bus --publisher-cost compares
// pooled, fresh and copied frames). Thread-safe.
// Reference-counted: the owner calls close(); the pool goes once every frame has come back.
class FramePool {
public:
    struct Closer {
        void operator()(FramePool* pool) const { pool->close(); }
    };
    using Handle = std::unique_ptr<FramePool, Closer>;
    // Keeps at most max_free_bytes of blocks (and 256 blocks) for reuse; more are freed.
    static Handle create(size_t max_free_bytes = size_t{8} << 20);
    FramePool(const FramePool&) = delete;
    FramePool& operator=(const FramePool&) = delete;
    void close();

    // A block with 2 header words (its capacity, then the frame's segment table) and at least
    // `words` more; the first `words` of those are zero.
    capnp::word* take(size_t words);
    // Keeps `block` for a later take() (or frees it when the pool is full or closed).
    void put(capnp::word* block);
    // ZeroMQ's free function for a frame whose data starts at a block's second word; `hint` is
    // the pool (which counts the frame as out until then: call frame_out() when handing it over).
    static void frame_done(void* data, void* hint);
    void frame_out();

private:
    explicit FramePool(size_t max_free_bytes) : max_free_bytes_(max_free_bytes) {}
    ~FramePool();
    void unref();
    std::mutex mutex_;
    std::vector<capnp::word*> free_;
    size_t max_free_bytes_;
    size_t free_bytes_ = 0;
    bool closed_ = false;
    std::atomic<size_t> refs_{1};  // the owner + frames out
};

// A message builder whose first segment sits in a block with spare words in front (FramePool's
// layout), so that a message that fits in it becomes a frame without a copy: release_frame()
// writes the segment table into the word before the segment and hands the block to ZeroMQ
// (zmq_msg_init_data), which gives it back to the pool (or frees it, without a pool) once the
// frame is sent or dropped. A message that outgrew the first segment is encode()d (one copy), as
// with any builder. Size the first segment from what such messages need (the Publisher remembers
// it per topic); later segments grow like capnp's MallocMessageBuilder.
class FrameBuilder : public capnp::MessageBuilder {
public:
    explicit FrameBuilder(size_t first_segment_words = 1024, FramePool* pool = nullptr);
    FrameBuilder(const FrameBuilder&) = delete;
    FrameBuilder& operator=(const FrameBuilder&) = delete;
    ~FrameBuilder() noexcept(false) override;

    // The whole message as one frame; the builder is spent afterwards (no further use).
    zmq::message_t release_frame();
    // Words of the message so far (all segments).
    size_t size_words();

protected:
    kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimum_size) override;

private:
    size_t first_words_;
    FramePool* pool_;
    capnp::word* block_ = nullptr;  // FramePool layout: capacity, table, first_words_ words
    std::vector<void*> more_;       // later segments
    size_t allocated_words_ = 0;
    bool released_ = false;
};

// The capnp type id of the struct carried by a payload member (0 for Void members), and the
// member's name ("seedTelemetry"). Both come from schema reflection, so new members need no code.
uint64_t payload_type_id(schema::Envelope::Payload::Which which);
std::string_view payload_type_name(schema::Envelope::Payload::Which which);

// Fills the header fields an agent sets on every envelope (version, sender, run, time, type id).
// Call after the payload is filled.
void stamp_envelope(schema::Envelope::Builder envelope, std::string_view sender,
                    std::string_view run_id, uint64_t sequence,
                    std::string_view correlation_id = {});

// Copies a string_view into a capnp Text field: `set_text(s, [&](unsigned n) { return
// b.initName(n); })`.
template <typename InitFn>
void set_text(std::string_view s, InitFn&& init) {
    auto text = init(static_cast<unsigned>(s.size()));
    if (!s.empty()) std::memcpy(text.begin(), s.data(), s.size());
}

// A text that came from the wire, fit for one log line: returned as is when it is short and
// plain printable ASCII without spaces, otherwise quoted with escapes ({fmt}'s debug format),
// cut to `max_bytes` of input with the full length noted. Agent names, topics and keys are
// chosen by whoever sends them; a log line never carries them raw.
std::string printable(std::string_view text, size_t max_bytes = 64);

// One monotonic counter an agent exposes in its status reply and heartbeat (schema::Counter):
// a Prometheus-style name, an optional `reason` label value, and the count.
struct Count {
    std::string name;
    std::string reason;
    uint64_t value = 0;
    bool operator==(const Count&) const = default;
};
// Fills a counter list initialised with counts.size() elements.
void fill_counters(capnp::List<schema::Counter>::Builder list, const std::vector<Count>& counts);

}  // namespace esper::bus
