// NcclComm (see collectives_nccl.h). Locking: mutex_ guards comm_ and error_; it is held only
// for single non-blocking NCCL calls, never across a wait, so abort() from the poller or another
// thread always gets through. In non-blocking mode a call may return ncclInProgress, after which
// the communicator must be polled with ncclCommGetAsyncError until it leaves that state.
#include "kasmina/dist/collectives_nccl.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>

#include "core/check.h"
#include "core/cuda_check.h"
#include "core/error.h"
#include "core/log.h"

namespace esper::kasmina {

namespace {

Logger& log_nccl() {
    static Logger& lg = logger("kasmina.dist.nccl");
    return lg;
}

ncclDataType_t to_nccl(NcclType type) {
    switch (type) {
        case NcclType::kFloat32:
            return ncclFloat32;
        case NcclType::kFloat64:
            return ncclFloat64;
        case NcclType::kBFloat16:
            return ncclBfloat16;
        case NcclType::kFloat16:
            return ncclFloat16;
    }
    ESPER_ASSERT(false, "unknown NcclType ", static_cast<int>(type));
    return ncclFloat32;
}

bool is_peer_failure(ncclResult_t r) {
    return r == ncclRemoteError || r == ncclSystemError || r == ncclInternalError;
}

constexpr auto kPollSleep = std::chrono::microseconds(50);

}  // namespace

NcclComm::NcclComm(const NcclConfig& config, KvStore& store)
    : rank_(config.rank), world_(config.world), device_(config.device), timeout_(config.timeout) {
    ESPER_CHECK_INPUT(world_ >= 1 && rank_ >= 0 && rank_ < world_, "nccl: rank ", rank_,
                      " is outside world size ", world_);
    ESPER_CHECK_INPUT(timeout_.count() > 0, "nccl: timeout must be > 0 ms");
    ESPER_CUDA_CHECK(cudaSetDevice(device_));

    const std::string id_key = config.key_prefix + "/unique_id";
    ncclUniqueId id;
    if (rank_ == 0) {
        ESPER_NCCL_CHECK(ncclGetUniqueId(&id));
        store.set(id_key, std::span(reinterpret_cast<const std::uint8_t*>(&id), sizeof(id)));
    } else {
        Bytes value = wait_get(store, id_key, timeout_);
        if (value.size() != sizeof(id)) {
            ESPER_THROW(kIntegrity, "nccl: unique id under '", id_key, "' has ", value.size(),
                        " bytes, expected ", sizeof(id));
        }
        std::memcpy(&id, value.data(), sizeof(id));
    }

    ncclConfig_t nccl_config = NCCL_CONFIG_INITIALIZER;
    nccl_config.blocking = 0;
    ncclComm_t comm = nullptr;
    ncclResult_t r = ncclCommInitRankConfig(&comm, world_, id, rank_, &nccl_config);
    {
        std::lock_guard lock(mutex_);
        comm_ = comm;
    }
    if (r != ncclSuccess && r != ncclInProgress) {
        if (comm_) {
            ncclCommAbort(comm_);
            comm_ = nullptr;
        }
        aborted_ = true;
        ESPER_THROW(kFailed, "nccl: ncclCommInitRankConfig rank=", rank_, "/", world_, ": ",
                    ncclGetErrorString(r));
    }
    complete(r, "init", timeout_);  // waits for every peer to join; aborts on timeout
    if (config.poll_interval.count() > 0) {
        poller_ = std::thread([this, interval = config.poll_interval] { poll_loop(interval); });
    }
    ESPER_LOG_INFO(log_nccl(), "nccl joined rank=", rank_, " world=", world_, " device=", device_,
                   " prefix=", config.key_prefix);
}

NcclComm::~NcclComm() {
    stop_ = true;
    if (poller_.joinable()) poller_.join();
    std::lock_guard lock(mutex_);
    if (!comm_) return;
    // A healthy communicator is finalized (flushes pending work) before it is destroyed; if that
    // does not finish in time it is aborted instead, so destruction never hangs.
    ncclResult_t r = ncclCommFinalize(comm_);
    const auto deadline = std::chrono::steady_clock::now() + timeout_;
    ncclResult_t state = r;
    while (state == ncclInProgress && std::chrono::steady_clock::now() < deadline) {
        std::this_thread::sleep_for(kPollSleep);
        if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
    }
    if (state == ncclSuccess) {
        ncclCommDestroy(comm_);
    } else {
        ESPER_LOG_WARN(log_nccl(), "nccl finalize failed rank=", rank_, " (",
                       ncclGetErrorString(state), "); aborting communicator");
        ncclCommAbort(comm_);
    }
    comm_ = nullptr;
}

ncclComm* NcclComm::live(const char* op) {
    if (!comm_ || aborted_) {
        ESPER_THROW(kDisconnected, "nccl ", op, " rank=", rank_, "/", world_,
                    ": communicator was aborted", error_.empty() ? "" : " after: ", error_);
    }
    return comm_;
}

void NcclComm::fail(const std::string& why) {
    {
        std::lock_guard lock(mutex_);
        if (error_.empty()) error_ = why;
    }
    ESPER_LOG_ERROR(log_nccl(), "nccl failure rank=", rank_, "/", world_, ": ", why);
    abort();
}

void NcclComm::complete(int result, const char* op, std::chrono::milliseconds timeout) {
    auto r = static_cast<ncclResult_t>(result);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (r == ncclInProgress) {
        if (std::chrono::steady_clock::now() >= deadline) {
            fail(detail::concat(op, " timed out after ", timeout.count(), " ms"));
            ESPER_THROW(kDisconnected, "nccl ", op, " rank=", rank_, "/", world_,
                        ": timed out after ", timeout.count(), " ms (communicator aborted)");
        }
        std::this_thread::sleep_for(kPollSleep);
        std::lock_guard lock(mutex_);
        if (!comm_) break;
        if (ncclCommGetAsyncError(comm_, &r) != ncclSuccess) r = ncclInternalError;
    }
    if (r == ncclSuccess) return;
    if (r == ncclInProgress || aborted_) {
        ESPER_THROW(kDisconnected, "nccl ", op, " rank=", rank_, "/", world_,
                    ": communicator was aborted");
    }
    fail(detail::concat(op, ": ", ncclGetErrorString(r)));
    if (is_peer_failure(r)) {
        ESPER_THROW(kDisconnected, "nccl ", op, " rank=", rank_, "/", world_, ": ",
                    ncclGetErrorString(r), " (communicator aborted)");
    }
    ESPER_THROW(kFailed, "nccl ", op, " rank=", rank_, "/", world_, ": ", ncclGetErrorString(r),
                " (communicator aborted)");
}

void NcclComm::all_reduce_sum(const void* send, void* recv, std::size_t count, NcclType type,
                              cudaStream_t stream) {
    ncclResult_t r;
    {
        std::lock_guard lock(mutex_);
        r = ncclAllReduce(send, recv, count, to_nccl(type), ncclSum, live("all_reduce"), stream);
    }
    complete(r, "all_reduce", timeout_);
}

void NcclComm::all_reduce_mean(const void* send, void* recv, std::size_t count, NcclType type,
                               cudaStream_t stream) {
    ncclResult_t r;
    {
        std::lock_guard lock(mutex_);
        r = ncclAllReduce(send, recv, count, to_nccl(type), ncclAvg, live("all_reduce_mean"),
                          stream);
    }
    complete(r, "all_reduce_mean", timeout_);
}

void NcclComm::broadcast(const void* send, void* recv, std::size_t bytes, int root,
                         cudaStream_t stream) {
    ESPER_REQUIRE(root >= 0 && root < world_, "root=", root, " world=", world_);
    ncclResult_t r;
    {
        std::lock_guard lock(mutex_);
        r = ncclBroadcast(send, recv, bytes, ncclUint8, root, live("broadcast"), stream);
    }
    complete(r, "broadcast", timeout_);
}

void NcclComm::group_start() {
    std::lock_guard lock(mutex_);
    live("group_start");
    ESPER_NCCL_CHECK(ncclGroupStart());
}

void NcclComm::group_end() {
    ncclResult_t r;
    {
        std::lock_guard lock(mutex_);
        live("group_end");
        r = ncclGroupEnd();
    }
    complete(r, "group_end", timeout_);
}

void NcclComm::synchronize(cudaStream_t stream) { synchronize(stream, timeout_); }

void NcclComm::synchronize(cudaStream_t stream, std::chrono::milliseconds timeout) {
    // sync-point: caller-chosen (step boundary); polls instead of cudaStreamSynchronize so a
    // peer that never arrives cannot block us past the deadline.
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        {
            std::lock_guard lock(mutex_);
            if (ncclCommGetAsyncError(live("synchronize"), &state) != ncclSuccess) {
                state = ncclInternalError;
            }
        }
        if (state != ncclSuccess && state != ncclInProgress) {
            complete(state, "synchronize", timeout);
        }
        cudaError_t q = cudaStreamQuery(stream);
        if (q == cudaSuccess) return;
        if (q != cudaErrorNotReady) {
            fail(detail::concat("synchronize: CUDA ", cudaGetErrorString(q)));
            ESPER_CUDA_CHECK(q);
        }
        if (std::chrono::steady_clock::now() >= deadline) {
            fail(detail::concat("synchronize timed out after ", timeout.count(), " ms"));
            ESPER_THROW(kDisconnected, "nccl synchronize rank=", rank_, "/", world_,
                        ": stream not done after ", timeout.count(),
                        " ms (a peer is missing; communicator aborted)");
        }
        std::this_thread::sleep_for(kPollSleep);
    }
}

void NcclComm::abort() {
    std::lock_guard lock(mutex_);
    if (aborted_.exchange(true)) return;
    if (comm_) {
        ESPER_LOG_WARN(log_nccl(), "nccl abort rank=", rank_, "/", world_);
        ncclCommAbort(comm_);
        comm_ = nullptr;
    }
}

std::string NcclComm::error() const {
    std::lock_guard lock(mutex_);
    return error_;
}

void NcclComm::poll_loop(std::chrono::milliseconds interval) {
    cudaSetDevice(device_);
    while (!stop_) {
        std::this_thread::sleep_for(interval);
        ncclResult_t state = ncclSuccess;
        {
            std::lock_guard lock(mutex_);
            if (!comm_ || aborted_) return;
            if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) state = ncclInternalError;
        }
        if (state != ncclSuccess && state != ncclInProgress) {
            fail(detail::concat("async error: ", ncclGetErrorString(state)));
            return;
        }
    }
}

}  // namespace esper::kasmina
