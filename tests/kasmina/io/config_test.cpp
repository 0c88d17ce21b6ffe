// kasmina::Config: defaults, the agreed YAML shape, the effective-config round trip and every
// kind of refusal reported as `file:line: field: reason`.
#include "kasmina/io/config.h"

#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <string>

#include "core/error.h"
#include "kasmina/train/step_backend.h"
#include "tests/support/paths.h"

using namespace esper;
using namespace esper::kasmina;

namespace {
// The message of the esper::Error that parse_config throws for `yaml` (fails the test if none).
std::string config_error(const std::string& yaml, const std::string& name = "run.yaml") {
    try {
        parse_config(yaml, name);
    } catch (const esper::Error& e) {
        CHECK(e.kind() == ErrorKind::kInvalidInput);
        return e.message();
    }
    FAIL("no error for:\n" << yaml);
    return {};
}
}  // namespace

TEST_CASE("an empty mapping gives every default", "[kasmina][config]") {
    const Config c = parse_config("{}\n", "empty.yaml");
    CHECK(c == Config{});
    CHECK(c.run.seed == 42);
    CHECK(c.model.hidden == std::vector<int64_t>{128, 128});
    CHECK(c.lifecycle.training_steps == 200);
    CHECK(c.lifecycle.grafting.strategy == GraftingStrategy::kLinear);
    CHECK(c.lifecycle.gates.min_gradient_health == Approx(0.7));
    CHECK(c.faults == FaultInjection{});
    CHECK(c.faults.nan_at_step == -1);
}

TEST_CASE("the agreed YAML shape parses into the typed config", "[kasmina][config]") {
    const std::string yaml = R"(
run:        {seed: 7, device: cpu, epochs: 3, max_steps: 0, checkpoint_every_steps: 150,
             telemetry_interval_steps: 25, eval_every_steps: 100}
data:       {dataset: teacher, path: /tmp/x, batch_size: 64,
             teacher: {train_samples: 1000, test_samples: 200, features: 32, classes: 5,
                       hidden: 16, noise: 0.25},
             npy: {train_features: "", train_labels: "", test_features: "", test_labels: ""}}
model:      {hidden: [64, 48, 32], activation: gelu, seeds_per_layer: 8}
optimizer:  {kind: adamw, lr: 0.001, momentum: 0.8, weight_decay: 0.01, schedule: cosine,
             warmup_steps: 10, step_size: 500, gamma: 0.5, grad_clip: 1.0, blueprint_lr: 0.002}
blueprints: {residual_mlp: {expansion: 3, slots: 4}, lowrank: {rank: 2, slots: 5},
             scale_shift: {slots: 6}, max_params_per_layer: 5000}
lifecycle:  {training_steps: 20, stabilization_steps: 10, evaluation_steps: 11,
             fine_tuning_steps: 12, embargo_steps: 50, max_training_per_layer: 1,
             max_active_per_layer: 3, auto_gates: false, decision_timeout_steps: 40,
             contribution: ablation, ablation_batches: 4,
             grafting: {strategy: momentum, ramp_steps: 30, steepness: 5.0, momentum: 0.25,
                        drift_threshold: 0.2},
             gates: {min_gradient_health: 0.6, min_contribution: 0.01, cull_contribution: 0.02,
                     min_improvement: 0.03, max_error_rate: 0.2}}
governor:   {enabled: false, divergence_factor: 4.0, window: 20, snapshot_every_steps: 25}
faults:     {nan_at_step: 77, corrupt_digest_rank: 1, checkpoint_crash_after_files: 2}
)";
    const Config c = parse_config(yaml, "shape.yaml");
    CHECK(c.run.seed == 7);
    CHECK(c.run.device == "cpu");
    CHECK(c.run.checkpoint_every_steps == 150);
    CHECK(c.data.dataset == "teacher");
    CHECK(c.data.teacher.noise == 0.25);
    CHECK(c.model.hidden == std::vector<int64_t>{64, 48, 32});
    CHECK(c.model.activation == Activation::kGelu);
    CHECK(c.optimizer.kind == OptimizerKind::kAdamw);
    CHECK(c.optimizer.schedule == LrSchedule::kCosine);
    CHECK(c.blueprints.residual_mlp.expansion == 3);
    CHECK(c.blueprints.lowrank.slots == 5);
    CHECK(c.blueprints.max_params_per_layer == 5000);
    CHECK_FALSE(c.lifecycle.auto_gates);
    CHECK(c.lifecycle.contribution == ContributionMeasure::kAblation);
    CHECK(c.lifecycle.ablation_batches == 4);
    CHECK(c.lifecycle.grafting.strategy == GraftingStrategy::kMomentum);
    CHECK(c.lifecycle.grafting.ramp_steps == 30);
    CHECK(c.lifecycle.gates.max_error_rate == 0.2);
    CHECK_FALSE(c.governor.enabled);
    CHECK(c.faults.nan_at_step == 77);
    CHECK(c.faults.corrupt_digest_rank == 1);
    CHECK(c.faults.checkpoint_crash_after_files == 2);
}

