// Shared by every [gpu] and [multi_gpu] test (STYLE §2.8): the skip when too few CUDA devices
// are visible — print "skipped: ..." and exit 4, which ctest reports as Skipped — and, in CUDA
// builds, DevBuf, an owning device allocation for kernel tests. Header-only; compiles in
// CPU-only builds too, where no device is ever visible.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::testing {

inline int cuda_device_count() {
#if ESPER_HAVE_CUDA
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();  // clear the sticky "no device" error
        return 0;
    }
    return n;
#else
    return 0;
#endif
}

// Ends the test binary with exit code 4 (skipped) unless `needed` devices are visible.
inline void require_devices(int needed) {
    const int n = cuda_device_count();
    if (n >= needed) return;
    if (n == 0)
        std::fprintf(stderr, "skipped: no CUDA device\n");
    else
        std::fprintf(stderr, "skipped: needs %d CUDA devices, %d visible\n", needed, n);
    std::exit(4);
}

inline void require_device() { require_devices(1); }

#if ESPER_HAVE_CUDA

// Owns one device allocation, poisoned with 0xFF bytes (NaN for floats) unless built from host
// data. Failures throw std::runtime_error (safe from the rank threads of NCCL tests).
struct DevBuf {
    void* p = nullptr;
    size_t bytes = 0;
    explicit DevBuf(size_t n) : bytes(n) {
        check(cudaMalloc(&p, n ? n : 1), "cudaMalloc");
        check(cudaMemset(p, 0xFF, n ? n : 1), "cudaMemset");
    }
    template <typename T>
    explicit DevBuf(const std::vector<T>& v) : DevBuf(v.size() * sizeof(T)) {
        check(cudaMemcpy(p, v.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy");
    }
    DevBuf(const DevBuf&) = delete;
    DevBuf& operator=(const DevBuf&) = delete;
    ~DevBuf() { (void)cudaFree(p); }
    template <typename T>
    T* as() const {
        return static_cast<T*>(p);
    }
    template <typename T>
    std::vector<T> download() const {
        std::vector<T> v(bytes / sizeof(T));
        check(cudaMemcpy(v.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
        return v;
    }
    template <typename T>
    void upload(const std::vector<T>& v) {
        check(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy");
    }

    static void check(cudaError_t e, const char* what) {
        if (e != cudaSuccess)
            throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
    }
};

#endif  // ESPER_HAVE_CUDA

}  // namespace esper::testing
