// Tests for kasmina/collectives*: key-value stores, SingleRank, GradientBuckets, and Gloo ranks
// as threads of one process over loopback TCP (plus two forked processes over a FileKvStore).
// Each Gloo test uses its own store, so keys never collide between test cases.
#include "kasmina/dist/collectives.h"

#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <exception>
#include <filesystem>
#include <functional>
#include <random>
#include <thread>
#include <vector>

#include "core/error.h"

#ifdef ESPER_HAVE_GLOO
#include "kasmina/dist/collectives_gloo.h"
#endif

using namespace esper;
using namespace esper::kasmina;
using namespace std::chrono_literals;

namespace {

std::filesystem::path fresh_dir(const std::string& tag) {
    auto dir = std::filesystem::temp_directory_path() /
               ("esper_kv_" + tag + "_" + std::to_string(::getpid()) + "_" +
                std::to_string(std::random_device{}()));
    std::filesystem::remove_all(dir);
    return dir;
}

Bytes bytes_of(const std::string& s) { return Bytes(s.begin(), s.end()); }

// Runs fn(rank) on `world` threads; rethrows nothing, returns each rank's exception (or null).
std::vector<std::exception_ptr> run_ranks(int world, const std::function<void(int)>& fn) {
    std::vector<std::exception_ptr> errors(world);
    std::vector<std::thread> threads;
    for (int r = 0; r < world; ++r) {
        threads.emplace_back([&, r] {
            try {
                fn(r);
            } catch (...) {
                errors[r] = std::current_exception();
            }
        });
    }
    for (auto& t : threads) t.join();
    return errors;
}

void require_no_errors(const std::vector<std::exception_ptr>& errors) {
    for (std::size_t r = 0; r < errors.size(); ++r) {
        if (!errors[r]) continue;
        try {
            std::rethrow_exception(errors[r]);
        } catch (const std::exception& e) {
            FAIL("rank " << r << " threw: " << e.what());
        }
    }
}

ErrorKind kind_of(const std::exception_ptr& e) {
    try {
        std::rethrow_exception(e);
    } catch (const Error& err) {
        return err.kind();
    } catch (...) {
        return ErrorKind::kUnimplemented;
    }
}

// Nonzero random integer in [-1000, 1000]; sums of these are exact in float and double.
float random_int_value(std::mt19937& rng) {
    std::uniform_int_distribution<int> d(1, 1000);
    int v = d(rng);
    return static_cast<float>((rng() & 1) ? v : -v);
}

}  // namespace

// ---- stores ----

TEST_CASE("in-memory store sets, gets and times out waiting for a missing key", "[kasmina][dist]") {
    InMemoryKvStore store;
    CHECK_FALSE(store.get("a").has_value());
    store.set("a", bytes_of("alpha"));
    REQUIRE(store.get("a").has_value());
    CHECK(*store.get("a") == bytes_of("alpha"));
    const std::string both[] = {"a", "b"};
    auto start = std::chrono::steady_clock::now();
    CHECK_FALSE(store.wait(both, 50ms));
    CHECK(std::chrono::steady_clock::now() - start >= 45ms);
    std::thread setter([&] {
        std::this_thread::sleep_for(20ms);
        store.set("b", bytes_of("beta"));
    });
    CHECK(store.wait(both, 5000ms));
    setter.join();
    CHECK_THROWS_AS(wait_get(store, "never", 10ms), Error);
}

TEST_CASE("file store round-trips any key and value and overwrites atomically", "[kasmina][dist]") {
    auto dir = fresh_dir("basic");
    FileKvStore store(dir);
    Bytes value(4096);
    std::mt19937 rng(7);
    for (auto& b : value) b = static_cast<std::uint8_t>(rng() | 1);
    const std::string key = "run-1/attempt 0/gloo/3";  // slashes and spaces are escaped
    CHECK_FALSE(store.get(key).has_value());
    store.set(key, value);
    REQUIRE(store.get(key).has_value());
    CHECK(*store.get(key) == value);
    store.set(key, bytes_of("short"));
    CHECK(*store.get(key) == bytes_of("short"));
    const std::string keys[] = {key, "other"};
    CHECK_FALSE(store.wait(keys, 20ms));
    FileKvStore second(dir);  // another handle on the same directory sees the same keys
    second.set("other", bytes_of("x"));
    CHECK(store.wait(keys, 1000ms));
    std::filesystem::remove_all(dir);
}

// ---- SingleRank and GradientBuckets ----

