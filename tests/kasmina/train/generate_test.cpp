// esper generate's engine (kasmina/train/generate.h) on checkpoints a trainer writes here: the
// KV cache gives the same bytes as recomputing the window at temperature 0, also past the
// context (the window slides) and with live and folded widening seeds; sampling is reproducible
// by seed; and every bad input is one clear error.
#include "kasmina/train/generate.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "kasmina/train/cuda_generate.h"
#include "kasmina/train/trainer.h"
#include "kernels/bias_act.h"
#include "kernels/decode.h"
#include "kernels/layernorm.h"
#include "tests/kasmina/train/generate_test_util.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper;
using namespace esper::kasmina;

using test::bytes;
using test::folded_checkpoint;
using test::text_config;

namespace {

// The head germinated at step 20: units fold, the head is still grafting at the checkpoint (30).
fs::path trained_checkpoint(const fs::path& dir, const Config& c) {
    return test::widened_checkpoint(dir, c, 20);
}

}  // namespace

TEST_CASE("KV-cache generation equals recomputing the window at temperature 0, past the context",
          "[kasmina][generate][transformer]") {
    const fs::path dir = scratch_dir("cache");
    const fs::path ck = trained_checkpoint(dir, text_config(dir));
    TextGenerator gen(ck);
    CHECK(gen.context() == 12);
    CHECK(gen.step() == 30);
    GenerateOptions o;
    o.tokens = 40;  // > context: the window slides twice
    o.temperature = 0.0;
    const Generated cached = gen.generate(bytes("in the"), o);
    o.use_cache = false;
    const Generated full = gen.generate(bytes("in the"), o);
    CHECK(cached.tokens == full.tokens);
    REQUIRE(cached.logprobs.size() == 40);
    for (size_t i = 0; i < 40; ++i)
        CHECK(cached.logprobs[i] == Approx(full.logprobs[i]).margin(1e-4));
    for (double lp : cached.logprobs) CHECK(lp <= 0.0);
    fs::remove_all(dir);
}

TEST_CASE("sampling is reproducible by seed and top-k 1 is greedy",
          "[kasmina][generate][transformer]") {
    const fs::path dir = scratch_dir("sample");
    TextGenerator gen(trained_checkpoint(dir, text_config(dir)));
    GenerateOptions o;
    o.tokens = 20;
    o.temperature = 1.0;
    o.seed = 4;
    const Generated a = gen.generate(bytes("amen"), o);
    CHECK(gen.generate(bytes("amen"), o).tokens == a.tokens);
    o.seed = 5;
    CHECK(gen.generate(bytes("amen"), o).tokens != a.tokens);
    o.top_k = 1;
    const Generated k1 = gen.generate(bytes("amen"), o);
    o.top_k = 0;
    o.temperature = 0.0;
    CHECK(gen.generate(bytes("amen"), o).tokens == k1.tokens);
    fs::remove_all(dir);
}

TEST_CASE(
    "generation refuses a prompt longer than the context, an empty prompt, zero tokens and "
    "a checkpoint of another model kind",
    "[kasmina][generate][transformer]") {
    const fs::path dir = scratch_dir("bad");
    TextGenerator gen(trained_checkpoint(dir, text_config(dir)));
    GenerateOptions o;
    CHECK_THROWS_WITH(gen.generate(bytes("thirteen byte"), o),
                      Catch::Contains("13 bytes exceed the model's context of 12"));
    CHECK_THROWS_WITH(gen.generate(bytes(""), o), Catch::Contains("empty"));
    o.tokens = 0;
    CHECK_THROWS_WITH(gen.generate(bytes("amen"), o), Catch::Contains("--tokens: 0"));
    // An MLP checkpoint.
    Config mlp;
    mlp.run.max_steps = 2;
    mlp.data.dataset = "teacher";
    mlp.data.batch_size = 16;
    mlp.data.teacher = {64, 16, 8, 3, 8, 0.0};
    mlp.model.hidden = {8};
    mlp.model.seeds_per_layer = 2;
    Trainer t(mlp);
    test::run_loop(t);
    t.save_checkpoint(dir / "mlp");
    CHECK_THROWS_WITH(TextGenerator(dir / "mlp"),
                      Catch::Contains("holds a mlp model; esper generate needs a transformer"));
    fs::remove_all(dir);
}

TEST_CASE(
    "the GPU decoder is refused with the reason while a seed runs a blueprint and taken once "
    "everything folded",
    "[kasmina][generate][transformer]") {
    const fs::path dir = scratch_dir("gpu_refusal");
    {
        TextGenerator gen(trained_checkpoint(dir, text_config(dir)));
        const std::string why = gen.gpu_refusal();
        CHECK_THAT(why,
                   Catch::Contains("seed 1 of seed layer 3 runs its attention_head blueprint ("));
        GenerateOptions o;
        o.use_gpu = true;
        if (TextGenerator::gpu_unavailable().empty())
            CHECK_THROWS_WITH(gen.generate(bytes("amen"), o), Catch::Contains("runs its"));
        else  // no device here: that is said first
            CHECK_THROWS_WITH(gen.generate(bytes("amen"), o),
                              Catch::Contains(TextGenerator::gpu_unavailable()));
    }
    fs::remove_all(dir / "run");
    TextGenerator folded(folded_checkpoint(dir));
    CHECK(folded.gpu_refusal().empty());
    fs::remove_all(dir);
}

