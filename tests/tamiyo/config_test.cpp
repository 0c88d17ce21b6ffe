// Tests of the `tamiyo:` config section: defaults, every field, other sections left alone,
// file:line errors, and the effective-config dump parsing back to the same values.
#include "tamiyo/config.h"

#include <catch2/catch.hpp>

#include "core/error.h"
#include "tests/support/paths.h"

using namespace esper;
using namespace esper::tamiyo;

namespace {
std::string error_of(const std::string& text) {
    try {
        parse_config(text, "run.yaml");
    } catch (const esper::Error& e) {
        return e.message();
    }
    return "(no error)";
}
}  // namespace

TEST_CASE("tamiyo config: defaults, every field, and other sections ignored", "[tamiyo][config]") {
    const Config d = parse_config("run:\n  epochs: 3\n", "run.yaml");
    CHECK(d.policy == "heuristic");
    CHECK(d.controller.budget.max_active_per_layer == 4);
    CHECK(load_config_file(esper::testing::test_data("examples/fashion_mnist.yaml")).policy ==
          "heuristic");

    const Config c = parse_config(
        "model: {hidden: [64]}\n"
        "tamiyo:\n"
        "  policy: examples/policies/fixed_schedule.yaml\n"
        "  decision_interval_steps: 25\n"
        "  policy_time_budget_ms: 12.5\n"
        "  pending_timeout_steps: 300\n"
        "  plateau: {patience_steps: 350, min_delta: 0.004}\n"
        "  budget:\n"
        "    germination_cooldown_steps: 150\n"
        "    max_germinations_per_decision: 2\n"
        "  heuristic:\n"
        "    germinations_per_round: 2\n"
        "    blueprint: lowrank\n"
        "    blueprint_size: 4\n"
        "    strategy: sigmoid\n"
        "    min_gradient_health: 0.65\n"
        "    training_patience_steps: 700\n"
        "    min_benefit: 0.002\n"
        "    cull_contribution: 0.01\n"
        "    rent_per_param: 0.000001\n",
        "run.yaml");
    CHECK(c.policy == "examples/policies/fixed_schedule.yaml");
    CHECK(c.decision_interval_steps == 25);
    CHECK(c.controller.policy_time_budget_ms == 12.5);
    CHECK(c.controller.pending_timeout_steps == 300);
    CHECK(c.view.plateau.patience_steps == 350);
    CHECK(c.view.plateau.min_delta == 0.004);
    CHECK(c.controller.budget.germination_cooldown_steps == 150);
    CHECK(c.controller.budget.max_germinations_per_decision == 2);
    CHECK(c.heuristic.germinations_per_round == 2);
    CHECK(c.heuristic.blueprint == BlueprintKind::kLowrank);
    CHECK(c.heuristic.blueprint_size == 4);
    CHECK(c.heuristic.strategy == "sigmoid");
    CHECK(c.heuristic.min_gradient_health == 0.65);
    CHECK(c.heuristic.training_patience_steps == 700);
    CHECK(c.heuristic.min_benefit == 0.002);
    CHECK(c.heuristic.rent_per_param == 1e-6);
    CHECK(c.heuristic.cull_contribution == 0.01);

    // The effective config parses back to the same values; the executor's settings are shown as
    // a comment (they are read from lifecycle:/blueprints:, not from tamiyo:).
    Config with_executor = c;
    set_executor_settings(with_executor, {120, 80, 160, 3, 90000});
    const std::string text = format_config(with_executor);
    INFO(text);
    CHECK(text.find("  policy_time_budget_ms: 12.5\n") != std::string::npos);
    CHECK(text.find("min_delta: 0.004}") != std::string::npos);
    CHECK(text.find("# from the executor's sections: lifecycle.training_steps 120, "
                    "lifecycle.evaluation_steps 80, lifecycle.fine_tuning_steps 160, "
                    "lifecycle.max_active_per_layer 3, blueprints.max_params_per_layer 90000") !=
          std::string::npos);
    Config again = parse_config(text, "effective.yaml");
    CHECK(executor_settings(again) == ExecutorSettings{});
    set_executor_settings(again, executor_settings(with_executor));
    CHECK(format_config(again) == text);
    CHECK(again.view == with_executor.view);
    CHECK(again.controller.budget == with_executor.controller.budget);
    CHECK(again.heuristic.training_steps == 120);
    CHECK(again.heuristic.strategy == "sigmoid");
}