TEST_CASE("the effective config YAML loads back to an equal config", "[kasmina][config]") {
    Config c;
    c.run.seed = 123456789012345ull;
    c.data.path = "/data/with \"quotes\"";
    c.model.hidden = {33, 17};
    c.model.seeds_per_layer = 5;
    c.run.cuda_graph = false;
    c.optimizer.lr = 0.1 + 1e-12;  // needs full precision
    c.optimizer.kind = OptimizerKind::kAdamw;
    c.lifecycle.grafting.strategy = GraftingStrategy::kDriftControlled;
    c.lifecycle.gates.min_improvement = -0.5;
    c.lifecycle.contribution = ContributionMeasure::kAblation;
    c.lifecycle.ablation_batches = 7;
    c.faults.nan_at_step = 9;
    c.faults.checkpoint_crash_after_files = 3;
    const std::string yaml = config_to_yaml(c);
    CHECK(parse_config(yaml, "effective.yaml") == c);
    CHECK(parse_config(config_to_yaml(Config{}), "d.yaml") == Config{});
    // Doubles print as the shortest text that reads back exactly.
    const std::string defaults = config_to_yaml(Config{});
    CHECK_THAT(defaults, Catch::Contains("\n  lr: 0.05\n") && Catch::Contains("\n  eps: 1e-08\n"));
}

