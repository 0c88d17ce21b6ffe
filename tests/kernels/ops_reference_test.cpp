// CPU tests of the optimizer, softmax cross-entropy and bias+activation references against
// hand-derived formulas and finite differences.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/bias_act.h"
#include "kernels/grad_ops.h"
#include "kernels/optimizer.h"
#include "kernels/softmax_xent.h"
#include "tests/kernels/kernel_test_util.h"

using namespace esper::kernels;
using esper::kernels::test::compare;
using esper::kernels::test::fill_uniform;

TEST_CASE("sgd momentum reference follows torch.optim.SGD over several steps",
          "[kernels][reference]") {
    std::mt19937 rng(3);
    const int64_t n = 37;
    std::vector<float> p(n), buf(n, 0.0f), g(n);
    fill_uniform(p, rng, -1.f, 1.f);
    std::vector<double> pd(p.begin(), p.end()), bd(n, 0.0);
    const float lr = 0.05f, mom = 0.9f, wd = 1e-2f;
    for (int step = 0; step < 4; ++step) {
        fill_uniform(g, rng, -1.f, 1.f);
        sgd_momentum_step_reference(p.data(), g.data(), buf.data(), n, lr, mom, wd);
        for (int64_t i = 0; i < n; ++i) {
            const double gi = g[i] + double(wd) * pd[i];
            bd[i] = step == 0 ? gi : mom * bd[i] + gi;
            pd[i] -= lr * bd[i];
        }
    }
    const std::string err = compare(p, pd, 1e-5, 1e-5, "params");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("adamw reference follows torch.optim.AdamW with bias correction",
          "[kernels][reference]") {
    std::mt19937 rng(4);
    const int64_t n = 41;
    std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f), g(n);
    fill_uniform(p, rng, -1.f, 1.f);
    std::vector<double> pd(p.begin(), p.end()), md(n, 0.0), vd(n, 0.0);
    const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1;
    for (int step = 1; step <= 5; ++step) {
        fill_uniform(g, rng, -1.f, 1.f);
        adamw_step_reference(p.data(), g.data(), m.data(), v.data(), n, float(lr), float(b1),
                             float(b2), float(eps), float(wd), step);
        for (int64_t i = 0; i < n; ++i) {
            pd[i] *= 1.0 - lr * wd;
            md[i] = b1 * md[i] + (1 - b1) * g[i];
            vd[i] = b2 * vd[i] + (1 - b2) * double(g[i]) * g[i];
            const double mh = md[i] / (1 - std::pow(b1, step));
            const double vh = vd[i] / (1 - std::pow(b2, step));
            pd[i] -= lr * mh / (std::sqrt(vh) + eps);
        }
    }
    const std::string err = compare(p, pd, 1e-5, 1e-4, "params");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("scale_sum_squares scales in place and sums the scaled squares; scale 0 clears",
          "[kernels][reference]") {
    std::vector<float> x = {1.0f, -2.0f, 0.5f, 3.0f};
    CHECK(scale_sum_squares_reference(x.data(), 4, 0.5f) == Approx(0.25 + 1.0 + 0.0625 + 2.25));
    CHECK(x == std::vector<float>{0.5f, -1.0f, 0.25f, 1.5f});
    // A frozen seed's gradient (factor 0) is exactly zero, even where it was not finite.
    std::vector<float> y = {NAN, INFINITY, -1.0f};
    CHECK(scale_sum_squares_reference(y.data(), 3, 0.0f) == 0.0);
    CHECK(y == std::vector<float>{0.0f, 0.0f, 0.0f});
    // A non-finite value under a nonzero factor stays visible in the sum.
    std::vector<float> z = {1.0f, NAN};
    CHECK(std::isnan(scale_sum_squares_reference(z.data(), 2, 1.0f)));
}

TEST_CASE("chunk_moments sums each column chunk of every row, added to what out held",
          "[kernels][reference]") {
    // 2 rows × 5 columns, chunks {0, 1} {2} {3, 4}.
    const std::vector<float> x = {1.0f, 2.0f, 0.0f, -1.0f, 3.0f,  //
                                  4.0f, 0.0f, 5.0f, 2.0f,  -2.0f};
    const int32_t offsets[] = {0, 2, 3, 5};
    std::vector<double> out(9, 0.0);
    out[0] = 10.0;
    chunk_moments_reference(x.data(), 2, 5, offsets, 3, out.data());
    const std::vector<double> want = {10.0 + 7.0, 1.0 + 4.0 + 16.0,
                                      1.0,  //
                                      5.0,        25.0,
                                      1.0,  //
                                      2.0,        1.0 + 9.0 + 4.0 + 4.0,
                                      0.0};
    CHECK(out == want);
}

TEST_CASE("softmax cross-entropy reference gives mean loss, scaled gradient and accuracy",
          "[kernels][reference]") {
    std::mt19937 rng(5);
    const int32_t B = 9, C = 7;
    std::vector<float> logits(size_t(B) * C), dl(logits.size(), NAN);
    fill_uniform(logits, rng, -3.f, 3.f);
    std::vector<int32_t> labels(B);
    for (int32_t b = 0; b < B; ++b) labels[b] = int32_t(rng() % C);
    float loss = NAN;
    int32_t correct = -1;
    softmax_xent_reference(logits.data(), labels.data(), B, C, &loss, dl.data(), &correct);
    auto loss_at = [&](const std::vector<float>& z) {
        double t = 0;
        for (int32_t b = 0; b < B; ++b) {
            double s = 0;
            for (int32_t c = 0; c < C; ++c) s += std::exp(double(z[b * C + c]));
            t += std::log(s) - z[b * C + labels[b]];
        }
        return t / B;
    };
    CHECK(loss == Approx(loss_at(logits)).epsilon(1e-6));
    int32_t hits = 0;
    for (int32_t b = 0; b < B; ++b) {
        int32_t arg = 0;
        for (int32_t c = 1; c < C; ++c)
            if (logits[b * C + c] > logits[b * C + arg]) arg = c;
        hits += arg == labels[b];
    }
    CHECK(correct == hits);
    std::vector<double> fd(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) {
        auto zp = logits, zm = logits;
        zp[i] += 1e-2f;
        zm[i] -= 1e-2f;
        fd[i] = (loss_at(zp) - loss_at(zm)) / (double(zp[i]) - zm[i]);
    }
    const std::string err = compare(dl, fd, 1e-5, 1e-3, "dlogits");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("bias+activation reference forward and backward agree with finite differences",
          "[kernels][reference]") {
    const int act = GENERATE(0, 1, 2);
    CAPTURE(act);
    std::mt19937 rng(6 + act);
    const int32_t R = 5, C = 11;
    std::vector<float> z0(size_t(R) * C), bias(C), da(z0.size());
    fill_uniform(z0, rng, -2.f, 2.f);
    fill_uniform(bias, rng, -0.5f, 0.5f);
    fill_uniform(da, rng, -1.f, 1.f);
    for (size_t i = 0; i < z0.size(); ++i)  // keep finite differences off the relu kink
        if (std::fabs(z0[i] + bias[i % C]) < 0.05f) z0[i] += 0.1f;
    auto fwd = [&](std::vector<float> z, const std::vector<float>& b) {
        std::vector<float> a(z.size());
        bias_act_forward_reference(z.data(), b.data(), a.data(), R, C, Activation(act));
        double t = 0;
        for (size_t i = 0; i < a.size(); ++i) t += double(da[i]) * a[i];
        return std::make_pair(z, t);
    };
    auto [z, unused] = fwd(z0, bias);
    (void)unused;
    for (size_t i = 0; i < z.size(); ++i) CHECK(z[i] == z0[i] + bias[i % C]);
    std::vector<float> dz(z.size(), NAN), db(C, NAN);
    bias_act_backward_reference(da.data(), z.data(), dz.data(), db.data(), R, C, Activation(act));
    std::vector<double> fd_z(z.size()), fd_b(C);
    for (size_t i = 0; i < z.size(); ++i) {
        auto zp = z0, zm = z0;
        zp[i] += 1e-2f;
        zm[i] -= 1e-2f;
        fd_z[i] = (fwd(zp, bias).second - fwd(zm, bias).second) / (double(zp[i]) - zm[i]);
    }
    for (int32_t c = 0; c < C; ++c) {
        auto bp = bias, bm = bias;
        bp[c] += 1e-2f;
        bm[c] -= 1e-2f;
        fd_b[c] = (fwd(z0, bp).second - fwd(z0, bm).second) / (double(bp[c]) - bm[c]);
    }
    const std::string err =
        compare(dz, fd_z, 1e-3, 1e-3, "dz") + compare(db, fd_b, 1e-3, 1e-3, "dbias");
    INFO(err);
    CHECK(err.empty());
}
