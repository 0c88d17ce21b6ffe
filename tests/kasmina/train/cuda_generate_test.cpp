// [gpu] GPU generation (kasmina/train/cuda_generate.h) against the CPU generator on a checkpoint
// a trainer writes here with a folded MLP-units widening and a folded head: at temperature 0 the
// GPU's cached decode (bf16 weights and KV cache) gives the same bytes as the CPU's uncached
// reference over 40 bytes (past the context of 12: the window slides and the caches are rebuilt
// by a prefill), log-probabilities within 0.05 nats (bf16 rounding of the weights); every sample
// of a batch decodes the same at temperature 0; sampling is reproducible by seed and top-k 1 is
// greedy.
#include "kasmina/train/cuda_generate.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <string>

#include "kasmina/train/generate.h"
#include "kasmina/train/trainer.h"
#include "tests/kasmina/train/generate_test_util.h"
#include "tests/support/gpu.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper;
using namespace esper::kasmina;

using test::bytes;
using test::folded_checkpoint;

TEST_CASE("GPU generation equals the CPU's uncached reference at temperature 0, past the context",
          "[kasmina][generate][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const fs::path dir = scratch_dir("cuda_generate");
    TextGenerator gen(folded_checkpoint(dir));
    REQUIRE(gen.gpu_refusal().empty());
    GenerateOptions o;
    o.tokens = 40;
    o.temperature = 0.0;
    o.use_cache = false;
    for (const std::string prompt : {"in the", "amen. in the"}) {  // the second fills the context
        CAPTURE(prompt);
        o.use_cache = false;
        o.use_gpu = false;
        const Generated cpu = gen.generate(bytes(prompt), o);
        o.use_cache = true;
        o.use_gpu = true;
        const Generated gpu = gen.generate(bytes(prompt), o);
        CHECK(gpu.tokens == cpu.tokens);
        REQUIRE(gpu.logprobs.size() == 40);
        for (size_t i = 0; i < 40 && gpu.tokens[i] == cpu.tokens[i]; ++i)
            CHECK(gpu.logprobs[i] == Approx(cpu.logprobs[i]).margin(0.05));
        o.batch = 3;
        for (const Generated& g : gen.generate_batch(bytes(prompt), o))
            CHECK(g.tokens == gpu.tokens);
        o.batch = 1;
    }
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

TEST_CASE("GPU generation of a host grown in depth equals the CPU's at temperature 0",
          "[kasmina][generate][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const fs::path dir = scratch_dir("cuda_generate_grown");
    Config c = test::text_config(dir);
    c.run.max_steps = 40;
    c.run.checkpoint_every_steps = 40;
    c.lifecycle.gates.cull_contribution = 1e9;  // folded units and a folded head, as above
    c.model.transformer.grow_depth = {2, 20, DepthInit::kZeroOut};  // 4 blocks, 2 trained 20 steps
    TextGenerator gen(test::widened_checkpoint(dir, c, 2));
    REQUIRE(gen.gpu_refusal().empty());
    GenerateOptions o;
    o.tokens = 40;
    o.temperature = 0.0;
    o.use_cache = false;
    o.use_gpu = false;
    const Generated cpu = gen.generate(bytes("amen. in the"), o);
    o.use_cache = true;
    o.use_gpu = true;
    const Generated gpu = gen.generate(bytes("amen. in the"), o);
    CHECK(gpu.tokens == cpu.tokens);
    REQUIRE(gpu.logprobs.size() == 40);
    for (size_t i = 0; i < 40 && gpu.tokens[i] == cpu.tokens[i]; ++i)
        CHECK(gpu.logprobs[i] == Approx(cpu.logprobs[i]).margin(0.05));
    fs::remove_all(dir);
}

TEST_CASE(
    "the GPU decoder's fused small-row products equal its cuBLASLt products, overlapped "
    "launches change no bit",
    "[kasmina][generate][gpu]") {
    ESPER_REQUIRE_DEVICES(1);
    const fs::path dir = scratch_dir("cuda_generate_paths");
    TextGenerator gen(folded_checkpoint(dir));
    GenerateOptions o;
    o.tokens = 40;  // past the context of 12: the window slides, prefills of 6 rows (fused)
    o.temperature = 0.0;
    // A 10-byte prompt is prefilled through cuBLASLt (more than 8 rows) on either path.
    for (const std::string prompt : {"amen. in t", "amen. in the"})
        for (const int32_t batch : {1, 3, 8}) {
            CAPTURE(prompt, batch);
            CudaDecoder fused(gen.model(), batch, CudaDecodePath::kFused);
            CudaDecoder gemm(gen.model(), batch, CudaDecodePath::kGemm);
            const std::vector<Generated> a = fused.generate(bytes(prompt), o);
            const std::vector<Generated> b = gemm.generate(bytes(prompt), o);
            REQUIRE(a.size() == size_t(batch));
            REQUIRE(b.size() == size_t(batch));
            for (int32_t c = 0; c < batch; ++c) {
                CHECK(a[size_t(c)].tokens == b[size_t(c)].tokens);
                for (size_t i = 0; i < a[size_t(c)].logprobs.size(); ++i)
                    CHECK(a[size_t(c)].logprobs[i] ==
                          Approx(b[size_t(c)].logprobs[i]).margin(0.02));
            }
        }
    fs::remove_all(dir);
}
