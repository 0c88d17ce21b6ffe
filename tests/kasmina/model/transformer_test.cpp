// The transformer host on the CPU: gradients of every parameter tensor (and of a seed's
// blueprint) against finite differences of the loss, causality, exact parameter counts, and
// KV-cache decoding against the full forward.
#include "kasmina/model/transformer.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <random>
#include <vector>

#include "kasmina/model/blueprints.h"

using namespace esper;
using namespace esper::kasmina;

namespace {

ModelConfig tiny(bool tied = true) {
    ModelConfig c;
    c.kind = ModelKind::kTransformer;
    c.transformer.n_layer = 2;
    c.transformer.n_head = 2;
    c.transformer.d_model = 8;
    c.transformer.context = 5;
    c.transformer.tie_embeddings = tied;
    c.seeds_per_layer = 4;
    return c;
}

struct Data {
    std::vector<int32_t> tokens, targets;
    int32_t samples = 0, seq = 0;
    Batch batch() const {
        Batch b;
        b.samples = samples;
        b.tokens = tokens.data();
        b.targets = targets.data();
        b.rows = samples * seq;
        return b;
    }
};

Data token_data(int32_t samples, int32_t seq, uint32_t seed) {
    std::mt19937 rng(seed);
    Data d;
    d.samples = samples;
    d.seq = seq;
    d.tokens.resize(size_t(samples) * seq);
    d.targets.resize(d.tokens.size());
    for (auto& t : d.tokens) t = int32_t(rng() % 256);
    for (auto& t : d.targets) t = int32_t(rng() % 256);
    return d;
}

// Every entry of small tensors, a spread of entries of large ones.
std::vector<int64_t> probe_indices(int64_t n) {
    std::vector<int64_t> idx;
    const int64_t step = std::max<int64_t>(1, n / 12);
    for (int64_t i = 0; i < n; i += step) idx.push_back(i);
    idx.push_back(n - 1);
    return idx;
}

}  // namespace

TEST_CASE("every transformer parameter's gradient matches finite differences of the loss",
          "[kasmina][transformer]") {
    const bool tied = GENERATE(true, false);
    TransformerModel m(tiny(tied), 7);
    const Data d = token_data(3, 5, 11);
    m.train_batch(d.batch(), {}, {});
    // Keep the analytic gradients before the probes overwrite them.
    std::vector<std::vector<float>> grads;
    for (const ParamRef& p : m.params()) grads.emplace_back(p.grad->span().begin(), p.grad->span().end());
    auto loss = [&] { return m.eval_batch(d.batch(), {}).loss; };
    int bad = 0;
    for (size_t k = 0; k < m.params().size(); ++k) {
        const ParamRef& p = m.params()[k];
        for (int64_t i : probe_indices(p.value->numel())) {
            const float keep = (*p.value)[i];
            const float h = std::abs(keep) > 0.5f ? 1e-2f : 3e-3f;
            (*p.value)[i] = keep + h;
            const double up = loss();
            (*p.value)[i] = keep - h;
            const double down = loss();
            (*p.value)[i] = keep;
            const double num = (up - down) / (2.0 * h);
            const double got = grads[k][size_t(i)];
            if (!(std::abs(got - num) <= 2e-4 + 3e-2 * std::abs(num))) {
                if (bad++ < 8) WARN(p.name << "[" << i << "]: analytic " << got << " numeric " << num);
            }
        }
    }
    CHECK(bad == 0);
}

TEST_CASE("a transformer seed in FINE_TUNING gets the true gradient, and so does the host under it",
          "[kasmina][transformer][seed]") {
    ModelConfig cfg = tiny();
    TransformerModel m(cfg, 3);
    const Data d = token_data(2, 4, 5);
    const int32_t rows = d.samples * d.seq;
    BlueprintsConfig bc;
    bc.residual_mlp.expansion = 1;
    bc.residual_mlp.slots = 1;
    const int64_t F = 4 * cfg.transformer.d_model;
    std::vector<int32_t> offsets{0, 8, 16, 24, int32_t(F)};
    std::vector<BlueprintArenas> arenas;
    std::vector<uint8_t> stage(4, uint8_t(SeedStage::kDormant)), kind(4, 0);
    std::vector<int32_t> slot(4, -1);
    std::vector<float> alpha(4, 0.0f);
    const std::vector<uint8_t> dormant_stage(4, uint8_t(SeedStage::kDormant));
    const std::vector<int32_t> dormant_slot(4, -1);
    arenas.emplace_back(8, bc);
    BlueprintArenas& a = arenas.back();
    const int32_t s = *a.acquire(BlueprintKind::kResidualMlp);
    a.init_slot(BlueprintKind::kResidualMlp, s, 8, 99);
    std::mt19937 rng(4);
    std::uniform_real_distribution<float> u(-0.3f, 0.3f);
    for (float& v : a.params(BlueprintKind::kResidualMlp, s)) v = u(rng);  // r ≠ 0
    stage[1] = uint8_t(SeedStage::kFineTuning);
    slot[1] = s;
    alpha[1] = 1.0f;
    auto views = [&](int32_t batch) {
        kernels::SeedLayerView v;
        v.batch = batch;
        v.width = int32_t(F);
        v.num_seeds = 4;
        v.chunk_offset = offsets.data();
        v.stage = stage.data();
        v.kind = kind.data();
        v.slot = slot.data();
        v.alpha = alpha.data();
        for (int k = 0; k < kNumBlueprintKinds; ++k) v.arenas[k] = a.view(BlueprintKind(k));
        // The second block's seed layer is all dormant.
        kernels::SeedLayerView dormant = v;
        dormant.stage = dormant_stage.data();
        dormant.slot = dormant_slot.data();
        return std::vector<kernels::SeedLayerView>{v, dormant};
    };
    auto vs = views(rows);
    a.zero_grads();
    m.train_batch(d.batch(), vs, {});
    std::vector<float> bp_grad(a.grads(BlueprintKind::kResidualMlp, s).begin(),
                               a.grads(BlueprintKind::kResidualMlp, s).end());
    std::vector<float> fc_grad(m.params()[2 + 8].grad->span().begin(),
                               m.params()[2 + 8].grad->span().end());
    auto loss = [&] { return m.eval_batch(d.batch(), vs).loss; };
    int bad = 0;
    std::span<float> bp = a.params(BlueprintKind::kResidualMlp, s);
    const int64_t used = blueprint_params(BlueprintKind::kResidualMlp, 8, 8, bc);
    for (int64_t i : probe_indices(int64_t(bp.size()))) {
        const float keep = bp[size_t(i)];
        bp[size_t(i)] = keep + 1e-2f;
        const double up = loss();
        bp[size_t(i)] = keep - 1e-2f;
        const double down = loss();
        bp[size_t(i)] = keep;
        const double num = (up - down) / 2e-2;
        if (!(std::abs(bp_grad[size_t(i)] - num) <= 2e-4 + 3e-2 * std::abs(num)) && bad++ < 5)
            WARN("blueprint[" << i << "]: " << bp_grad[size_t(i)] << " vs " << num);
    }
    CHECK(used > 0);
    Tensor& fc = *m.params()[2 + 8].value;  // block0.mlp.fc.weight
    REQUIRE(m.params()[2 + 8].name == "block0.mlp.fc.weight");
    for (int64_t i : probe_indices(fc.numel())) {
        const float keep = fc[i];
        fc[i] = keep + 1e-2f;
        const double up = loss();
        fc[i] = keep - 1e-2f;
        const double down = loss();
        fc[i] = keep;
        const double num = (up - down) / 2e-2;
        if (!(std::abs(fc_grad[size_t(i)] - num) <= 2e-4 + 3e-2 * std::abs(num)) && bad++ < 10)
            WARN("fc[" << i << "]: " << fc_grad[size_t(i)] << " vs " << num);
    }
    CHECK(bad == 0);
}