TEST_CASE("config errors name file, line, field and reason", "[kasmina][config]") {
    SECTION("unknown key, reported at the key's line") {
        CHECK(config_error("run:\n  seed: 1\nlifecycle:\n  trainin_steps: 5\n") ==
              "run.yaml:4: lifecycle.trainin_steps: unknown key (known: training_steps, "
              "stabilization_steps, evaluation_steps, fine_tuning_steps, embargo_steps, "
              "max_training_per_layer, max_active_per_layer, auto_gates, "
              "decision_timeout_steps, contribution, ablation_batches, grafting, gates)");
    }
    SECTION("unknown top-level section") {
        CHECK(config_error("\n\nmodle: {}\n").rfind("run.yaml:3: modle: unknown key", 0) == 0);
    }
    SECTION("wrong type") {
        CHECK(config_error("data:\n  batch_size: abc\n") ==
              "run.yaml:2: data.batch_size: expected an integer, got 'abc'");
        CHECK(config_error("model:\n  hidden: 128\n") ==
              "run.yaml:2: model.hidden: expected a non-empty list of layer widths, got '128'");
        CHECK(config_error("lifecycle:\n  auto_gates: maybe\n") ==
              "run.yaml:2: lifecycle.auto_gates: expected true or false, got 'maybe'");
        CHECK(config_error("optimizer:\n  lr: fast\n") ==
              "run.yaml:2: optimizer.lr: expected a finite number, got 'fast'");
        CHECK(config_error("run: 5\n") == "run.yaml:1: run: expected a mapping, got '5'");
        CHECK(config_error("model:\n  hidden: [64, x]\n") ==
              "run.yaml:2: model.hidden[1]: expected an integer, got 'x'");
    }
    SECTION("out of range") {
        CHECK(config_error("optimizer:\n  lr: -0.1\n") ==
              "run.yaml:2: optimizer.lr: out of range: -0.1 not in (0, inf)");
        CHECK(config_error("lifecycle:\n  grafting:\n    ramp_steps: 0\n") ==
              "run.yaml:3: lifecycle.grafting.ramp_steps: out of range: 0 not in [1, inf)");
        CHECK(config_error("lifecycle:\n  ablation_batches: 0\n") ==
              "run.yaml:2: lifecycle.ablation_batches: out of range: 0 not in [1, 1024]");
        CHECK(config_error("lifecycle:\n  gates: {max_error_rate: 1.5}\n") ==
              "run.yaml:2: lifecycle.gates.max_error_rate: out of range: 1.5 not in [0, 1]");
        CHECK(config_error("run:\n  seed: -3\n") ==
              "run.yaml:2: run.seed: expected a non-negative integer, got '-3'");
    }
    SECTION("bad enum value lists the choices") {
        CHECK(config_error("lifecycle:\n  grafting: {strategy: fast}\n") ==
              "run.yaml:2: lifecycle.grafting.strategy: expected one of linear, cosine, sigmoid, "
              "drift_controlled, momentum, stability, adaptive, got 'fast'");
        CHECK(config_error("model: {activation: tanh}\n") ==
              "run.yaml:1: model.activation: expected one of relu, gelu, got 'tanh'");
        CHECK(config_error("blueprints:\n  input: pixels\n") ==
              "run.yaml:2: blueprints.input: expected one of chunk, layer, got 'pixels'");
        CHECK(config_error("lifecycle:\n  contribution: first_order\n") ==
              "run.yaml:2: lifecycle.contribution: expected one of gradient, ablation, got "
              "'first_order'");
    }
    SECTION("cross-field checks") {
        CHECK(config_error("model:\n  hidden: [64, 6]\n  seeds_per_layer: 8\n") ==
              "run.yaml:3: model.seeds_per_layer: seeds_per_layer 8 exceeds the width 6 of "
              "layer 1 (S > D)");
        CHECK(config_error("model:\n  seeds_per_layer: 0\n") ==
              "run.yaml:2: model.seeds_per_layer: out of range: 0 not in [1, 16777216]");
        CHECK(
            config_error("lifecycle:\n  max_training_per_layer: 5\n  max_active_per_layer: 2\n") ==
            "run.yaml:2: lifecycle.max_training_per_layer: exceeds max_active_per_layer");
    }
    SECTION("YAML syntax error") {
        const std::string msg = config_error("run:\n  seed: [1, 2\n");
        CHECK(msg.rfind("run.yaml:", 0) == 0);
        CHECK(msg.find(": (yaml): ") != std::string::npos);
    }
}

TEST_CASE("load_config reads a file and names it in errors", "[kasmina][config]") {
    const std::string path =
        (esper::testing::scratch_dir("kasmina") / "kasmina_config_test.yaml").string();
    {
        std::ofstream out(path);
        out << "run:\n  seed: 9\n  epochs: 1\ngovernor:\n  window: 0\n";
    }
    try {
        load_config(path);
        FAIL("expected an error");
    } catch (const esper::Error& e) {
        CHECK(e.message() == path + ":5: governor.window: out of range: 0 not in [1, inf)");
    }
    {
        std::ofstream out(path);
        out << "run:\n  seed: 9\n";
    }
    CHECK(load_config(path).run.seed == 9);
    std::remove(path.c_str());
    CHECK_THROWS_WITH(load_config(path), Catch::Contains(path) && Catch::Contains("cannot open"));
}

TEST_CASE("the example run configs load", "[kasmina][config]") {
    for (const char* name : {"fashion_mnist.yaml", "fashion_mnist_wide.yaml", "teacher.yaml",
                             "transformer_text.yaml", "transformer_text_gpu.yaml"}) {
        const std::string path = esper::testing::test_data(std::string("examples/") + name);
        INFO(path);
        const Config c = load_config(path);
        CHECK(parse_config(config_to_yaml(c), "effective.yaml") == c);
    }
    // The learning-quality benchmark's hosts (docs/benchmarks.md): widening seeds on the narrow
    // one.
    for (const char* name : {"narrow.yaml", "wide.yaml"}) {
        const std::string path = esper::testing::test_data(std::string("bench/quality/") + name);
        INFO(path);
        const Config c = load_config(path);
        CHECK(parse_config(config_to_yaml(c), "effective.yaml") == c);
        CHECK(c.blueprints.input == (std::string(name) == "narrow.yaml" ? BlueprintInput::kLayer
                                                                        : BlueprintInput::kChunk));
    }
}

