// esper-bench-attention: the fused causal attention kernels (kernels/attention.h), bf16, at the
// issue-13 shapes (B, H, T, D): forward, backward and forward+backward in ms (median of timed
// launches with device events), TFLOP/s with the causal FLOP count (forward 2·B·H·T²·D, the
// backward 2.5× that) and the fraction of the GPU's dense bf16 tensor peak. Human lines on stderr;
// the last stdout line is one JSON object.
// Each shape runs on each backend asked for: the own kernels, cuDNN's fused engines (loaded at run
// time) and kAuto, the launchers' default choice between them.
// Usage: esper-bench-attention [--iters N] [--shape B,H,T,D] [--backend own|cudnn|auto|all]
// (--shape: that one shape instead of the four, e.g. to profile it with ncu)
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/kernels/bench_cuda.h"
#include "kernels/attention.h"
#include "kernels/bf16_host.h"

using namespace esper::kernels;

namespace {

using esper::bench::dev_alloc;

// Random bf16 values in [-1, 1) (never all zeros: zeros time faster than real data).
void* random_bf16(size_t n, std::mt19937& rng) {
    std::vector<uint16_t> h(n);
    std::uniform_real_distribution<float> d(-1.f, 1.f);
    for (auto& x : h) x = esper::kernels::bf16_bits(d(rng));
    void* p = dev_alloc(n * 2);
    BENCH_CHECK(cudaMemcpy(p, h.data(), n * 2, cudaMemcpyHostToDevice));
    return p;
}

template <typename F>
double median_ms(F&& f, int iters, cudaStream_t stream) {
    for (int i = 0; i < 3; ++i) f();
    BENCH_CHECK(cudaStreamSynchronize(stream));
    std::vector<cudaEvent_t> ev(static_cast<size_t>(iters) + 1);
    for (auto& e : ev) BENCH_CHECK(cudaEventCreate(&e));
    BENCH_CHECK(cudaEventRecord(ev[0], stream));
    for (int i = 0; i < iters; ++i) {
        f();
        BENCH_CHECK(cudaEventRecord(ev[size_t(i) + 1], stream));
    }
    BENCH_CHECK(cudaStreamSynchronize(stream));
    std::vector<double> ms(static_cast<size_t>(iters));
    for (int i = 0; i < iters; ++i) {
        float t = 0.f;
        BENCH_CHECK(cudaEventElapsedTime(&t, ev[size_t(i)], ev[size_t(i) + 1]));
        ms[size_t(i)] = t;
    }
    for (auto& e : ev) BENCH_CHECK(cudaEventDestroy(e));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
    int iters = 50;
    int only[4] = {0, 0, 0, 0};  // --shape: B, H, T, D
    std::vector<std::pair<std::string, AttentionBackend>> backends = {
        {"own", AttentionBackend::kOwn},
        {"cudnn", AttentionBackend::kCudnn},
        {"auto", AttentionBackend::kAuto}};
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = std::atoi(argv[++i]);
        } else if (std::strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
            if (std::sscanf(argv[++i], "%d,%d,%d,%d", &only[0], &only[1], &only[2], &only[3]) !=
                4) {
                std::fprintf(stderr, "esper-bench-attention: --shape wants B,H,T,D, got '%s'\n",
                             argv[i]);
                return 2;
            }
        } else if (std::strcmp(argv[i], "--backend") == 0 && i + 1 < argc) {
            const std::string want = argv[++i];
            if (want != "all") {
                std::erase_if(backends, [&](const auto& b) { return b.first != want; });
                if (backends.empty()) {
                    std::fprintf(stderr,
                                 "esper-bench-attention: --backend wants own, cudnn, auto or "
                                 "all, got '%s'\n",
                                 want.c_str());
                    return 2;
                }
            }
        } else {
            const bool help =
                std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0;
            std::fprintf(help ? stdout : stderr,
                         "usage: esper-bench-attention [--iters N] [--shape B,H,T,D] "
                         "[--backend own|cudnn|auto|all]\n");
            return help ? 0 : 2;
        }
    }
    cudaDeviceProp prop{};
    BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
    // Dense bf16 tensor peak of the SXM Hopper parts (H100 and H200 alike); other GPUs: unknown.
    const bool hopper = prop.major == 9;
    const double peak_tflops = hopper ? 989.4 : 0.0;
    cudaStream_t stream;
    BENCH_CHECK(cudaStreamCreate(&stream));
    struct Shape {
        int b, h, t, d;
    };
    std::vector<Shape> shapes = {
        {16, 12, 256, 64}, {8, 12, 1024, 64}, {2, 12, 4096, 64}, {4, 16, 2048, 128}};
    if (only[0] > 0) shapes = {{only[0], only[1], only[2], only[3]}};
    nlohmann::json results = nlohmann::json::array();
    std::mt19937 rng(7);
    for (const Shape& sh : shapes) {
        AttentionShape s;
        s.batch = sh.b;
        s.seq = sh.t;
        s.heads = sh.h;
        s.head_dim = sh.d;
        s.ld_qkv = s.ld_out = int64_t(sh.h) * sh.d;
        s.scale = 1.0f / std::sqrt(float(sh.d));
        const size_t n = size_t(sh.b) * sh.t * sh.h * sh.d;
        void* q = random_bf16(n, rng);
        void* k = random_bf16(n, rng);
        void* v = random_bf16(n, rng);
        void* dout = random_bf16(n, rng);
        void* out = dev_alloc(n * 2);
        void* dq = dev_alloc(n * 2);
        void* dk = dev_alloc(n * 2);
        void* dv = dev_alloc(n * 2);
        float* lse = static_cast<float*>(dev_alloc(size_t(sh.b) * sh.h * sh.t * 4));
        const size_t ws_bytes = attention_backward_workspace_bytes(s);
        void* ws = dev_alloc(ws_bytes);
        for (const auto& [name, backend] : backends) {
            // One untimed call each way: cuDNN builds its plans on first use.
            const cudaError_t f0 = launch_attention_forward(s, AttentionDtype::kBfloat16, q, k, v,
                                                            out, lse, stream, backend);
            const cudaError_t b0 =
                f0 != cudaSuccess
                    ? f0
                    : launch_attention_backward(s, AttentionDtype::kBfloat16, q, k, v, out, dout,
                                                lse, dq, dk, dv, ws, ws_bytes, stream, backend);
            if (f0 != cudaSuccess || b0 != cudaSuccess) {
                const std::string why =
                    std::string(cudaGetErrorString(f0 != cudaSuccess ? f0 : b0)) + " (" +
                    attention_cudnn_status() + ")";
                std::fprintf(stderr, "B=%d H=%d T=%d D=%d  %-5s  cannot run: %s\n", sh.b, sh.h,
                             sh.t, sh.d, name.c_str(), why.c_str());
                results.push_back({{"B", sh.b},
                                   {"H", sh.h},
                                   {"T", sh.t},
                                   {"D", sh.d},
                                   {"backend", name},
                                   {"error", why}});
                continue;
            }
            auto fwd = [&] {
                BENCH_CHECK(launch_attention_forward(s, AttentionDtype::kBfloat16, q, k, v, out,
                                                     lse, stream, backend));
            };
            auto bwd = [&] {
                BENCH_CHECK(launch_attention_backward(s, AttentionDtype::kBfloat16, q, k, v, out,
                                                      dout, lse, dq, dk, dv, ws, ws_bytes, stream,
                                                      backend));
            };
            const double fwd_ms = median_ms(fwd, iters, stream);
            const double bwd_ms = median_ms(bwd, iters, stream);
            const double both_ms = median_ms(
                [&] {
                    fwd();
                    bwd();
                },
                iters, stream);
            const double fwd_flop = 2.0 * sh.b * sh.h * double(sh.t) * sh.t * sh.d;  // causal half
            const double total_flop = 3.5 * fwd_flop;
            const double tflops = total_flop / (both_ms * 1e-3) / 1e12;
            std::fprintf(stderr,
                         "B=%d H=%d T=%d D=%d  %-5s  fwd %.3f ms (%.0f TFLOP/s)  bwd %.3f ms  "
                         "fwd+bwd %.3f ms (%.0f TFLOP/s, %.1f%% of peak)\n",
                         sh.b, sh.h, sh.t, sh.d, name.c_str(), fwd_ms,
                         fwd_flop / (fwd_ms * 1e-3) / 1e12, bwd_ms, both_ms, tflops,
                         peak_tflops > 0 ? 100.0 * tflops / peak_tflops : 0.0);
            results.push_back({{"B", sh.b},
                               {"H", sh.h},
                               {"T", sh.t},
                               {"D", sh.d},
                               {"backend", name},
                               {"fwd_ms", fwd_ms},
                               {"bwd_ms", bwd_ms},
                               {"fwd_bwd_ms", both_ms},
                               {"fwd_tflops", fwd_flop / (fwd_ms * 1e-3) / 1e12},
                               {"fwd_bwd_tflops", tflops},
                               {"fraction_of_peak", peak_tflops > 0 ? tflops / peak_tflops : 0.0}});
        }
        for (void* p : {q, k, v, dout, out, dq, dk, dv, static_cast<void*>(lse), ws})
            BENCH_CHECK(cudaFree(p));
    }
    nlohmann::json j = {{"bench", "attention"},
                        {"device", prop.name},
                        {"dtype", "bf16"},
                        {"causal", true},
                        {"peak_bf16_tflops", peak_tflops},
                        {"iters", iters},
                        {"cudnn", attention_cudnn_status()},
                        {"results", results}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
}