TEST_CASE("a CPU batch is one generation per seed, the first with the given seed",
          "[kasmina][generate][transformer]") {
    const fs::path dir = scratch_dir("batch");
    TextGenerator gen(trained_checkpoint(dir, text_config(dir)));
    GenerateOptions o;
    o.tokens = 15;
    o.temperature = 1.0;
    o.seed = 11;
    o.batch = 3;
    const std::vector<Generated> all = gen.generate_batch(bytes("amen"), o);
    REQUIRE(all.size() == 3);
    for (uint64_t i = 0; i < 3; ++i) {
        GenerateOptions one = o;
        one.seed = 11 + i;
        CHECK(gen.generate(bytes("amen"), one).tokens == all[size_t(i)].tokens);
    }
    CHECK(all[0].tokens != all[1].tokens);
    o.batch = 0;
    CHECK_THROWS_WITH(gen.generate_batch(bytes("amen"), o), Catch::Contains("--batch: 0"));
    fs::remove_all(dir);
}

TEST_CASE(
    "the GPU decoder's merged weights (folded heads and units, padded MLP) give the CPU decode "
    "step's logits",
    "[kasmina][generate][transformer]") {
    ModelConfig mc;
    mc.kind = ModelKind::kTransformer;
    mc.transformer = {2, 2, 32, 10, false, 2, 8, 2, 5, 2};  // 5 folded units, 2 folded heads
    const bool grown = GENERATE(false, true);  // + a third block by grow_depth, block 0's copy
    if (grown) mc.transformer.grow_depth = {1, 1, DepthInit::kCopy};
    TransformerModel model(mc, 3);
    if (grown) REQUIRE(model.grow_host(1));
    const size_t nl = grown ? 3 : 2;
    const DecodeWeights w = decode_weights(model);
    REQUIRE(w.layers.size() == nl);
    CHECK(w.layers[nl - 1].heads == 4);
    CHECK(w.layers[0].fc == 136);  // 4·32 + 5, padded to a multiple of 8
    const int32_t C = 32, D = 16, T = 10, V = kByteVocab;
    auto linear = [](const std::vector<float>& x, const std::vector<float>& wt,
                     const std::vector<float>& b, int32_t in, int32_t out) {
        std::vector<float> y(static_cast<size_t>(out));
        for (int32_t o = 0; o < out; ++o) {
            double s = b.empty() ? 0.0 : b[size_t(o)];
            for (int32_t i = 0; i < in; ++i) s += double(x[size_t(i)]) * wt[size_t(o) * in + i];
            y[size_t(o)] = float(s);
        }
        return y;
    };
    std::vector<std::vector<float>> kc(nl), vc(nl);
    for (size_t l = 0; l < nl; ++l) {
        kc[l].assign(size_t(T) * w.layers[l].heads * D, 0.0f);
        vc[l] = kc[l];
    }
    TransformerModel::KvCache cache = model.new_cache();
    const std::vector<int32_t> tokens = {5, 200, 17, 17, 99, 0, 255, 42};
    float st[2];
    for (int32_t pos = 0; pos < int32_t(tokens.size()); ++pos) {
        const std::span<const float> want = model.decode_step(cache, tokens[size_t(pos)], {});
        std::vector<float> x(static_cast<size_t>(C)), a(x.size());
        kernels::decode_embed_reference(&tokens[size_t(pos)], w.wte.data(), w.wpe.data(), pos,
                                        false, x.data(), 1, C);
        for (size_t l = 0; l < nl; ++l) {
            const DecodeWeights::Layer& L = w.layers[l];
            const int32_t HD = L.heads * D;
            kernels::layernorm_forward_reference(x.data(), L.ln1_w.data(), L.ln1_b.data(), a.data(),
                                                 st, st + 1, 1, C, 1e-5f);
            const std::vector<float> qkv = linear(a, L.qkv_w, L.qkv_b, C, 3 * HD);
            kernels::DecodeShape s;
            s.rows = 1;
            s.heads = L.heads;
            s.head_dim = D;
            s.context = T;
            s.ld_q = 3 * HD;
            s.ld_out = HD;
            s.scale = 0.25f;
            kernels::decode_append_reference(s, qkv.data() + HD, qkv.data() + 2 * HD, pos,
                                             kc[l].data(), vc[l].data());
            std::vector<float> att(static_cast<size_t>(HD));
            kernels::decode_attention_reference(s, qkv.data(), kc[l].data(), vc[l].data(), pos,
                                                att.data());
            const std::vector<float> pr = linear(att, L.proj_w, L.proj_b, HD, C);
            for (int32_t i = 0; i < C; ++i) x[size_t(i)] += pr[size_t(i)];
            kernels::layernorm_forward_reference(x.data(), L.ln2_w.data(), L.ln2_b.data(), a.data(),
                                                 st, st + 1, 1, C, 1e-5f);
            std::vector<float> f = linear(a, L.fc_w, {}, C, L.fc), h(f.size());
            kernels::bias_act_forward_reference(f.data(), L.fc_b.data(), h.data(), 1, L.fc,
                                                kernels::Activation::kGeluTanh);
            const std::vector<float> o = linear(h, L.fc2_w, L.fc2_b, L.fc, C);
            for (int32_t i = 0; i < C; ++i) x[size_t(i)] += o[size_t(i)];
        }
        kernels::layernorm_forward_reference(x.data(), w.lnf_w.data(), w.lnf_b.data(), a.data(), st,
                                             st + 1, 1, C, 1e-5f);
        const std::vector<float> logits = linear(a, w.head, {}, C, V);
        for (int32_t i = 0; i < V; ++i)
            REQUIRE(logits[size_t(i)] == Approx(want[size_t(i)]).margin(1e-4));
    }
}