// ---- config holes (issue 18, item 7): each used to be accepted ----

TEST_CASE("an empty or comment-only config is refused at its first line", "[kasmina][config]") {
    for (const char* text : {"", "\n\n", "# only a comment\n# and another\n", "---\n"}) {
        INFO("text: " << text);
        const std::string msg = config_error(text);
        CHECK_THAT(msg, Catch::Matches("run\\.yaml:[12]: \\(top level\\): the config is empty.*"));
    }
}

TEST_CASE("a directory given as the config file is refused by name", "[kasmina][config]") {
    const auto dir = esper::testing::scratch_dir("kasmina");
    CHECK_THROWS_WITH(load_config(dir.string()),
                      dir.string() + ":0: (file): is a directory, not a config file");
}

TEST_CASE("a key repeated in one mapping is refused with the line of each", "[kasmina][config]") {
    // yaml-cpp keeps both and lookups return the first: the second value was silently lost.
    CHECK(config_error("run:\n  seed: 1\n  epochs: 1\n  seed: 2\n") ==
          "run.yaml:4: run.seed: duplicate key (first at line 2)");
    CHECK(config_error("run: {seed: 1}\nmodel: {seeds_per_layer: 2}\nrun: {seed: 3}\n") ==
          "run.yaml:3: run: duplicate key (first at line 1)");
    CHECK(config_error("lifecycle:\n  gates: {min_stability: 0.1, min_stability: 0.2}\n") ==
          "run.yaml:2: lifecycle.gates.min_stability: duplicate key (first at line 2)");
    // The tamiyo: section shares the file; its repeats are refused here too.
    CHECK(config_error("tamiyo:\n  policy: heuristic\n  policy: rules.yaml\n") ==
          "run.yaml:3: tamiyo.policy: duplicate key (first at line 2)");
}

TEST_CASE("a config that is not UTF-8 is refused with the line of the first bad byte",
          "[kasmina][config]") {
    // Found by fuzz_config (corpus config/crash-not-utf8): a path of bytes 0xFF 0x1F was read,
    // written to the effective config and read back as another path.
    CHECK(config_error("run: {seed: 1}\ndata:\n path: \xff\x1f") ==
          "run.yaml:3: (yaml): not UTF-8 text (byte 0xFF)");
    CHECK(config_error("data: {path: \"a\xc3\"}\n") ==
          "run.yaml:1: (yaml): not UTF-8 text (byte 0xC3)");
    CHECK(config_error("data: {path: \"\xed\xa0\x80\"}\n") ==
          "run.yaml:1: (yaml): not UTF-8 text (byte 0xED)");  // a surrogate
    // Well-formed UTF-8 passes.
    CHECK(
        parse_config("data: {dataset: teacher, path: \"d\xc3\xa9j\xe2\x86\x92\xf0\x9f\x98\x80\"}\n",
                     "run.yaml", 0)
            .data.path == "d\xc3\xa9j\xe2\x86\x92\xf0\x9f\x98\x80");
}

