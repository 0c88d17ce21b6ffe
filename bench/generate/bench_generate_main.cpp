// esper-bench-generate: generation tokens/s of the GPU decoder (kasmina/train/cuda_generate.h:
// bf16 weights and KV cache, one graph replay per byte) on randomly initialised transformer hosts
// — 12×768 and 6×384 with a context of 1024 by default, or the one --layers/--width/--heads/
// --context give — at batch 1 and 8, greedy, `--tokens` bytes after a 16-byte prompt (the window
// never fills). The bandwidth bound of a step is (bytes of the weights + the KV-cache bytes its
// attention reads, averaged over the run) / the HBM bandwidth from the device attributes (memory
// clock · bus width · 2); the fraction reached is tokens/s over that bound. `--path
// fused|serial|gemm|all` (default all): the decoder's fused small-row products with overlapped
// launches (CudaDecodePath::kFused, forced up to 8 rows), the same launched one after another
// (kFusedSerial), its cuBLASLt products (kGemm), or each in turn on the same model (the ratios of
// one run). Human lines on stderr, one JSON object on the last stdout line.
#include <cuda_runtime_api.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kasmina/model/transformer.h"
#include "kasmina/train/cuda_generate.h"
#include "kasmina/train/step_backend.h"

using namespace esper;
using namespace esper::kasmina;

int main(int argc, char** argv) {
    int layers = 0, width = 0, heads = 0, context = 1024, tokens = 512;
    std::vector<int> batches = {1, 8};
    std::vector<CudaDecodePath> paths = {CudaDecodePath::kGemm, CudaDecodePath::kFusedSerial,
                                         CudaDecodePath::kFused};
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        const int v = std::atoi(argv[i + 1]);
        if (a == "--path") {
            const std::string p = argv[i + 1];
            if (p == "fused")
                paths = {CudaDecodePath::kFused};
            else if (p == "serial")
                paths = {CudaDecodePath::kFusedSerial};
            else if (p == "gemm")
                paths = {CudaDecodePath::kGemm};
            else if (p != "all") {
                std::fprintf(stderr,
                             "esper-bench-generate: --path fused|serial|gemm|all, not '%s'\n",
                             p.c_str());
                return 2;
            }
        } else if (a == "--layers")
            layers = v;
        else if (a == "--width")
            width = v;
        else if (a == "--heads")
            heads = v;
        else if (a == "--context")
            context = v;
        else if (a == "--tokens")
            tokens = v;
        else if (a == "--batch")
            batches = {v};
        else {
            std::fprintf(stderr, "esper-bench-generate: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!cuda_device_available()) {
        std::fprintf(stderr, "esper-bench-generate: no CUDA device\n");
        return 4;
    }
    cudaDeviceProp prop{};
    int clock_khz = 0, bus_bits = 0;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0) != cudaSuccess)
        return 1;
    const double hbm = 2.0 * double(clock_khz) * 1e3 * double(bus_bits) / 8.0;  // bytes/s
    std::vector<std::array<int, 3>> models = {{12, 768, 12}, {6, 384, 6}};
    if (layers > 0) models = {{layers, width, heads}};
    const int prompt_len = 16;
    if (prompt_len + tokens > context) {
        std::fprintf(stderr, "esper-bench-generate: 16 + --tokens must fit the context\n");
        return 2;
    }
    std::string prompt;
    for (int i = 0; i < prompt_len; ++i) prompt += char('a' + i % 26);
    const std::span<const uint8_t> pb(reinterpret_cast<const uint8_t*>(prompt.data()),
                                      prompt.size());
    nlohmann::json results = nlohmann::json::array();
    for (const auto& [L, C, H] : models) {
        ModelConfig mc;
        mc.kind = ModelKind::kTransformer;
        mc.seeds_per_layer = 1;
        mc.transformer.n_layer = L;
        mc.transformer.n_head = H;
        mc.transformer.d_model = C;
        mc.transformer.context = context;
        mc.transformer.widening_seeds = 0;
        mc.transformer.max_extra_units = 0;
        mc.transformer.max_extra_heads = 0;
        const TransformerModel model(mc, 1);
        for (int B : batches)
            for (const CudaDecodePath path : paths) {
                const char* path_name = path == CudaDecodePath::kFused         ? "fused"
                                        : path == CudaDecodePath::kFusedSerial ? "serial"
                                                                               : "gemm";
                CudaDecoder dec(model, B, path);
                GenerateOptions o;
                o.temperature = 0.0;
                o.tokens = 32;
                (void)dec.generate(pb, o);  // warm-up: capture, cuBLASLt heuristics, clocks
                o.tokens = tokens;
                (void)dec.generate(pb, o);
                const CudaDecodeStats& s = dec.last_stats();
                const double steps_s = double(s.decode_steps) / s.decode_s;
                const double tok_s = steps_s * B;
                const double bytes_step =
                    double(s.weight_bytes) + s.kv_bytes_read / double(s.decode_steps);
                const double bound = hbm / bytes_step * B;
                std::fprintf(stderr,
                             "%dx%d B=%d %s: %.0f tokens/s (%.1f us/step), bound %.0f tokens/s "
                             "(%.1f MB/step at %.0f GB/s): %.1f%%; prefill %.2f ms\n",
                             L, C, B, path_name, tok_s, 1e6 / steps_s, bound, bytes_step / 1e6,
                             hbm / 1e9, 100.0 * tok_s / bound, s.prefill_s * 1e3);
                results.push_back({{"layers", L},
                                   {"width", C},
                                   {"heads", H},
                                   {"context", context},
                                   {"batch", B},
                                   {"path", path_name},
                                   {"tokens", tokens},
                                   {"tokens_per_s", tok_s},
                                   {"step_us", 1e6 / steps_s},
                                   {"weight_bytes", s.weight_bytes},
                                   {"bytes_per_step", bytes_step},
                                   {"bound_tokens_per_s", bound},
                                   {"fraction_of_bound", tok_s / bound},
                                   {"prefill_ms", s.prefill_s * 1e3}});
            }
    }
    const nlohmann::json j = {{"bench", "generate"},
                              {"device", prop.name},
                              {"hbm_gb_per_s", hbm / 1e9},
                              {"results", results}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
}
