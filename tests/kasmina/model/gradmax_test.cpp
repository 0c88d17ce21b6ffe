// GradMax's directions (kasmina/model/gradmax.h) are G's right singular vectors: orthonormal,
// G·v_j has length σ_j in falling order, together they hold all of ‖G‖_F, and no other set of
// as many unit rows gets more of it.
#include "kasmina/model/gradmax.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "kasmina/model/tensor.h"
#include "tests/kasmina/model/gradmax_test_util.h"

using namespace esper::kasmina;
using esper::kasmina::test::gradient_captured;

namespace {

std::vector<float> random_matrix(int64_t rows, int64_t cols, uint64_t seed) {
    Rng rng(seed);
    std::vector<float> m(size_t(rows * cols));
    for (float& x : m) x = rng.uniform(-1.0f, 1.0f);
    return m;
}

}  // namespace

TEST_CASE("gradmax directions are the gradient's right singular vectors", "[kasmina][gradmax]") {
    const auto [out, in] =
        GENERATE(table<int64_t, int64_t>({{5, 12}, {4, 16}, {10, 784}, {1, 3}, {20, 16}}));
    CAPTURE(out, in);
    const std::vector<float> g = random_matrix(out, in, 11 + uint64_t(out * in));
    const GradmaxDirections d = gradmax_directions(g, out, in, 64);
    REQUIRE(d.rows == std::min(out, in));  // a random G has full rank
    double total = 0.0;
    for (float x : g) total += double(x) * x;
    double held = 0.0;
    for (int64_t j = 0; j < d.rows; ++j) {
        for (int64_t k = 0; k <= j; ++k) {
            double dot = 0.0;
            for (int64_t i = 0; i < in; ++i)
                dot += double(d.v[size_t(j * in + i)]) * d.v[size_t(k * in + i)];
            CHECK(dot == Approx(j == k ? 1.0 : 0.0).margin(1e-5));
        }
        const double along =
            gradient_captured(g, out, in, std::span(d.v).subspan(size_t(j * in)), 1);
        CHECK(std::sqrt(along) == Approx(d.sigma[size_t(j)]).epsilon(1e-4));
        if (j > 0) CHECK(d.sigma[size_t(j)] <= d.sigma[size_t(j - 1)]);
        held += along;
    }
    CHECK(held == Approx(total).epsilon(1e-4));
    // The top k beat any k random orthonormal-ish rows (unit rows, Gram-Schmidt).
    const int64_t k = std::max<int64_t>(1, out / 2);
    const double best = gradient_captured(g, out, in, d.v, k);
    for (uint64_t trial = 0; trial < 20; ++trial) {
        std::vector<float> v = random_matrix(k, in, 1000 + trial);
        for (int64_t j = 0; j < k; ++j) {
            float* row = v.data() + j * in;
            for (int64_t p = 0; p < j; ++p) {
                const float* prev = v.data() + p * in;
                double dot = 0.0;
                for (int64_t i = 0; i < in; ++i) dot += double(row[i]) * prev[i];
                for (int64_t i = 0; i < in; ++i) row[i] -= float(dot) * prev[i];
            }
            double n = 0.0;
            for (int64_t i = 0; i < in; ++i) n += double(row[i]) * row[i];
            for (int64_t i = 0; i < in; ++i) row[i] = float(row[i] / std::sqrt(n));
        }
        CHECK(gradient_captured(g, out, in, v, k) <= best * (1.0 + 1e-5));
    }
}

TEST_CASE("gradmax places no more directions than the gradient's rank or the units asked for",
          "[kasmina][gradmax]") {
    const int64_t out = 6, in = 20;
    // Rank 2: every row a mix of two fixed rows.
    const std::vector<float> basis = random_matrix(2, in, 3), mix = random_matrix(out, 2, 4);
    std::vector<float> g(size_t(out * in));
    for (int64_t r = 0; r < out; ++r)
        for (int64_t i = 0; i < in; ++i)
            g[size_t(r * in + i)] = mix[size_t(r * 2)] * basis[size_t(i)] +
                                    mix[size_t(r * 2 + 1)] * basis[size_t(in + i)];
    CHECK(gradmax_directions(g, out, in, 8).rows == 2);
    CHECK(gradmax_directions(g, out, in, 1).rows == 1);
    CHECK(gradmax_directions(g, out, in, 0).rows == 0);
    CHECK(gradmax_directions(std::vector<float>(size_t(out * in), 0.0f), out, in, 8).rows == 0);
}