TEST_CASE("a config that cannot fit in memory is refused at validation, naming the size",
          "[kasmina][config]") {
    // The outside test's hidden: [200000, 200000] passed and died in std::bad_alloc: 4e10 host
    // parameters, 449 GiB with gradients and momentum (and 50,000-wide chunks whose arenas need
    // terabytes), beyond any machine this runs on.
    const std::string huge = "model:\n  hidden: [200000, 200000]\n  seeds_per_layer: 4\n";
    CHECK_THROWS_WITH(parse_config(huge, "big.yaml"),
                      Catch::StartsWith("big.yaml:2: model.hidden: the run needs about ") &&
                          Catch::Contains("GiB of memory (host parameters with gradients and "
                                          "optimizer state 448.8 GiB") &&
                          Catch::Contains("this machine has"));
    // Against a stated budget: the default model fits 1 GiB, a wide one does not.
    CHECK_NOTHROW(parse_config("{}", "small.yaml", uint64_t{1} << 30));
    const std::string wide = "model: {hidden: [8192, 8192], seeds_per_layer: 4}\n";
    CHECK_THROWS_WITH(parse_config(wide, "wide.yaml", uint64_t{1} << 30),
                      Catch::Contains("needs about 5.1 GiB") && Catch::Contains("has 1.0 GiB"));
    const MemoryEstimate m = estimate_memory(parse_config(wide, "wide.yaml", 0));
    CHECK(m.host_bytes > 3.0 * 4 * 8192.0 * 8192.0);
    CHECK(m.total_bytes > m.host_bytes);
    // The transformer is estimated as the transformer (its MLP hidden: is not built).
    const std::string big_tfm =
        "data: {dataset: text}\nmodel:\n  kind: transformer\n"
        "  transformer: {n_layer: 48, n_head: 64, d_model: 65536, context: 64}\n";
    CHECK_THROWS_WITH(parse_config(big_tfm, "tfm.yaml", uint64_t{64} << 30),
                      Catch::StartsWith("tfm.yaml:4: model.transformer: the run needs about"));
    CHECK_NOTHROW(parse_config("data: {dataset: text}\nmodel: {kind: transformer}\n", "t.yaml",
                               uint64_t{1} << 30));
}

TEST_CASE("a transformer config parses every key, defaults its corpus and round-trips",
          "[kasmina][config][transformer]") {
    const Config c = parse_config(R"(
data: {dataset: text, batch_size: 8, text: {validation_fraction: 0.2, eval_windows: 7}}
model:
  kind: transformer
  seeds_per_layer: 8
  transformer: {n_layer: 3, n_head: 2, d_model: 32, context: 16, tie_embeddings: false,
                widening_seeds: 5, max_extra_units: 12, max_extra_heads: 3,
                initial_extra_units: 4, initial_extra_heads: 1}
blueprints:
  mlp_units: {units: 6, slots: 3}
  attention_head: {slots: 2}
  lora: {rank: 2, slots: 4}
)",
                                  "t.yaml");
    CHECK(c.model.kind == ModelKind::kTransformer);
    CHECK(c.data.path == kDefaultTextCorpus);
    CHECK(c.data.text.validation_fraction == 0.2);
    CHECK(c.data.text.eval_windows == 7);
    const TransformerConfig& t = c.model.transformer;
    CHECK(t == TransformerConfig{3, 2, 32, 16, false, 5, 12, 3, 4, 1});
    CHECK(c.blueprints.mlp_units == MlpUnitsBlueprintConfig{6, 3});
    CHECK(c.blueprints.attention_head.slots == 2);
    CHECK(c.blueprints.lora == LoraBlueprintConfig{2, 4});
    CHECK(parse_config(config_to_yaml(c), "again.yaml") == c);
    // An explicit path wins over the default corpus.
    CHECK(parse_config("data: {dataset: text, path: /tmp/x.txt}\nmodel: {kind: transformer}\n",
                       "p.yaml")
              .data.path == "/tmp/x.txt");
}