TEST_CASE("tamiyo config refuses a negative or runaway rent", "[tamiyo][config]") {
    CHECK(error_of("tamiyo:\n  heuristic: {rent_per_param: -0.001}\n") ==
          "run.yaml:2: tamiyo.heuristic.rent_per_param: out of range [0, 1]: -0.001");
    CHECK(error_of("tamiyo:\n  heuristic: {rent_per_param: 2}\n") ==
          "run.yaml:2: tamiyo.heuristic.rent_per_param: out of range [0, 1]: 2");
}

TEST_CASE("tamiyo config refuses the keys the executor's sections own, naming the one to set",
          "[tamiyo][config]") {
    CHECK(error_of("tamiyo:\n  heuristic:\n    min_benefit: 0.1\n    training_steps: 30\n") ==
          "run.yaml:4: tamiyo.heuristic.training_steps: moved: set lifecycle.training_steps (one "
          "key for Tamiyo and Kasmina)");
    CHECK(error_of("tamiyo:\n  heuristic: {evaluation_steps: 10}\n") ==
          "run.yaml:2: tamiyo.heuristic.evaluation_steps: moved: set lifecycle.evaluation_steps "
          "(one key for Tamiyo and Kasmina)");
    CHECK(error_of("tamiyo:\n  heuristic:\n    fine_tuning_steps: 30\n")
              .rfind("run.yaml:3: tamiyo.heuristic.fine_tuning_steps: moved: set "
                     "lifecycle.fine_tuning_steps",
                     0) == 0);
    CHECK(error_of("tamiyo:\n  budget: {max_active_per_layer: 4}\n")
              .rfind("run.yaml:2: tamiyo.budget.max_active_per_layer: moved: set "
                     "lifecycle.max_active_per_layer",
                     0) == 0);
    CHECK(error_of("tamiyo:\n  budget:\n    max_blueprint_params: 9\n")
              .rfind("run.yaml:3: tamiyo.budget.max_blueprint_params: moved: set "
                     "blueprints.max_params_per_layer",
                     0) == 0);
    // The owning sections are the executor's business: parse_config leaves them alone.
    const Config c = parse_config("lifecycle: {training_steps: 30}\ntamiyo: {}\n", "run.yaml");
    CHECK(executor_settings(c) == ExecutorSettings{});
}

TEST_CASE("a strategy is spelled the vocabulary's way whatever the case written",
          "[tamiyo][config]") {
    const Config c = parse_config("tamiyo:\n  heuristic: {strategy: Drift_Controlled}\n", "r.yaml");
    CHECK(c.heuristic.strategy == "drift_controlled");
}

TEST_CASE("tamiyo config errors name file, line and field", "[tamiyo][config]") {
    CHECK(error_of("tamiyo:\n  polcy: x\n") ==
          "run.yaml:2: tamiyo.polcy: unknown key (known: policy, decision_interval_steps, "
          "policy_time_budget_ms, pending_timeout_steps, plateau, budget, heuristic)");
    CHECK(error_of("tamiyo:\n  budget:\n    germination_cooldown_steps: many\n") ==
          "run.yaml:3: tamiyo.budget.germination_cooldown_steps: expected a non-negative integer, "
          "got "
          "'many'");
    CHECK(error_of("tamiyo:\n  plateau: {patience_steps: 0}\n")
              .rfind("run.yaml:2: tamiyo.plateau.patience_steps: out of range", 0) == 0);
    CHECK(error_of("tamiyo:\n  heuristic:\n    min_gradient_health: 1.5\n")
              .rfind("run.yaml:3: tamiyo.heuristic.min_gradient_health: out of range", 0) == 0);
    CHECK(error_of("tamiyo:\n  heuristic:\n    strategy: zigzag\n") ==
          "run.yaml:3: tamiyo.heuristic.strategy: unknown strategy 'zigzag'");
    CHECK(error_of("tamiyo: 3\n") == "run.yaml:1: tamiyo: expected a mapping");
    CHECK(error_of("tamiyo:\n  budget: [1]\n") == "run.yaml:2: tamiyo.budget: expected a mapping");
}
