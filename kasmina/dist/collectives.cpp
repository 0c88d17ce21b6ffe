// KvStore implementations, SingleRank and GradientBuckets (see collectives.h).
// FileKvStore relies on rename(2) being atomic within one directory: a reader sees either no
// file or the whole value, never a half-written one.
#include "kasmina/dist/collectives.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <system_error>
#include <thread>

#include "core/check.h"
#include "core/error.h"

namespace esper::kasmina {

Bytes wait_get(KvStore& store, const std::string& key, std::chrono::milliseconds timeout) {
    const std::string keys[] = {key};
    if (!store.wait(keys, timeout)) {
        ESPER_THROW(kDisconnected, "rendezvous: key '", key, "' not set within ", timeout.count(),
                    " ms (a peer did not join)");
    }
    auto value = store.get(key);
    if (!value) ESPER_THROW(kDisconnected, "rendezvous: key '", key, "' vanished after wait");
    return std::move(*value);
}

// ---- InMemoryKvStore ----

void InMemoryKvStore::set(const std::string& key, std::span<const std::uint8_t> value) {
    {
        std::lock_guard lock(mutex_);
        values_[key] = Bytes(value.begin(), value.end());
    }
    changed_.notify_all();
}

std::optional<Bytes> InMemoryKvStore::get(const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = values_.find(key);
    if (it == values_.end()) return std::nullopt;
    return it->second;
}

bool InMemoryKvStore::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, timeout, [&] {
        return std::all_of(keys.begin(), keys.end(),
                           [&](const std::string& k) { return values_.count(k) != 0; });
    });
}

// ---- FileKvStore ----

FileKvStore::FileKvStore(std::filesystem::path dir, std::chrono::milliseconds poll_interval)
    : dir_(std::move(dir)), poll_interval_(poll_interval) {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec || !std::filesystem::is_directory(dir_)) {
        ESPER_THROW(kFailed, "rendezvous directory ", dir_.string(), ": cannot create (",
                    ec.message(), ")");
    }
}

std::filesystem::path FileKvStore::path_for(const std::string& key) const {
    static constexpr char kHex[] = "0123456789ABCDEF";
    std::string name = "k_";
    for (unsigned char c : key) {
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.';
        if (plain) {
            name += static_cast<char>(c);
        } else {
            name += '%';
            name += kHex[c >> 4];
            name += kHex[c & 15];
        }
    }
    return dir_ / name;
}

void FileKvStore::set(const std::string& key, std::span<const std::uint8_t> value) {
    static std::atomic<std::uint64_t> counter{0};
    const auto target = path_for(key);
    // The temporary name is unique per process and call, and does not start with "k_".
    const auto tmp =
        dir_ / ("tmp." + std::to_string(::getpid()) + "." + std::to_string(counter.fetch_add(1)));
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out.write(reinterpret_cast<const char*>(value.data()),
                  static_cast<std::streamsize>(value.size()));
        out.flush();
        if (!out) ESPER_THROW(kFailed, "rendezvous: cannot write ", tmp.string());
    }
    std::error_code ec;
    std::filesystem::rename(tmp, target, ec);
    if (ec) {
        std::filesystem::remove(tmp, ec);
        ESPER_THROW(kFailed, "rendezvous: cannot rename into ", target.string());
    }
}

std::optional<Bytes> FileKvStore::get(const std::string& key) {
    std::ifstream in(path_for(key), std::ios::binary);
    if (!in) return std::nullopt;
    return Bytes(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

bool FileKvStore::wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        bool all = std::all_of(keys.begin(), keys.end(), [&](const std::string& k) {
            std::error_code ec;
            return std::filesystem::exists(path_for(k), ec);
        });
        if (all) return true;
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(poll_interval_);
    }
}

// ---- SingleRank ----

void SingleRank::check_alive() const {
    if (aborted_) ESPER_THROW(kDisconnected, "collectives: group was aborted");
}

void SingleRank::all_reduce_sum(float* /*data*/, std::size_t /*n*/) { check_alive(); }
void SingleRank::all_reduce_sum(double* /*data*/, std::size_t /*n*/) { check_alive(); }

void SingleRank::broadcast(void* /*data*/, std::size_t /*bytes*/, int root) {
    ESPER_REQUIRE(root == 0, "root=", root, " world=1");
    check_alive();
}

void SingleRank::barrier() { check_alive(); }

// ---- helpers ----

