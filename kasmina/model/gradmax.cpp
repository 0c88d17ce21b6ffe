// G's right singular vectors through the eigenvectors of the small Gram matrix G·Gᵀ [out, out]
// (cyclic Jacobi in double): out is the next layer's width (the classes for the head), far
// smaller than in, so this costs one [out, in]·[in, out] product and a few sweeps.
#include "kasmina/model/gradmax.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace esper::kasmina {

namespace {

// Eigen-decomposition of the symmetric a [n, n] (destroyed): eigenvalues on its diagonal,
// eigenvectors in the columns of q.
void jacobi_eigen(std::vector<double>& a, std::vector<double>& q, int64_t n) {
    q.assign(size_t(n * n), 0.0);
    for (int64_t i = 0; i < n; ++i) q[size_t(i * n + i)] = 1.0;
    auto at = [&](int64_t r, int64_t c) -> double& { return a[size_t(r * n + c)]; };
    double scale = 0.0;
    for (double x : a) scale += x * x;
    for (int sweep = 0; sweep < 100; ++sweep) {
        double off = 0.0;
        for (int64_t r = 0; r < n; ++r)
            for (int64_t c = r + 1; c < n; ++c) off += at(r, c) * at(r, c);
        if (off <= 1e-30 * scale) return;
        for (int64_t p = 0; p < n; ++p) {
            for (int64_t r = p + 1; r < n; ++r) {
                if (at(p, r) == 0.0) continue;
                const double theta = (at(r, r) - at(p, p)) / (2.0 * at(p, r));
                const double t =
                    (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
                const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
                for (int64_t k = 0; k < n; ++k) {  // columns p and r: a ← a·J
                    const double akp = at(k, p), akr = at(k, r);
                    at(k, p) = c * akp - s * akr;
                    at(k, r) = s * akp + c * akr;
                }
                for (int64_t k = 0; k < n; ++k) {  // rows p and r: a ← Jᵀ·a
                    const double apk = at(p, k), ark = at(r, k);
                    at(p, k) = c * apk - s * ark;
                    at(r, k) = s * apk + c * ark;
                }
                for (int64_t k = 0; k < n; ++k) {
                    const double qkp = q[size_t(k * n + p)], qkr = q[size_t(k * n + r)];
                    q[size_t(k * n + p)] = c * qkp - s * qkr;
                    q[size_t(k * n + r)] = s * qkp + c * qkr;
                }
            }
        }
    }
}

}  // namespace

GradmaxDirections gradmax_directions(std::span<const float> g, int64_t out, int64_t in,
                                     int64_t max_rows) {
    ESPER_REQUIRE(out > 0 && in > 0 && max_rows >= 0 && int64_t(g.size()) == out * in, "out=", out,
                  " in=", in, " max_rows=", max_rows, " g=", g.size());
    std::vector<double> gram(size_t(out * out), 0.0);
    for (int64_t r = 0; r < out; ++r)
        for (int64_t c = r; c < out; ++c) {
            double s = 0.0;
            for (int64_t i = 0; i < in; ++i)
                s += double(g[size_t(r * in + i)]) * g[size_t(c * in + i)];
            gram[size_t(r * out + c)] = gram[size_t(c * out + r)] = s;
        }
    std::vector<double> q;
    jacobi_eigen(gram, q, out);
    std::vector<int64_t> order(static_cast<size_t>(out));
    std::iota(order.begin(), order.end(), int64_t{0});
    auto eig = [&](int64_t i) { return std::max(0.0, gram[size_t(i * out + i)]); };
    std::ranges::sort(order, [&](int64_t a, int64_t b) { return eig(a) > eig(b); });
    GradmaxDirections d;
    const double top = eig(order[0]);
    std::vector<double> v(static_cast<size_t>(in));
    for (int64_t k = 0; k < std::min(out, max_rows); ++k) {
        const int64_t e = order[size_t(k)];
        if (top <= 0.0 || eig(e) < 1e-12 * top) break;  // σ below 1e-6 of the largest
        // v = Gᵀ·u / σ, normalised again so rounding in u does not show.
        std::ranges::fill(v, 0.0);
        for (int64_t r = 0; r < out; ++r) {
            const double u = q[size_t(r * out + e)];
            for (int64_t i = 0; i < in; ++i) v[size_t(i)] += u * g[size_t(r * in + i)];
        }
        const double norm = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
        if (norm <= 0.0) break;
        for (double x : v) d.v.push_back(float(x / norm));
        d.sigma.push_back(norm);
        ++d.rows;
    }
    return d;
}

}  // namespace esper::kasmina