TEST_CASE("single rank collectives leave data unchanged and refuse work after abort",
          "[kasmina][dist]") {
    SingleRank one;
    CHECK(one.rank() == 0);
    CHECK(one.world() == 1);
    std::vector<float> f = {1.5f, -2.25f, 3.0f};
    std::vector<double> d = {0.1, -7.0};
    one.all_reduce_sum(f.data(), f.size());
    one.all_reduce_sum(d.data(), d.size());
    CHECK(f == std::vector<float>{1.5f, -2.25f, 3.0f});
    CHECK(d == std::vector<double>{0.1, -7.0});
    one.broadcast(f.data(), sizeof(float) * f.size(), 0);
    one.barrier();
    one.abort();
    CHECK(one.aborted());
    try {
        one.barrier();
        FAIL("barrier after abort did not throw");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kDisconnected);
    }
}

TEST_CASE("gradient buckets pack buffers, split large ones and keep values on one rank",
          "[kasmina][dist]") {
    SingleRank one;
    std::mt19937 rng(11);
    std::vector<float> a(5), b(300), c(7);
    for (auto* v : {&a, &b, &c})
        for (auto& x : *v) x = random_int_value(rng) * 0.37f;
    const auto a0 = a, b0 = b, c0 = c;
    GradientBuckets buckets(one, 64 * sizeof(float));
    CHECK(buckets.add(a) == 0);
    CHECK(buckets.add(b) == 1);
    CHECK(buckets.add(c) == 2);
    // 312 floats in buckets of 64: 5 full buckets and a partial one.
    CHECK(buckets.bucket_count() == 5);
    CHECK(buckets.last_bucket_of(0) == 0);
    CHECK(buckets.last_bucket_of(1) == 4);
    CHECK(buckets.last_bucket_of(2) == 4);
    buckets.all_reduce_average();
    CHECK(a == a0);
    CHECK(b == b0);
    CHECK(c == c0);
}

#ifdef ESPER_HAVE_GLOO

namespace {

GlooConfig loopback(int rank, int world, std::chrono::milliseconds timeout = 10000ms) {
    GlooConfig config;
    config.rank = rank;
    config.world = world;
    config.hostname = "127.0.0.1";
    config.timeout = timeout;
    return config;
}

}  // namespace

TEST_CASE("layer buckets pack whole layers in backward order until they reach the bucket size",
          "[kasmina][dist]") {
    // The benchmark MLP 512→2048→2048→10 in backward order: head, hidden 1, hidden 0 (floats,
    // weights + biases, each padded to 64).
    const std::vector<std::size_t> mlp = {20480 + 64, 4194304 + 2048, 1048576 + 2048};
    using B = LayerBucket;
    CHECK(plan_layer_buckets(mlp, 0).empty());
    CHECK(plan_layer_buckets(mlp, -1).empty());
    // Smaller than every layer: one bucket per layer.
    CHECK(plan_layer_buckets(mlp, 4) == std::vector<B>{{0, 0}, {1, 1}, {2, 2}});
    // 4 MiB: the head waits for hidden 1 (the bucket closes at 16.9 MB); hidden 0 alone.
    CHECK(plan_layer_buckets(mlp, std::int64_t{4} << 20) == std::vector<B>{{0, 1}, {2, 2}});
    // Larger than the model: one bucket, closed by the last layer.
    CHECK(plan_layer_buckets(mlp, std::int64_t{1} << 30) == std::vector<B>{{0, 2}});
    CHECK(plan_layer_buckets(std::vector<std::size_t>{}, 1024).empty());
    // Exactly the size closes the bucket.
    CHECK(plan_layer_buckets(std::vector<std::size_t>{4, 4, 8}, 32) ==
          std::vector<B>{{0, 1}, {2, 2}});
}

