// RAII owners of the CUDA runtime and cuBLAS handles the CUDA step backend holds (STYLE §2.4):
// one wrapper per handle kind, move-only, created by a constructor that throws esper::Error on
// failure and released by a destructor that never throws (a failed release is ignored, as
// llm.c's cudaFreeCheck would log it). The NCCL communicator has its own owner, NcclComm
// (kasmina/dist/collectives_nccl.h). Included only by sources of CUDA builds.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "core/cuda_check.h"

namespace esper::kasmina {

// Device memory of n elements, zeroed at allocation (cudaMemset on the legacy stream).
template <typename T>
class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t n) : n_(n) {
        if (n == 0) return;
        ESPER_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
        ESPER_CUDA_CHECK(cudaMemset(p_, 0, n * sizeof(T)));
    }
    ~DeviceBuffer() {
        if (p_ != nullptr) (void)cudaFree(p_);
    }
    DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
        o.p_ = nullptr;
        o.n_ = 0;
    }
    // Swaps: the previous allocation is freed with the moved-from temporary.
    DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    T* get() const { return p_; }
    size_t size() const { return n_; }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

// Page-locked host memory of n elements (async copies to and from it), zeroed at allocation.
template <typename T>
class PinnedBuffer {
public:
    PinnedBuffer() = default;
    explicit PinnedBuffer(size_t n) : n_(n) {
        if (n == 0) return;
        ESPER_CUDA_CHECK(
            cudaHostAlloc(reinterpret_cast<void**>(&p_), n * sizeof(T), cudaHostAllocDefault));
        std::memset(static_cast<void*>(p_), 0, n * sizeof(T));
    }
    ~PinnedBuffer() {
        if (p_ != nullptr) (void)cudaFreeHost(p_);
    }
    PinnedBuffer(PinnedBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
        o.p_ = nullptr;
        o.n_ = 0;
    }
    PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
        std::swap(p_, o.p_);
        std::swap(n_, o.n_);
        return *this;
    }
    T* get() const { return p_; }
    T& operator[](size_t i) const { return p_[i]; }
    size_t size() const { return n_; }

private:
    T* p_ = nullptr;
    size_t n_ = 0;
};

namespace detail {
struct StreamDestroy {
    void operator()(cudaStream_t s) const noexcept { (void)cudaStreamDestroy(s); }
};
struct EventDestroy {
    void operator()(cudaEvent_t e) const noexcept { (void)cudaEventDestroy(e); }
};
struct GraphExecDestroy {
    void operator()(cudaGraphExec_t g) const noexcept { (void)cudaGraphExecDestroy(g); }
};
struct CublasDestroy {
    void operator()(cublasHandle_t h) const noexcept { (void)cublasDestroy(h); }
};
}  // namespace detail

// A stream made with cudaStreamCreateWithFlags.
class CudaStream {
public:
    CudaStream() = default;
    explicit CudaStream(unsigned int flags) {
        cudaStream_t s = nullptr;
        ESPER_CUDA_CHECK(cudaStreamCreateWithFlags(&s, flags));
        h_.reset(s);
    }
    cudaStream_t get() const { return h_.get(); }

private:
    std::unique_ptr<std::remove_pointer_t<cudaStream_t>, detail::StreamDestroy> h_;
};

// An event made with cudaEventCreateWithFlags (cudaEventDefault = cudaEventCreate).
class CudaEvent {
public:
    CudaEvent() = default;
    explicit CudaEvent(unsigned int flags) {
        cudaEvent_t e = nullptr;
        ESPER_CUDA_CHECK(cudaEventCreateWithFlags(&e, flags));
        h_.reset(e);
    }
    cudaEvent_t get() const { return h_.get(); }

private:
    std::unique_ptr<std::remove_pointer_t<cudaEvent_t>, detail::EventDestroy> h_;
};

// An instantiated graph (empty until reset with cudaGraphInstantiate's result).
class CudaGraphExec {
public:
    CudaGraphExec() = default;
    cudaGraphExec_t get() const { return h_.get(); }
    explicit operator bool() const { return h_ != nullptr; }
    // Takes ownership of an instantiated graph.
    void reset(cudaGraphExec_t g) { h_.reset(g); }
    // Destroys the graph now, throwing on failure (a re-capture replaces it).
    void destroy() {
        cudaGraphExec_t g = h_.release();
        if (g != nullptr) ESPER_CUDA_CHECK(cudaGraphExecDestroy(g));
    }

private:
    std::unique_ptr<std::remove_pointer_t<cudaGraphExec_t>, detail::GraphExecDestroy> h_;
};

// Records what `enqueue` puts on `stream` (thread-local capture mode) and instantiates it. An
// exception from enqueue ends the capture before it propagates, so the stream stays usable.
template <typename Enqueue>
CudaGraphExec capture_graph(cudaStream_t stream, Enqueue&& enqueue) {
    ESPER_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    cudaGraph_t g = nullptr;
    try {
        enqueue();
    } catch (...) {
        (void)cudaStreamEndCapture(stream, &g);
        if (g != nullptr) (void)cudaGraphDestroy(g);
        throw;
    }
    ESPER_CUDA_CHECK(cudaStreamEndCapture(stream, &g));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, g, 0);
    (void)cudaGraphDestroy(g);
    ESPER_CUDA_CHECK(inst);
    CudaGraphExec out;
    out.reset(exec);
    return out;
}

// A cuBLAS context made with cublasCreate.
class CublasHandle {
public:
    CublasHandle() = default;
    static CublasHandle create() {
        cublasHandle_t h = nullptr;
        ESPER_CUBLAS_CHECK(cublasCreate(&h));
        CublasHandle out;
        out.h_.reset(h);
        return out;
    }
    cublasHandle_t get() const { return h_.get(); }

private:
    std::unique_ptr<std::remove_pointer_t<cublasHandle_t>, detail::CublasDestroy> h_;
};

}  // namespace esper::kasmina
