// What the CPU and GPU generation tests share: a small byte-level transformer on a repetitive
// corpus written into the test's folder, trained here with an MLP-units widening germinated at
// step 1 and a head at a given step, and the checkpoint it leaves.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/command.h"
#include "kasmina/train/trainer.h"
#include "tests/kasmina/train/loop_test_util.h"

namespace esper::kasmina::test {

// 2 blocks of width 16, context 12, 4 chunk seeds per layer, timer-driven lifecycle; 30 steps
// with a checkpoint at the end.
inline Config text_config(const std::filesystem::path& dir) {
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
    timer_driven_lifecycle(c, 3);
    return c;
}

// Trains c with units germinated at step 1 and a head at `head_step`, and returns the directory
// of the checkpoint at c.run.max_steps.
inline std::filesystem::path widened_checkpoint(const std::filesystem::path& dir, const Config& c,
                                                int64_t head_step) {
    TrainerOptions o;
    o.run_dir = (dir / "run").string();
    Trainer t(c, o);
    run_loop(t, [head_step](Trainer& tr) {
        Command g;
        g.origin = TransitionOrigin::kOperator;
        if (tr.steps_done() == 1) {
            g.body = GerminateCommand{SeedRef{1, 0}, BlueprintKind::kMlpUnits, std::nullopt};
            REQUIRE(tr.apply(g).applied());
        }
        if (tr.steps_done() == head_step) {
            g.body = GerminateCommand{SeedRef{3, 1}, BlueprintKind::kAttentionHead, std::nullopt};
            REQUIRE(tr.apply(g).applied());
        }
    });
    return dir / "run" / "checkpoints" / std::to_string(c.run.max_steps);
}

// The head germinated early too, trained until both widenings folded: a host with folded units
// and a folded head and no seed left running a blueprint.
inline std::filesystem::path folded_checkpoint(const std::filesystem::path& dir) {
    Config c = text_config(dir);
    c.run.max_steps = 40;
    c.run.checkpoint_every_steps = 40;
    c.lifecycle.gates.cull_contribution = 1e9;  // the head must reach FOSSILIZED and fold
    return widened_checkpoint(dir, c, 2);
}

inline std::span<const uint8_t> bytes(const std::string& s) {
    return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace esper::kasmina::test
