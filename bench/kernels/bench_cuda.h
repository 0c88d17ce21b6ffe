// What the CUDA benchmarks of bench/ share: a check that ends the benchmark on a CUDA error (a
// benchmark has no caller to hand an error to) and a device allocation that never asks for 0 bytes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>

#define BENCH_CHECK(expr)                                                           \
    do {                                                                            \
        const cudaError_t e_ = (expr);                                              \
        if (e_ != cudaSuccess) {                                                    \
            std::fprintf(stderr, "%s failed: %s\n", #expr, cudaGetErrorString(e_)); \
            std::exit(1);                                                           \
        }                                                                           \
    } while (0)

namespace esper::bench {

inline void* dev_alloc(size_t bytes) {
    void* p = nullptr;
    BENCH_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}

}  // namespace esper::bench
