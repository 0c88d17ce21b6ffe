// The transformer host on the CPU: gradients of every parameter tensor and of every kind of
// seed against finite differences of the loss, the stage rules of widening seeds (a germination
// changes nothing, TRAINING is straight-through), folding a fossil into the host, causality,
// exact parameter counts, and KV-cache decoding against the full forward.
#include "kasmina/model/transformer.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <random>
#include <vector>

#include "core/error.h"
#include "kasmina/lifecycle/seed_table.h"
#include "kasmina/model/blueprints.h"
#include "kasmina/train/optimizer.h"

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
    c.transformer.widening_seeds = 3;
    c.transformer.max_extra_units = 6;
    c.transformer.max_extra_heads = 1;
    c.seeds_per_layer = 4;
    return c;
}

BlueprintsConfig tiny_blueprints() {
    BlueprintsConfig b;
    b.residual_mlp.expansion = 1;
    b.residual_mlp.slots = 2;
    b.mlp_units.units = 3;
    b.mlp_units.slots = 2;
    b.attention_head.slots = 1;
    b.lora.rank = 2;
    b.lora.slots = 1;
    return b;
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

// The model's seed layers as a test drives them: per layer the seed-table columns a
// SeedManager would hold, and real arenas (BlueprintArenas, chunk or widening).
struct Sites {
    std::vector<std::vector<int32_t>> offsets, slot;
    std::vector<std::vector<uint8_t>> stage, kind;
    std::vector<std::vector<float>> alpha;
    std::vector<BlueprintArenas> arenas;

    Sites(const TransformerModel& m, const BlueprintsConfig& bc, int64_t seeds_per_layer) {
        for (const SeedSite& s : m.seed_sites()) {
            const int64_t seeds = s.kind == SiteKind::kWidening ? s.width : seeds_per_layer;
            offsets.push_back(chunk_offsets(s.width, seeds));
            slot.emplace_back(size_t(seeds), -1);
            stage.emplace_back(size_t(seeds), uint8_t(SeedStage::kDormant));
            kind.emplace_back(size_t(seeds), 0);
            alpha.emplace_back(size_t(seeds), 0.0f);
            if (s.kind == SiteKind::kWidening)
                arenas.push_back(BlueprintArenas::widening(s.input_width, s.head_dim, bc));
            else
                arenas.emplace_back(offsets.back()[1] - offsets.back()[0], bc);
        }
    }
    // Takes a slot, initialises it as a germination does, and sets the seed's stage and α.
    void germinate(int32_t layer, int32_t seed, BlueprintKind k, SeedStage st, float a) {
        BlueprintArenas& ar = arenas[size_t(layer)];
        const int32_t s = *ar.acquire(k);
        const int32_t w =
            offsets[size_t(layer)][size_t(seed) + 1] - offsets[size_t(layer)][size_t(seed)];
        ar.init_slot(k, s, w, 1234 + uint64_t(layer) * 10 + uint64_t(seed));
        slot[size_t(layer)][size_t(seed)] = s;
        kind[size_t(layer)][size_t(seed)] = uint8_t(k);
        set(layer, seed, st, a);
    }
    void set(int32_t layer, int32_t seed, SeedStage st, float a) {
        stage[size_t(layer)][size_t(seed)] = uint8_t(st);
        alpha[size_t(layer)][size_t(seed)] = a;
    }
    std::span<float> params(int32_t layer, int32_t seed) {
        return arenas[size_t(layer)].params(BlueprintKind(kind[size_t(layer)][size_t(seed)]),
                                            slot[size_t(layer)][size_t(seed)]);
    }
    std::span<float> grads(int32_t layer, int32_t seed) {
        return arenas[size_t(layer)].grads(BlueprintKind(kind[size_t(layer)][size_t(seed)]),
                                           slot[size_t(layer)][size_t(seed)]);
    }
    void randomize(int32_t layer, int32_t seed, uint32_t rng_seed, float scale = 0.3f) {
        std::mt19937 rng(rng_seed);
        std::uniform_real_distribution<float> u(-scale, scale);
        for (float& v : params(layer, seed)) v = u(rng);
    }
    void zero_grads() {
        for (auto& a : arenas) a.zero_grads();
    }
    std::vector<kernels::SeedLayerView> views(int32_t rows) {
        std::vector<kernels::SeedLayerView> out;
        for (size_t l = 0; l < arenas.size(); ++l) {
            kernels::SeedLayerView v;
            v.batch = rows;
            v.width = offsets[l].back();
            v.num_seeds = int32_t(stage[l].size());
            v.chunk_offset = offsets[l].data();
            v.stage = stage[l].data();
            v.kind = kind[l].data();
            v.slot = slot[l].data();
            v.alpha = alpha[l].data();
            for (int k = 0; k < kNumBlueprintKinds; ++k)
                v.arenas[k] = arenas[l].view(BlueprintKind(k));
            out.push_back(v);
        }
        return out;
    }
};

// Every entry of small tensors, a spread of entries of large ones.
std::vector<int64_t> probe_indices(int64_t n) {
    std::vector<int64_t> idx;
    const int64_t step = std::max<int64_t>(1, n / 12);
    for (int64_t i = 0; i < n; i += step) idx.push_back(i);
    idx.push_back(n - 1);
    return idx;
}

// Central differences of `loss` against `got` at the probed entries of `values`; returns the
// number of mismatches (reported as warnings).
int check_fd(std::span<float> values, std::span<const float> got,
             const std::function<double()>& loss, const std::string& what) {
    int bad = 0;
    for (int64_t i : probe_indices(int64_t(values.size()))) {
        const float keep = values[size_t(i)];
        const float h = std::abs(keep) > 0.5f ? 1e-2f : 3e-3f;
        values[size_t(i)] = keep + h;
        const double up = loss();
        values[size_t(i)] = keep - h;
        const double down = loss();
        values[size_t(i)] = keep;
        const double num = (up - down) / (2.0 * h);
        if (!(std::abs(got[size_t(i)] - num) <= 3e-4 + 3e-2 * std::abs(num)) && bad++ < 6)
            WARN(what << "[" << i << "]: analytic " << got[size_t(i)] << " numeric " << num);
    }
    return bad;
}

std::vector<std::vector<float>> copy_grads(const Model& m) {
    std::vector<std::vector<float>> out;
    for (const ParamRef& p : m.params())
        out.emplace_back(p.grad->span().begin(), p.grad->span().end());
    return out;
}

// Two plain gradient steps (lr 0.5) on d's batch, so no parameter keeps its initial value.
void train_a_little(TransformerModel& m, Sites& s, const Data& d) {
    const int32_t rows = d.samples * d.seq;
    for (int k = 0; k < 2; ++k) {
        m.train_batch(d.batch(), s.views(rows), {});
        for (const ParamRef& p : m.params())
            for (int64_t i = 0; i < p.value->numel(); ++i) (*p.value)[i] -= 0.5f * (*p.grad)[i];
    }
}

}  // namespace

