// [gpu] tests of the transformer kernels (LayerNorm, fused causal attention, embedding, the
// multi-tensor AdamW, the cuBLASLt GEMMs with their epilogues) against their CPU references on
// seeded random inputs over ragged shapes, with every output poisoned (NaN) before the launch, and
// bitwise determinism of the backward kernels (they use no atomics).
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "kernels/attention.h"
#include "kernels/bf16_host.h"
#include "kernels/embedding.h"
#include "kernels/gemm.h"
#include "kernels/grad_ops.h"
#include "kernels/layernorm.h"
#include "kernels/optimizer.h"
#include "tests/kernels/kernel_test_util.h"
#include "tests/support/gpu.h"

using namespace esper::kernels;
using esper::kernels::bf16_bits;
using esper::kernels::bf16_value;
using esper::kernels::test::compare;
using esper::kernels::test::fill_uniform;
using esper::testing::DevBuf;

namespace {

#define CUDA_OK(expr) REQUIRE((expr) == cudaSuccess)

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
    std::vector<uint16_t> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_bits(v[i]);
    return out;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& v) {
    std::vector<float> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = bf16_value(v[i]);
    return out;
}
// Rounds every element to the nearest bf16, so the reference sees the kernel's operands.
void round_bf16(std::vector<float>& v) {
    for (float& x : v) x = esper::kernels::round_bf16(x);
}

// ‖got − want‖ / ‖want‖; a NaN anywhere makes it NaN (fails every bound).
double rel_error(const std::vector<float>& got, const std::vector<float>& want) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < want.size(); ++i) {
        const double d = double(got[i]) - double(want[i]);
        num += d * d;
        den += double(want[i]) * double(want[i]);
    }
    return std::sqrt(num) / std::sqrt(den > 0.0 ? den : 1.0);
}

bool all_finite(const std::vector<float>& v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

}  // namespace

