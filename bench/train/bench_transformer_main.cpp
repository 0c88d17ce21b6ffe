// esper-bench-transformer: training tokens/s of the transformer host on the GPU backend
// (CudaTransformerBackend: forward, loss, backward, clip, AdamW; one step = Trainer::step()'s
// device work, with the loss read back every step) at 6×384, T = 256, batch 64 (issue 13), in
// bf16 and fp32, with MFU (6·params·tokens + attention FLOPs over the dense bf16 peak) and the
// device memory the process holds; each precision with the step as one replayed CUDA graph
// (run.cuda_graph: true, the default) and enqueued kernel by kernel (false). Human lines on
// stderr, one JSON object on the last stdout line. Usage: esper-bench-transformer [--iters N]
// [--layers L --width C --heads H --context T --batch B] [--precision bf16|fp32|both]
// [--graph on|off|both]
#include <cuda_runtime_api.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "core/clock.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/tensor.h"
#include "kasmina/model/transformer.h"
#include "kasmina/train/cuda_transformer_backend.h"
#include "kasmina/train/optimizer.h"

using namespace esper;
using namespace esper::kasmina;

int main(int argc, char** argv) {
    int iters = 30, layers = 6, width = 384, heads = 6, context = 256, batch = 64;
    std::vector<std::string> precisions = {"bf16", "fp32"};
    std::vector<bool> graph_modes = {true, false};
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        const std::string value = argv[i + 1];
        const int v = std::atoi(argv[i + 1]);
        if (a == "--precision" && (value == "bf16" || value == "fp32"))
            precisions = {value};
        else if (a == "--precision" && value == "both")
            precisions = {"bf16", "fp32"};
        else if (a == "--graph" && (value == "on" || value == "off"))
            graph_modes = {value == "on"};
        else if (a == "--graph" && value == "both")
            graph_modes = {true, false};
        else if (a == "--iters")
            iters = v;
        else if (a == "--layers")
            layers = v;
        else if (a == "--width")
            width = v;
        else if (a == "--heads")
            heads = v;
        else if (a == "--context")
            context = v;
        else if (a == "--batch")
            batch = v;
        else {
            std::fprintf(stderr, "esper-bench-transformer: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!cuda_device_available()) {
        std::fprintf(stderr, "esper-bench-transformer: no CUDA device\n");
        return 4;
    }
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 1;
    const double peak = prop.major == 9 ? 989.4e12 : 0.0;  // dense bf16, SXM Hopper
    nlohmann::json results = nlohmann::json::array();
    std::vector<std::pair<std::string, bool>> runs;  // (precision, CUDA graph)
    for (const std::string& p : precisions)
        for (const bool g : graph_modes) runs.emplace_back(p, g);
    for (const auto& [precision, graph] : runs) {
        Config c;
        c.run.seed = 1;
        c.run.precision = precision;
        c.run.cuda_graph = graph;
        c.model.kind = ModelKind::kTransformer;
        c.model.seeds_per_layer = 1;
        c.model.transformer.n_layer = layers;
        c.model.transformer.n_head = heads;
        c.model.transformer.d_model = width;
        c.model.transformer.context = context;
        c.model.transformer.widening_seeds = 0;
        c.model.transformer.max_extra_units = 0;
        c.model.transformer.max_extra_heads = 0;
        c.optimizer.kind = OptimizerKind::kAdamw;
        c.optimizer.lr = 3e-4;
        c.optimizer.weight_decay = 0.1;
        c.optimizer.grad_clip = 1.0;
        size_t free0 = 0, total = 0;
        (void)cudaMemGetInfo(&free0, &total);
        TransformerModel model(c.model, c.run.seed);
        Optimizer opt(c.optimizer, model.params(), model.seed_layer_widths());
        const int32_t rows = batch * context;
        CudaTransformerBackend gpu(c, model, opt, rows, rows);
        Telemetry tel(std::vector<int32_t>(model.seed_sites().size(), 1));
        Rng rng(7);
        std::vector<int32_t> tokens(static_cast<size_t>(rows)), targets(static_cast<size_t>(rows));
        for (auto& t : tokens) t = int32_t(rng.below(256));
        for (auto& t : targets) t = int32_t(rng.below(256));
        Batch b{batch, nullptr, tokens.data(), targets.data(), rows};
        const StepRates rates{3e-4, 3e-4, {}};
        for (int i = 0; i < 3; ++i) {
            gpu.run_step(b, rates, tel);
            gpu.commit_step(rates);
        }
        size_t free1 = 0;
        (void)cudaMemGetInfo(&free1, &total);
        Stopwatch sw;
        double loss = 0.0;
        for (int i = 0; i < iters; ++i) {
            loss = gpu.run_step(b, rates, tel).loss;
            gpu.commit_step(rates);
        }
        const double step_s = sw.elapsed_s() / iters;
        const double tok_s = rows / step_s;
        const double n_params = double(model.param_count());
        const double flops_per_token =
            6.0 * n_params + 6.0 * layers * double(context) * width;  // + causal attention
        const double mfu = peak > 0 ? tok_s * flops_per_token / peak : 0.0;
        const double mem_gib = double(free0 - free1) / double(1ull << 30);
        std::fprintf(stderr,
                     "%s graph %s %dx%d T=%d B=%d: %.2f ms/step, %.0f tokens/s, MFU %.1f%%, "
                     "%.2f GiB, loss %.3f\n",
                     precision.c_str(), graph ? "on" : "off", layers, width, context, batch,
                     step_s * 1e3, tok_s, 100 * mfu, mem_gib, loss);
        results.push_back({{"precision", precision},
                           {"cuda_graph", graph},
                           {"graph_captures", gpu.graph_captures()},
                           {"layers", layers},
                           {"width", width},
                           {"heads", heads},
                           {"context", context},
                           {"batch", batch},
                           {"params", n_params},
                           {"step_ms", step_s * 1e3},
                           {"tokens_per_s", tok_s},
                           {"mfu", mfu},
                           {"device_mem_gib", mem_gib},
                           {"loss", loss}});
    }
    const nlohmann::json j = {{"bench", "transformer_train"},
                              {"device", prop.name},
                              {"iters", iters},
                              {"results", results}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
}