TEST_CASE("every transformer parameter's gradient matches finite differences of the loss",
          "[kasmina][transformer]") {
    const bool tied = GENERATE(true, false);
    TransformerModel m(tiny(tied), 7);
    const Data d = token_data(3, 5, 11);
    m.train_batch(d.batch(), {}, {});
    const auto grads = copy_grads(m);
    auto loss = [&] { return m.eval_batch(d.batch(), {}).loss; };
    int bad = 0;
    for (size_t k = 0; k < m.params().size(); ++k)
        bad += check_fd(m.params()[k].value->span(), grads[k], loss, m.params()[k].name);
    CHECK(bad == 0);
}

TEST_CASE("FINE_TUNING seeds of every kind get the true gradient, and so does the host",
          "[kasmina][transformer][seed]") {
    TransformerModel m(tiny(), 3);
    const BlueprintsConfig bc = tiny_blueprints();
    Sites sites(m, bc, 4);
    const Data d = token_data(2, 4, 5);
    const int32_t rows = d.samples * d.seq;
    // A chunk seed in block 0 and one of each widening kind in block 1, output sides non-zero.
    sites.germinate(m.chunk_layer(0), 1, BlueprintKind::kResidualMlp, SeedStage::kFineTuning, 1);
    sites.randomize(m.chunk_layer(0), 1, 1);
    const int32_t w1 = m.widening_layer(1);
    const int which = GENERATE(0, 1, 2, 3);
    if (which == 0 || which == 3)
        sites.germinate(w1, 0, BlueprintKind::kMlpUnits, SeedStage::kFineTuning, 1);
    if (which == 1 || which == 3)
        sites.germinate(w1, 1, BlueprintKind::kAttentionHead, SeedStage::kFineTuning, 1);
    if (which == 2 || which == 3)
        sites.germinate(w1, 2, BlueprintKind::kLora, SeedStage::kFineTuning, 1);
    INFO("which " << which);
    for (int32_t s = 0; s < 3; ++s)
        if (sites.slot[size_t(w1)][size_t(s)] >= 0) sites.randomize(w1, s, 10 + s, 0.12f);
    auto views = sites.views(rows);
    sites.zero_grads();
    m.train_batch(d.batch(), views, {});
    const auto host = copy_grads(m);
    std::vector<std::vector<float>> seed_grads;
    const std::vector<std::pair<int32_t, int32_t>> seeds = {
        {m.chunk_layer(0), 1}, {w1, 0}, {w1, 1}, {w1, 2}};
    for (auto [l, s] : seeds) {
        if (sites.slot[size_t(l)][size_t(s)] < 0) {
            seed_grads.emplace_back();
            continue;
        }
        auto g = sites.grads(l, s);
        seed_grads.emplace_back(g.begin(), g.end());
    }
    auto loss = [&] { return m.eval_batch(d.batch(), views).loss; };
    int bad = 0;
    for (size_t i = 0; i < seeds.size(); ++i)
        if (!seed_grads[i].empty())
            bad += check_fd(sites.params(seeds[i].first, seeds[i].second), seed_grads[i], loss,
                            "seed " + std::to_string(i));
    for (size_t k = 0; k < m.params().size(); ++k)
        bad += check_fd(m.params()[k].value->span(), host[k], loss, m.params()[k].name);
    CHECK(bad == 0);
}

