// esper-bench-kernels: times launch_seed_forward (with telemetry) against a cudaMemcpyAsync
// device-to-device copy of the same bytes in the same run, over a seed-count sweep at fixed B·D
// and 0 / 10 / 100 % active seeds (GRAFTING, residual_mlp w→2w→w). Human lines on stderr; the
// last stdout line is one JSON object.
// Usage: esper-bench-kernels [--quick] [--iters N] [--seeds S,S,...] [--active P,P,...]
// (--seeds / --active run only those rows of the sweep, e.g. for a profiler).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench/kernels/bench_cuda.h"
#include "kernels/seed_backward.h"
#include "kernels/seed_forward.h"

using namespace esper::kernels;

namespace {

using esper::bench::dev_alloc;

template <typename T>
T* upload(const std::vector<T>& v) {
    T* p = static_cast<T*>(dev_alloc(v.size() * sizeof(T)));
    BENCH_CHECK(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice));
    return p;
}

uint32_t hash32(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return uint32_t(x);
}

struct Result {
    int64_t batch, width, seeds;
    int active_pct;
    double forward_us, copy_us, gbps, copy_gbps, fraction, backward_us;
    bool skipped;
};

template <typename F>
double time_us(F&& f, int iters, cudaStream_t stream) {
    cudaEvent_t a, b;
    BENCH_CHECK(cudaEventCreate(&a));
    BENCH_CHECK(cudaEventCreate(&b));
    for (int i = 0; i < 3; ++i) f();
    BENCH_CHECK(cudaEventRecord(a, stream));
    for (int i = 0; i < iters; ++i) f();
    BENCH_CHECK(cudaEventRecord(b, stream));
    BENCH_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    BENCH_CHECK(cudaEventElapsedTime(&ms, a, b));
    cudaEventDestroy(a);
    cudaEventDestroy(b);
    return 1000.0 * ms / iters;
}

