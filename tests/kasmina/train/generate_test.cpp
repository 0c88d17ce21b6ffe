// esper generate's engine (kasmina/train/generate.h) on checkpoints a trainer writes here: the
// KV cache gives the same bytes as recomputing the window at temperature 0, also past the
// context (the window slides) and with live and folded widening seeds; sampling is reproducible
// by seed; and every bad input is one clear error.
#include "kasmina/train/generate.h"

#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "kasmina/train/trainer.h"
#include "tests/kasmina/train/loop_test_util.h"
#include "tests/support/paths.h"

namespace fs = std::filesystem;
using esper::testing::scratch_dir;
using namespace esper;
using namespace esper::kasmina;

namespace {

Config text_config(const fs::path& dir) {
    std::string text;
    for (int i = 0; i < 300; ++i) text += i % 3 ? "in the beginning was the word. " : "amen. ";
    std::ofstream(dir / "corpus.txt") << text;
    Config c;
    c.run.seed = 9;
    c.run.max_steps = 30;
    c.run.checkpoint_every_steps = 30;
    c.data.dataset = "text";
    c.data.path = (dir / "corpus.txt").string();
    c.data.batch_size = 4;
    c.data.text.eval_windows = 4;
    c.model.kind = ModelKind::kTransformer;
    c.model.transformer = {2, 2, 16, 12, true, 2, 8, 1};
    c.model.seeds_per_layer = 4;
    c.optimizer.kind = OptimizerKind::kAdamw;
    c.optimizer.lr = 1e-2;
    c.optimizer.blueprint_lr = 1e-2;
    c.blueprints.mlp_units = {4, 1};
    test::timer_driven_lifecycle(c, 3);
    return c;
}

// Trains the config to its checkpoint with a head and units germinated early (the units fold,
// the head is still grafting at the end) and returns the checkpoint directory.
fs::path trained_checkpoint(const fs::path& dir, const Config& c) {
    TrainerOptions o;
    o.run_dir = (dir / "run").string();
    Trainer t(c, o);
    test::run_loop(t, [](Trainer& tr) {
        Command g;
        g.origin = TransitionOrigin::kOperator;
        if (tr.steps_done() == 1) {
            g.body = GerminateCommand{SeedRef{1, 0}, BlueprintKind::kMlpUnits, std::nullopt};
            REQUIRE(tr.apply(g).applied());
        }
        if (tr.steps_done() == 20) {
            g.body = GerminateCommand{SeedRef{3, 1}, BlueprintKind::kAttentionHead, std::nullopt};
            REQUIRE(tr.apply(g).applied());
        }
    });
    return dir / "run" / "checkpoints" / "30";
}

std::span<const uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
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
