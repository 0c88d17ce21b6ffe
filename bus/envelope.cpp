// Envelope encode/decode; see envelope.h. Reflection tables are built once from the schema.
#include "bus/envelope.h"

#include <capnp/schema.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/clock.h"

namespace esper::bus {

std::string_view decode_status_name(DecodeStatus status) {
    switch (status) {
        case DecodeStatus::kOk:
            return "ok";
        case DecodeStatus::kEmpty:
            return "empty";
        case DecodeStatus::kOversized:
            return "oversized";
        case DecodeStatus::kTruncated:
            return "truncated";
        case DecodeStatus::kMalformed:
            return "malformed";
        case DecodeStatus::kWrongVersion:
            return "wrong_version";
    }
    return "unknown";
}

struct Decoded::Impl {
    zmq::message_t frame;         // used when the frame was aligned
    kj::Array<capnp::word> copy;  // used otherwise
    kj::ArrayPtr<const capnp::word> words;
    std::unique_ptr<capnp::FlatArrayMessageReader> reader;
    schema::Envelope::Reader root;
};

Decoded::Decoded(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Decoded::Decoded(Decoded&&) noexcept = default;
Decoded& Decoded::operator=(Decoded&&) noexcept = default;
Decoded::~Decoded() = default;
schema::Envelope::Reader Decoded::envelope() const { return impl_->root; }
size_t Decoded::size_bytes() const { return impl_->words.size() * sizeof(capnp::word); }

namespace {

DecodeResult fail(DecodeStatus status, std::string detail) {
    DecodeResult r;
    r.status = status;
    r.detail = std::move(detail);
    return r;
}

// Checks the segment table against the frame size before capnp sees it, so that a truncated
// frame is reported as such rather than as a generic parse error.
DecodeStatus check_segment_table(kj::ArrayPtr<const capnp::word> words, std::string& detail) {
    const auto* table = reinterpret_cast<const uint32_t*>(words.begin());
    size_t table_words_avail = words.size() * 2;  // uint32 entries available
    uint64_t segment_count = uint64_t{table[0]} + 1;
    if (segment_count > 512) {
        detail = "segment count " + std::to_string(segment_count);
        return DecodeStatus::kMalformed;
    }
    uint64_t table_entries = 1 + segment_count;
    uint64_t table_words = (table_entries + 1) / 2;
    if (table_entries > table_words_avail) {
        detail = "segment table cut short";
        return DecodeStatus::kTruncated;
    }
    uint64_t total = table_words;
    for (uint64_t i = 0; i < segment_count; ++i) total += table[1 + i];
    if (total > words.size()) {
        detail = "frame has " + std::to_string(words.size()) + " words, table says " +
                 std::to_string(total);
        return DecodeStatus::kTruncated;
    }
    if (total < words.size()) {
        detail = "trailing bytes after the message";
        return DecodeStatus::kMalformed;
    }
    return DecodeStatus::kOk;
}

DecodeResult finish(std::unique_ptr<Decoded::Impl> impl, const DecodeLimits& limits) {
    std::string detail;
    if (DecodeStatus s = check_segment_table(impl->words, detail); s != DecodeStatus::kOk)
        return fail(s, std::move(detail));
    capnp::ReaderOptions options;
    options.traversalLimitInWords =
        std::min(limits.traversal_limit_words,
                 std::max(limits.min_traversal_limit_words,
                          limits.traversal_words_per_frame_word * uint64_t(impl->words.size())));
    options.nestingLimit = limits.nesting_limit;
    try {
        impl->reader = std::make_unique<capnp::FlatArrayMessageReader>(impl->words, options);
        impl->root = impl->reader->getRoot<schema::Envelope>();
        // One full walk: any bad pointer or limit violation surfaces here, not in a handler.
        (void)impl->root.totalSize();
        // Text fields are NUL-checked lazily; touch the header ones now.
        (void)impl->root.getSender();
        (void)impl->root.getRunId();
        (void)impl->root.getCorrelationId();
    } catch (const kj::Exception& e) {
        return fail(DecodeStatus::kMalformed, e.getDescription().cStr());
    }
    uint16_t version = impl->root.getVersion();
    if (version != kEnvelopeVersion) {
        return fail(DecodeStatus::kWrongVersion, "version " + std::to_string(version) +
                                                     ", expected " +
                                                     std::to_string(kEnvelopeVersion));
    }
    DecodeResult r;
    r.status = DecodeStatus::kOk;
    r.value.emplace(std::move(impl));
    return r;
}

DecodeStatus check_size(size_t size, const DecodeLimits& limits, std::string& detail) {
    if (size == 0) return DecodeStatus::kEmpty;
    if (size > limits.max_frame_bytes) {
        detail = std::to_string(size) + " bytes > limit " + std::to_string(limits.max_frame_bytes);
        return DecodeStatus::kOversized;
    }
    if (size % sizeof(capnp::word) != 0) {
        detail = std::to_string(size) + " bytes is not a whole number of words";
        return DecodeStatus::kTruncated;
    }
    return DecodeStatus::kOk;
}

}  // namespace

DecodeResult decode(zmq::message_t&& frame, const DecodeLimits& limits) {
    std::string detail;
    if (DecodeStatus s = check_size(frame.size(), limits, detail); s != DecodeStatus::kOk)
        return fail(s, std::move(detail));
    auto impl = std::make_unique<Decoded::Impl>();
    size_t n_words = frame.size() / sizeof(capnp::word);
    if (reinterpret_cast<uintptr_t>(frame.data()) % alignof(capnp::word) == 0) {
        impl->frame = std::move(frame);
        impl->words = kj::arrayPtr(static_cast<const capnp::word*>(impl->frame.data()), n_words);
    } else {
        // capnp refuses unaligned segments; ZeroMQ only guarantees alignment for large frames.
        impl->copy = kj::heapArray<capnp::word>(n_words);
        std::memcpy(impl->copy.begin(), frame.data(), frame.size());
        impl->words = kj::ArrayPtr<const capnp::word>(impl->copy.begin(), impl->copy.size());
    }
    return finish(std::move(impl), limits);
}

DecodeResult decode(std::span<const std::byte> bytes, const DecodeLimits& limits) {
    std::string detail;
    if (DecodeStatus s = check_size(bytes.size(), limits, detail); s != DecodeStatus::kOk)
        return fail(s, std::move(detail));
    auto impl = std::make_unique<Decoded::Impl>();
    size_t n_words = bytes.size() / sizeof(capnp::word);
    impl->copy = kj::heapArray<capnp::word>(n_words);
    std::memcpy(impl->copy.begin(), bytes.data(), bytes.size());
    impl->words = kj::ArrayPtr<const capnp::word>(impl->copy.begin(), impl->copy.size());
    return finish(std::move(impl), limits);
}

zmq::message_t encode(capnp::MessageBuilder& message) {
    auto segments = message.getSegmentsForOutput();
    size_t words = capnp::computeSerializedSizeInWords(segments);
    zmq::message_t frame(words * sizeof(capnp::word));
    kj::ArrayOutputStream out(kj::arrayPtr(static_cast<kj::byte*>(frame.data()), frame.size()));
    capnp::writeMessage(out, segments);
    return frame;
}

namespace {

struct PayloadTable {
    std::vector<uint64_t> type_ids;
    std::vector<std::string> names;
    PayloadTable() {
        auto payload = capnp::Schema::from<schema::Envelope::Payload>();
        auto fields = payload.getUnionFields();
        for (auto field : fields) {
            uint16_t d = field.getProto().getDiscriminantValue();
            if (d >= type_ids.size()) {
                type_ids.resize(d + 1, 0);
                names.resize(d + 1);
            }
            auto type = field.getType();
            type_ids[d] = type.isStruct() ? type.asStruct().getProto().getId() : 0;
            names[d] = field.getProto().getName().cStr();
        }
    }
};

const PayloadTable& payload_table() {
    static const PayloadTable table;
    return table;
}

}  // namespace

uint64_t payload_type_id(schema::Envelope::Payload::Which which) {
    const auto& t = payload_table();
    auto d = static_cast<size_t>(which);
    return d < t.type_ids.size() ? t.type_ids[d] : 0;
}

std::string_view payload_type_name(schema::Envelope::Payload::Which which) {
    const auto& t = payload_table();
    auto d = static_cast<size_t>(which);
    return d < t.names.size() ? std::string_view(t.names[d]) : std::string_view("unknown");
}

void stamp_envelope(schema::Envelope::Builder envelope, std::string_view sender,
                    std::string_view run_id, uint64_t sequence, std::string_view correlation_id) {
    envelope.setVersion(kEnvelopeVersion);
    envelope.setTypeId(payload_type_id(envelope.getPayload().which()));
    set_text(sender, [&](unsigned n) { return envelope.initSender(n); });
    set_text(run_id, [&](unsigned n) { return envelope.initRunId(n); });
    envelope.setSequence(sequence);
    envelope.setSentAtNs(wall_time_ns());
    if (!correlation_id.empty())
        set_text(correlation_id, [&](unsigned n) { return envelope.initCorrelationId(n); });
}

std::string printable(std::string_view text, size_t max_bytes) {
    bool plain = text.size() <= max_bytes && !text.empty();
    for (char c : text) plain = plain && c > ' ' && c < 0x7f;
    if (plain) return std::string(text);
    const std::string_view head = text.substr(0, max_bytes);
    if (head.size() == text.size()) return fmt::format("{:?}", head);
    return fmt::format("{:?}...({} bytes)", head, text.size());
}

void fill_counters(capnp::List<schema::Counter>::Builder list, const std::vector<Count>& counts) {
    for (unsigned i = 0; i < list.size() && i < counts.size(); ++i) {
        auto c = list[i];
        set_text(counts[i].name, [&](unsigned n) { return c.initName(n); });
        if (!counts[i].reason.empty())
            set_text(counts[i].reason, [&](unsigned n) { return c.initReason(n); });
        c.setValue(counts[i].value);
    }
}

}  // namespace esper::bus