void broadcast_bytes(Collectives& comm, Bytes& data, int root) {
    std::uint64_t size = data.size();
    comm.broadcast(&size, sizeof(size), root);
    if (comm.rank() != root) data.assign(size, 0);
    comm.broadcast(data.data(), data.size(), root);
}

std::uint64_t digest64(std::span<const std::uint8_t> bytes, std::uint64_t seed) {
    std::uint64_t h = seed;
    for (std::uint8_t b : bytes) {
        h ^= b;
        h *= 0x100000001b3ull;
    }
    return h;
}

std::vector<int> digest_mismatches(Collectives& comm, std::uint64_t digest) {
    std::uint64_t reference = digest;
    comm.broadcast(&reference, sizeof(reference), 0);
    // One flag per rank; sums of 0/1 in double are exact, so every rank reads the same list.
    std::vector<double> differs(static_cast<std::size_t>(comm.world()), 0.0);
    differs[static_cast<std::size_t>(comm.rank())] = digest == reference ? 0.0 : 1.0;
    comm.all_reduce_sum(differs.data(), differs.size());
    std::vector<int> out;
    for (std::size_t r = 0; r < differs.size(); ++r) {
        if (differs[r] != 0.0) out.push_back(static_cast<int>(r));
    }
    return out;
}

// ---- GradientBuckets ----

GradientBuckets::GradientBuckets(Collectives& comm, std::size_t bucket_bytes)
    : comm_(comm), bucket_elements_(std::max<std::size_t>(1, bucket_bytes / sizeof(float))) {}

std::size_t GradientBuckets::add(std::span<float> grad) {
    ESPER_REQUIRE(!grad.empty(), "gradient buffer ", buffers_.size(), " is empty");
    std::size_t offset = 0;
    while (offset < grad.size()) {
        if (buckets_.empty() || buckets_.back().elements == bucket_elements_) {
            buckets_.emplace_back();
        }
        Bucket& bucket = buckets_.back();
        const std::size_t take = std::min(grad.size() - offset, bucket_elements_ - bucket.elements);
        bucket.slices.push_back({grad.data() + offset, take});
        bucket.elements += take;
        offset += take;
    }
    buffers_.push_back(grad);
    buffer_last_bucket_.push_back(buckets_.size() - 1);
    return buffers_.size() - 1;
}

std::size_t GradientBuckets::last_bucket_of(std::size_t index) const {
    ESPER_REQUIRE(index < buffers_.size(), "index=", index, " buffers=", buffers_.size());
    return buffer_last_bucket_[index];
}

void GradientBuckets::reduce_bucket(std::size_t b) {
    ESPER_REQUIRE(b < buckets_.size(), "bucket=", b, " buckets=", buckets_.size());
    Bucket& bucket = buckets_[b];
    const float scale = 1.0f / static_cast<float>(comm_.world());
    if (bucket.slices.size() == 1) {
        // One slice is contiguous already: reduce in place, no staging copy.
        Slice s = bucket.slices.front();
        comm_.all_reduce_sum(s.data, s.n);
        for (std::size_t i = 0; i < s.n; ++i) s.data[i] *= scale;
        return;
    }
    staging_.resize(bucket.elements);
    std::size_t at = 0;
    for (const Slice& s : bucket.slices) {
        std::copy_n(s.data, s.n, staging_.data() + at);
        at += s.n;
    }
    comm_.all_reduce_sum(staging_.data(), bucket.elements);
    at = 0;
    for (const Slice& s : bucket.slices) {
        for (std::size_t i = 0; i < s.n; ++i) s.data[i] = staging_[at + i] * scale;
        at += s.n;
    }
}

void GradientBuckets::all_reduce_average() {
    for (std::size_t b = 0; b < buckets_.size(); ++b) reduce_bucket(b);
}

std::vector<LayerBucket> plan_layer_buckets(std::span<const std::size_t> floats,
                                            std::int64_t bucket_bytes) {
    std::vector<LayerBucket> out;
    if (bucket_bytes <= 0) return out;
    std::size_t first = 0, bytes = 0;
    for (std::size_t i = 0; i < floats.size(); ++i) {
        bytes += floats[i] * sizeof(float);
        if (bytes >= std::size_t(bucket_bytes) || i + 1 == floats.size()) {
            out.push_back({first, i});
            first = i + 1;
            bytes = 0;
        }
    }
    return out;
}

}  // namespace esper::kasmina
