// NcclComm: one NCCL communicator per rank (RAII), for device buffers on a caller's stream.
// The unique id is made by rank 0 and exchanged through the KvStore ("<key_prefix>/unique_id").
// The communicator is non-blocking (ncclConfig_t.blocking = 0): every call returns at once and
// completion is polled with ncclCommGetAsyncError under a deadline, and a background poller
// watches for asynchronous errors. A failure or a timeout aborts the communicator
// (ncclCommAbort) and throws esper::Error(kDisconnected): never a hang.
// Compiled only when ESPER_HAVE_NCCL (CUDA build with NCCL found).
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <mutex>
#include <string>
#include <thread>

#include "kasmina/dist/collectives.h"

struct ncclComm;  // from nccl.h: typedef struct ncclComm* ncclComm_t

namespace esper::kasmina {

struct NcclConfig {
    int rank = 0;
    int world = 1;
    int device = 0;  // CUDA device ordinal, normally RankInfo::local_rank
    std::string key_prefix = "nccl";
    // Bounds the rendezvous, communicator creation and each synchronize().
    std::chrono::milliseconds timeout{60000};
    // How often the background poller checks ncclCommGetAsyncError; 0 disables it.
    std::chrono::milliseconds poll_interval{50};
};

// Element types NcclComm reduces (a subset of ncclDataType_t, named so callers need no nccl.h).
enum class NcclType { kFloat32, kFloat64, kBFloat16, kFloat16 };

class NcclComm {
public:
    // Joins the communicator. Throws Error(kDisconnected) when the id or the peers do not
    // arrive within the timeout, Error(kFailed) for CUDA/NCCL failures.
    NcclComm(const NcclConfig& config, KvStore& store);
    // Finalizes and destroys a healthy communicator; aborts one that failed. Never throws.
    ~NcclComm();
    NcclComm(const NcclComm&) = delete;
    NcclComm& operator=(const NcclComm&) = delete;

    int rank() const { return rank_; }
    int world() const { return world_; }

    // Enqueue on `stream`; in-place when send == recv. `count` is in elements.
    void all_reduce_sum(const void* send, void* recv, std::size_t count, NcclType type,
                        cudaStream_t stream);
    // As all_reduce_sum, then divided by the world size (ncclAvg): the mean over ranks.
    void all_reduce_mean(const void* send, void* recv, std::size_t count, NcclType type,
                         cudaStream_t stream);
    void broadcast(const void* send, void* recv, std::size_t bytes, int root, cudaStream_t stream);
    // Group calls (several all-reduces fused into one launch): begin/end bracket them.
    void group_start();
    void group_end();

    // sync-point: waits for `stream` while polling for NCCL errors; aborts and throws
    // Error(kDisconnected) on an error or when `timeout` (default: the config's) passes.
    void synchronize(cudaStream_t stream);
    void synchronize(cudaStream_t stream, std::chrono::milliseconds timeout);

    // Aborts the communicator (safe from any thread; idempotent). Later calls throw.
    void abort();
    bool aborted() const { return aborted_.load(); }
    // The error the poller or a call saw, empty while healthy.
    std::string error() const;
    ncclComm* get() const { return comm_; }

private:
    ncclComm* live(const char* op);
    // Waits until the communicator is no longer ncclInProgress; aborts + throws on error/timeout.
    void complete(int result, const char* op, std::chrono::milliseconds timeout);
    void fail(const std::string& why);
    void poll_loop(std::chrono::milliseconds interval);

    int rank_;
    int world_;
    int device_;
    std::chrono::milliseconds timeout_;
    ncclComm* comm_ = nullptr;
    mutable std::mutex mutex_;  // guards comm_ lifetime against the poller and abort()
    std::atomic<bool> aborted_{false};
    std::atomic<bool> stop_{false};
    std::string error_;
    std::thread poller_;
};

}  // namespace esper::kasmina
