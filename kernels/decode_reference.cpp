// CPU references of the decode kernels (see decode.h): double accumulation, the bf16 cache and
// output values given as floats.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/bf16_host.h"
#include "kernels/decode.h"
#include "kernels/layernorm.h"

namespace esper::kernels {

namespace {

uint64_t splitmix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

int32_t row_pos(const DecodeShape& s, int32_t pos, int32_t r) { return pos + (s.shared ? r : 0); }
int32_t row_cache(const DecodeShape& s, int32_t r) { return s.cache_base + (s.shared ? 0 : r); }

}  // namespace

double decode_uniform(uint64_t seed, int64_t step, int32_t row) {
    const uint64_t h = splitmix64(
        seed ^ splitmix64(uint64_t(step) * 0x100000001b3ull + uint64_t(uint32_t(row)) + 1));
    return double(h >> 11) * 0x1.0p-53;
}

void decode_embed_reference(const int32_t* tokens, const float* wte, const float* wpe, int32_t pos,
                            bool shared, float* x, int32_t rows, int32_t channels) {
    for (int32_t r = 0; r < rows; ++r) {
        const int64_t p = pos + (shared ? r : 0);
        for (int32_t c = 0; c < channels; ++c)
            x[int64_t(r) * channels + c] =
                wte[int64_t(tokens[r]) * channels + c] + wpe[p * channels + c];
    }
}

bool decode_linear_fits(int32_t rows, int32_t in, bool ln) {
    const size_t rows_room = (size_t(48) << 10) - 256;  // 256 bytes: the block's sums
    return rows >= 1 && rows <= kDecodeLinearMaxRows && in >= 8 && in % 8 == 0 &&
           (!ln || size_t(rows) * size_t(in) * 2 <= rows_room);
}

void decode_linear_reference(const DecodeLinear& s, const float* x_or_a, const float* w, float* y) {
    const int64_t in = s.in;
    std::vector<float> a(x_or_a, x_or_a + s.rows * in);
    if (s.ln_w) {
        std::vector<float> mean(size_t(s.rows)), rstd(size_t(s.rows));
        layernorm_forward_reference(x_or_a, s.ln_w, s.ln_b, a.data(), mean.data(), rstd.data(),
                                    s.rows, s.in, s.eps);
        for (float& v : a) v = round_bf16(v);
    }
    constexpr double kC = 0.7978845608028654, kK = 0.044715;
    for (int32_t r = 0; r < s.rows; ++r)
        for (int32_t n = 0; n < s.out; ++n) {
            double z = s.bias ? double(s.bias[n]) : 0.0;
            for (int64_t k = 0; k < in; ++k) z += double(a[r * in + k]) * w[n * in + k];
            if (s.gelu) z = 0.5 * z * (1.0 + std::tanh(kC * (z + kK * z * z * z)));
            float& out = y[int64_t(r) * s.out + n];
            out = s.y_bf16 ? round_bf16(float(z))
                           : float((s.beta != 0.0f ? double(s.beta) * out : 0.0) + z);
        }
}

void decode_append_reference(const DecodeShape& s, const float* k_new, const float* v_new,
                             int32_t pos, float* k_cache, float* v_cache) {
    const int64_t width = int64_t(s.heads) * s.head_dim;
    for (int32_t r = 0; r < s.rows; ++r) {
        const int32_t p = row_pos(s, pos, r);
        if (p >= s.context) continue;
        const int64_t at = (int64_t(row_cache(s, r)) * s.context + p) * width;
        std::copy_n(k_new + r * s.ld_q, width, k_cache + at);
        std::copy_n(v_new + r * s.ld_q, width, v_cache + at);
    }
}

void decode_attention_reference(const DecodeShape& s, const float* q, const float* k_cache,
                                const float* v_cache, int32_t pos, float* out) {
    const int64_t D = s.head_dim, width = int64_t(s.heads) * D;
    std::vector<double> score, acc(static_cast<size_t>(D));
    for (int32_t r = 0; r < s.rows; ++r) {
        const int32_t p = row_pos(s, pos, r);
        if (p >= s.context) continue;
        const int64_t base = int64_t(row_cache(s, r)) * s.context * width;
        score.assign(size_t(p) + 1, 0.0);
        for (int32_t h = 0; h < s.heads; ++h) {
            const float* qh = q + r * s.ld_q + h * D;
            double mx = -INFINITY;
            for (int32_t j = 0; j <= p; ++j) {
                const float* k = k_cache + base + j * width + h * D;
                double d = 0.0;
                for (int64_t i = 0; i < D; ++i) d += double(qh[i]) * double(k[i]);
                score[size_t(j)] = d * s.scale;
                mx = std::max(mx, score[size_t(j)]);
            }
            double sum = 0.0;
            std::fill(acc.begin(), acc.end(), 0.0);
            for (int32_t j = 0; j <= p; ++j) {
                const double e = std::exp(score[size_t(j)] - mx);
                sum += e;
                const float* v = v_cache + base + j * width + h * D;
                for (int64_t i = 0; i < D; ++i) acc[size_t(i)] += e * double(v[i]);
            }
            for (int64_t i = 0; i < D; ++i)
                out[r * s.ld_out + h * D + i] = float(acc[size_t(i)] / sum);
        }
    }
}

void decode_pick_reference(const float* logits, int32_t rows, const DecodePick& o, int64_t step,
                           int32_t* next, int32_t* out_tokens, float* out_logprobs) {
    constexpr int32_t V = kDecodeVocab;
    for (int32_t r = 0; r < rows; ++r) {
        const float* l = logits + int64_t(r) * V;
        int32_t best = 0;
        for (int32_t i = 1; i < V; ++i)
            if (l[i] > l[best]) best = i;
        const double mx = l[best];
        double sum = 0.0;
        for (int32_t i = 0; i < V; ++i) sum += std::exp(double(l[i]) - mx);
        const double lse = mx + std::log(sum);
        int32_t pick = best;
        if (o.temperature > 0.0f) {
            std::vector<double> cum(static_cast<size_t>(V));
            double total = 0.0;
            for (int32_t i = 0; i < V; ++i) {
                int32_t rank = 0;  // bytes ahead of i: larger, or equal with a smaller index
                for (int32_t j = 0; j < V; ++j)
                    rank += (l[j] > l[i] || (l[j] == l[i] && j < i)) ? 1 : 0;
                const bool keep = o.top_k <= 0 || o.top_k >= V || rank < o.top_k;
                total += keep ? std::exp((double(l[i]) - mx) / double(o.temperature)) : 0.0;
                cum[size_t(i)] = keep ? total : -1.0;
            }
            const double u = decode_uniform(o.seed, step, r) * total;
            for (int32_t i = 0; i < V; ++i)
                if (cum[size_t(i)] > u) {
                    pick = i;
                    break;
                }
        }
        next[r] = pick;
        if (out_tokens) out_tokens[step * rows + r] = pick;
        if (out_logprobs) out_logprobs[step * rows + r] = float(double(l[pick]) - lse);
    }
}

}  // namespace esper::kernels