TEST_CASE("transformer configs that cannot run are refused with file, line and field",
          "[kasmina][config][transformer]") {
    CHECK_THAT(config_error("model: {kind: transformer}\n"),
               Catch::Contains("run.yaml:1: data.dataset: model.kind: transformer reads bytes"));
    CHECK_THAT(config_error("data: {dataset: text}\n"),
               Catch::Contains("model.kind: data.dataset: text needs model.kind: transformer"));
    CHECK_THAT(config_error("data: {dataset: text}\nmodel:\n  kind: transformer\n  transformer:\n"
                            "    d_model: 30\n    n_head: 4\n"),
               Catch::Contains("run.yaml:5: model.transformer.d_model: 30 is not a multiple of "
                               "n_head 4"));
    CHECK_THAT(config_error("data: {dataset: text}\nmodel:\n  kind: transformer\n"
                            "  seeds_per_layer: 600\n  transformer: {d_model: 128}\n"),
               Catch::Contains("model.seeds_per_layer: seeds_per_layer 600 exceeds the 512"));
    CHECK_THAT(config_error("run: {precision: fp16}\ndata: {dataset: text}\n"
                            "model: {kind: transformer}\n"),
               Catch::Contains("run.yaml:1: run.precision: expected fp32 or bf16, got 'fp16'"));
    CHECK_THAT(config_error("run: {cuda_graph: sometimes}\n"), Catch::Contains("run.cuda_graph"));
    CHECK_THAT(config_error("data: {dataset: text, text: {validation_fraction: 0.9}}\n"
                            "model: {kind: transformer}\n"),
               Catch::Contains("data.text.validation_fraction: out of range"));
    CHECK_THAT(config_error("model: {kind: gpt}\n"),
               Catch::Contains("model.kind: expected one of"));
    CHECK_THAT(config_error("data: {dataset: text}\nmodel:\n  kind: transformer\n  transformer:\n"
                            "    max_extra_units: 16\n    initial_extra_units: 17\n"),
               Catch::Contains("run.yaml:6: model.transformer.initial_extra_units"));
}

TEST_CASE("model.transformer.grow_width parses, round-trips, and its bad values are refused",
          "[kasmina][config][transformer]") {
    const std::string head =
        "data: {dataset: text}\nmodel:\n  kind: transformer\n  transformer:\n"
        "    max_extra_units: 64\n    max_extra_heads: 2\n";
    const Config c =
        parse_config(head + "    grow_width: {units: 48, heads: 1, at_step: 300}\n", "w.yaml");
    CHECK(c.model.transformer.grow_width == GrowWidthConfig{48, 1, 300, WidthInit::kZeroOut});
    CHECK(parse_config(config_to_yaml(c), "again.yaml") == c);
    const Config sp =
        parse_config(head + "    grow_width: {units: 48, at_step: 300, init: split}\n", "w.yaml");
    CHECK(sp.model.transformer.grow_width.init == WidthInit::kSplit);
    CHECK(parse_config(config_to_yaml(sp), "again.yaml") == sp);
    // Off by default, and then not written out.
    CHECK(config_to_yaml(parse_config(head, "w.yaml")).find("grow_width") == std::string::npos);
    CHECK_THAT(config_error(head + "    grow_width: {units: 8}\n"),
               Catch::Contains("run.yaml:7: model.transformer.grow_width.at_step: growing width "
                               "needs the step it happens at"));
    // More than the room left after the initial units and heads.
    CHECK_THAT(
        config_error(head + "    initial_extra_units: 32\n"
                            "    grow_width: {units: 40, at_step: 5}\n"),
        Catch::Contains("model.transformer.grow_width.units: out of range: 40 not in [0, 32]"));
    CHECK_THAT(config_error(head + "    grow_width: {heads: 3, at_step: 5}\n"),
               Catch::Contains("model.transformer.grow_width.heads: out of range"));
    CHECK_THAT(
        config_error(head + "    grow_width: {units: 8, at_step: 5, init: copy}\n"),
        Catch::Contains("model.transformer.grow_width.init: expected one of zero_out, split"));
}