TEST_CASE("germinating a widening seed leaves the loss bit-identical in every running stage",
          "[kasmina][transformer][seed]") {
    const BlueprintKind kind =
        GENERATE(BlueprintKind::kMlpUnits, BlueprintKind::kAttentionHead, BlueprintKind::kLora);
    const SeedStage stage = GENERATE(SeedStage::kTraining, SeedStage::kGrafting,
                                     SeedStage::kStabilization, SeedStage::kFineTuning);
    TransformerModel m(tiny(), 9);
    Sites sites(m, tiny_blueprints(), 4);
    const Data d = token_data(2, 5, 6);
    const int32_t rows = d.samples * d.seq;
    const double before = m.eval_batch(d.batch(), sites.views(rows)).loss;
    sites.germinate(m.widening_layer(0), 2, kind, stage, 0.6f);
    const double after = m.eval_batch(d.batch(), sites.views(rows)).loss;
    CHECK(after == before);
    CHECK(before == m.eval_batch(d.batch(), {}).loss);
}

TEST_CASE("a TRAINING widening seed learns behind the host without touching it",
          "[kasmina][transformer][seed]") {
    const BlueprintKind kind =
        GENERATE(BlueprintKind::kMlpUnits, BlueprintKind::kAttentionHead, BlueprintKind::kLora);
    TransformerModel m(tiny(), 4);
    Sites sites(m, tiny_blueprints(), 4);
    const Data d = token_data(2, 5, 7);
    const int32_t rows = d.samples * d.seq;
    const double bare = m.train_batch(d.batch(), sites.views(rows), {}).loss;
    const auto bare_grads = copy_grads(m);
    const int32_t w = m.widening_layer(1);
    sites.germinate(w, 0, kind, SeedStage::kTraining, 0.0f);
    sites.randomize(w, 0, 3);  // a trained seed: its output side is no longer zero
    sites.zero_grads();
    const double with_seed = m.train_batch(d.batch(), sites.views(rows), {}).loss;
    CHECK(with_seed == bare);  // straight-through: the value is exactly the host's
    const auto grads = copy_grads(m);
    for (size_t k = 0; k < grads.size(); ++k) {
        INFO(m.params()[k].name);
        CHECK(grads[k] == bare_grads[k]);  // isolation: nothing flows into the host
    }
    double sq = 0.0;
    for (float g : sites.grads(w, 0)) sq += double(g) * g;
    CHECK(sq > 0.0);  // ... while the seed learns as if α = 1
}

