// Sampling from a transformer checkpoint (see generate.h).
#include "kasmina/train/generate.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "core/error.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/model/tensor.h"
#include "kasmina/train/cuda_generate.h"
#include "kasmina/train/step_backend.h"

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

DecodeWeights decode_weights(const TransformerModel& model) {
    std::map<std::string, const Tensor*> p;
    for (const ParamRef& r : model.params()) p[r.name] = r.value;
    auto vec = [&](const std::string& name) {
        const Tensor* t = p.at(name);
        return std::vector<float>(t->data(), t->data() + t->numel());
    };
    const TransformerConfig& cfg = model.shape();
    const int64_t C = cfg.d_model, D = cfg.d_model / cfg.n_head, F = 4 * C;
    DecodeWeights out;
    const WideningOffsets ho = widening_offsets(BlueprintKind::kAttentionHead, C, D);
    out.layers.resize(size_t(model.n_layer()));
    for (int32_t l = 0; l < model.n_layer(); ++l) {
        DecodeWeights::Layer& L = out.layers[size_t(l)];
        const std::string b = "block" + std::to_string(l) + ".";
        const int32_t xh = model.extra_heads(l), xu = model.extra_units(l);
        L.heads = int32_t(cfg.n_head) + xh;
        const int64_t HD = int64_t(L.heads) * D;
        // qkv rows: [Q host; Q extra...; K host; K extra...; V host; V extra...]
        const std::vector<float> qw = vec(b + "attn.qkv.weight"), qb = vec(b + "attn.qkv.bias");
        const std::vector<float> xhp = xh > 0 ? vec(b + "attn.extra_heads") : std::vector<float>();
        const int64_t hf = ho.floats;
        std::vector<float> wq(size_t(3 * HD * C)), bq(size_t(3 * HD));
        for (int64_t part = 0; part < 3; ++part) {
            std::copy_n(qw.data() + part * C * C, C * C, wq.data() + part * HD * C);
            std::copy_n(qb.data() + part * C, C, bq.data() + part * HD);
            for (int32_t h = 0; h < xh; ++h) {
                const float* slot = xhp.data() + h * hf;
                std::copy_n(slot + ho.in_w + part * D * C, D * C,
                            wq.data() + (part * HD + C + h * D) * C);
                std::copy_n(slot + ho.in_b + part * D, D, bq.data() + part * HD + C + h * D);
            }
        }
        // proj [C, HD]: the host's columns, then each extra head's Wo [C, D].
        const std::vector<float> pw = vec(b + "attn.proj.weight");
        std::vector<float> wp(size_t(C * HD));
        for (int64_t i = 0; i < C; ++i) {
            std::copy_n(pw.data() + i * C, C, wp.data() + i * HD);
            for (int32_t h = 0; h < xh; ++h)
                std::copy_n(xhp.data() + h * hf + ho.out_w + i * D, D,
                            wp.data() + i * HD + C + h * D);
        }
        // fc [Fp, C] = [fc; V extra; 0], fc2 [C, Fp] = [fc2 | U extraᵀ | 0]
        L.fc = int32_t((F + xu + 7) / 8 * 8);
        const int64_t Fp = L.fc;
        std::vector<float> wf(size_t(Fp * C), 0.0f), bf(size_t(Fp), 0.0f),
            wf2(size_t(C * Fp), 0.0f);
        const std::vector<float> fw = vec(b + "mlp.fc.weight"), fb = vec(b + "mlp.fc.bias"),
                                 f2 = vec(b + "mlp.proj.weight");
        std::copy(fw.begin(), fw.end(), wf.begin());
        std::copy(fb.begin(), fb.end(), bf.begin());
        for (int64_t i = 0; i < C; ++i) std::copy_n(f2.data() + i * F, F, wf2.data() + i * Fp);
        if (xu > 0) {
            const std::vector<float> v = vec(b + "mlp.extra.fc.weight"),
                                     c = vec(b + "mlp.extra.fc.bias"),
                                     u = vec(b + "mlp.extra.proj.weight_t");
            std::copy_n(v.data(), xu * C, wf.data() + F * C);
            std::copy_n(c.data(), xu, bf.data() + F);
            for (int64_t j = 0; j < xu; ++j)
                for (int64_t i = 0; i < C; ++i) wf2[size_t(i * Fp + F + j)] = u[size_t(j * C + i)];
        }
        L.ln1_w = vec(b + "ln1.weight");
        L.ln1_b = vec(b + "ln1.bias");
        L.ln2_w = vec(b + "ln2.weight");
        L.ln2_b = vec(b + "ln2.bias");
        L.qkv_w = wq;
        L.qkv_b = bq;
        L.proj_w = wp;
        L.proj_b = vec(b + "attn.proj.bias");
        L.fc_w = wf;
        L.fc_b = bf;
        L.fc2_w = wf2;
        L.fc2_b = vec(b + "mlp.proj.bias");
    }
    out.wte = vec("wte");
    out.wpe = vec("wpe");
    out.lnf_w = vec("lnf.weight");
    out.lnf_b = vec("lnf.bias");
    out.head = vec(cfg.tie_embeddings ? "wte" : "head.weight");
    return out;
}

