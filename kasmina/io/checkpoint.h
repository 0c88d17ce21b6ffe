// Checkpoint directories: one raw file per named entry plus `manifest.txt`, a versioned text
// manifest listing every entry's file, size and SHA-256, closed by the SHA-256 of the manifest
// itself (so a flipped byte anywhere is an integrity error). Written to a temp directory, every
// file fsync'ed, then renamed into place: a crash leaves the old or the new checkpoint, never a
// mix. Reading verifies everything before returning anything; nothing read is ever executed.
// (DESIGN §4.7 names a Cap'n Proto manifest; kasmina may not depend on schemas/, see
// docs/kasmina.md "Checkpoints".)
#pragma once

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.h"

namespace esper::kasmina {

inline constexpr int kCheckpointFormatVersion = 1;
inline constexpr const char* kCheckpointManifest = "manifest.txt";

// The content of a checkpoint: named byte blobs (names: [A-Za-z0-9_.-], at most 100 chars).
class CheckpointData {
public:
    int64_t step = 0;
    std::string run_id;

    void put(const std::string& name, std::vector<uint8_t> bytes);
    void put_floats(const std::string& name, std::span<const float> values);
    void put_text(const std::string& name, const std::string& text);
    bool has(const std::string& name) const { return entries_.count(name) != 0; }
    // Accessors throw Error(kIntegrity) when the entry is missing or has the wrong size.
    const std::vector<uint8_t>& bytes(const std::string& name) const;
    void floats_into(const std::string& name, std::span<float> out) const;
    std::string text(const std::string& name) const;
    const std::map<std::string, std::vector<uint8_t>>& entries() const { return entries_; }

private:
    std::map<std::string, std::vector<uint8_t>> entries_;
};

struct CheckpointWriteOptions {
    // Test-only: throw Error(kFailed) after writing this many entry files, leaving the temp
    // directory behind as a crashed writer would. -1 = off.
    int crash_after_files = -1;
};

// Writes `data` as directory `dir` (replacing an existing checkpoint there atomically).
void write_checkpoint(const std::filesystem::path& dir, const CheckpointData& data,
                      const CheckpointWriteOptions& options = {});
// Reads and verifies `dir`; throws Error(kIntegrity) naming the file on any mismatch and
// Error(kInvalidInput) when `dir` is not a checkpoint.
CheckpointData read_checkpoint(const std::filesystem::path& dir);

std::string sha256_hex(const void* data, size_t size);

// ---- little binary serialisation helpers for entries (native little-endian PODs) ----

class ByteWriter {
public:
    template <typename T>
    void pod(const T& v) {
        static_assert(std::is_trivially_copyable_v<T>);
        const auto* p = reinterpret_cast<const uint8_t*>(&v);
        buf_.insert(buf_.end(), p, p + sizeof(T));
    }
    void str(const std::string& s);
    template <typename T>
    void array(std::span<const T> v) {
        static_assert(std::is_trivially_copyable_v<T>);
        pod<uint64_t>(v.size());
        const auto* p = reinterpret_cast<const uint8_t*>(v.data());
        buf_.insert(buf_.end(), p, p + v.size_bytes());
    }
    std::vector<uint8_t> take() { return std::move(buf_); }

private:
    std::vector<uint8_t> buf_;
};

// Reads what ByteWriter wrote; any overrun or size mismatch throws Error(kIntegrity) naming
// `what` (the entry), so a malformed checkpoint can never index out of bounds.
class ByteReader {
public:
    ByteReader(const std::vector<uint8_t>& buf, std::string what) : buf_(buf), what_(std::move(what)) {}
    template <typename T>
    T pod() {
        static_assert(std::is_trivially_copyable_v<T>);
        need(sizeof(T));
        T v;
        std::memcpy(&v, buf_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string str();
    // Reads an array written by ByteWriter::array into `out`, whose size must match.
    template <typename T>
    void array_into(std::span<T> out) {
        const uint64_t n = pod<uint64_t>();
        if (n != out.size()) fail("array of ", n, " elements, expected ", out.size());
        need(out.size_bytes());
        std::memcpy(out.data(), buf_.data() + pos_, out.size_bytes());
        pos_ += out.size_bytes();
    }
    template <typename T>
    std::vector<T> array() {
        const uint64_t n = pod<uint64_t>();
        if (n > (buf_.size() - pos_) / sizeof(T)) fail("array length ", n, " exceeds the entry");
        std::vector<T> v(n);
        std::memcpy(v.data(), buf_.data() + pos_, n * sizeof(T));
        pos_ += n * sizeof(T);
        return v;
    }
    void expect_end();
    template <typename... A>
    [[noreturn]] void fail(const A&... a) const {
        ESPER_THROW(kIntegrity, "checkpoint entry ", what_, ": ", a...);
    }

private:
    void need(size_t n) const {
        if (buf_.size() - pos_ < n) fail("truncated at byte ", pos_);
    }
    const std::vector<uint8_t>& buf_;
    std::string what_;
    size_t pos_ = 0;
};

}  // namespace esper::kasmina
