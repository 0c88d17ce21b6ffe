// Collectives between the ranks of one data-parallel run (DESIGN.md §8), behind one interface:
// SingleRank (world 1), GlooCollectives (CPU, collectives_gloo.h) and, for device buffers,
// NcclComm (collectives_nccl.h). KvStore is the rendezvous every backend uses to find its peers;
// the agent implements it over the broker, tests use InMemoryKvStore/FileKvStore.
// Convention: every rank must issue the same collectives in the same order (as with MPI/NCCL);
// a peer that goes away surfaces as esper::Error(kDisconnected) within the configured timeout.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace esper::kasmina {

using Bytes = std::vector<std::uint8_t>;

// ---- rendezvous key-value store ----

class KvStore {
public:
    virtual ~KvStore() = default;
    // Sets (or overwrites) a key. Visible to every rank sharing the store.
    virtual void set(const std::string& key, std::span<const std::uint8_t> value) = 0;
    // The current value, or nullopt when the key was never set.
    virtual std::optional<Bytes> get(const std::string& key) = 0;
    // True once every key exists; false when the timeout passed first (an expected outcome).
    virtual bool wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) = 0;
};

// Waits for one key and returns its value; throws Error(kDisconnected) naming the key on timeout.
Bytes wait_get(KvStore& store, const std::string& key, std::chrono::milliseconds timeout);

// All ranks are threads of one process (tests, `esper run --ranks N` on CPU). Thread-safe.
class InMemoryKvStore final : public KvStore {
public:
    void set(const std::string& key, std::span<const std::uint8_t> value) override;
    std::optional<Bytes> get(const std::string& key) override;
    bool wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    std::map<std::string, Bytes> values_;
};

// A directory shared by processes on one machine (or a shared file system). Each key is one
// file written to a temporary name and renamed into place, so readers never see a partial
// value. Keys may hold any character; they are %-escaped into file names.
class FileKvStore final : public KvStore {
public:
    // Creates the directory if needed; throws Error(kFailed) when it cannot.
    explicit FileKvStore(std::filesystem::path dir,
                         std::chrono::milliseconds poll_interval = std::chrono::milliseconds(2));
    void set(const std::string& key, std::span<const std::uint8_t> value) override;
    std::optional<Bytes> get(const std::string& key) override;
    bool wait(std::span<const std::string> keys, std::chrono::milliseconds timeout) override;
    const std::filesystem::path& dir() const { return dir_; }

private:
    std::filesystem::path path_for(const std::string& key) const;
    std::filesystem::path dir_;
    std::chrono::milliseconds poll_interval_;
};

// ---- collectives ----

class Collectives {
public:
    virtual ~Collectives() = default;
    virtual int rank() const = 0;
    virtual int world() const = 0;
    // In place: data[i] becomes the sum over ranks of data[i]. Bit-identical on every rank.
    virtual void all_reduce_sum(float* data, std::size_t n) = 0;
    virtual void all_reduce_sum(double* data, std::size_t n) = 0;
    // Copies `bytes` bytes from root's `data` into every other rank's `data`.
    virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
    virtual void barrier() = 0;
    // Gives up on the group: later calls throw Error(kDisconnected). Called after a failure or
    // when a peer is known dead; peers blocked in a collective fail at their timeout.
    virtual void abort() = 0;
    virtual bool aborted() const = 0;
    virtual const char* backend_name() const = 0;
};

// World of one: every collective is a no-op (a sum over one rank is the value itself).
class SingleRank final : public Collectives {
public:
    int rank() const override { return 0; }
    int world() const override { return 1; }
    void all_reduce_sum(float* data, std::size_t n) override;
    void all_reduce_sum(double* data, std::size_t n) override;
    void broadcast(void* data, std::size_t bytes, int root) override;
    void barrier() override;
    void abort() override { aborted_ = true; }
    bool aborted() const override { return aborted_; }
    const char* backend_name() const override { return "single"; }

private:
    void check_alive() const;
    bool aborted_ = false;
};

// ---- helpers over any Collectives ----

// Broadcasts a payload whose size only the root knows (size first, then bytes): non-root ranks'
// `data` is replaced by the root's. Used for changed seed-table rows and new blueprint weights.
void broadcast_bytes(Collectives& comm, Bytes& data, int root);

// 64-bit FNV-1a over bytes, chainable through `seed` (e.g. one call per seed-table column).
std::uint64_t digest64(std::span<const std::uint8_t> bytes,
                       std::uint64_t seed = 0xcbf29ce484222325ull);

// Compares every rank's digest with rank 0's. Returns the ranks that differ, the same list on
// every rank (empty when all agree), so every rank can stop with the same error.
std::vector<int> digest_mismatches(Collectives& comm, std::uint64_t digest);

// Bucketed gradient all-reduce on host buffers. Register the gradient buffers once (in the
// order backward produces them, so bucket b can be reduced as soon as its last buffer is done);
// consecutive buffers are packed into buckets of about `bucket_bytes`; a buffer larger than a
// bucket is split across buckets. The registered spans are not owned and must stay valid.
class GradientBuckets {
public:
    static constexpr std::size_t kDefaultBucketBytes = std::size_t{25} << 20;

    explicit GradientBuckets(Collectives& comm, std::size_t bucket_bytes = kDefaultBucketBytes);

    // Registers a gradient buffer; returns its index.
    std::size_t add(std::span<float> grad);
    std::size_t bucket_count() const { return buckets_.size(); }
    std::size_t buffer_count() const { return buffers_.size(); }
    // The bucket holding the last element of buffer `index`: once that buffer's gradient is
    // final, reduce_bucket(last_bucket_of(index)) may run if every earlier buffer in it is too.
    std::size_t last_bucket_of(std::size_t index) const;
    // Sums bucket b over ranks and divides by the world size (mean gradient), in place.
    void reduce_bucket(std::size_t b);
    // Every bucket in order.
    void all_reduce_average();

private:
    struct Slice {
        float* data;
        std::size_t n;
    };
    struct Bucket {
        std::vector<Slice> slices;
        std::size_t elements = 0;
    };
    Collectives& comm_;
    std::size_t bucket_elements_;
    std::vector<std::span<float>> buffers_;
    std::vector<std::size_t> buffer_last_bucket_;
    std::vector<Bucket> buckets_;
    std::vector<float> staging_;
};

// Device gradient buckets (the CUDA backend's overlapped all-reduce): layers whose gradients
// come out whole, one after another. `floats[i]` is the i-th layer in the order backward
// finishes them; consecutive layers are packed until a bucket holds at least `bucket_bytes`
// (the last bucket takes what is left). Returns [first, last] index pairs in that order; empty
// when bucket_bytes <= 0 (no buckets: one all-reduce after backward).
struct LayerBucket {
    std::size_t first = 0, last = 0;
    bool operator==(const LayerBucket&) const = default;
};
std::vector<LayerBucket> plan_layer_buckets(std::span<const std::size_t> floats,
                                            std::int64_t bucket_bytes);

}  // namespace esper::kasmina