TextGenerator::~TextGenerator() = default;

std::string TextGenerator::gpu_unavailable() {
#if ESPER_HAVE_CUDA
    return cuda_device_available() ? "" : "no CUDA device visible";
#else
    return "this build has no CUDA";
#endif
}

std::string TextGenerator::gpu_refusal() {
    for (int32_t l = 0; l < seeds_->num_layers(); ++l) {
        const kernels::SeedLayerView v = seeds_->view(l, 1);
        for (int32_t s = 0; s < v.num_seeds; ++s) {
            const auto stage = SeedStage(v.stage[s]);
            if (kernels::stage_runs_blueprint(stage) && v.slot[s] >= 0)
                return "seed " + std::to_string(s) + " of seed layer " + std::to_string(l) +
                       " runs its " + std::string(blueprint_kind_name(BlueprintKind(v.kind[s]))) +
                       " blueprint (" + std::string(stage_name(stage)) +
                       "); the GPU decoder runs only the host and its folded units and heads";
        }
    }
    return cuda_decoder_refusal(*model_);
}

std::vector<Generated> TextGenerator::generate_batch(std::span<const uint8_t> prompt,
                                                     const GenerateOptions& o) {
    ESPER_CHECK_INPUT(o.batch >= 1, "--batch: ", o.batch, " (must be >= 1)");
    if (!o.use_gpu) {
        std::vector<Generated> out;
        for (int32_t i = 0; i < o.batch; ++i) {
            GenerateOptions one = o;
            one.seed = o.seed + uint64_t(i);
            out.push_back(generate(prompt, one));
        }
        return out;
    }
    ESPER_CHECK_INPUT(o.use_cache, "--no-cache: the uncached reference runs on the CPU only");
    if (const std::string why = gpu_unavailable(); !why.empty())
        ESPER_THROW(kUnimplemented, "GPU generation: ", why);
    if (const std::string why = gpu_refusal(); !why.empty())
        ESPER_THROW(kInvalidInput, "GPU generation: ", why);
    const int32_t T = context();
    ESPER_CHECK_INPUT(!prompt.empty(), "--prompt: empty; give at least one byte to start from");
    ESPER_CHECK_INPUT(int64_t(prompt.size()) <= T, "--prompt: ", prompt.size(),
                      " bytes exceed the model's context of ", T, " bytes");
    ESPER_CHECK_INPUT(o.tokens >= 1, "--tokens: ", o.tokens, " (must be >= 1)");
    if (!gpu_ || gpu_->batch() != o.batch) {
        gpu_.reset();
        gpu_ = std::make_unique<CudaDecoder>(*model_, o.batch);
    }
    return gpu_->generate(prompt, o);
}

Generated TextGenerator::generate(std::span<const uint8_t> prompt, const GenerateOptions& o) {
    if (o.use_gpu) {
        GenerateOptions one = o;
        one.batch = 1;
        return std::move(generate_batch(prompt, one).front());
    }
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
