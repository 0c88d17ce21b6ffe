// CPU reference of causal attention forward and backward (see attention.h). Plain loops in
// double; the probabilities are recomputed from the saved log-sum-exp in the backward.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/attention.h"

namespace esper::kernels {

namespace {

const float* row(const float* base, const AttentionShape& s, int64_t ld, int32_t b, int32_t t,
                 int32_t h) {
    return base + (int64_t(b) * s.seq + t) * ld + int64_t(h) * s.head_dim;
}
float* row(float* base, const AttentionShape& s, int64_t ld, int32_t b, int32_t t, int32_t h) {
    return base + (int64_t(b) * s.seq + t) * ld + int64_t(h) * s.head_dim;
}

double dot(const float* a, const float* b, int32_t n) {
    double acc = 0.0;
    for (int32_t i = 0; i < n; ++i) acc += double(a[i]) * double(b[i]);
    return acc;
}

}  // namespace

void attention_forward_reference(const AttentionShape& s, const float* q, const float* k,
                                 const float* v, float* out, float* lse) {
    const int32_t T = s.seq, D = s.head_dim;
    std::vector<double> score(static_cast<size_t>(T)), acc(static_cast<size_t>(D));
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.heads; ++h)
            for (int32_t i = 0; i < T; ++i) {
                const float* qi = row(q, s, s.ld_qkv, b, i, h);
                double mx = -INFINITY;
                for (int32_t j = 0; j <= i; ++j) {
                    score[size_t(j)] = dot(qi, row(k, s, s.ld_qkv, b, j, h), D) * s.scale;
                    mx = std::max(mx, score[size_t(j)]);
                }
                double sum = 0.0;
                for (int32_t j = 0; j <= i; ++j) sum += std::exp(score[size_t(j)] - mx);
                std::fill(acc.begin(), acc.end(), 0.0);
                for (int32_t j = 0; j <= i; ++j) {
                    const double p = std::exp(score[size_t(j)] - mx) / sum;
                    const float* vj = row(v, s, s.ld_qkv, b, j, h);
                    for (int32_t d = 0; d < D; ++d) acc[size_t(d)] += p * vj[d];
                }
                float* oi = row(out, s, s.ld_out, b, i, h);
                for (int32_t d = 0; d < D; ++d) oi[d] = float(acc[size_t(d)]);
                lse[(int64_t(b) * s.heads + h) * T + i] = float(mx + std::log(sum));
            }
}

void attention_backward_reference(const AttentionShape& s, const float* q, const float* k,
                                  const float* v, const float* out, const float* dout,
                                  const float* lse, float* dq, float* dk, float* dv) {
    const int32_t T = s.seq, D = s.head_dim;
    std::vector<double> dqa(size_t(T) * D), dka(size_t(T) * D), dva(size_t(T) * D);
    for (int32_t b = 0; b < s.batch; ++b)
        for (int32_t h = 0; h < s.heads; ++h) {
            std::fill(dqa.begin(), dqa.end(), 0.0);
            std::fill(dka.begin(), dka.end(), 0.0);
            std::fill(dva.begin(), dva.end(), 0.0);
            for (int32_t i = 0; i < T; ++i) {
                const float* qi = row(q, s, s.ld_qkv, b, i, h);
                const float* doi = row(dout, s, s.ld_out, b, i, h);
                // Δ_i = Σ_j P_ij dP_ij = dO_i · O_i
                const double delta = dot(doi, row(out, s, s.ld_out, b, i, h), D);
                const double l = lse[(int64_t(b) * s.heads + h) * T + i];
                for (int32_t j = 0; j <= i; ++j) {
                    const float* kj = row(k, s, s.ld_qkv, b, j, h);
                    const float* vj = row(v, s, s.ld_qkv, b, j, h);
                    const double p = std::exp(dot(qi, kj, D) * s.scale - l);
                    const double dp = dot(doi, vj, D);
                    const double ds = p * (dp - delta) * s.scale;
                    for (int32_t d = 0; d < D; ++d) {
                        dva[size_t(j) * D + d] += p * doi[d];
                        dqa[size_t(i) * D + d] += ds * kj[d];
                        dka[size_t(j) * D + d] += ds * qi[d];
                    }
                }
            }
            for (int32_t t = 0; t < T; ++t) {
                float* dqt = row(dq, s, s.ld_qkv, b, t, h);
                float* dkt = row(dk, s, s.ld_qkv, b, t, h);
                float* dvt = row(dv, s, s.ld_qkv, b, t, h);
                for (int32_t d = 0; d < D; ++d) {
                    dqt[d] = float(dqa[size_t(t) * D + d]);
                    dkt[d] = float(dka[size_t(t) * D + d]);
                    dvt[d] = float(dva[size_t(t) * D + d]);
                }
            }
        }
}

}  // namespace esper::kernels
