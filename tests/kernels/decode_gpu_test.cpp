// [gpu] tests of the decode kernels (kernels/decode.h) against their CPU references: append and
// split attention over bf16 caches at ragged lengths (decode rows at one position, prefill rows at
// consecutive ones, head sizes that are not multiples of 32 or of 8; the merge counters left at
// zero), the embedding at a device position, the pick (greedy, top-k 1, sampled) with the
// position update and the next step's embedding, and the small-row linear layers with their
// prologue and epilogues (the K, V append among them); outputs poisoned (NaN) first.
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/bf16_host.h"
#include "kernels/decode.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/support/gpu.h"

using namespace esper::kernels;
using esper::kernels::test::fill_uniform;
using esper::testing::DevBuf;

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

}  // namespace

TEST_CASE("decode append and attention match the references over ragged cache lengths",
          "[kernels][decode][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    struct Case {
        int32_t rows, heads, head_dim, context, pos;
    };
    const Case c =
        GENERATE(Case{1, 12, 64, 1024, 0}, Case{1, 12, 64, 1024, 700}, Case{8, 6, 64, 256, 63},
                 Case{8, 6, 64, 256, 64}, Case{3, 2, 40, 100, 99}, Case{2, 1, 128, 130, 129},
                 Case{5, 3, 8, 12, 6}, Case{37, 4, 32, 200, 0}, Case{70, 2, 64, 300, 129},
                 Case{2, 3, 20, 90, 70});  // D = 20: rows not 16-byte aligned, lanes half used
    CAPTURE(c.rows, c.heads, c.head_dim, c.context, c.pos);
    std::mt19937 rng(uint32_t(c.rows * 131 + c.pos));
    const int64_t HD = int64_t(c.heads) * c.head_dim, ld_q = 3 * HD + 8;
    DecodeShape s;
    s.rows = c.rows;
    s.heads = c.heads;
    s.head_dim = c.head_dim;
    s.context = c.context;
    s.ld_q = ld_q;
    s.ld_out = HD + 16;
    s.shared = c.rows > 8;  // the long row sets are prefills
    s.cache_base = s.shared ? 1 : 0;
    s.scale = 1.0f / std::sqrt(float(c.head_dim));
    const int32_t ncache = s.shared ? 2 : c.rows;
    std::vector<float> kc(size_t(ncache) * c.context * HD), vc(kc.size()), q(size_t(c.rows) * ld_q);
    fill_uniform(kc, rng, -1.0f, 1.0f);
    fill_uniform(vc, rng, -1.0f, 1.0f);
    fill_uniform(q, rng, -1.5f, 1.5f);
    for (float& v : kc) v = round_bf16(v);
    for (float& v : vc) v = round_bf16(v);
    std::vector<float> q_ref = q;  // the new k, v go through the bf16 cache
    for (int32_t r = 0; r < c.rows; ++r)
        for (int64_t i = HD; i < 3 * HD; ++i)
            q_ref[size_t(r * ld_q + i)] = round_bf16(q[size_t(r * ld_q + i)]);
    std::vector<uint16_t> kc16(kc.size()), vc16(vc.size());
    for (size_t i = 0; i < kc.size(); ++i) {
        kc16[i] = bf16_bits(kc[i]);
        vc16[i] = bf16_bits(vc[i]);
    }
    DevBuf dq(q), dk(kc16), dv(vc16), dpos(std::vector<int32_t>{c.pos});
    DevBuf dout(size_t(c.rows) * s.ld_out * 2);  // poisoned
    DevBuf ws(decode_attention_workspace_bytes(s));
    CUDA_OK(cudaMemset(ws.p, 0, ws.bytes));  // the contract: zero before the first launch
    CUDA_OK(launch_decode_append(s, dq.as<float>() + HD, dq.as<float>() + 2 * HD,
                                 dpos.as<int32_t>(), dk.p, dv.p, nullptr));
    // Twice: the first launch must leave the merge counters as it found them.
    for (int i = 0; i < 2; ++i)
        CUDA_OK(launch_decode_attention(s, dq.as<float>(), dk.p, dv.p, dpos.as<int32_t>(), dout.p,
                                        ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    {
        const std::vector<uint32_t> w = ws.download<uint32_t>();
        const size_t counters = size_t(c.rows) * size_t(c.heads);
        size_t nonzero = 0;
        for (size_t i = w.size() - counters; i < w.size(); ++i) nonzero += w[i] != 0;
        CHECK(nonzero == 0);
    }
    decode_append_reference(s, q_ref.data() + HD, q_ref.data() + 2 * HD, c.pos, kc.data(),
                            vc.data());
    std::vector<float> want(size_t(c.rows) * s.ld_out, 0.0f);
    decode_attention_reference(s, q.data(), kc.data(), vc.data(), c.pos, want.data());
    const std::vector<uint16_t> gk = dk.download<uint16_t>(), gv = dv.download<uint16_t>();
    size_t cache_bad = 0;
    for (size_t i = 0; i < kc.size(); ++i)
        cache_bad += (bf16_value(gk[i]) != kc[i]) + (bf16_value(gv[i]) != vc[i]);
    CHECK(cache_bad == 0);
    const std::vector<uint16_t> got = dout.download<uint16_t>();
    double worst = 0.0;
    for (int32_t r = 0; r < c.rows; ++r) {
        if (c.pos + (s.shared ? r : 0) >= c.context) continue;
        for (int64_t i = 0; i < HD; ++i) {
            const double g = bf16_value(got[size_t(r * s.ld_out + i)]);
            const double w = want[size_t(r * s.ld_out + i)];
            REQUIRE(std::isfinite(g));
            worst = std::max(worst, std::fabs(g - w) / (2e-3 + 1e-2 * std::fabs(w)));
        }
    }
    CHECK(worst <= 1.0);
    // An impossible shape is refused without a launch.
    DecodeShape bad = s;
    bad.head_dim = 136;
    CHECK(launch_decode_attention(bad, dq.as<float>(), dk.p, dv.p, dpos.as<int32_t>(), dout.p, ws.p,
                                  ws.bytes, nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("decode embedding, pick and advance match the references", "[kernels][decode][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    std::mt19937 rng(21);
    const int32_t rows = GENERATE(1, 8, 33), C = 72, T = 50;
    CAPTURE(rows);
    std::vector<float> wte(size_t(256) * C), wpe(size_t(T) * C);
    fill_uniform(wte, rng, -1.0f, 1.0f);
    fill_uniform(wpe, rng, -1.0f, 1.0f);
    std::vector<int32_t> toks(static_cast<size_t>(rows));
    for (int32_t& t : toks) t = int32_t(rng() % 256);
    const int32_t pos = 7;
    for (bool shared : {false, true}) {
        DevBuf dt(toks), dwte(wte), dwpe(wpe), dpos(std::vector<int32_t>{pos});
        DevBuf dx(size_t(rows) * C * 4);
        CUDA_OK(launch_decode_embed(dt.as<int32_t>(), dwte.as<float>(), dwpe.as<float>(),
                                    dpos.as<int32_t>(), shared, dx.as<float>(), rows, C, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<float> want(size_t(rows) * C);
        decode_embed_reference(toks.data(), wte.data(), wpe.data(), pos, shared, want.data(), rows,
                               C);
        CHECK(dx.download<float>() == want);
    }
    std::vector<float> logits(size_t(rows) * kDecodeVocab);
    fill_uniform(logits, rng, -4.0f, 4.0f);
    logits[3] = logits[200] = 8.0f;  // a tie in row 0
    for (const DecodePick pick : {DecodePick{0.0f, 0, 1}, DecodePick{0.8f, 1, 2},
                                  DecodePick{1.0f, 0, 3}, DecodePick{0.7f, 6, 4}}) {
        CAPTURE(pick.temperature, pick.top_k);
        const int64_t step = 2, cap = 4;
        DevBuf dl(logits), dnext(size_t(rows) * 4), dtok(size_t(rows) * cap * 4),
            dlp(size_t(rows) * cap * 4);
        DevBuf dints(std::vector<int32_t>{pos, int32_t(step)});
        const bool overlap = pick.seed % 2 == 0;  // programmatic launches: the same results
        // The pick also embeds its bytes for the next step — at pos + 1, at a set position, or
        // (set to the context) not at all — and at one row advances itself.
        const int32_t set_pos = pick.seed == 3 ? T : pick.seed == 4 ? 20 : -1;
        const int32_t next_pos = set_pos >= 0 ? set_pos : pos + 1;
        DevBuf dwte(wte), dwpe(wpe), dx(size_t(rows) * C * 4);  // x poisoned
        DecodeNext nx;
        nx.wte = dwte.as<float>();
        nx.wpe = dwpe.as<float>();
        nx.x = dx.as<float>();
        nx.channels = C;
        nx.context = T;
        nx.pos = dints.as<int32_t>();
        nx.set_pos = set_pos;
        nx.advance = rows == 1;
        nx.step_out = dints.as<int32_t>() + 1;
        CUDA_OK(launch_decode_pick(dl.as<float>(), rows, pick, dints.as<int32_t>() + 1,
                                   dnext.as<int32_t>(), dtok.as<int32_t>(), dlp.as<float>(), cap,
                                   nullptr, overlap, nx));
        if (!nx.advance)
            CUDA_OK(launch_decode_advance(dints.as<int32_t>(), dints.as<int32_t>() + 1, set_pos,
                                          nullptr, overlap));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<int32_t> next(static_cast<size_t>(rows)), wt(size_t(rows) * cap, -1);
        std::vector<float> wl(wt.size(), 0.0f);
        decode_pick_reference(logits.data(), rows, pick, step, next.data(), wt.data(), wl.data());
        const std::vector<int32_t> gn = dnext.download<int32_t>(), gt = dtok.download<int32_t>();
        const std::vector<float> gl = dlp.download<float>();
        int32_t differ = 0;
        for (int32_t r = 0; r < rows; ++r) {
            differ += gn[size_t(r)] != next[size_t(r)];
            CHECK(gt[size_t(step * rows + r)] == gn[size_t(r)]);
            const float* l = logits.data() + int64_t(r) * kDecodeVocab;
            double lse = 0.0;
            for (int32_t i = 0; i < kDecodeVocab; ++i) lse += std::exp(double(l[i]) - 8.0);
            lse = 8.0 + std::log(lse);
            CHECK(gl[size_t(step * rows + r)] ==
                  Approx(double(l[gn[size_t(r)]]) - lse).margin(1e-4));
        }
        if (pick.temperature == 0.0f || pick.top_k == 1) {
            CHECK(differ == 0);
            CHECK(gn[0] == 3);
        } else {
            // A draw differs only when u falls within float rounding of a boundary.
            CHECK(differ <= 1);
        }
        CHECK(dints.download<int32_t>() == std::vector<int32_t>{next_pos, int32_t(step + 1)});
        const std::vector<float> gx = dx.download<float>();
        if (next_pos < T) {
            std::vector<float> want(size_t(rows) * C);
            decode_embed_reference(gn.data(), wte.data(), wpe.data(), next_pos, false, want.data(),
                                   rows, C);
            CHECK(gx == want);
        } else {
            size_t written = 0;  // past the context nothing is embedded: x keeps its poison
            for (const float v : gx) written += !std::isnan(v);
            CHECK(written == 0);
        }
        // An advance of more than one row, or an embedding without its table, is refused.
        DecodeNext bad = nx;
        bad.advance = true;
        if (rows > 1)
            CHECK(launch_decode_pick(dl.as<float>(), rows, pick, dints.as<int32_t>() + 1,
                                     dnext.as<int32_t>(), nullptr, nullptr, cap, nullptr, false,
                                     bad) == cudaErrorInvalidValue);
        bad = nx;
        bad.wpe = nullptr;
        CHECK(launch_decode_pick(dl.as<float>(), rows, pick, dints.as<int32_t>() + 1,
                                 dnext.as<int32_t>(), nullptr, nullptr, cap, nullptr, false,
                                 bad) == cudaErrorInvalidValue);
    }
}

TEST_CASE(
    "decode linear layers match the reference: LayerNorm prologue, bias/GELU/residual/bf16 "
    "epilogues, one to eight rows",
    "[kernels][decode][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    struct Case {
        int32_t rows, in, out;
        bool ln, gelu, residual, bf16_out, bias;
    };
    const Case c = GENERATE(Case{1, 768, 2304, true, false, false, false, true},  // qkv
                            Case{8, 768, 2304, true, false, false, false, true},  // qkv, batch 8
                            Case{3, 768, 768, false, false, true, false, true},   // proj + x
                            Case{5, 3080, 384, false, false, true, false, true},  // fc2 + x
                            Case{1, 3072, 768, false, false, true, false, true},  // 4 warps each
                            Case{2, 384, 1544, true, true, false, true, true},    // fc, GELU
                            Case{7, 24, 5, true, true, false, false, false},      // tiny, no bias
                            Case{8, 3048, 3, true, false, false, false, true},    // 48 KiB of a
                            Case{1, 8, 1, false, true, false, true, true});
    CAPTURE(c.rows, c.in, c.out, c.ln, c.gelu, c.residual, c.bf16_out);
    std::mt19937 rng(uint32_t(c.rows * 7919 + c.in * 31 + c.out));
    std::vector<float> x(size_t(c.rows) * c.in), w(size_t(c.out) * c.in), bias(size_t(c.out)),
        ln_w(size_t(c.in)), ln_b(size_t(c.in)), y0(size_t(c.rows) * c.out);
    fill_uniform(x, rng, -2.0f, 2.0f);
    fill_uniform(w, rng, -0.06f, 0.06f);
    fill_uniform(bias, rng, -0.5f, 0.5f);
    fill_uniform(ln_w, rng, 0.5f, 1.5f);
    fill_uniform(ln_b, rng, -0.2f, 0.2f);
    fill_uniform(y0, rng, -1.0f, 1.0f);
    for (float& v : w) v = round_bf16(v);
    if (!c.ln)
        for (float& v : x) v = round_bf16(v);  // a bf16 input
    std::vector<uint16_t> w16(w.size()), x16(x.size());
    for (size_t i = 0; i < w.size(); ++i) w16[i] = bf16_bits(w[i]);
    for (size_t i = 0; i < x.size(); ++i) x16[i] = bf16_bits(x[i]);
    DevBuf dx(x), dx16(x16), dw(w16), dbias(bias), dlnw(ln_w), dlnb(ln_b);
    DevBuf dy = c.residual ? DevBuf(y0) : DevBuf(y0.size() * (c.bf16_out ? 2 : 4));  // poisoned
    DecodeLinear s;
    s.rows = c.rows;
    s.in = c.in;
    s.out = c.out;
    if (c.ln) {
        s.x = dx.as<float>();
        s.ln_w = dlnw.as<float>();
        s.ln_b = dlnb.as<float>();
    } else {
        s.a_in = dx16.p;
    }
    s.w = dw.p;
    s.bias = c.bias ? dbias.as<float>() : nullptr;
    s.gelu = c.gelu;
    s.beta = c.residual ? 1.0f : 0.0f;
    s.overlap = c.rows % 2 == 0;  // a programmatic launch after the uploads: the same contract
    if (c.bf16_out)
        s.y_bf16 = dy.p;
    else
        s.y = dy.as<float>();
    REQUIRE(decode_linear_fits(c.rows, c.in, c.ln));
    CHECK_FALSE(decode_linear_fits(8, 3072, true));  // 48 KiB of rows leave no room for the sums
    CUDA_OK(launch_decode_linear(s, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    DecodeLinear host = s;
    host.bias = c.bias ? bias.data() : nullptr;
    host.ln_w = c.ln ? ln_w.data() : nullptr;
    host.ln_b = c.ln ? ln_b.data() : nullptr;
    std::vector<float> want = y0;
    decode_linear_reference(host, x.data(), w.data(), want.data());
    std::vector<float> got(want.size());
    if (c.bf16_out) {
        const std::vector<uint16_t> g = dy.download<uint16_t>();
        for (size_t i = 0; i < got.size(); ++i) got[i] = bf16_value(g[i]);
    } else {
        got = dy.download<float>();
    }
    double worst = 0.0;
    for (size_t i = 0; i < got.size(); ++i) {
        REQUIRE(std::isfinite(got[i]));
        worst = std::max(worst,
                         std::fabs(double(got[i]) - want[i]) / (2e-3 + 1e-2 * std::fabs(want[i])));
    }
    CHECK(worst <= 1.0);

    // A qkv product also appends its K and V columns to a bf16 cache (two caches of 6 positions,
    // the second used; at 8 rows a prefill from position 2, so rows past the context are skipped):
    // the cache then holds exactly the bf16 of what the product wrote, nothing else changes.
    if (c.out % 3 == 0 && !c.bf16_out && !c.residual) {
        const int32_t width = c.out / 3, context = 6, pos = 2;
        DecodeShape sh;
        sh.rows = c.rows;
        sh.heads = 1;
        sh.head_dim = width;
        sh.context = context;
        sh.ld_q = c.out;
        sh.shared = c.rows > 1;
        sh.cache_base = 1;
        std::vector<float> kc(size_t(2) * context * width), vc(kc.size());
        fill_uniform(kc, rng, -1.0f, 1.0f);
        fill_uniform(vc, rng, -1.0f, 1.0f);
        for (float& v : kc) v = round_bf16(v);
        for (float& v : vc) v = round_bf16(v);
        std::vector<uint16_t> kc16(kc.size()), vc16(vc.size());
        for (size_t i = 0; i < kc.size(); ++i) {
            kc16[i] = bf16_bits(kc[i]);
            vc16[i] = bf16_bits(vc[i]);
        }
        DevBuf dk(kc16), dv(vc16), dpos(std::vector<int32_t>{pos});
        DecodeLinear sa = s;
        sa.append.k_cache = dk.p;
        sa.append.v_cache = dv.p;
        sa.append.pos = dpos.as<int32_t>();
        sa.append.width = width;
        sa.append.context = context;
        sa.append.cache_base = sh.cache_base;
        sa.append.shared = sh.shared;
        CUDA_OK(launch_decode_linear(sa, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<float> y = dy.download<float>();
        CHECK(y == got);  // the same product as without the append
        for (float& v : y) v = round_bf16(v);
        decode_append_reference(sh, y.data() + width, y.data() + 2 * width, pos, kc.data(),
                                vc.data());
        const std::vector<uint16_t> gk = dk.download<uint16_t>(), gv = dv.download<uint16_t>();
        size_t cache_bad = 0;
        for (size_t i = 0; i < kc.size(); ++i)
            cache_bad += (bf16_value(gk[i]) != kc[i]) + (bf16_value(gv[i]) != vc[i]);
        CHECK(cache_bad == 0);
        DecodeLinear bad = sa;
        bad.append.width = width + 1;  // out != 3·width
        CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
        bad = sa;
        bad.append.pos = nullptr;
        CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
    }

    // What the kernel cannot take is refused without a launch.
    DecodeLinear bad = s;
    bad.rows = kDecodeLinearMaxRows + 1;
    CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
    bad = s;
    bad.in = c.in + 4;
    CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
    bad = s;
    bad.y = dy.as<float>();
    bad.y_bf16 = dy.p;
    CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
    bad = s;
    bad.w = static_cast<const char*>(s.w) + 2;
    CHECK(launch_decode_linear(bad, nullptr) == cudaErrorInvalidValue);
}
