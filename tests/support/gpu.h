// Shared by every [gpu] and [multi_gpu] test (STYLE §2.8): ESPER_REQUIRE_DEVICES(n) at the top of
// a test case skips it (tests/support/skip.h: WARN, count, return — the rest of the binary still
// runs; ctest shows a lone skipped case as Skipped) when fewer than n CUDA devices are visible,
// and, in CUDA builds, DevBuf, an owning device allocation for kernel tests. Header-only;
// compiles in CPU-only builds too, where no device is ever visible.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "tests/support/skip.h"

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

// Why a test needing `needed` devices cannot run here ("" when it can).
inline std::string missing_devices(int needed) {
    const int n = cuda_device_count();
    if (n >= needed) return "";
    if (n == 0) return "no CUDA device";
    return "needs " + std::to_string(needed) + " CUDA devices, " + std::to_string(n) + " visible";
}

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

// At the top of a test case: skip it unless `needed` CUDA devices are visible.
#define ESPER_REQUIRE_DEVICES(needed)                                                 \
    do {                                                                              \
        const std::string esper_missing_ = ::esper::testing::missing_devices(needed); \
        if (!esper_missing_.empty()) ESPER_SKIP_TEST(esper_missing_);                 \
    } while (0)
#define ESPER_REQUIRE_DEVICE() ESPER_REQUIRE_DEVICES(1)
