// Tests for kasmina/collectives_nccl (NcclComm): two ranks as threads of one process, one GPU
// each, rendezvous through an InMemoryKvStore. Without a device (or without a second one for
// [multi_gpu]) each case prints "skipped: ..." and exits 4, which ctest reports as skipped.
#ifdef ESPER_HAVE_NCCL

#include "kasmina/dist/collectives_nccl.h"

#include <cuda_runtime.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <thread>
#include <vector>

#include "core/cuda_check.h"
#include "core/error.h"
#include "tests/support/gpu.h"

using namespace esper;
using namespace esper::kasmina;
using namespace std::chrono_literals;

TEST_CASE("two nccl ranks sum exactly and broadcast on their streams",
          "[kasmina][dist][multi_gpu]") {
    ESPER_REQUIRE_DEVICES(2);
    const int world = 2;
    const std::size_t n = 1 << 20;
    InMemoryKvStore store;
    std::vector<std::vector<float>> host(world, std::vector<float>(n));
    std::vector<float> expect(n, 0.0f);
    for (int r = 0; r < world; ++r) {
        std::mt19937 rng(300 + r);
        std::uniform_int_distribution<int> d(1, 1000);
        for (auto& x : host[r]) x = static_cast<float>(d(rng)) * ((rng() & 1) ? 1.0f : -1.0f);
        for (std::size_t i = 0; i < n; ++i) expect[i] += host[r][i];
    }
    std::vector<std::vector<float>> summed(world), broadcast(world);
    std::vector<std::exception_ptr> errors(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
        threads.emplace_back([&, r] {
            try {
                NcclConfig config;
                config.rank = r;
                config.world = world;
                config.device = r;
                config.timeout = 60000ms;
                NcclComm comm(config, store);
                cudaStream_t stream;
                ESPER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
                float* dev = nullptr;
                ESPER_CUDA_CHECK(cudaMalloc(&dev, n * sizeof(float)));
                ESPER_CUDA_CHECK(
                    cudaMemcpy(dev, host[r].data(), n * sizeof(float), cudaMemcpyHostToDevice));
                comm.all_reduce_sum(dev, dev, n, NcclType::kFloat32, stream);
                comm.synchronize(stream);
                summed[r].resize(n);
                ESPER_CUDA_CHECK(
                    cudaMemcpy(summed[r].data(), dev, n * sizeof(float), cudaMemcpyDeviceToHost));
                // Broadcast rank 1's original values to everyone.
                ESPER_CUDA_CHECK(
                    cudaMemcpy(dev, host[r].data(), n * sizeof(float), cudaMemcpyHostToDevice));
                comm.broadcast(dev, dev, n * sizeof(float), 1, stream);
                comm.synchronize(stream);
                broadcast[r].resize(n);
                ESPER_CUDA_CHECK(cudaMemcpy(broadcast[r].data(), dev, n * sizeof(float),
                                            cudaMemcpyDeviceToHost));
                cudaFree(dev);
                cudaStreamDestroy(stream);
            } catch (...) {
                errors[r] = std::current_exception();
            }
        });
    }
    for (auto& t : threads) t.join();
    for (int r = 0; r < world; ++r) {
        if (errors[r]) {
            try {
                std::rethrow_exception(errors[r]);
            } catch (const std::exception& e) {
                FAIL("rank " << r << ": " << e.what());
            }
        }
        CHECK(summed[r] == expect);
        CHECK(broadcast[r] == host[1]);
    }
}

TEST_CASE("an nccl rank whose peer leaves mid-run aborts at its deadline instead of hanging",
          "[kasmina][dist][multi_gpu]") {
    ESPER_REQUIRE_DEVICES(2);
    InMemoryKvStore store;
    std::atomic<bool> left{false};
    std::exception_ptr survivor_error;
    std::chrono::steady_clock::duration survivor_wait{};
    auto rank_main = [&](int r) {
        NcclConfig config;
        config.rank = r;
        config.world = 2;
        config.device = r;
        config.timeout = 3000ms;
        NcclComm comm(config, store);
        cudaStream_t stream;
        ESPER_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
        float* dev = nullptr;
        ESPER_CUDA_CHECK(cudaMalloc(&dev, 4096 * sizeof(float)));
        ESPER_CUDA_CHECK(cudaMemset(dev, 0x3f, 4096 * sizeof(float)));
        comm.all_reduce_sum(dev, dev, 4096, NcclType::kFloat32, stream);
        comm.synchronize(stream);
        if (r == 1) {
            comm.abort();  // gone: never joins the next all-reduce
            left = true;
            return;
        }
        while (!left) std::this_thread::sleep_for(1ms);
        const auto start = std::chrono::steady_clock::now();
        try {
            comm.all_reduce_sum(dev, dev, 4096, NcclType::kFloat32, stream);
            comm.synchronize(stream);
        } catch (...) {
            survivor_wait = std::chrono::steady_clock::now() - start;
            survivor_error = std::current_exception();
        }
        CHECK(comm.aborted());
    };
    std::thread t0([&] { rank_main(0); });
    std::thread t1([&] { rank_main(1); });
    t0.join();
    t1.join();
    REQUIRE(survivor_error);
    try {
        std::rethrow_exception(survivor_error);
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kDisconnected);
    }
    CHECK(survivor_wait < 20s);
}

TEST_CASE("an nccl rank whose peer never joins fails disconnected within the timeout",
          "[kasmina][dist][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    InMemoryKvStore store;
    NcclConfig config;
    config.rank = 0;
    config.world = 2;  // rank 1 never starts
    config.device = 0;
    config.timeout = 3000ms;
    const auto start = std::chrono::steady_clock::now();
    try {
        NcclComm comm(config, store);
        FAIL("communicator formed without its peer");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kDisconnected);
    }
    CHECK(std::chrono::steady_clock::now() - start < 30s);
}

TEST_CASE("an nccl rank waiting for the unique id fails disconnected when rank 0 is missing",
          "[kasmina][dist][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    InMemoryKvStore store;
    NcclConfig config;
    config.rank = 1;
    config.world = 2;
    config.device = 0;
    config.timeout = 200ms;
    try {
        NcclComm comm(config, store);
        FAIL("communicator formed without rank 0");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kDisconnected);
        CHECK(std::string(e.what()).find("nccl/unique_id") != std::string::npos);
    }
}

#endif  // ESPER_HAVE_NCCL
