// Envelope encode/decode; see envelope.h. Reflection tables are built once from the schema.
#include "bus/envelope.h"

#include <capnp/schema.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <kj/io.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <cstring>
#include <new>
#include <optional>
#include <vector>

#include "core/check.h"
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
    std::optional<capnp::FlatArrayMessageReader> reader;  // in place: one allocation per decode
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
        impl->reader.emplace(impl->words, options);
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

FramePool::Handle FramePool::create(size_t max_free_bytes) {
    return Handle(new FramePool(max_free_bytes));
}

FramePool::~FramePool() {
    for (capnp::word* b : free_) std::free(b);
}

void FramePool::unref() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
}

void FramePool::close() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        closed_ = true;
        for (capnp::word* b : free_) std::free(b);
        free_.clear();
        free_bytes_ = 0;
    }
    unref();
}

namespace {

size_t block_capacity(const capnp::word* block) {
    uint64_t words = 0;
    std::memcpy(&words, static_cast<const void*>(block), sizeof words);
    return static_cast<size_t>(words);
}

capnp::word* new_block(size_t words) {
    // calloc: capnp needs zeroed segments (fresh pages come zeroed from the kernel).
    auto* block = static_cast<capnp::word*>(std::calloc(words + 2, sizeof(capnp::word)));
    if (block == nullptr) throw std::bad_alloc();
    const uint64_t capacity = words;
    std::memcpy(static_cast<void*>(block), &capacity, sizeof capacity);
    return block;
}

}  // namespace

capnp::word* FramePool::take(size_t words) {
    capnp::word* block = nullptr;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        for (size_t i = 0; i < free_.size(); ++i) {
            if (block_capacity(free_[i]) >= words) {
                block = free_[i];
                free_[i] = free_.back();
                free_.pop_back();
                free_bytes_ -= block_capacity(block) * sizeof(capnp::word);
                break;
            }
        }
    }
    if (block == nullptr) return new_block(words);
    std::memset(static_cast<void*>(block + 1), 0, (words + 1) * sizeof(capnp::word));
    return block;
}

void FramePool::put(capnp::word* block) {
    const size_t bytes = block_capacity(block) * sizeof(capnp::word);
    {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!closed_ && free_bytes_ + bytes <= max_free_bytes_ && free_.size() < 256) {
            free_.push_back(block);
            free_bytes_ += bytes;
            return;
        }
    }
    std::free(block);
}

void FramePool::frame_out() { refs_.fetch_add(1, std::memory_order_relaxed); }

void FramePool::frame_done(void* data, void* hint) {
    auto* block = static_cast<capnp::word*>(data) - 1;
    if (hint == nullptr) {
        std::free(block);
        return;
    }
    auto* pool = static_cast<FramePool*>(hint);
    pool->put(block);
    pool->unref();
}

FrameBuilder::FrameBuilder(size_t first_segment_words, FramePool* pool)
    : first_words_(std::clamp<size_t>(first_segment_words, 8, size_t{1} << 26)), pool_(pool) {}

FrameBuilder::~FrameBuilder() noexcept(false) {
    if (!released_ && block_ != nullptr) {
        if (pool_ != nullptr)
            pool_->put(block_);
        else
            std::free(block_);
    }
    for (void* p : more_) std::free(p);
}

kj::ArrayPtr<capnp::word> FrameBuilder::allocateSegment(unsigned minimum_size) {
    if (block_ == nullptr && !released_ && minimum_size <= first_words_) {
        block_ = pool_ != nullptr ? pool_->take(first_words_) : new_block(first_words_);
        allocated_words_ += first_words_;
        return kj::arrayPtr(block_ + 2, first_words_);
    }
    // Grow like MallocMessageBuilder's GROW_HEURISTICALLY: each segment as large as all before.
    const size_t words = std::max<size_t>(minimum_size, std::max<size_t>(allocated_words_, 1024));
    void* p = std::calloc(words, sizeof(capnp::word));
    if (p == nullptr) throw std::bad_alloc();
    more_.push_back(p);
    allocated_words_ += words;
    return kj::arrayPtr(static_cast<capnp::word*>(p), words);
}

size_t FrameBuilder::size_words() {
    size_t words = 0;
    for (auto segment : getSegmentsForOutput()) words += segment.size();
    return words;
}

zmq::message_t FrameBuilder::release_frame() {
    ESPER_REQUIRE(!released_, "FrameBuilder::release_frame called twice");
    auto segments = getSegmentsForOutput();
    if (segments.size() != 1 || segments[0].begin() != block_ + 2) return encode(*this);
    // The stream format's table for one segment: (segment count - 1) = 0, then its size in words.
    const auto table = std::array<uint32_t, 2>{0, static_cast<uint32_t>(segments[0].size())};
    std::memcpy(static_cast<void*>(block_ + 1), table.data(), sizeof(capnp::word));
    released_ = true;
    const size_t bytes = (segments[0].size() + 1) * sizeof(capnp::word);
    if (pool_ != nullptr) pool_->frame_out();
    return zmq::message_t(block_ + 1, bytes, &FramePool::frame_done, pool_);
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
