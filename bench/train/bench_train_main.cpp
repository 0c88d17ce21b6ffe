// esper-bench-train: samples/s of a full training step (upload of the batch, forward, loss,
// backward, SGD-momentum update, telemetry) on the CUDA backend, for the default model
// (784-128-128-10, batch 128) and a GPU-filling one (784-4096-4096-10, batch 4096), each with
// all-dormant seed layers and as the bare host network (no seed layers): the dormant overhead.
// "dormant" keeps the all-dormant seed layers off the critical path (CudaBackendOptions::
// overlap_dormant, the default); "inline" runs their kernels in line, for comparison.
// fp32, TF32 off. "pipelined" replays the step graph back to back (as PyTorch eager runs without
// .item()); "synced" also waits for every step as Trainer::step() does. Human lines on stderr,
// one JSON object on the last stdout line. Usage: esper-bench-train [--quick] [--iters N]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/clock.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/model/mlp.h"
#include "kasmina/train/cuda_backend.h"
#include "kasmina/train/optimizer.h"

using namespace esper;
using namespace esper::kasmina;

namespace {

struct Case {
    const char* name;
    int64_t width;
    int32_t batch;
    int64_t seeds_per_layer;
};

struct Result {
    double pipelined_us = 0.0;
    double synced_us = 0.0;
    double loss = 0.0;
};

Result run_case(const Case& k, bool seed_layers, bool overlap, int iters, int warmup) {
    Config c;
    c.run.seed = 1;
    c.model.hidden = {k.width, k.width};
    c.model.activation = Activation::kRelu;
    c.model.seeds_per_layer = k.seeds_per_layer;
    c.optimizer.kind = OptimizerKind::kSgd;
    c.optimizer.lr = 0.01;
    c.optimizer.momentum = 0.9;
    c.optimizer.weight_decay = 1e-4;
    const int64_t in = 784, classes = 10;
    MlpModel model(c.model, in, classes, c.run.seed);
    SeedManager seeds(seed_manager_config(c), model.seed_layer_widths());
    Optimizer opt(c.optimizer, model.params(), model.seed_layer_widths());
    CudaBackendOptions o;
    o.batch = k.batch;
    o.eval_batch = k.batch;
    o.seed_layers = seed_layers;
    o.overlap_dormant = overlap;
    CudaBackend gpu(c, model, &seeds, opt, o);

    Rng rng(99);
    std::vector<float> x(size_t(k.batch) * size_t(in));
    std::vector<int32_t> y(size_t(k.batch));
    for (float& v : x) v = rng.uniform(0.0f, 1.0f);
    for (int32_t& v : y) v = int32_t(rng.below(uint64_t(classes)));
    gpu.sync_structure();
    gpu.set_batch(x.data(), y.data());

    Result r;
    for (int i = 0; i < warmup; ++i) gpu.launch_step(c.optimizer.lr, c.optimizer.lr);
    gpu.synchronize();
    Stopwatch sw;
    for (int i = 0; i < iters; ++i) gpu.launch_step(c.optimizer.lr, c.optimizer.lr);
    gpu.synchronize();
    r.pipelined_us = sw.elapsed_s() * 1e6 / iters;
    sw.reset();
    for (int i = 0; i < iters; ++i) {
        gpu.launch_step(c.optimizer.lr, c.optimizer.lr);
        r.loss = gpu.finish_step(nullptr).loss;
    }
    r.synced_us = sw.elapsed_s() * 1e6 / iters;
    return r;
}

}  // namespace

int main(int argc, char** argv) {
    bool quick = false;
    int iters = 0;
    for (int i = 1; i < argc; ++i) {
        if (std::strcmp(argv[i], "--quick") == 0) {
            quick = true;
        } else if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) {
            iters = std::atoi(argv[++i]);
        } else if (std::strcmp(argv[i], "--help") == 0) {
            std::printf("usage: esper-bench-train [--quick] [--iters N]\n");
            return 0;
        } else {
            std::fprintf(stderr, "esper-bench-train: unknown argument '%s'\n", argv[i]);
            return 2;
        }
    }
    if (!cuda_device_available()) {
        std::fprintf(stderr, "esper-bench-train: no CUDA device\n");
        return 4;
    }
    const Case cases[] = {{"default", 128, 128, 16}, {"large", 4096, 4096, 64}};
    std::string json = "{\"bench\":\"train\",\"precision\":\"fp32\",\"tf32\":false,\"results\":[";
    std::string device;
    bool first = true;
    for (const Case& k : cases) {
        const int n = iters > 0 ? iters : (k.width > 1024 ? (quick ? 10 : 50) : (quick ? 50 : 500));
        const int warm = k.width > 1024 ? 5 : 50;
        const Result bare = run_case(k, false, false, n, warm);
        const Result dormant = run_case(k, true, true, n, warm);
        const Result inline_seeds = run_case(k, true, false, n, warm);
        const double overhead = dormant.pipelined_us / bare.pipelined_us - 1.0;
        const double overhead_inline = inline_seeds.pipelined_us / bare.pipelined_us - 1.0;
        std::fprintf(stderr,
                     "%-8s 784-%lld-%lld-10 batch %d: bare %.1f us/step (synced %.1f), "
                     "dormant seeds(%lld/layer) %.1f us/step (synced %.1f), overhead %.1f%% "
                     "(seed kernels in line: %.1f us/step, %.1f%%)\n",
                     k.name, (long long)k.width, (long long)k.width, k.batch, bare.pipelined_us,
                     bare.synced_us, (long long)k.seeds_per_layer, dormant.pipelined_us,
                     dormant.synced_us, 100.0 * overhead, inline_seeds.pipelined_us,
                     100.0 * overhead_inline);
        char buf[1024];
        std::snprintf(buf, sizeof(buf),
                      "%s{\"model\":\"%s\",\"layers\":\"784-%lld-%lld-10\",\"batch\":%d,"
                      "\"seeds_per_layer\":%lld,\"iters\":%d,"
                      "\"bare_us_per_step\":%.2f,\"bare_synced_us_per_step\":%.2f,"
                      "\"dormant_us_per_step\":%.2f,\"dormant_synced_us_per_step\":%.2f,"
                      "\"bare_samples_per_s\":%.1f,\"dormant_samples_per_s\":%.1f,"
                      "\"dormant_overhead\":%.4f,\"dormant_inline_us_per_step\":%.2f,"
                      "\"dormant_inline_overhead\":%.4f,\"last_loss\":%.5f}",
                      first ? "" : ",", k.name, (long long)k.width, (long long)k.width, k.batch,
                      (long long)k.seeds_per_layer, n, bare.pipelined_us, bare.synced_us,
                      dormant.pipelined_us, dormant.synced_us, k.batch * 1e6 / bare.pipelined_us,
                      k.batch * 1e6 / dormant.pipelined_us, overhead, inline_seeds.pipelined_us,
                      overhead_inline, dormant.loss);
        json += buf;
        first = false;
    }
    json += "]}";
    std::printf("%s\n", json.c_str());
    return 0;
}