Result run_case(int64_t B, int64_t D, int64_t S, int active_pct, int iters, float* h, float* y,
                float* dy, float* dh, cudaStream_t stream) {
    Result r{B, D, S, active_pct, 0, 0, 0, 0, 0, 0, false};
    const int64_t w_base = D / S;
    const int64_t n_active = active_pct == 0 ? 0 : std::max<int64_t>(1, S * active_pct / 100);
    const int64_t hidden = 2 * w_base;
    const double flops = double(n_active) * B * 4.0 * double(w_base) * double(hidden);
    if (flops > 2e10) {  // compute-bound blueprints; not what this benchmark measures
        r.skipped = true;
        return r;
    }
    std::vector<int32_t> off(S + 1);
    for (int64_t s = 0; s <= S; ++s) off[s] = int32_t(s * D / S);
    std::vector<uint8_t> stage(S, uint8_t(SeedStage::kDormant)), kind(S, 0);
    std::vector<int32_t> slot(S, -1);
    std::vector<float> alpha(S, 0.5f);
    // Active seeds spread evenly over the layer.
    for (int64_t i = 0; i < n_active; ++i) {
        const int64_t s = i * S / n_active;
        stage[s] = uint8_t(SeedStage::kGrafting);
        slot[s] = int32_t(i);
    }
    SeedLayerView v;
    v.batch = int32_t(B);
    v.width = int32_t(D);
    v.num_seeds = int32_t(S);
    v.chunk_offset = upload(off);
    v.stage = upload(stage);
    v.kind = upload(kind);
    v.slot = upload(slot);
    v.alpha = upload(alpha);
    float* params = nullptr;
    float* grads = nullptr;
    if (n_active > 0) {
        const int64_t max_w = w_base + 1;
        BlueprintArena& a = v.arenas[0];
        a.capacity = int32_t(n_active);
        a.hidden = int32_t(2 * max_w);
        a.max_width = int32_t(max_w);
        a.stride = int32_t(blueprint_slot_floats(BlueprintKind::kResidualMlp, max_w, a.hidden));
        std::vector<float> hp(size_t(a.capacity) * a.stride);
        for (size_t i = 0; i < hp.size(); ++i) hp[i] = float(int(hash32(i) % 2001) - 1000) * 1e-4f;
        params = upload(hp);
        grads = static_cast<float*>(dev_alloc(hp.size() * 4));
        BENCH_CHECK(cudaMemset(grads, 0, hp.size() * 4));
        a.params = params;
        a.grads = grads;
    }
    std::vector<double*> tel_bufs(6);
    for (auto& p : tel_bufs) {
        p = static_cast<double*>(dev_alloc(S * sizeof(double)));
        BENCH_CHECK(cudaMemset(p, 0, S * sizeof(double)));
    }
    SeedTelemetryAccum tel{tel_bufs[0], tel_bufs[1], tel_bufs[2],
                           tel_bufs[3], tel_bufs[4], tel_bufs[5]};
    const size_t fws_bytes = seed_forward_workspace_bytes(v);
    const size_t bws_bytes = seed_backward_workspace_bytes(v);
    void* fws = dev_alloc(fws_bytes);
    void* bws = dev_alloc(bws_bytes);
    BENCH_CHECK(cudaMemset(fws, 0, fws_bytes));
    BENCH_CHECK(cudaMemset(bws, 0, bws_bytes));
    const size_t bytes = size_t(B) * D * sizeof(float);

    r.forward_us =
        time_us([&] { BENCH_CHECK(launch_seed_forward(v, h, y, &tel, fws, fws_bytes, stream)); },
                iters, stream);
    r.copy_us = time_us(
        [&] { BENCH_CHECK(cudaMemcpyAsync(y, h, bytes, cudaMemcpyDeviceToDevice, stream)); }, iters,
        stream);
    r.backward_us = time_us(
        [&] { BENCH_CHECK(launch_seed_backward(v, h, dy, dh, &tel, bws, bws_bytes, stream)); },
        std::max(1, iters / 2), stream);
    r.gbps = 2.0 * double(bytes) / (r.forward_us * 1e3);
    r.copy_gbps = 2.0 * double(bytes) / (r.copy_us * 1e3);
    r.fraction = r.copy_us / r.forward_us;

    cudaFree(const_cast<int32_t*>(v.chunk_offset));
    cudaFree(const_cast<uint8_t*>(v.stage));
    cudaFree(const_cast<uint8_t*>(v.kind));
    cudaFree(const_cast<int32_t*>(v.slot));
    cudaFree(const_cast<float*>(v.alpha));
    cudaFree(params);
    cudaFree(grads);
    for (auto* p : tel_bufs) cudaFree(p);
    cudaFree(fws);
    cudaFree(bws);
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    int iters = 20;
    std::vector<int64_t> only_seeds, only_active;
    auto parse_list = [](const char* text) {
        std::vector<int64_t> out;
        std::stringstream in(text);
        for (std::string item; std::getline(in, item, ',');) out.push_back(std::stoll(item));
        return out;
    };
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc)
            iters = std::atoi(argv[++i]);
        else if (std::strcmp(argv[i], "--seeds") == 0 && i + 1 < argc)
            only_seeds = parse_list(argv[++i]);
        else if (std::strcmp(argv[i], "--active") == 0 && i + 1 < argc)
            only_active = parse_list(argv[++i]);
        else if (std::strcmp(argv[i], "--help") == 0) {
            std::printf(
                "usage: esper-bench-kernels [--quick] [--iters N] [--seeds S,S,...] "
                "[--active P,P,...]\n");
            return 0;
        } else {
            std::fprintf(stderr, "unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    int dev_count = 0;
    if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
        std::fprintf(stderr, "esper-bench-kernels: no CUDA device\n");
        return 1;
    }
    cudaDeviceProp prop{};
    BENCH_CHECK(cudaGetDeviceProperties(&prop, 0));
    const int64_t total = quick ? (int64_t(1) << 22) : (int64_t(4096) * 16384);
    float* h = static_cast<float*>(dev_alloc(total * 4));
    float* y = static_cast<float*>(dev_alloc(total * 4));
    float* dy = static_cast<float*>(dev_alloc(total * 4));
    float* dh = static_cast<float*>(dev_alloc(total * 4));
    {
        std::vector<float> host(total);
        for (int64_t i = 0; i < total; ++i)
            host[i] = float(int(hash32(uint64_t(i)) % 20001) - 10000) * 1e-4f;
        BENCH_CHECK(cudaMemcpy(h, host.data(), total * 4, cudaMemcpyHostToDevice));
        BENCH_CHECK(cudaMemcpy(dy, host.data(), total * 4, cudaMemcpyHostToDevice));
    }
    cudaStream_t stream;
    BENCH_CHECK(cudaStreamCreate(&stream));
    // Fixed B·D; D grows with the seed count once chunks reach one feature.
    std::vector<int64_t> seed_counts = {16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576};
    if (quick) seed_counts = {16, 1024, 16384, 262144};
    auto wanted = [](const std::vector<int64_t>& only, int64_t x) {
        return only.empty() || std::find(only.begin(), only.end(), x) != only.end();
    };
    std::vector<Result> results;
    for (int64_t S : seed_counts) {
        if (!wanted(only_seeds, S)) continue;
        int64_t D = quick ? 4096 : 16384;
        while (D < S) D *= 4;
        const int64_t B = total / D;
        for (int pct : {0, 10, 100}) {
            if (!wanted(only_active, pct)) continue;
            Result r = run_case(B, D, S, pct, iters, h, y, dy, dh, stream);
            if (r.skipped)
                std::fprintf(
                    stderr,
                    "B=%lld D=%lld seeds=%lld active=%d%%: skipped (blueprint FLOPs dominate)\n",
                    (long long)B, (long long)D, (long long)S, pct);
            else
                std::fprintf(
                    stderr,
                    "B=%lld D=%lld seeds=%lld active=%d%%: forward %.1f us (%.0f GB/s), copy "
                    "%.1f us (%.0f GB/s), fraction %.3f, backward %.1f us\n",
                    (long long)B, (long long)D, (long long)S, pct, r.forward_us, r.gbps, r.copy_us,
                    r.copy_gbps, r.fraction, r.backward_us);
            results.push_back(r);
        }
    }
    const size_t table_bytes = sizeof(int32_t) + 1 + 1 + sizeof(int32_t) + sizeof(float);
    const size_t tel_bytes = 6 * sizeof(double);
    const size_t ws_bytes_per_seed =
        (seed_forward_workspace_bytes(1 << 20) + seed_backward_workspace_bytes(1 << 20)) >> 20;
    std::string json = "{\"bench\":\"kernels\",\"device\":\"" + std::string(prop.name) +
                       "\",\"iters\":" + std::to_string(iters) +
                       ",\"view_bytes_per_seed\":" + std::to_string(table_bytes) +
                       ",\"telemetry_bytes_per_seed\":" + std::to_string(tel_bytes) +
                       ",\"workspace_bytes_per_seed\":" + std::to_string(ws_bytes_per_seed) +
                       ",\"device_bytes_1M_seeds\":" +
                       std::to_string((table_bytes + tel_bytes + ws_bytes_per_seed) << 20) +
                       ",\"seed_forward\":[";
    for (size_t i = 0; i < results.size(); ++i) {
        const Result& r = results[i];
        char buf[512];
        if (r.skipped)
            std::snprintf(
                buf, sizeof buf,
                "{\"batch\":%lld,\"width\":%lld,\"seeds\":%lld,\"active_pct\":%d,\"skipped\":true}",
                (long long)r.batch, (long long)r.width, (long long)r.seeds, r.active_pct);
        else
            std::snprintf(
                buf, sizeof buf,
                "{\"batch\":%lld,\"width\":%lld,\"seeds\":%lld,\"active_pct\":%d,"
                "\"forward_us\":%.2f,\"forward_gbps\":%.1f,\"copy_us\":%.2f,\"copy_gbps\":%.1f,"
                "\"fraction_of_copy\":%.4f,\"backward_us\":%.2f}",
                (long long)r.batch, (long long)r.width, (long long)r.seeds, r.active_pct,
                r.forward_us, r.gbps, r.copy_us, r.copy_gbps, r.fraction, r.backward_us);
        if (i) json += ',';
        json += buf;
    }
    json += "]}";
    std::printf("%s\n", json.c_str());
    cudaFree(h);
    cudaFree(y);
    cudaFree(dy);
    cudaFree(dh);
    cudaStreamDestroy(stream);
    return 0;
}
