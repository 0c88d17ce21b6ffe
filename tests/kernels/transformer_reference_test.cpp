// CPU tests of the transformer host's op references (LayerNorm, causal attention, embeddings):
// every backward against central finite differences of a random linear functional of the
// forward output (in double), plus the properties the model relies on (causality, T = 1).
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/embedding.h"
#include "kernels/layernorm.h"
#include "tests/kernels/kernel_test_util.h"

using namespace esper::kernels;
using esper::kernels::test::compare;
using esper::kernels::test::fill_uniform;

namespace {

// ∂/∂x[i] of f by central differences, for every i.
std::vector<double> numeric_grad(std::vector<float>& x, const std::function<double()>& f,
                                 float h = 1e-2f) {
    std::vector<double> g(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
        const float keep = x[i];
        x[i] = keep + h;
        const double up = f();
        x[i] = keep - h;
        const double down = f();
        x[i] = keep;
        g[i] = (up - down) / (2.0 * double(h));
    }
    return g;
}

double weighted(const std::vector<float>& y, const std::vector<float>& w) {
    double acc = 0.0;
    for (size_t i = 0; i < y.size(); ++i) acc += double(y[i]) * double(w[i]);
    return acc;
}

}  // namespace

TEST_CASE("layernorm reference normalises rows and its backward matches finite differences",
          "[kernels][reference][transformer]") {
    std::mt19937 rng(11);
    const int32_t rows = GENERATE(1, 3, 6);
    const int32_t cols = GENERATE(1, 5, 16);
    std::vector<float> x(size_t(rows) * cols), gamma(cols), beta(cols), w(x.size());
    fill_uniform(x, rng, -2.f, 2.f);
    fill_uniform(gamma, rng, 0.5f, 1.5f);
    fill_uniform(beta, rng, -0.5f, 0.5f);
    fill_uniform(w, rng, -1.f, 1.f);
    std::vector<float> y(x.size()), mean(rows), rstd(rows);
    const float eps = 1e-5f;
    auto loss = [&] {
        layernorm_forward_reference(x.data(), gamma.data(), beta.data(), y.data(), mean.data(),
                                    rstd.data(), rows, cols, eps);
        return weighted(y, w);
    };
    loss();
    if (cols > 1) {
        // With γ = 1, β = 0 each row would have mean 0 and variance ≈ 1: check the definition.
        for (int32_t r = 0; r < rows; ++r) {
            double m = 0, v = 0;
            for (int32_t c = 0; c < cols; ++c) {
                const double xh = (y[size_t(r) * cols + c] - beta[c]) / gamma[c];
                m += xh;
                v += xh * xh;
            }
            CHECK(std::abs(m / cols) < 1e-4);
            CHECK(std::abs(v / cols - 1.0) < 1e-3);
        }
    }
    std::vector<float> dx(x.size(), NAN), dgamma(cols, 0.0f), dbeta(cols, 0.0f);
    layernorm_backward_reference(w.data(), x.data(), gamma.data(), mean.data(), rstd.data(),
                                 dx.data(), dgamma.data(), dbeta.data(), rows, cols);
    std::string err = compare(dx, numeric_grad(x, loss, 1e-3f), 2e-3, 2e-2, "dx");
    INFO(err);
    CHECK(err.empty());
    err = compare(dgamma, numeric_grad(gamma, loss, 1e-3f), 2e-3, 2e-2, "dgamma");
    INFO(err);
    CHECK(err.empty());
    err = compare(dbeta, numeric_grad(beta, loss, 1e-3f), 2e-3, 2e-2, "dbeta");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("causal attention reference: backward matches finite differences of q, k and v",
          "[kernels][reference][transformer]") {
    std::mt19937 rng(12);
    const int32_t B = 2, T = GENERATE(1, 2, 5), H = 2, D = GENERATE(3, 4);
    AttentionShape s;
    s.batch = B;
    s.seq = T;
    s.heads = H;
    s.head_dim = D;
    s.ld_qkv = 3 * H * D;  // packed qkv
    s.ld_out = H * D;
    s.scale = 1.0f / std::sqrt(float(D));
    std::vector<float> qkv(size_t(B) * T * s.ld_qkv), out(size_t(B) * T * s.ld_out),
        lse(size_t(B) * H * T), w(out.size());
    fill_uniform(qkv, rng, -1.5f, 1.5f);
    fill_uniform(w, rng, -1.f, 1.f);
    const float* q = qkv.data();
    const float* k = qkv.data() + H * D;
    const float* v = qkv.data() + 2 * H * D;
    auto loss = [&] {
        attention_forward_reference(s, q, k, v, out.data(), lse.data());
        return weighted(out, w);
    };
    loss();
    if (T == 1) {  // one key: the output is v itself
        for (int32_t b = 0; b < B; ++b)
            for (int32_t i = 0; i < H * D; ++i)
                CHECK(out[size_t(b) * s.ld_out + i] ==
                      Approx(v[size_t(b) * s.ld_qkv + i]).epsilon(1e-6));
    }
    std::vector<float> dqkv(qkv.size(), NAN);
    attention_backward_reference(s, q, k, v, out.data(), w.data(), lse.data(), dqkv.data(),
                                 dqkv.data() + H * D, dqkv.data() + 2 * H * D);
    const std::string err = compare(dqkv, numeric_grad(qkv, loss, 1e-3f), 2e-3, 2e-2, "dqkv");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("causal attention reference never lets a query see a later key",
          "[kernels][reference][transformer]") {
    std::mt19937 rng(13);
    const int32_t T = 6, H = 1, D = 4;
    AttentionShape s{1, T, H, D, 3 * H * D, H * D, 0.5f};
    std::vector<float> qkv(size_t(T) * s.ld_qkv), a(size_t(T) * D), b(a.size()), lse(T);
    fill_uniform(qkv, rng, -1.f, 1.f);
    attention_forward_reference(s, qkv.data(), qkv.data() + D, qkv.data() + 2 * D, a.data(),
                                lse.data());
    // Change every key and value at the last position: rows 0..T-2 must not move.
    for (int32_t d = D; d < 3 * D; ++d) qkv[size_t(T - 1) * s.ld_qkv + d] += 5.0f;
    attention_forward_reference(s, qkv.data(), qkv.data() + D, qkv.data() + 2 * D, b.data(),
                                lse.data());
    for (int32_t i = 0; i < (T - 1) * D; ++i) CHECK(a[size_t(i)] == b[size_t(i)]);
    bool last_moved = false;
    for (int32_t d = 0; d < D; ++d)
        last_moved |= a[size_t(T - 1) * D + d] != b[size_t(T - 1) * D + d];
    CHECK(last_moved);
}

TEST_CASE("embedding reference gathers token and position rows and scatters their gradient",
          "[kernels][reference][transformer]") {
    std::mt19937 rng(14);
    const int32_t B = 3, T = 4, C = 5, V = 7;
    std::vector<int32_t> tokens(size_t(B) * T);
    for (auto& t : tokens) t = int32_t(rng() % V);
    tokens[1] = tokens[0];  // a repeated token accumulates twice
    std::vector<float> wte(size_t(V) * C), wpe(size_t(T) * C), x(size_t(B) * T * C), w(x.size());
    fill_uniform(wte, rng, -1.f, 1.f);
    fill_uniform(wpe, rng, -1.f, 1.f);
    fill_uniform(w, rng, -1.f, 1.f);
    auto loss = [&] {
        embedding_forward_reference(tokens.data(), wte.data(), wpe.data(), x.data(), B, T, C);
        return weighted(x, w);
    };
    loss();
    CHECK(x[size_t(T + 2) * C + 1] == wte[size_t(tokens[T + 2]) * C + 1] + wpe[2 * C + 1]);
    std::vector<float> dwte(wte.size(), 0.0f), dwpe(wpe.size(), 0.0f);
    embedding_backward_reference(tokens.data(), w.data(), dwte.data(), dwpe.data(), B, T, C);
    std::string err = compare(dwte, numeric_grad(wte, loss), 1e-3, 1e-3, "dwte");
    INFO(err);
    CHECK(err.empty());
    err = compare(dwpe, numeric_grad(wpe, loss), 1e-3, 1e-3, "dwpe");
    INFO(err);
    CHECK(err.empty());
}