TEST_CASE("a FOSSILIZED widening seed folds into the host without changing the function",
          "[kasmina][transformer][seed]") {
    const BlueprintKind kind =
        GENERATE(BlueprintKind::kMlpUnits, BlueprintKind::kAttentionHead, BlueprintKind::kLora);
    TransformerModel m(tiny(), 12);
    Sites sites(m, tiny_blueprints(), 4);
    const Data d = token_data(2, 5, 8);
    const int32_t rows = d.samples * d.seq;
    const int32_t w = m.widening_layer(0);
    sites.germinate(w, 1, kind, SeedStage::kFossilized, 1.0f);
    sites.randomize(w, 1, 21, 0.2f);
    const double as_seed = m.eval_batch(d.batch(), sites.views(rows)).loss;
    const int64_t host_before = m.param_count();
    const std::vector<float> p(sites.params(w, 1).begin(), sites.params(w, 1).end());
    REQUIRE(m.can_fold_widening(w, kind, int64_t(p.size())));
    CHECK_FALSE(m.can_fold_widening(m.chunk_layer(0), kind, int64_t(p.size())));
    REQUIRE(m.fold_widening(w, kind, p));
    sites.slot[size_t(w)][1] = -1;  // the seed manager releases the slot (release_folded)
    const double folded = m.eval_batch(d.batch(), sites.views(rows)).loss;
    CHECK(folded == Approx(as_seed).epsilon(1e-5));
    const int64_t added = kind == BlueprintKind::kLora ? 0 : int64_t(p.size());
    CHECK(m.param_count() == host_before + added);
    CHECK(m.extra_units(0) == (kind == BlueprintKind::kMlpUnits ? 3 : 0));
    CHECK(m.extra_heads(0) == (kind == BlueprintKind::kAttentionHead ? 1 : 0));
    // The folded units and head are host parameters now: their gradients come from the host.
    m.train_batch(d.batch(), sites.views(rows), {});
    const auto host = copy_grads(m);
    auto loss = [&] { return m.eval_batch(d.batch(), sites.views(rows)).loss; };
    int bad = 0;
    for (size_t k = 0; k < m.params().size(); ++k)
        if (m.params()[k].name.find("extra") != std::string::npos)
            bad += check_fd(m.params()[k].value->span(), host[k], loss, m.params()[k].name);
    CHECK(bad == 0);
    // No room left: a second head does not fit (max_extra_heads: 1).
    // can_fold_widening says so before (the trainer's GPU fold downloads only what folds).
    if (kind == BlueprintKind::kAttentionHead) {
        CHECK_FALSE(m.can_fold_widening(w, kind, int64_t(p.size())));
        CHECK_FALSE(m.fold_widening(w, kind, p));
    }
    if (kind == BlueprintKind::kMlpUnits) {  // 3 units in use, 3 more fill the room of 6
        REQUIRE(m.can_fold_widening(w, kind, int64_t(p.size())));
        REQUIRE(m.fold_widening(w, kind, p));
        CHECK_FALSE(m.can_fold_widening(w, kind, int64_t(p.size())));
        CHECK_FALSE(m.fold_widening(w, kind, p));
    }
    // The structure travels in checkpoints and refuses a misfit.
    TransformerModel other(tiny(), 12);
    other.set_structure(m.structure());
    CHECK(other.structure() == m.structure());
    std::vector<int64_t> bad_structure = m.structure();
    bad_structure[0] = 99;
    CHECK_THROWS_AS(other.set_structure(bad_structure), esper::Error);
}

TEST_CASE("a host started with initial extra units and heads is a static host of that shape",
          "[kasmina][transformer]") {
    ModelConfig c = tiny();
    c.transformer.initial_extra_units = 6;
    c.transformer.initial_extra_heads = 1;
    TransformerModel m(c, 12);
    TransformerModel base(tiny(), 12);
    const int64_t C = 8, Dh = 4, L = 2, head = 4 * Dh * C + 3 * Dh;
    CHECK(m.param_count() == base.param_count() + L * (6 * (2 * C + 1) + head));
    CHECK(m.structure() == std::vector<int64_t>{6, 1, 6, 1});
    // The room draws from its own stream: every other parameter is the base host's, bit for bit.
    REQUIRE(m.params().size() == base.params().size());
    bool room_random = false;
    for (size_t k = 0; k < m.params().size(); ++k) {
        const auto a = m.params()[k].value->span();
        const auto b = base.params()[k].value->span();
        if (m.params()[k].name.find("extra") == std::string::npos) {
            CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
        } else {
            for (float v : a) room_random |= v != 0.0f;
        }
    }
    CHECK(room_random);
    // The room is in the function, and trains: its gradients match finite differences.
    Sites sm(m, tiny_blueprints(), 4), sb(base, tiny_blueprints(), 4);
    const Data d = token_data(2, 5, 8);
    const int32_t rows = d.samples * d.seq;
    CHECK(m.eval_batch(d.batch(), sm.views(rows)).loss !=
          base.eval_batch(d.batch(), sb.views(rows)).loss);
    m.train_batch(d.batch(), sm.views(rows), {});
    const auto grads = copy_grads(m);
    auto loss = [&] { return m.eval_batch(d.batch(), sm.views(rows)).loss; };
    int bad = 0;
    for (size_t k = 0; k < m.params().size(); ++k)
        if (m.params()[k].name.find("extra") != std::string::npos)
            bad += check_fd(m.params()[k].value->span(), grads[k], loss, m.params()[k].name);
    CHECK(bad == 0);
    // More than the reserved room is refused by name.
    c.transformer.initial_extra_heads = 2;
    CHECK_THROWS_WITH(TransformerModel(c, 12), Catch::Contains("initial_extra_heads: 2"));
}

