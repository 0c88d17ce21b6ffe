// The transformer host through the real processes: `esper run` (broker, Tamiyo, Kasmina) on a
// text file this test writes, with a rules policy that germinates MLP units on every block's
// widening site; the seeds walk to FOSSILIZED and fold into the host, the metrics carry bits per
// byte, and `esper generate` samples from the final checkpoint with and without its KV cache.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>

#include "tests/integration/fixtures.h"

namespace fs = std::filesystem;
using namespace esper::test;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p);
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE(
    "esper run grows a transformer on text: widening seeds fossilize and fold, and esper "
    "generate samples the checkpoint",
    "[integration][transformer]") {
    const fs::path dir = scratch_dir();
    std::string text;
    for (int i = 0; i < 300; ++i) text += i % 2 ? "the lamb is on the hill. " : "and he said so. ";
    std::ofstream(dir / "corpus.txt") << text;
    std::ofstream(dir / "grow.yaml") << R"(version: 1
name: grow
defaults: {blueprint: mlp_units}
rules:
  - {name: units, when: ["run.step >= 10", "seed.id == 0", "seed.stage == DORMANT",
                         "seed.germinations == 0"], action: germinate}
  - {name: graft, when: ["seed.stage == TRAINING"], action: approve}
  - {name: keep, when: ["seed.stage == EVALUATING"], action: approve}
  - {name: fossilize, when: ["seed.stage == FINE_TUNING"], action: fossilize}
)";
    std::ofstream(dir / "run.yaml") << "run: {seed: 2, max_steps: 400, eval_every_steps: 100, "
                                       "telemetry_interval_steps: 5, checkpoint_every_steps: 400}\n"
                                       "data: {dataset: text, path: "
                                    << (dir / "corpus.txt").string()
                                    << ", batch_size: 4, text: {eval_windows: 8}}\n"
                                       R"(model:
  kind: transformer
  seeds_per_layer: 4
  transformer: {n_layer: 2, n_head: 2, d_model: 16, context: 16, widening_seeds: 2,
                max_extra_units: 16, max_extra_heads: 1}
optimizer: {kind: adamw, lr: 0.01, blueprint_lr: 0.01}
blueprints: {mlp_units: {units: 4, slots: 1}}
lifecycle:
  training_steps: 10
  stabilization_steps: 5
  evaluation_steps: 5
  fine_tuning_steps: 10
  grafting: {ramp_steps: 5}
  gates: {min_gradient_health: 0.0}
tamiyo: {policy: grow.yaml, decision_interval_steps: 5}
)";
    ChildProcess run("run",
                     {kEsper, "run", "--config", (dir / "run.yaml").string(), "--run-dir",
                      (dir / "r").string(), "--bus-port-base", "0"},
                     dir / "run.log");
    const auto status = run.wait_for(milliseconds(240000));
    INFO(slurp(dir / "run.log"));
    REQUIRE(status.value_or(-1) == 0);
    // Progress and summary speak of bits per byte, not a classifier's accuracy.
    CHECK_THAT(slurp(dir / "run.log"),
               Catch::Contains("val bpb ") && Catch::Contains("test bits per byte"));
    // Both blocks' widening sites (seed layers 1 and 3) grew units and folded them in.
    int germinated = 0, fossilized = 0;
    for (const auto& e : json_lines(dir / "r" / "events.jsonl")) {
        if (e.value("kind", "") != "transition") continue;  // policy loads are events too
        const int layer = e["layer"].get<int>();
        if (e["to"] == "GERMINATED") {
            CHECK((layer == 1 || layer == 3));
            ++germinated;
        }
        if (e["to"] == "FOSSILIZED") ++fossilized;
    }
    CHECK(germinated == 2);
    CHECK(fossilized == 2);
    CHECK_THAT(slurp(dir / "r" / "logs" / "kasmina-0.log"),
               Catch::Contains("fold layer=1 seed=0 kind=mlp_units") &&
                   Catch::Contains("fold layer=3 seed=0 kind=mlp_units"));
    int tests = 0;
    for (const auto& m : json_lines(dir / "r" / "metrics.jsonl")) {
        if (m["split"] != "test") continue;
        ++tests;
        CHECK(m["bits_per_byte"].get<double>() == Approx(m["loss"].get<double>() / std::log(2.0)));
    }
    CHECK(tests >= 4);  // every 100 steps, and at epoch ends
    // Generation from the final checkpoint: cached and uncached agree at temperature 0 (on the
    // CPU: the GPU decoder's bf16 has its own [gpu] test, kasmina/train/cuda_generate_test.cpp).
    const fs::path ck = dir / "r" / "checkpoints" / "400";
    auto generate = [&](const std::string& tag, std::vector<std::string> extra) {
        std::vector<std::string> argv{kEsper,          "generate", "--checkpoint", ck.string(),
                                      "--prompt",      "the lamb", "--tokens",     "40",
                                      "--temperature", "0",        "--device",     "cpu"};
        argv.insert(argv.end(), extra.begin(), extra.end());
        ChildProcess g(tag, argv, dir / (tag + ".log"));
        REQUIRE(g.wait_for(milliseconds(30000)).value_or(-1) == 0);
        return slurp(dir / (tag + ".log"));
    };
    const std::string cached = generate("cached", {});
    CHECK(cached.rfind("the lamb", 0) == 0);
    CHECK(cached.size() == std::string("the lamb").size() + 40 + 1);
    CHECK(generate("uncached", {"--no-cache"}) == cached);
    // Bad input is one line and a non-zero exit.
    ChildProcess bad("bad",
                     {kEsper, "generate", "--checkpoint", ck.string(), "--prompt",
                      std::string(17, 'x'), "--tokens", "5"},
                     dir / "bad.log");
    CHECK(bad.wait_for(milliseconds(30000)).value_or(0) == 1);
    CHECK_THAT(slurp(dir / "bad.log"),
               Catch::Contains("17 bytes exceed the model's context of 16 bytes"));
    ChildProcess bad_device(
        "bad_device",
        {kEsper, "generate", "--checkpoint", ck.string(), "--prompt", "the", "--device", "tpu"},
        dir / "bad_device.log");
    CHECK(bad_device.wait_for(milliseconds(30000)).value_or(0) != 0);
    CHECK_THAT(slurp(dir / "bad_device.log"),
               Catch::Contains("--device must be auto, cpu or cuda"));
    fs::remove_all(dir);
}
