// CPU tests of the decode references (kernels/decode.h): a prefill of a sequence row by row
// through the cache equals the causal attention reference, and the pick is the first arg-max at
// temperature 0 and with top-k 1, a byte of the top k otherwise.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/decode.h"
#include "tests/kernels/kernel_test_util.h"

using namespace esper::kernels;
using esper::kernels::test::fill_uniform;

TEST_CASE("a prefill through the KV cache equals causal attention over the sequence",
          "[kernels][decode]") {
    std::mt19937 rng(5);
    const int32_t T = 20, H = 3, D = 8, seq = 13;
    std::vector<float> qkv(size_t(seq) * 3 * H * D);
    fill_uniform(qkv, rng, -1.0f, 1.0f);
    DecodeShape s;
    s.rows = seq;
    s.heads = H;
    s.head_dim = D;
    s.context = T;
    s.ld_q = 3 * H * D;
    s.ld_out = H * D;
    s.shared = true;
    s.cache_base = 1;  // the second of two caches
    s.scale = 1.0f / std::sqrt(float(D));
    std::vector<float> kc(size_t(2) * T * H * D, NAN), vc(kc.size(), NAN);
    decode_append_reference(s, qkv.data() + H * D, qkv.data() + 2 * H * D, 0, kc.data(), vc.data());
    std::vector<float> out(size_t(seq) * H * D, NAN);
    decode_attention_reference(s, qkv.data(), kc.data(), vc.data(), 0, out.data());
    AttentionShape a;
    a.batch = 1;
    a.seq = seq;
    a.heads = H;
    a.head_dim = D;
    a.ld_qkv = 3 * H * D;
    a.ld_out = H * D;
    a.scale = s.scale;
    std::vector<float> want(out.size()), lse(size_t(H) * seq);
    attention_forward_reference(a, qkv.data(), qkv.data() + H * D, qkv.data() + 2 * H * D,
                                want.data(), lse.data());
    for (size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == Approx(want[i]).margin(1e-5));
    // The first cache was never touched.
    for (int64_t i = 0; i < int64_t(T) * H * D; ++i) REQUIRE(std::isnan(kc[size_t(i)]));
}

TEST_CASE("the decode pick is the first arg-max when greedy and stays within the top k",
          "[kernels][decode]") {
    std::mt19937 rng(8);
    const int32_t rows = 6;
    std::vector<float> logits(size_t(rows) * kDecodeVocab);
    fill_uniform(logits, rng, -3.0f, 3.0f);
    logits[17] = logits[40] = 9.0f;  // a tie in row 0: the first wins
    std::vector<int32_t> next(rows), toks(size_t(rows) * 3, -1);
    std::vector<float> lps(toks.size(), 1.0f);
    DecodePick greedy;
    decode_pick_reference(logits.data(), rows, greedy, 1, next.data(), toks.data(), lps.data());
    CHECK(next[0] == 17);
    for (int32_t r = 0; r < rows; ++r) {
        const float* l = logits.data() + int64_t(r) * kDecodeVocab;
        CHECK(l[next[size_t(r)]] == *std::max_element(l, l + kDecodeVocab));
        CHECK(toks[size_t(rows + r)] == next[size_t(r)]);
        CHECK(lps[size_t(rows + r)] < 0.0f);
        CHECK(toks[size_t(r)] == -1);  // only step 1's slots are written
    }
    DecodePick k1{0.9f, 1, 3};
    std::vector<int32_t> next1(rows);
    decode_pick_reference(logits.data(), rows, k1, 0, next1.data(), nullptr, nullptr);
    CHECK(next1 == next);
    DecodePick k5{1.5f, 5, 3};
    for (int64_t step = 0; step < 20; ++step) {
        decode_pick_reference(logits.data(), rows, k5, step, next1.data(), nullptr, nullptr);
        for (int32_t r = 0; r < rows; ++r) {
            const float* l = logits.data() + int64_t(r) * kDecodeVocab;
            int32_t above = 0;
            for (int32_t i = 0; i < kDecodeVocab; ++i) above += l[i] > l[next1[size_t(r)]];
            CHECK(above < 5);
        }
    }
}