TEST_CASE("layernorm kernels match the references over ragged shapes", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const int32_t rows = GENERATE(1, 7, 130, 1000);
    const int32_t cols = GENERATE(3, 32, 130, 768);
    CAPTURE(rows, cols);
    std::mt19937 rng(uint32_t(rows * 7919 + cols));
    std::vector<float> x(size_t(rows) * cols), gamma(cols), beta(cols), dy(x.size());
    fill_uniform(x, rng, -2.f, 3.f);
    fill_uniform(gamma, rng, 0.5f, 1.5f);
    fill_uniform(beta, rng, -0.5f, 0.5f);
    fill_uniform(dy, rng, -1.f, 1.f);
    std::vector<float> dgamma0(cols), dbeta0(cols);
    fill_uniform(dgamma0, rng, -0.1f, 0.1f);  // the backward accumulates (+=)
    fill_uniform(dbeta0, rng, -0.1f, 0.1f);

    std::vector<float> y(x.size()), mean(rows), rstd(rows), dx(x.size());
    std::vector<float> dgamma = dgamma0, dbeta = dbeta0;
    layernorm_forward_reference(x.data(), gamma.data(), beta.data(), y.data(), mean.data(),
                                rstd.data(), rows, cols, 1e-5f);
    layernorm_backward_reference(dy.data(), x.data(), gamma.data(), mean.data(), rstd.data(),
                                 dx.data(), dgamma.data(), dbeta.data(), rows, cols);

    DevBuf dx_in(x), dg(gamma), db(beta), ddy(dy), dgam(dgamma0), dbet(dbeta0);
    DevBuf dy_out(x.size() * 4), dy16(x.size() * 2), dmean(size_t(rows) * 4),
        drstd(size_t(rows) * 4), ddx(x.size() * 4);
    DevBuf ws(layernorm_backward_workspace_bytes(rows, cols));
    CUDA_OK(launch_layernorm_forward(dx_in.as<float>(), dg.as<float>(), db.as<float>(),
                                     dy_out.as<float>(), dy16.p, dmean.as<float>(),
                                     drstd.as<float>(), rows, cols, 1e-5f, nullptr));
    CUDA_OK(launch_layernorm_backward(ddy.as<float>(), dx_in.as<float>(), dg.as<float>(),
                                      dmean.as<float>(), drstd.as<float>(), ddx.as<float>(),
                                      dgam.as<float>(), dbet.as<float>(), rows, cols, false, ws.p,
                                      ws.bytes, nullptr));
    // accumulate_dx adds the same dx onto what is there: 2·dx.
    std::vector<float> dx2 = dx;
    for (float& v : dx2) v *= 2.0f;
    DevBuf ddx2(dx), dgam2(dgamma0), dbet2(dbeta0);
    CUDA_OK(launch_layernorm_backward(ddy.as<float>(), dx_in.as<float>(), dg.as<float>(),
                                      dmean.as<float>(), drstd.as<float>(), ddx2.as<float>(),
                                      dgam2.as<float>(), dbet2.as<float>(), rows, cols, true, ws.p,
                                      ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> y16 = from_bf16(dy16.download<uint16_t>());
    const std::string err = compare(dy_out.download<float>(), y, 1e-5, 1e-4, "y") +
                            compare(y16, y, 1e-2, 8e-3, "y_bf16") +
                            compare(dmean.download<float>(), mean, 1e-5, 1e-5, "mean") +
                            compare(drstd.download<float>(), rstd, 1e-5, 1e-4, "rstd") +
                            compare(ddx.download<float>(), dx, 1e-4, 1e-3, "dx") +
                            compare(ddx2.download<float>(), dx2, 2e-4, 1e-3, "dx accumulated") +
                            compare(dgam.download<float>(), dgamma, 1e-3, 1e-4, "dgamma") +
                            compare(dbet.download<float>(), dbeta, 1e-3, 1e-4, "dbeta");
    INFO(err);
    CHECK(err.empty());
}

TEST_CASE("embedding kernels match the references and the backward is deterministic",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const int32_t B = GENERATE(1, 3, 16);
    const int32_t T = GENERATE(1, 37, 256);
    const int32_t C = GENERATE(5, 128, 384);
    CAPTURE(B, T, C);
    constexpr int32_t kVocab = 256;
    std::mt19937 rng(uint32_t(B * 100003 + T * 101 + C));
    std::vector<int32_t> tokens(size_t(B) * T);
    for (auto& t : tokens) t = int32_t(rng() % 40) * 3 % kVocab;  // repeats, gaps
    std::vector<float> wte(size_t(kVocab) * C), wpe(size_t(T + 3) * C), dx(size_t(B) * T * C);
    fill_uniform(wte, rng, -1.f, 1.f);
    fill_uniform(wpe, rng, -1.f, 1.f);
    fill_uniform(dx, rng, -1.f, 1.f);
    std::vector<float> x(dx.size()), dwte = wte, dwpe = wpe;  // accumulate onto non-zero values
    embedding_forward_reference(tokens.data(), wte.data(), wpe.data(), x.data(), B, T, C);
    embedding_backward_reference(tokens.data(), dx.data(), dwte.data(), dwpe.data(), B, T, C);

    DevBuf dtok(tokens), dwte_in(wte), dwpe_in(wpe), ddx(dx), dxout(dx.size() * 4);
    CUDA_OK(launch_embedding_forward(dtok.as<int32_t>(), dwte_in.as<float>(), dwpe_in.as<float>(),
                                     dxout.as<float>(), B, T, C, nullptr));
    cublasLtHandle_t lt;
    REQUIRE(cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS);
    DevBuf ws(embedding_backward_workspace_bytes(B, T, kVocab)), lt_ws(size_t(32) << 20);
    std::vector<float> runs[2][2];
    for (int rep = 0; rep < 2; ++rep) {
        DevBuf gte(wte), gpe(wpe);
        CUDA_OK(cudaMemset(ws.p, 0xFF, ws.bytes));  // the one-hot matrix overwrites NaNs
        CUDA_OK(launch_embedding_backward(lt, dtok.as<int32_t>(), ddx.as<float>(), gte.as<float>(),
                                          gpe.as<float>(), B, T, C, kVocab, ws.p, ws.bytes, lt_ws.p,
                                          lt_ws.bytes, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        runs[rep][0] = gte.download<float>();
        runs[rep][1] = gpe.download<float>();
    }
    // A workspace one float short is refused, and nothing is written.
    DevBuf gte_short(wte), gpe_short(wpe);
    CHECK(launch_embedding_backward(lt, dtok.as<int32_t>(), ddx.as<float>(), gte_short.as<float>(),
                                    gpe_short.as<float>(), B, T, C, kVocab, ws.p, ws.bytes - 4,
                                    lt_ws.p, lt_ws.bytes, nullptr) == cudaErrorInvalidValue);
    CHECK(gte_short.download<float>() == wte);
    cublasLtDestroy(lt);
    const std::string err = compare(dxout.download<float>(), x, 0.0, 1e-6, "x") +
                            compare(runs[0][0], dwte, 1e-4, 1e-5, "dwte") +
                            compare(runs[0][1], dwpe, 1e-4, 1e-5, "dwpe");
    INFO(err);
    CHECK(err.empty());
    CHECK(std::memcmp(runs[0][0].data(), runs[1][0].data(), runs[0][0].size() * 4) == 0);
    CHECK(std::memcmp(runs[0][1].data(), runs[1][1].data(), runs[0][1].size() * 4) == 0);
}

namespace {

struct AttnCase {
    int32_t batch, seq, heads, head_dim;
    bool packed;  // q, k, v in one [B, T, 3·H·D] buffer (the host's qkv layout)
};

}  // namespace

TEST_CASE("fused causal attention matches the reference forward and backward (bf16 operands)",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const AttnCase c = GENERATE(AttnCase{1, 1, 1, 32, false}, AttnCase{2, 17, 3, 32, true},
                                AttnCase{1, 64, 2, 64, false}, AttnCase{2, 130, 3, 64, true},
                                AttnCase{1, 65, 2, 128, false}, AttnCase{1, 200, 1, 128, true},
                                AttnCase{3, 95, 5, 32, true}, AttnCase{1, 257, 2, 64, false});
    const bool bf16_io = GENERATE(true, false);
    const AttentionBackend backend = GENERATE(AttentionBackend::kOwn, AttentionBackend::kCudnn);
    CAPTURE(c.batch, c.seq, c.heads, c.head_dim, c.packed, bf16_io, int(backend));
    // cuDNN's engines take bf16 only (the refusal of fp32 is tested under the capture below).
    if (backend == AttentionBackend::kCudnn && !bf16_io) return;
    // The GPU node has cuDNN (PyTorch's); a machine without it runs the own kernels only.
    if (backend == AttentionBackend::kCudnn && !attention_cudnn_available())
        ESPER_SKIP_TEST("cuDNN not loadable: " + attention_cudnn_status());
    const int32_t HD = c.heads * c.head_dim;
    AttentionShape s;
    s.batch = c.batch;
    s.seq = c.seq;
    s.heads = c.heads;
    s.head_dim = c.head_dim;
    s.ld_qkv = c.packed ? 3 * HD : HD;
    s.ld_out = HD;
    s.scale = 1.0f / std::sqrt(float(c.head_dim));
    const size_t rows = size_t(c.batch) * c.seq;
    std::mt19937 rng(uint32_t(c.batch * 7 + c.seq * 131 + c.heads * 17 + c.head_dim));
    // packed: one buffer with q, k, v at offsets 0, HD, 2·HD of each row; else three buffers.
    const size_t qkv_elems = rows * size_t(s.ld_qkv) * (c.packed ? 1 : 3);
    std::vector<float> qkv(qkv_elems), dout(rows * HD);
    fill_uniform(qkv, rng, -2.f, 2.f);
    fill_uniform(dout, rng, -1.f, 1.f);
    round_bf16(qkv);
    round_bf16(dout);
    const size_t plane = rows * size_t(s.ld_qkv);
    const size_t off_k = c.packed ? size_t(HD) : plane,
                 off_v = c.packed ? 2 * size_t(HD) : 2 * plane;

    std::vector<float> out(rows * HD), lse(size_t(c.batch) * c.heads * c.seq), dqkv(qkv_elems, 0.f);
    attention_forward_reference(s, qkv.data(), qkv.data() + off_k, qkv.data() + off_v, out.data(),
                                lse.data());
    // The backward sees the kernel's output precision.
    std::vector<float> out_in = out;
    if (bf16_io) round_bf16(out_in);
    attention_backward_reference(s, qkv.data(), qkv.data() + off_k, qkv.data() + off_v,
                                 out_in.data(), dout.data(), lse.data(), dqkv.data(),
                                 dqkv.data() + off_k, dqkv.data() + off_v);

    const size_t esz = bf16_io ? 2 : 4;
    const auto dtype = bf16_io ? AttentionDtype::kBfloat16 : AttentionDtype::kFloat32;
    auto upload = [&](const std::vector<float>& v) {
        return bf16_io ? std::make_unique<DevBuf>(to_bf16(v)) : std::make_unique<DevBuf>(v);
    };
    auto download = [&](const DevBuf& d) {
        return bf16_io ? from_bf16(d.download<uint16_t>()) : d.download<float>();
    };
    auto dq_in = upload(qkv);
    auto ddout = upload(dout);
    auto dout_in = upload(out_in);
    DevBuf dout_buf(rows * HD * esz), dlse(lse.size() * 4), ddqkv(qkv_elems * esz);
    DevBuf ws(attention_backward_workspace_bytes(s));
    const char* base = dq_in->as<char>();
    const cudaError_t fwd =
        launch_attention_forward(s, dtype, base, base + off_k * esz, base + off_v * esz, dout_buf.p,
                                 dlse.as<float>(), nullptr, backend);
    INFO(attention_cudnn_status());
    REQUIRE(fwd == cudaSuccess);
    CUDA_OK(cudaDeviceSynchronize());
    const std::vector<float> got_out = download(dout_buf);
    const std::vector<float> got_lse = dlse.download<float>();
    REQUIRE(all_finite(got_out));
    REQUIRE(all_finite(got_lse));
    const double e_out = rel_error(got_out, out);
    CHECK(e_out < 1e-2);
    const std::string lse_err = compare(got_lse, lse, 2e-2, 2e-3, "lse");
    INFO(lse_err);
    CHECK(lse_err.empty());

    // The backward from the reference's lse and (rounded) out, twice: the same bits each time.
    DevBuf dlse_ref(lse);
    std::vector<float> got_d[2];
    for (int rep = 0; rep < 2; ++rep) {
        if (c.packed) CUDA_OK(cudaMemset(ddqkv.p, 0xFF, ddqkv.bytes));  // re-poison
        char* d = ddqkv.as<char>();
        CUDA_OK(launch_attention_backward(s, dtype, base, base + off_k * esz, base + off_v * esz,
                                          dout_in->p, ddout->p, dlse_ref.as<float>(), d,
                                          d + off_k * esz, d + off_v * esz, ws.p, ws.bytes, nullptr,
                                          backend));
        CUDA_OK(cudaDeviceSynchronize());
        got_d[rep] = download(ddqkv);
    }
    // Compare dq, dk, dv separately (in the packed layout each is a column band of every row).
    for (int part = 0; part < 3; ++part) {
        std::vector<float> g, w;
        for (size_t r = 0; r < rows; ++r)
            for (int32_t i = 0; i < HD; ++i) {
                const size_t idx = c.packed ? r * s.ld_qkv + size_t(part) * HD + i
                                            : size_t(part) * plane + r * s.ld_qkv + i;
                g.push_back(got_d[0][idx]);
                w.push_back(dqkv[idx]);
            }
        CAPTURE(part);
        REQUIRE(all_finite(g));
        CHECK(rel_error(g, w) < 2e-2);
    }
    // The own backward has no atomics; cuDNN's dQ accumulation does.
    if (backend == AttentionBackend::kOwn)
        CHECK(std::memcmp(got_d[0].data(), got_d[1].data(), got_d[0].size() * 4) == 0);
}

TEST_CASE(
    "attention under a stream capture: kAuto falls back to the own kernel for a shape "
    "cuDNN has no plan for yet, kCudnn refuses",
    "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    AttentionShape s;
    s.batch = 1;
    s.seq = 2 * kAttentionCudnnMinSeq + 8;  // a shape no other test plans
    s.heads = 2;
    s.head_dim = 64;
    s.ld_qkv = s.ld_out = 128;
    s.scale = 0.125f;
    const size_t n = size_t(s.seq) * 128;
    std::mt19937 rng(5);
    std::vector<float> qkv(3 * n);
    fill_uniform(qkv, rng, -1.f, 1.f);
    round_bf16(qkv);
    std::vector<float> want(n), lse(size_t(s.heads) * s.seq);
    attention_forward_reference(s, qkv.data(), qkv.data() + n, qkv.data() + 2 * n, want.data(),
                                lse.data());
    DevBuf in(to_bf16(qkv)), out(n * 2), dlse(lse.size() * 4);
    const char* q = in.as<char>();
    cudaStream_t stream;
    CUDA_OK(cudaStreamCreate(&stream));
    cudaGraph_t graph;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const cudaError_t refused =
        launch_attention_forward(s, AttentionDtype::kBfloat16, q, q + n * 2, q + n * 4, out.p,
                                 dlse.as<float>(), stream, AttentionBackend::kCudnn);
    const cudaError_t captured = launch_attention_forward(
        s, AttentionDtype::kBfloat16, q, q + n * 2, q + n * 4, out.p, dlse.as<float>(), stream);
    CUDA_OK(cudaStreamEndCapture(stream, &graph));
    CHECK(refused == cudaErrorNotSupported);
    REQUIRE(captured == cudaSuccess);
    cudaGraphExec_t exec;
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_OK(cudaMemset(out.p, 0xFF, out.bytes));  // poison: the replay must write every value
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    const std::vector<float> got = from_bf16(out.download<uint16_t>());
    REQUIRE(all_finite(got));
    CHECK(rel_error(got, want) < 1e-2);
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(stream));
    // fp32 tensors never go to cuDNN.
    CHECK(launch_attention_forward(s, AttentionDtype::kFloat32, q, q, q, out.p, dlse.as<float>(),
                                   nullptr, AttentionBackend::kCudnn) == cudaErrorNotSupported);
}

TEST_CASE("attention launchers refuse unsupported shapes without launching", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    AttentionShape s;
    s.batch = 1;
    s.seq = 8;
    s.heads = 1;
    s.head_dim = 48;  // not 32, 64 or 128
    s.ld_qkv = s.ld_out = 48;
    s.scale = 0.1f;
    DevBuf q(8 * 48 * 4), o(8 * 48 * 4), lse(8 * 4);
    CHECK(launch_attention_forward(s, AttentionDtype::kFloat32, q.p, q.p, q.p, o.p, lse.as<float>(),
                                   nullptr) == cudaErrorInvalidValue);
    s.head_dim = 32;
    s.ld_qkv = 36;  // not a multiple of 8
    CHECK(launch_attention_forward(s, AttentionDtype::kFloat32, q.p, q.p, q.p, o.p, lse.as<float>(),
                                   nullptr) == cudaErrorInvalidValue);
}

TEST_CASE("multi-tensor AdamW matches the reference on every tensor over several steps",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const std::vector<int64_t> sizes = {1, 1000, 3, 70000, 385};
    std::mt19937 rng(42);
    std::vector<std::vector<float>> p, g, m, v;
    std::vector<std::unique_ptr<DevBuf>> dp, dg, dm, dv;
    std::vector<AdamwTensor> list;
    for (int64_t n : sizes) {
        p.emplace_back(size_t(n));
        g.emplace_back(size_t(n));
        m.emplace_back(size_t(n), 0.f);
        v.emplace_back(size_t(n), 0.f);
        fill_uniform(p.back(), rng, -1.f, 1.f);
        fill_uniform(g.back(), rng, -0.1f, 0.1f);
        dp.push_back(std::make_unique<DevBuf>(p.back()));
        dg.push_back(std::make_unique<DevBuf>(g.back()));
        dm.push_back(std::make_unique<DevBuf>(m.back()));
        dv.push_back(std::make_unique<DevBuf>(v.back()));
        list.push_back({dp.back()->as<float>(), dg.back()->as<float>(), dm.back()->as<float>(),
                        dv.back()->as<float>(), n});
    }
    DevBuf dlist(list.size() * sizeof(AdamwTensor));
    CUDA_OK(cudaMemcpy(dlist.p, list.data(), dlist.bytes, cudaMemcpyHostToDevice));
    AdamwHyper h{1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 0};
    for (int32_t step = 1; step <= 3; ++step) {
        h.step = step;
        DevBuf dh(sizeof(h));
        CUDA_OK(cudaMemcpy(dh.p, &h, sizeof(h), cudaMemcpyHostToDevice));
        CUDA_OK(launch_adamw_multi_step(dlist.as<AdamwTensor>(), int32_t(list.size()), 70000,
                                        dh.as<AdamwHyper>(), nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        for (size_t t = 0; t < sizes.size(); ++t)
            adamw_step_reference(p[t].data(), g[t].data(), m[t].data(), v[t].data(), sizes[t], h.lr,
                                 h.beta1, h.beta2, h.eps, h.weight_decay, step);
    }
    std::string err;
    for (size_t t = 0; t < sizes.size(); ++t)
        err += compare(dp[t]->download<float>(), p[t], 1e-6, 1e-5, "params") +
               compare(dm[t]->download<float>(), m[t], 1e-7, 1e-5, "m") +
               compare(dv[t]->download<float>(), v[t], 1e-9, 1e-5, "v");
    INFO(err);
    CHECK(err.empty());
}

namespace {

struct GemmCase {
    int32_t m, n, k;
};

}  // namespace

// The telemetry sums of seeds on the GPU transformer: a dot product and an activation's moments
// in double, over fp32 and bf16 inputs (bf16: the reference sees the rounded values), added to
// what the accumulators held; a few zeros make the dead count non-trivial.
TEST_CASE("dot and moments kernels match their references in fp32 and bf16", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    std::mt19937 rng(5);
    for (const int64_t n : {int64_t(1), int64_t(1000), int64_t(300001)}) {
        for (const bool bf16 : {false, true}) {
            CAPTURE(n, bf16);
            std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
            fill_uniform(a, rng, -2.f, 3.f);
            fill_uniform(b, rng, -1.f, 1.f);
            for (size_t i = 0; i < a.size(); i += 7) a[i] = 0.0f;
            if (bf16) {
                round_bf16(a);
                round_bf16(b);
            }
            DevBuf da = bf16 ? DevBuf(to_bf16(a)) : DevBuf(a);
            DevBuf db = bf16 ? DevBuf(to_bf16(b)) : DevBuf(b);
            const std::vector<double> start = {0.5, -1.0, 2.0, 3.0};
            DevBuf out(start);
            CUDA_OK(launch_dot(da.p, bf16, db.p, bf16, n, out.as<double>(), nullptr));
            CUDA_OK(launch_moments(da.p, bf16, n, out.as<double>() + 1, nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            const std::vector<double> got = out.download<double>();
            double want[3] = {-1.0, 2.0, 3.0};
            moments_reference(a.data(), n, want);
            const double dot = 0.5 + dot_reference(a.data(), b.data(), n);
            CHECK(got[0] == Approx(dot).epsilon(1e-9).margin(1e-9));
            CHECK(got[1] == Approx(want[0]).epsilon(1e-9).margin(1e-9));
            CHECK(got[2] == Approx(want[1]).epsilon(1e-9));
            CHECK(got[3] == want[2]);
            CHECK(want[2] >= 3.0 + double((n + 6) / 7));  // the zeros counted as dead
        }
    }
}

// A seed layer's telemetry per chunk: ragged chunks (one column, one wider than a 512-column
// tile, many inside one tile), fp32 and bf16, rows from 1 to more than a row group.
TEST_CASE("chunk_moments kernel matches its reference on ragged chunks", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    std::mt19937 rng(13);
    // Widths not a multiple of 8 (element loads), 16-byte loads with chunk boundaries inside a
    // thread's 8 columns, and the 6 × 384 model's MLP hidden (16 chunks of 96 over 1536).
    std::vector<std::vector<int32_t>> layouts = {{0, 1, 300, 301, 520, 777},
                                                 {0, 64, 128, 192, 256, 320, 384, 448, 512},
                                                 {0, 3},
                                                 {0, 1, 2, 5, 16, 24}};
    layouts.emplace_back();
    for (int32_t c = 0; c <= 1536; c += 96) layouts.back().push_back(c);
    for (const std::vector<int32_t>& offsets : layouts) {
        const int32_t width = offsets.back();
        const auto chunks = int32_t(offsets.size() - 1);
        for (const int64_t rows : {int64_t(1), int64_t(77), int64_t(9000)}) {
            for (const bool bf16 : {false, true}) {
                CAPTURE(width, rows, bf16);
                std::vector<float> x(size_t(rows) * size_t(width));
                fill_uniform(x, rng, -2.f, 3.f);
                for (size_t i = 0; i < x.size(); i += 5) x[i] = 0.0f;
                if (bf16) round_bf16(x);
                DevBuf dx = bf16 ? DevBuf(to_bf16(x)) : DevBuf(x);
                DevBuf doff(offsets);
                std::vector<double> want(size_t(3 * chunks));
                for (size_t i = 0; i < want.size(); ++i) want[i] = 0.25 * double(i);
                DevBuf out(want);
                CUDA_OK(launch_chunk_moments(dx.p, bf16, rows, width, doff.as<int32_t>(), chunks,
                                             out.as<double>(), nullptr));
                CUDA_OK(cudaDeviceSynchronize());
                chunk_moments_reference(x.data(), rows, width, offsets.data(), chunks, want.data());
                const std::vector<double> got = out.download<double>();
                for (int32_t c = 0; c < chunks; ++c) {
                    CAPTURE(c);
                    CHECK(got[size_t(3 * c)] ==
                          Approx(want[size_t(3 * c)]).epsilon(1e-9).margin(1e-9));
                    CHECK(got[size_t(3 * c + 1)] == Approx(want[size_t(3 * c + 1)]).epsilon(1e-9));
                    CHECK(got[size_t(3 * c + 2)] == want[size_t(3 * c + 2)]);
                }
            }
        }
    }
}

TEST_CASE("scale_sum_squares kernel matches its reference", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    std::mt19937 rng(9);
    for (const int64_t n : {int64_t(1), int64_t(1000), int64_t(300001)}) {
        for (const float scale : {0.0f, 0.375f, 1.0f}) {
            CAPTURE(n, scale);
            std::vector<float> x(static_cast<size_t>(n));
            fill_uniform(x, rng, -2.f, 3.f);
            if (scale == 0.0f) x[0] = NAN;  // cleared, as the reference does
            DevBuf dx(x);
            const std::vector<double> start = {0.25};
            DevBuf sq(start);
            CUDA_OK(launch_scale_sum_squares(dx.as<float>(), n, scale, sq.as<double>(), nullptr));
            CUDA_OK(cudaDeviceSynchronize());
            const double want = 0.25 + scale_sum_squares_reference(x.data(), n, scale);
            CHECK(sq.download<double>()[0] == Approx(want).epsilon(1e-9).margin(1e-12));
            CHECK(dx.download<float>() == x);  // one float product each: bit-equal
        }
    }
}

TEST_CASE("bf16 casts round to nearest even and back exactly", "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    std::mt19937 rng(11);
    for (const int64_t n : {int64_t(1), int64_t(257), int64_t(3) * 8192 * 256 + 5}) {
        CAPTURE(n);
        std::vector<float> x(static_cast<size_t>(n));
        fill_uniform(x, rng, -300.f, 300.f);
        x[0] = 1.0f + 1.0f / 256.0f;  // a tie: rounds to even (1.0)
        DevBuf dx(x), d16(size_t(n) * 2), back(size_t(n) * 4);
        CUDA_OK(cudaMemset(back.p, 0xFF, back.bytes));  // poison
        CUDA_OK(launch_cast_to_bf16(dx.as<float>(), d16.p, n, nullptr));
        CUDA_OK(launch_cast_from_bf16(d16.p, back.as<float>(), n, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        const std::vector<uint16_t> bits = d16.download<uint16_t>();
        const std::vector<float> got = back.download<float>();
        size_t bad_bits = 0, bad_values = 0;
        for (size_t i = 0; i < size_t(n); ++i) {
            bad_bits += bits[i] != bf16_bits(x[i]);
            bad_values += got[i] != bf16_value(bits[i]);
        }
        CHECK(bad_bits == 0);
        CHECK(bad_values == 0);
        CHECK(got[0] == 1.0f);
    }
}

TEST_CASE("cuBLASLt GEMMs match the reference for every transpose, precision and epilogue",
          "[kernels][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const GemmCase c = GENERATE(GemmCase{1, 8, 1}, GemmCase{37, 48, 64}, GemmCase{130, 384, 128},
                                GemmCase{256, 1152, 384}, GemmCase{64, 256, 1536});
    const bool trans_a = GENERATE(false, true);
    const bool trans_b = GENERATE(false, true);
    // fp32; bf16 → bf16; bf16 → fp32 with beta = 1; the same with C read from its own buffer
    const int mode = GENERATE(0, 1, 2, 3);
    const auto epi = GENERATE(GemmEpilogue::kNone, GemmEpilogue::kBias, GemmEpilogue::kBiasGelu);
    CAPTURE(c.m, c.n, c.k, trans_a, trans_b, mode, int(epi));
    GemmSpec s;
    s.trans_a = trans_a;
    s.trans_b = trans_b;
    s.m = c.m;
    s.n = c.n;
    s.k = c.k;
    s.lda = trans_a ? c.m : c.k;
    s.ldb = trans_b ? c.k : c.n;
    s.ldd = c.n;
    s.ab_type = mode == 0 ? GemmDtype::kFloat32 : GemmDtype::kBfloat16;
    s.d_type = mode == 1 ? GemmDtype::kBfloat16 : GemmDtype::kFloat32;
    s.alpha = 0.75f;
    s.beta = mode >= 2 ? 1.0f : 0.0f;
    s.epilogue = epi;
    s.ld_aux = (c.n + 7) / 8 * 8;
    std::mt19937 rng(uint32_t(c.m * 31 + c.n * 7 + c.k + mode * 1000 + int(epi) * 77));
    std::vector<float> a(size_t(c.m) * c.k), b(size_t(c.k) * c.n), d0(size_t(c.m) * c.n),
        bias(size_t(c.n));
    fill_uniform(a, rng, -1.f, 1.f);
    fill_uniform(b, rng, -1.f, 1.f);
    fill_uniform(d0, rng, -1.f, 1.f);
    fill_uniform(bias, rng, -0.5f, 0.5f);
    if (mode != 0) {
        round_bf16(a);
        round_bf16(b);
    }
    // A bf16 D takes a bf16 bias: the reference sees its rounded values.
    if (mode == 1) round_bf16(bias);
    s.bias_type = mode == 1 ? GemmDtype::kBfloat16 : GemmDtype::kFloat32;
    // mode 3: C is d0 in its own buffer and D starts as NaNs (poisoned), which must not leak in.
    std::vector<float> d = mode == 3 ? std::vector<float>(d0.size(), NAN) : d0,
                       aux(size_t(c.m) * s.ld_aux, 0.f);
    s.bias = bias.data();  // host bias for the reference, the device copy for the launch below
    if (mode == 3) s.c = d0.data();
    gemm_reference(s, a.data(), b.data(), d.data(), aux.data());

    cublasLtHandle_t lt;
    REQUIRE(cublasLtCreate(&lt) == CUBLAS_STATUS_SUCCESS);
    const bool bf = mode != 0;
    auto up = [&](const std::vector<float>& v, bool as_bf16) {
        return as_bf16 ? std::make_unique<DevBuf>(to_bf16(v)) : std::make_unique<DevBuf>(v);
    };
    auto da = up(a, bf), db = up(b, bf);
    const bool d_bf = s.d_type == GemmDtype::kBfloat16;
    std::unique_ptr<DevBuf> dd = s.beta != 0.f && mode != 3
                                     ? up(d0, d_bf)
                                     : std::make_unique<DevBuf>(d0.size() * (d_bf ? 2 : 4));
    const std::unique_ptr<DevBuf> dc = up(d0, d_bf);
    if (mode == 3) s.c = dc->p;
    const std::unique_ptr<DevBuf> dbias = up(bias, mode == 1);
    DevBuf daux(aux.size() * (d_bf ? 2 : 4)), ws(32u << 20);
    s.bias = dbias->p;
    if (epi == GemmEpilogue::kBiasGelu) s.aux = daux.p;
    if (d_bf && epi != GemmEpilogue::kNone) {  // an fp32 bias with a bf16 D: refused
        GemmSpec wrong = s;
        wrong.bias_type = GemmDtype::kFloat32;
        CHECK(launch_gemm(lt, wrong, da->p, db->p, dd->p, ws.p, ws.bytes, nullptr) ==
              cudaErrorInvalidValue);
    }
    CUDA_OK(launch_gemm(lt, s, da->p, db->p, dd->p, ws.p, ws.bytes, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    cublasLtDestroy(lt);
    const std::vector<float> got =
        d_bf ? from_bf16(dd->download<uint16_t>()) : dd->download<float>();
    REQUIRE(all_finite(got));
    const double tol = mode == 0 ? 1e-5 : (mode == 1 ? 1e-2 : 2e-3);
    if (mode == 3) CHECK(dc->download<float>() == d0);  // C is read, never written
    CHECK(rel_error(got, d) < tol);
    if (epi == GemmEpilogue::kBiasGelu) {
        std::vector<float> got_aux =
            d_bf ? from_bf16(daux.download<uint16_t>()) : daux.download<float>();
        std::vector<float> g, w;  // the stored columns only (ld_aux pads the rows)
        for (int32_t i = 0; i < c.m; ++i)
            for (int32_t j = 0; j < c.n; ++j) {
                g.push_back(got_aux[size_t(i) * s.ld_aux + j]);
                w.push_back(aux[size_t(i) * s.ld_aux + j]);
            }
        REQUIRE(all_finite(g));
        CHECK(rel_error(g, w) < tol);
    }
}