TEST_CASE("a transformer's logits at position t ignore every later token",
          "[kasmina][transformer]") {
    TransformerModel m(tiny(), 21);
    Data d = token_data(1, 5, 8);
    std::vector<float> before(m.forward_logits(d.tokens.data(), 1, 5, {}).begin(),
                              m.forward_logits(d.tokens.data(), 1, 5, {}).end());
    d.tokens[3] = (d.tokens[3] + 77) % 256;
    const auto after = m.forward_logits(d.tokens.data(), 1, 5, {});
    for (size_t i = 0; i < size_t(3) * kByteVocab; ++i) REQUIRE(after[i] == before[i]);
    bool moved = false;
    for (size_t i = size_t(3) * kByteVocab; i < after.size(); ++i) moved |= after[i] != before[i];
    CHECK(moved);
}

TEST_CASE("transformer parameter counts are exact for tied and untied embeddings",
          "[kasmina][transformer]") {
    const int64_t C = 8, L = 2, T = 5, V = 256;
    const int64_t block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) +
                          (4 * C * C + C);
    const int64_t tied = V * C + T * C + L * block + 2 * C;
    CHECK(TransformerModel(tiny(true), 1).param_count() == tied);
    CHECK(TransformerModel(tiny(false), 1).param_count() == tied + V * C);
    CHECK(TransformerModel(tiny(), 1).seed_sites().size() == size_t(L));
    CHECK(TransformerModel(tiny(), 1).seed_sites()[0].width == 4 * C);
}

TEST_CASE("KV-cache decoding gives the full forward's logits at every position",
          "[kasmina][transformer][generate]") {
    TransformerModel m(tiny(), 5);
    const Data d = token_data(1, 5, 9);
    const std::vector<float> full(m.forward_logits(d.tokens.data(), 1, 5, {}).begin(),
                                  m.forward_logits(d.tokens.data(), 1, 5, {}).end());
    TransformerModel::KvCache cache = m.new_cache();
    for (int32_t t = 0; t < 5; ++t) {
        const auto step = m.decode_step(cache, d.tokens[size_t(t)], {});
        for (int32_t v = 0; v < kByteVocab; ++v)
            REQUIRE(step[size_t(v)] ==
                    Approx(full[size_t(t) * kByteVocab + v]).margin(1e-5).epsilon(1e-4));
    }
    CHECK(cache.length == 5);
}

TEST_CASE("impossible transformer shapes are refused", "[kasmina][transformer]") {
    ModelConfig c = tiny();
    c.transformer.n_head = 3;
    CHECK_THROWS_WITH(TransformerModel(c, 1), Catch::Contains("not a multiple of n_head"));
    c = tiny();
    c.seeds_per_layer = 100;
    CHECK_THROWS_WITH(TransformerModel(c, 1), Catch::Contains("S > D"));
}

TEST_CASE("benchmark: transformer train_batch on the CPU", "[kasmina][transformer][.bench]") {
    ModelConfig c = tiny();
    c.transformer.n_layer = 4;
    c.transformer.n_head = 4;
    c.transformer.d_model = 128;
    c.transformer.context = 64;
    TransformerModel m(c, 1);
    const Data d = token_data(16, 64, 3);
    m.train_batch(d.batch(), {}, {});
    const auto t0 = std::chrono::steady_clock::now();
    const int reps = 5;
    for (int i = 0; i < reps; ++i) m.train_batch(d.batch(), {}, {});
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
        reps;
    WARN("4x128, T=64, B=16: " << ms << " ms per train_batch, params " << m.param_count());
    CHECK(ms > 0);
}