TEST_CASE("gloo ranks on loopback sum exactly, broadcast and pass a barrier", "[kasmina][dist]") {
    const int world = GENERATE(2, 4);
    CAPTURE(world);
    InMemoryKvStore store;
    const std::size_t n = 1037;  // odd, not a multiple of the ring's chunking
    std::vector<std::vector<float>> ints(world), noisy(world);
    std::vector<std::vector<double>> doubles(world);
    std::vector<float> expect_int(n, 0.0f);
    std::vector<double> expect_double(n, 0.0), expect_noisy(n, 0.0);
    for (int r = 0; r < world; ++r) {
        std::mt19937 rng(100 + r);
        std::normal_distribution<float> normal(0.0f, 1.0f);
        for (std::size_t i = 0; i < n; ++i) {
            ints[r].push_back(random_int_value(rng));
            doubles[r].push_back(random_int_value(rng) / 8.0);  // dyadic: sums stay exact
            noisy[r].push_back(normal(rng));
            expect_int[i] += ints[r][i];
            expect_double[i] += doubles[r][i];
            expect_noisy[i] += noisy[r][i];
        }
    }
    Bytes payload(333);
    std::mt19937 prng(5);
    for (auto& b : payload) b = static_cast<std::uint8_t>(prng() | 1);
    std::vector<Bytes> received(world, Bytes(payload.size(), 0));
    std::atomic<int> arrived{0};
    std::vector<int> seen_after_barrier(world, -1);

    auto errors = run_ranks(world, [&](int r) {
        GlooCollectives comm(loopback(r, world), store);
        REQUIRE(comm.rank() == r);
        REQUIRE(comm.world() == world);
        comm.all_reduce_sum(ints[r].data(), n);
        comm.all_reduce_sum(doubles[r].data(), n);
        comm.all_reduce_sum(noisy[r].data(), n);
        const int root = world - 1;
        if (r == root) received[r] = payload;
        comm.broadcast(received[r].data(), received[r].size(), root);
        std::this_thread::sleep_for(std::chrono::milliseconds(10 * r));
        arrived.fetch_add(1);
        comm.barrier();
        seen_after_barrier[r] = arrived.load();
    });
    require_no_errors(errors);
    for (int r = 0; r < world; ++r) {
        CHECK(ints[r] == expect_int);
        CHECK(doubles[r] == expect_double);
        // Non-integer sums depend on the reduction order, but every rank gets the same bits.
        CHECK(std::memcmp(noisy[r].data(), noisy[0].data(), n * sizeof(float)) == 0);
        for (std::size_t i = 0; i < n; ++i) {
            REQUIRE(noisy[r][i] == Approx(expect_noisy[i]).margin(1e-4));
        }
        CHECK(received[r] == payload);
        CHECK(seen_after_barrier[r] == world);
    }
}

TEST_CASE("gradient buckets over gloo average gradients across ranks", "[kasmina][dist]") {
    const int world = 4;
    InMemoryKvStore store;
    std::vector<std::vector<std::vector<float>>> grads(world);
    const std::vector<std::size_t> sizes = {3, 500, 1, 77};
    for (int r = 0; r < world; ++r) {
        std::mt19937 rng(1000 + r);
        for (auto s : sizes) {
            std::vector<float> g(s);
            for (auto& x : g) x = random_int_value(rng);
            grads[r].push_back(std::move(g));
        }
    }
    std::vector<std::vector<float>> mean;
    for (std::size_t k = 0; k < sizes.size(); ++k) {
        std::vector<float> m(sizes[k], 0.0f);
        for (int r = 0; r < world; ++r)
            for (std::size_t i = 0; i < sizes[k]; ++i) m[i] += grads[r][k][i];
        for (auto& x : m) x /= world;  // world is a power of two: exact
        mean.push_back(m);
    }
    auto errors = run_ranks(world, [&](int r) {
        GlooCollectives comm(loopback(r, world), store);
        GradientBuckets buckets(comm, 128 * sizeof(float));
        for (auto& g : grads[r]) buckets.add(g);
        buckets.all_reduce_average();
    });
    require_no_errors(errors);
    for (int r = 0; r < world; ++r)
        for (std::size_t k = 0; k < sizes.size(); ++k) CHECK(grads[r][k] == mean[k]);
}

TEST_CASE("a gloo rank that never joins makes the others fail disconnected within the timeout",
          "[kasmina][dist]") {
    const int world = 3;
    InMemoryKvStore store;
    const auto start = std::chrono::steady_clock::now();
    auto errors = run_ranks(world - 1, [&](int r) {  // rank 2 never starts
        GlooCollectives comm(loopback(r, world, 400ms), store);
        float x = 1.0f;
        comm.all_reduce_sum(&x, 1);
    });
    const auto elapsed = std::chrono::steady_clock::now() - start;
    for (auto& e : errors) {
        REQUIRE(e);
        CHECK(kind_of(e) == ErrorKind::kDisconnected);
    }
    CHECK(elapsed < 10s);
}

TEST_CASE("a gloo rank that leaves mid-run makes its peer fail disconnected, not hang",
          "[kasmina][dist]") {
    InMemoryKvStore store;
    std::atomic<bool> left{false};
    std::chrono::steady_clock::duration survivor_wait{};
    auto errors = run_ranks(2, [&](int r) {
        GlooCollectives comm(loopback(r, 2, 1000ms), store);
        comm.barrier();
        if (r == 1) {
            comm.abort();  // drops its connections and never joins the next collective
            left = true;
            return;
        }
        while (!left) std::this_thread::sleep_for(1ms);
        std::vector<float> x(64, 2.0f);
        const auto start = std::chrono::steady_clock::now();
        try {
            comm.all_reduce_sum(x.data(), x.size());
        } catch (...) {
            survivor_wait = std::chrono::steady_clock::now() - start;
            throw;
        }
    });
    REQUIRE(errors[0]);
    CHECK(kind_of(errors[0]) == ErrorKind::kDisconnected);
    CHECK_FALSE(errors[1]);
    CHECK(survivor_wait < 5s);
}