TEST_CASE("a transformer's logits at position t ignore every later token",
          "[kasmina][transformer]") {
    TransformerModel m(tiny(), 21);
    Data d = token_data(1, 5, 8);
    const auto first = m.forward_logits(d.tokens.data(), 1, 5, {});
    const std::vector<float> before(first.begin(), first.end());
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
    const int64_t block =
        2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C);
    const int64_t tied = V * C + T * C + L * block + 2 * C;
    CHECK(TransformerModel(tiny(true), 1).param_count() == tied);
    CHECK(TransformerModel(tiny(false), 1).param_count() == tied + V * C);
    const TransformerModel m(tiny(), 1);
    REQUIRE(m.seed_sites().size() == size_t(2 * L));
    CHECK(m.seed_sites()[0].kind == SiteKind::kChunk);
    CHECK(m.seed_sites()[0].width == 4 * C);
    CHECK(m.seed_sites()[1].kind == SiteKind::kWidening);
    CHECK(m.seed_sites()[1].width == 3);
    // Each widening slot holds exactly the parameters its formula counts.
    const BlueprintArenas a = BlueprintArenas::widening(C, C / 2, tiny_blueprints());
    CHECK(a.stride(BlueprintKind::kMlpUnits) == 3 * C + 3 + C * 3);
    CHECK(a.params_for(BlueprintKind::kMlpUnits, 1) == 3 * C + 3 + C * 3);
    CHECK(a.stride(BlueprintKind::kAttentionHead) == 4 * 4 * C + 3 * 4);
    CHECK(a.params_for(BlueprintKind::kAttentionHead, 1) == 4 * 4 * C + 3 * 4);
    CHECK(a.stride(BlueprintKind::kLora) == 2 * C + 3 * C * 2);
    CHECK(a.params_for(BlueprintKind::kLora, 1) == 2 * C + 3 * C * 2);
    CHECK_FALSE(a.serves(BlueprintKind::kResidualMlp));
}

