// Sampling from a transformer checkpoint (see generate.h).
#include "kasmina/train/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/model/tensor.h"

namespace esper::kasmina {

namespace {

// log-softmax of 256 logits at temperature 1 (double).
std::vector<double> log_probs(std::span<const float> logits) {
    double mx = -INFINITY;
    for (float v : logits) mx = std::max(mx, double(v));
    double sum = 0.0;
    for (float v : logits) sum += std::exp(double(v) - mx);
    const double lse = mx + std::log(sum);
    std::vector<double> out(logits.size());
    for (size_t i = 0; i < logits.size(); ++i) out[i] = double(logits[i]) - lse;
    return out;
}

int32_t sample(std::span<const float> logits, const GenerateOptions& o, Rng& rng) {
    const auto n = int32_t(logits.size());
    if (o.temperature <= 0.0)  // greedy: the first arg-max
        return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    std::vector<int32_t> order(static_cast<size_t>(n));
    std::iota(order.begin(), order.end(), 0);
    int32_t keep = n;
    if (o.top_k > 0 && o.top_k < n) {
        keep = int32_t(o.top_k);
        std::partial_sort(
            order.begin(), order.begin() + keep, order.end(),
            [&](int32_t a, int32_t b) { return logits[size_t(a)] > logits[size_t(b)]; });
    }
    double mx = -INFINITY;
    for (int32_t i = 0; i < keep; ++i) mx = std::max(mx, double(logits[size_t(order[size_t(i)])]));
    std::vector<double> w(static_cast<size_t>(keep));
    double sum = 0.0;
    for (int32_t i = 0; i < keep; ++i) {
        w[size_t(i)] = std::exp((double(logits[size_t(order[size_t(i)])]) - mx) / o.temperature);
        sum += w[size_t(i)];
    }
    double u = rng.uniform_double() * sum;
    for (int32_t i = 0; i < keep; ++i) {
        u -= w[size_t(i)];
        if (u < 0) return order[size_t(i)];
    }
    return order[size_t(keep - 1)];
}

}  // namespace

TextGenerator::TextGenerator(const std::filesystem::path& checkpoint) {
    const CheckpointData data = read_checkpoint(checkpoint);
    config_ = parse_config(data.config_yaml, checkpoint.string() + "/config");
    if (config_.model.kind != ModelKind::kTransformer)
        ESPER_THROW(kInvalidInput, checkpoint.string(), ": holds a ",
                    model_kind_name(config_.model.kind),
                    " model; esper generate needs a transformer checkpoint");
    step_ = data.step;
    model_ = std::make_unique<TransformerModel>(config_.model, config_.run.seed);
    model_->set_structure(data.trainer.model_structure);
    for (const ParamRef& p : model_->params()) data.floats_into("param." + p.name, p.value->span());
    seeds_ = std::make_unique<SeedManager>(seed_manager_config(config_), model_->seed_sites());
    seeds_->restore(data.seeds);
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        BlueprintArenas& a = seeds_->arenas(l);
        for (int k = 0; k < kNumBlueprintKinds; ++k)
            data.floats_into("arena.l" + std::to_string(l) + ".k" + std::to_string(k) + ".params",
                             a.all_params(BlueprintKind(k)));
    }
}

Generated TextGenerator::generate(std::span<const uint8_t> prompt, const GenerateOptions& o) {
    const int32_t T = context();
    ESPER_CHECK_INPUT(!prompt.empty(), "--prompt: empty; give at least one byte to start from");
    ESPER_CHECK_INPUT(int64_t(prompt.size()) <= T, "--prompt: ", prompt.size(),
                      " bytes exceed the model's context of ", T, " bytes");
    ESPER_CHECK_INPUT(o.tokens >= 1, "--tokens: ", o.tokens, " (must be >= 1)");
    std::vector<kernels::SeedLayerView> one, full;
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) one.push_back(seeds_->view(l, 1));
    Rng rng(mix_seed(o.seed, 0x6e7));
    std::vector<int32_t> window(prompt.begin(), prompt.end());
    TransformerModel::KvCache cache = model_->new_cache();
    std::vector<float> logits;
    // The next byte's logits for the current window: from the cache (fed what it lacks), or
    // from a full forward over the window.
    auto next_logits = [&]() {
        if (o.use_cache) {
            std::span<const float> l;
            for (int32_t i = cache.length; i < int32_t(window.size()); ++i)
                l = model_->decode_step(cache, window[size_t(i)], one);
            logits.assign(l.begin(), l.end());
        } else {
            const auto w = int32_t(window.size());
            full.clear();
            for (int32_t l = 0; l < seeds_->num_layers(); ++l) full.push_back(seeds_->view(l, w));
            const auto all = model_->forward_logits(window.data(), 1, w, full);
            logits.assign(all.end() - kByteVocab, all.end());
        }
    };
    Generated out;
    for (int64_t i = 0; i < o.tokens; ++i) {
        if (int32_t(window.size()) == T) {  // full: keep the newest T/2 bytes, rebuild the cache
            window.erase(window.begin(), window.end() - std::max(1, T / 2));
            cache = model_->new_cache();
        }
        next_logits();
        const int32_t b = sample(logits, o, rng);
        out.tokens.push_back(b);
        out.logprobs.push_back(log_probs(logits)[size_t(b)]);
        window.push_back(b);
    }
    return out;
}

}  // namespace esper::kasmina