TEST_CASE("gloo ranks broadcast variable-size payloads and find the rank whose digest differs",
          "[kasmina][dist]") {
    const int world = 3;
    InMemoryKvStore store;
    Bytes table(1500);
    std::mt19937 rng(21);
    for (auto& b : table) b = static_cast<std::uint8_t>(rng() | 1);
    std::vector<Bytes> got(world);
    std::vector<std::vector<int>> agree(world), diverged(world);
    auto errors = run_ranks(world, [&](int r) {
        GlooCollectives comm(loopback(r, world), store);
        got[r] = r == 0 ? table : bytes_of("stale");
        broadcast_bytes(comm, got[r], 0);
        agree[r] = digest_mismatches(comm, digest64(got[r]));
        Bytes mine = got[r];
        if (r == 2) mine[700] ^= 0x10;  // one flipped bit on rank 2
        diverged[r] = digest_mismatches(comm, digest64(mine));
    });
    require_no_errors(errors);
    for (int r = 0; r < world; ++r) {
        CHECK(got[r] == table);
        CHECK(agree[r].empty());
        CHECK(diverged[r] == std::vector<int>{2});
    }
    CHECK(digest64(table) != digest64(bytes_of("stale")));
}

TEST_CASE("gloo rejects a rank outside the world size", "[kasmina][dist]") {
    InMemoryKvStore store;
    try {
        GlooCollectives comm(loopback(2, 2), store);
        FAIL("rank 2 of 2 was accepted");
    } catch (const Error& e) {
        CHECK(e.kind() == ErrorKind::kInvalidInput);
        CHECK(std::string(e.what()).find("rank 2") != std::string::npos);
    }
}

// Gloo writes to its peers' sockets without MSG_NOSIGNAL: a rank whose peer has gone would die
// of SIGPIPE (CI saw it once in the test above) instead of failing with kDisconnected, so a
// GlooCollectives ignores SIGPIPE for its process when nothing else handles it. Checked in a
// forked child that starts from the default disposition: after the constructor, a write into a
// socket whose peer is closed returns EPIPE, and the child lives to say so.
TEST_CASE("a gloo process survives a write to a peer that has gone (SIGPIPE ignored)",
          "[kasmina][dist]") {
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        std::signal(SIGPIPE, SIG_DFL);
        int code = 1;
        try {
            InMemoryKvStore store;
            GlooCollectives comm(loopback(0, 1, 2000ms), store);
            int fds[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM, 0, fds) == 0) {
                ::close(fds[1]);
                const char byte = 1;
                code = ::write(fds[0], &byte, 1) < 0 && errno == EPIPE ? 0 : 2;
            }
        } catch (...) {
            code = 3;
        }
        ::_exit(code);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    INFO("signalled " << WIFSIGNALED(status) << " signal "
                      << (WIFSIGNALED(status) ? WTERMSIG(status) : 0));
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("two forked processes all-reduce over gloo through a file store", "[kasmina][dist]") {
    auto dir = fresh_dir("fork");
    const std::size_t n = 513;
    auto values_for = [&](int rank) {
        std::mt19937 rng(77 + rank);
        std::vector<double> v(n);
        for (auto& x : v) x = random_int_value(rng) / 4.0;
        return v;
    };
    std::vector<double> expect(n);
    {
        auto v0 = values_for(0), v1 = values_for(1);
        for (std::size_t i = 0; i < n; ++i) expect[i] = v0[i] + v1[i];
    }
    auto work = [&](int rank) -> bool {
        FileKvStore store(dir);
        GlooCollectives comm(loopback(rank, 2, 10000ms), store);
        auto v = values_for(rank);
        comm.all_reduce_sum(v.data(), n);
        comm.barrier();
        return v == expect;
    };
    pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        bool ok = false;
        try {
            ok = work(1);
        } catch (...) {
            ok = false;
        }
        ::_exit(ok ? 0 : 1);
    }
    bool parent_ok = work(0);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    CHECK(parent_ok);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    std::filesystem::remove_all(dir);
}

#endif  // ESPER_HAVE_GLOO