TEST_CASE("KV-cache decoding gives the full forward's logits at every position",
          "[kasmina][transformer][generate]") {
    const bool with_seeds = GENERATE(false, true);
    const bool grown = GENERATE(false, true);  // + 2 blocks by grow_depth (copies, room included)
    ModelConfig c = tiny();
    if (grown) c.transformer.grow_depth = {2, 1, DepthInit::kCopy};
    TransformerModel m(c, 5);
    Sites sites(m, tiny_blueprints(), 4);
    if (with_seeds) {  // live seeds of every kind, and folded units and a folded head
        const int32_t w = m.widening_layer(1);
        sites.germinate(m.chunk_layer(0), 2, BlueprintKind::kResidualMlp, SeedStage::kGrafting,
                        0.4f);
        sites.randomize(m.chunk_layer(0), 2, 31);
        sites.germinate(w, 0, BlueprintKind::kMlpUnits, SeedStage::kGrafting, 0.5f);
        sites.germinate(w, 1, BlueprintKind::kAttentionHead, SeedStage::kFineTuning, 1.0f);
        sites.germinate(w, 2, BlueprintKind::kLora, SeedStage::kStabilization, 1.0f);
        for (int32_t s = 0; s < 3; ++s) sites.randomize(w, s, 40 + s, 0.2f);
        const int32_t w0 = m.widening_layer(0);
        sites.germinate(w0, 0, BlueprintKind::kAttentionHead, SeedStage::kFossilized, 1.0f);
        sites.randomize(w0, 0, 50, 0.2f);
        const std::vector<float> p(sites.params(w0, 0).begin(), sites.params(w0, 0).end());
        REQUIRE(m.fold_widening(w0, BlueprintKind::kAttentionHead, p));
        sites.slot[size_t(w0)][0] = -1;
    }
    if (grown) REQUIRE(m.grow_host(1));
    CHECK(m.n_layer() == (grown ? 4 : 2));
    const Data d = token_data(1, 5, 9);
    const auto full_span = m.forward_logits(d.tokens.data(), 1, 5, sites.views(5));
    const std::vector<float> full(full_span.begin(), full_span.end());
    TransformerModel::KvCache cache = m.new_cache();
    const auto one = sites.views(1);
    for (int32_t t = 0; t < 5; ++t) {
        const auto step = m.decode_step(cache, d.tokens[size_t(t)], one);
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

namespace {

bool starts_grown(const ParamRef& p) {
    return p.name.starts_with("block2.") || p.name.starts_with("block3.");
}

}  // namespace

TEST_CASE("grow_depth: the grown blocks wait uncounted, then join as the stack repeated",
          "[kasmina][transformer]") {
    const Data d = token_data(2, 5, 8);
    const int32_t rows = d.samples * d.seq;
    ModelConfig c = tiny();
    c.transformer.initial_extra_units = 2;  // the room in use comes along with a copied block
    TransformerModel base(c, 12);
    c.transformer.grow_depth = {2, 7, DepthInit::kCopy};
    TransformerModel grown(c, 12);
    Sites sb(base, tiny_blueprints(), 4), sg(grown, tiny_blueprints(), 4);
    CHECK(grown.seed_sites().size() == base.seed_sites().size());  // no seed sites on grown blocks
    CHECK(grown.n_layer() == 2);
    CHECK(grown.param_count() == base.param_count());
    CHECK(grown.train_flops(2, rows) == base.train_flops(2, rows));
    CHECK(grown.structure() == std::vector<int64_t>{2, 0, 2, 0, 0, 0, 0, 0, 0});
    // Before at_step the host is the static one, bit for bit; the waiting blocks do not train.
    CHECK(grown.train_batch(d.batch(), sg.views(rows), {}).loss ==
          base.train_batch(d.batch(), sb.views(rows), {}).loss);
    for (const ParamRef& p : grown.params())
        if (starts_grown(p))
            for (float g : p.grad->span()) REQUIRE(g == 0.0f);
    CHECK_FALSE(grown.grow_host(6));
    CHECK(grown.n_layer() == 2);
    REQUIRE(grown.grow_host(7));
    CHECK_FALSE(grown.grow_host(8));  // once
    CHECK(grown.n_layer() == 4);
    CHECK(grown.structure() == std::vector<int64_t>{2, 0, 2, 0, 2, 2, 0, 2, 0});
    // copy: block 2 + i holds block i's weights, and the host is a 4-block static host with those
    // weights: the same parameter count, FLOPs, loss and gradients.
    ModelConfig c4 = tiny();
    c4.transformer.n_layer = 4;
    c4.transformer.initial_extra_units = 2;
    TransformerModel four(c4, 99);
    REQUIRE(four.params().size() == grown.params().size());
    std::map<std::string, std::span<const float>> by_name;
    for (const ParamRef& p : grown.params()) by_name[p.name] = p.value->span();
    for (size_t k = 0; k < grown.params().size(); ++k) {
        const ParamRef& g = grown.params()[k];
        REQUIRE(four.params()[k].name == g.name);
        std::copy_n(g.value->data(), g.value->numel(), four.params()[k].value->data());
        if (!starts_grown(g)) continue;
        const std::string below = "block" + std::to_string(g.name[5] - '2') + g.name.substr(6);
        const auto a = g.value->span();
        const auto b = by_name.at(below);
        CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
    CHECK(grown.param_count() == four.param_count());
    CHECK(grown.train_flops(2, rows) == four.train_flops(2, rows));
    CHECK(grown.train_batch(d.batch(), sg.views(rows), {}).loss ==
          four.train_batch(d.batch(), {}, {}).loss);
    for (size_t k = 0; k < grown.params().size(); ++k) {
        const auto a = grown.params()[k].grad->span();
        const auto b = four.params()[k].grad->span();
        CHECK(std::equal(a.begin(), a.end(), b.begin(), b.end()));
    }
    // A checkpoint's structure brings the grown blocks back; one that does not fit is refused.
    TransformerModel fresh(c, 5);
    fresh.set_structure(grown.structure());
    CHECK(fresh.n_layer() == 4);
    CHECK(fresh.param_count() == grown.param_count());
    CHECK_THROWS_WITH(fresh.set_structure(std::vector<int64_t>{2, 0, 2, 0, 1, 2, 0, 2, 0}),
                      Catch::Contains("1 grown blocks in use; this model grows 2"));
    CHECK_THROWS_WITH(fresh.set_structure(base.structure()),
                      Catch::Contains("host structure of 4 values"));
    CHECK(fresh.n_layer() == 4);  // a refused structure changes nothing
}

// grow_depth.warmup_steps: the grown blocks' tensors, and only they, take a ramped rate from the
// step they join (1/w, 2/w, ..., 1); the optimizer scales exactly those (scale 0: they stay put).
TEST_CASE("grow_depth warmup_steps ramps the grown blocks' learning rate, and only theirs",
          "[kasmina][transformer]") {
    const Data d = token_data(2, 5, 8);
    ModelConfig c = tiny();
    c.transformer.grow_depth = {2, 7, DepthInit::kCopy, 4};
    TransformerModel m(c, 3);
    CHECK(m.host_lr_ramp(7).end == 0);  // nothing to ramp before the blocks join
    REQUIRE(m.grow_host(7));
    const Model::LrRamp r = m.host_lr_ramp(7);
    REQUIRE(r.end > r.begin);
    for (size_t i = 0; i < m.params().size(); ++i)
        CHECK((i >= r.begin && i < r.end) == starts_grown(m.params()[i]));
    CHECK(r.scale == Approx(0.25));
    CHECK(m.host_lr_ramp(8).scale == Approx(0.5));
    CHECK(m.host_lr_ramp(10).scale == 1.0);
    CHECK(m.host_lr_ramp(500).scale == 1.0);
    c.transformer.grow_depth.warmup_steps = 0;
    TransformerModel plain(c, 3);
    REQUIRE(plain.grow_host(7));
    CHECK(plain.host_lr_ramp(7).end == 0);
    // The optimizer: scale 0 leaves the ramped tensors as they were and moves the others.
    OptimizerConfig oc;
    oc.kind = OptimizerKind::kAdamw;
    oc.lr = 0.01;
    Optimizer opt(oc, m.params(), m.seed_layer_widths());
    Sites s(m, tiny_blueprints(), 4);
    const int32_t rows = d.samples * d.seq;
    (void)m.train_batch(d.batch(), s.views(rows), {});
    std::vector<std::vector<float>> before;
    for (const ParamRef& p : m.params())
        before.emplace_back(p.value->span().begin(), p.value->span().end());
    opt.step_host(oc.lr, Model::LrRamp{r.begin, r.end, 0.0});
    for (size_t i = 0; i < m.params().size(); ++i) {
        const auto now = m.params()[i].value->span();
        const bool same = std::equal(now.begin(), now.end(), before[i].begin(), before[i].end());
        CAPTURE(m.params()[i].name);
        if (i >= r.begin && i < r.end)
            CHECK(same);
        else if (m.params()[i].name.find("extra") == std::string::npos)
            CHECK_FALSE(same);
    }
}

TEST_CASE("grow_depth zero_out: the grown network computes what it computed, then learns",
          "[kasmina][transformer]") {
    const Data d = token_data(2, 5, 9);
    const int32_t rows = d.samples * d.seq;
    ModelConfig c = tiny();
    c.transformer.initial_extra_units = 2;
    c.transformer.initial_extra_heads = 1;
    c.transformer.grow_depth = {3, 1, DepthInit::kZeroOut};
    TransformerModel m(c, 4);
    Sites s(m, tiny_blueprints(), 4);
    s.germinate(m.widening_layer(1), 0, BlueprintKind::kMlpUnits, SeedStage::kGrafting, 0.5f);
    s.randomize(m.widening_layer(1), 0, 77);
    train_a_little(m, s, d);  // nothing is at its initial value (the biases no longer zero)
    const int64_t before_params = m.param_count();
    const double before_flops = m.train_flops(2, rows);
    const float before = m.eval_batch(d.batch(), s.views(rows)).loss;
    REQUIRE(m.grow_host(1));
    CHECK(m.n_layer() == 5);
    CHECK(m.eval_batch(d.batch(), s.views(rows)).loss == before);
    // Three blocks of tiny()'s shape, their room in use included (the third repeats block 0).
    const int64_t C = 8, Dh = 4, head = 4 * Dh * C + 3 * Dh;
    const int64_t block = 2 * C + 3 * C * C + 3 * C + C * C + C + 2 * C + 4 * C * C + 4 * C +
                          4 * C * C + C + 2 * (2 * C + 1) + head;
    CHECK(m.param_count() == before_params + 3 * block);
    CHECK(m.train_flops(2, rows) > before_flops);
    // The projections that write the residual stream get gradients, so the blocks learn.
    m.train_batch(d.batch(), s.views(rows), {});
    for (const ParamRef& p : m.params())
        if (p.name == "block2.attn.proj.weight" || p.name == "block4.mlp.proj.weight") {
            double sq = 0.0;
            for (float g : p.grad->span()) sq += double(g) * g;
            CHECK(sq > 0.0);
        }
}

// grow_width: at its step every live block (the depth-grown ones too once they joined) puts more
// of its room in use with a zero output side, so the function is unchanged bit for bit, the count
// and FLOPs grow by exactly the new units and heads, the output side learns, and a checkpoint's
// structure brings the grown width back.
TEST_CASE("grow_width puts room in use at its step without changing the function",
          "[kasmina][transformer]") {
    const Data d = token_data(2, 5, 10);
    const int32_t rows = d.samples * d.seq;
    ModelConfig c = tiny();
    c.transformer.initial_extra_units = 1;
    c.transformer.grow_depth = {1, 2, DepthInit::kZeroOut};
    c.transformer.grow_width = {4, 1, 3};
    TransformerModel m(c, 21);
    Sites s(m, tiny_blueprints(), 4);
    CHECK(m.structure() == std::vector<int64_t>{1, 0, 1, 0, 0, 0, 0, 0});
    CHECK_FALSE(m.host_growth_due(1));
    REQUIRE(m.grow_host(2));  // depth first: 3 blocks
    CHECK(m.n_layer() == 3);
    CHECK_FALSE(m.host_growth_due(2));
    CHECK(m.host_growth_due(3));
    train_a_little(m, s, d);  // nothing is at its initial value (the biases no longer zero)
    const int64_t before_params = m.param_count();
    const double before_flops = m.train_flops(2, rows);
    const float before = m.eval_batch(d.batch(), s.views(rows)).loss;
    REQUIRE(m.grow_host(3));
    CHECK_FALSE(m.grow_host(4));  // once
    CHECK(m.eval_batch(d.batch(), s.views(rows)).loss == before);
    for (int32_t l = 0; l < 3; ++l) {
        CHECK(m.extra_units(l) == 5);
        CHECK(m.extra_heads(l) == 1);
    }
    const int64_t C = 8, Dh = 4, head = 4 * Dh * C + 3 * Dh;
    CHECK(m.param_count() == before_params + 3 * (4 * (2 * C + 1) + head));
    CHECK(m.train_flops(2, rows) > before_flops);
    CHECK(m.structure() == std::vector<int64_t>{5, 1, 5, 1, 1, 5, 1, 1});
    // The new units' and head's output side starts at zero and gets gradients.
    m.train_batch(d.batch(), s.views(rows), {});
    for (const ParamRef& p : m.params()) {
        if (p.name != "block2.mlp.extra.proj.weight_t" && p.name != "block0.attn.extra_heads")
            continue;
        double sq = 0.0;
        for (float g : p.grad->span()) sq += double(g) * g;
        CAPTURE(p.name);
        CHECK(sq > 0.0);
    }
    TransformerModel fresh(c, 5);
    fresh.set_structure(m.structure());
    CHECK(fresh.n_layer() == 3);
    CHECK(fresh.extra_units(2) == 5);
    CHECK(fresh.param_count() == m.param_count());
    CHECK_FALSE(fresh.host_growth_due(1000));
    CHECK_THROWS_WITH(fresh.set_structure(std::vector<int64_t>{1, 0, 1, 0, 0, 0, 0, 2}),
                      Catch::Contains("width grown = 2"));
    // Room it cannot take is refused when the model is built.
    c.transformer.grow_width = {6, 0, 3};
    CHECK_THROWS_WITH(TransformerModel(c, 1), Catch::Contains("do not fit the room"));
}

// grow_width init split: each new unit (head) is a trained host unit (head) whose output weights
// it shares half and half, so the function is unchanged up to the order of the sums, and the
// copies are the host's.
TEST_CASE("grow_width split copies trained units and heads and halves their outputs",
          "[kasmina][transformer]") {
    const Data d = token_data(2, 5, 11);
    const int32_t rows = d.samples * d.seq;
    ModelConfig c = tiny();
    c.transformer.grow_width = {5, 1, 1, WidthInit::kSplit};
    TransformerModel m(c, 8);
    Sites s(m, tiny_blueprints(), 4);
    train_a_little(m, s, d);  // nothing is at its initial value (the biases no longer zero)
    std::map<std::string, std::vector<float>> before;
    for (const ParamRef& p : m.params())
        before[p.name].assign(p.value->data(), p.value->data() + p.value->numel());
    const float loss = m.eval_batch(d.batch(), s.views(rows)).loss;
    REQUIRE(m.grow_host(1));
    CHECK(m.eval_batch(d.batch(), s.views(rows)).loss == Approx(loss).epsilon(1e-5));
    std::map<std::string, std::span<const float>> now;
    for (const ParamRef& p : m.params()) now[p.name] = p.value->span();
    const int64_t C = 8, F = 32, D = 4;
    const auto& fc = before["block1.mlp.fc.weight"];
    const auto& fc2 = before["block1.mlp.proj.weight"];
    for (int64_t t = 0; t < 5; ++t)  // unit t copies host unit t, and they share its fc2 column
        for (int64_t i = 0; i < C; ++i) {
            CHECK(now["block1.mlp.extra.fc.weight"][size_t(t * C + i)] == fc[size_t(t * C + i)]);
            CHECK(now["block1.mlp.extra.proj.weight_t"][size_t(t * C + i)] ==
                  0.5f * fc2[size_t(i * F + t)]);
            CHECK(now["block1.mlp.proj.weight"][size_t(i * F + t)] ==
                  0.5f * fc2[size_t(i * F + t)]);
        }
    const auto& qkv = before["block0.attn.qkv.weight"];
    const auto& proj = before["block0.attn.proj.weight"];
    const WideningOffsets ho = widening_offsets(BlueprintKind::kAttentionHead, C, D);
    const auto slot = now["block0.attn.extra_heads"];
    for (int64_t part = 0; part < 3; ++part)  // the new head is host head 0's q, k, v rows
        for (int64_t r = 0; r < D * C; ++r)
            CHECK(slot[size_t(ho.in_w + part * D * C + r)] == qkv[size_t(part * C * C + r)]);
    for (int64_t i = 0; i < C; ++i)
        for (int64_t e = 0; e < D; ++e)
            CHECK(slot[size_t(ho.out_w + i * D + e)] == 0.5f * proj[size_t(i * C + e)]);
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