TEST_CASE("model.transformer.grow_depth parses, round-trips, and its bad values are refused",
          "[kasmina][config][transformer]") {
    const std::string head = "data: {dataset: text}\nmodel:\n  kind: transformer\n  transformer:\n";
    const Config c = parse_config(
        head + "    grow_depth: {blocks: 2, at_step: 150, init: zero_out}\n", "g.yaml");
    CHECK(c.model.transformer.grow_depth == GrowDepthConfig{2, 150, DepthInit::kZeroOut});
    CHECK(parse_config(config_to_yaml(c), "again.yaml") == c);
    const Config w = parse_config(
        head + "    grow_depth: {blocks: 2, at_step: 150, init: zero_out, warmup_steps: 40}\n",
        "g.yaml");
    CHECK(w.model.transformer.grow_depth == GrowDepthConfig{2, 150, DepthInit::kZeroOut, 40});
    CHECK(parse_config(config_to_yaml(w), "again.yaml") == w);
    CHECK_THAT(config_error(head + "    grow_depth: {blocks: 2, at_step: 10, warmup_steps: -1}\n"),
               Catch::Contains("model.transformer.grow_depth.warmup_steps"));
    CHECK(parse_config(head + "    grow_depth: {blocks: 1, at_step: 9}\n", "g.yaml")
              .model.transformer.grow_depth.init == DepthInit::kCopy);
    // Off by default, and then not written out.
    CHECK(config_to_yaml(parse_config(head + "    n_layer: 2\n", "g.yaml")).find("grow_depth") ==
          std::string::npos);
    CHECK_THAT(config_error(head + "    grow_depth: {blocks: 2}\n"),
               Catch::Contains("run.yaml:5: model.transformer.grow_depth.at_step: growing blocks "
                               "needs the step they join at"));
    CHECK_THAT(
        config_error(head + "    grow_depth: {blocks: 2, at_step: 10, init: stack}\n"),
        Catch::Contains("model.transformer.grow_depth.init: expected one of copy, zero_out"));
    CHECK_THAT(config_error(head + "    grow_depth: {blocks: -1, at_step: 10}\n"),
               Catch::Contains("model.transformer.grow_depth.blocks"));
    CHECK_THAT(config_error(head + "    grow_depth: {blocks: 1, at_step: 0}\n"),
               Catch::Contains("model.transformer.grow_depth.at_step"));
    CHECK_THAT(config_error(head + "    grow_depth: {layers: 1}\n"),
               Catch::Contains("model.transformer.grow_depth"));
    CHECK_THAT(config_error(head + "    grow_depth: 2\n"),
               Catch::Contains("model.transformer.grow_depth"));
}

// `auto` puts a transformer on a visible GPU only when the GPU step runs everything its config
// can grow: examples/transformer_text_gpu.yaml does; examples/transformer_text.yaml's LoRA rank 4
// is refused in bf16 (so it stays on the CPU under auto), not in fp32.
TEST_CASE("transformer_gpu_gap names what the GPU transformer would refuse", "[kasmina][config]") {
    Config gpu = load_config(esper::testing::test_data("examples/transformer_text_gpu.yaml"));
    CHECK(transformer_gpu_gap(gpu).empty());
    Config cpu = load_config(esper::testing::test_data("examples/transformer_text.yaml"));
    cpu.run.precision = "bf16";
    CHECK_THAT(transformer_gpu_gap(cpu),
               Catch::Contains("blueprints.lora.rank 4 is not a multiple of 8"));
    cpu.run.precision = "fp32";
    CHECK(transformer_gpu_gap(cpu).empty());
    Config odd = gpu;
    odd.blueprints.mlp_units.units = 20;
    CHECK_THAT(transformer_gpu_gap(odd), Catch::Contains("multiples of 8"));
    odd = gpu;
    odd.model.transformer.n_head = 4;  // 384 / 4 = 96
    CHECK_THAT(transformer_gpu_gap(odd), Catch::Contains("d_model / n_head = 96"));
    // Without a visible device `auto` trains on the CPU whatever the gap.
    gpu.run.device = "auto";
    if (!cuda_device_available()) CHECK_FALSE(trainer_uses_cuda(gpu));
}

TEST_CASE("widening blueprints load with run.device: cuda (they have CUDA kernels now)",
          "[kasmina][config]") {
    const Config c =
        parse_config("run: {device: cuda}\nblueprints:\n  input: layer\n", "widening.yaml");
    CHECK(c.run.device == "cuda");
    CHECK(c.blueprints.input == BlueprintInput::kLayer);
    // Without a visible device (or a CUDA build) the step backend, not the config, refuses
    // `cuda`; with one, the run trains there.
    if (!cuda_device_available())
        CHECK_THROWS_WITH(trainer_uses_cuda(c), Catch::Contains("run.device: cuda: "));
    else
        CHECK(trainer_uses_cuda(c));
}
