// Tests of the `tamiyo:` config section: defaults, every field, other sections left alone,
// file:line errors, and the effective-config dump parsing back to the same values.
#include "tamiyo/config.h"

#include <catch2/catch.hpp>

#include "core/error.h"

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
    CHECK(load_config_file(std::string(ESPER_SOURCE_DIR) + "/examples/fashion_mnist.yaml").policy ==
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
        "    max_active_per_layer: 3\n"
        "    max_blueprint_params: 90000\n"
        "    germination_cooldown_steps: 150\n"
        "    max_germinations_per_decision: 2\n"
        "  heuristic:\n"
        "    germinations_per_round: 2\n"
        "    blueprint: lowrank\n"
        "    blueprint_size: 4\n"
        "    strategy: sigmoid\n"
        "    training_steps: 120\n"
        "    min_gradient_health: 0.65\n"
        "    training_patience_steps: 700\n"
        "    evaluation_steps: 80\n"
        "    min_benefit: 0.002\n"
        "    fine_tuning_steps: 160\n"
        "    cull_contribution: 0.01\n",
        "run.yaml");
    CHECK(c.policy == "examples/policies/fixed_schedule.yaml");
    CHECK(c.decision_interval_steps == 25);
    CHECK(c.controller.policy_time_budget_ms == 12.5);
    CHECK(c.controller.pending_timeout_steps == 300);
    CHECK(c.view.plateau.patience_steps == 350);
    CHECK(c.view.plateau.min_delta == 0.004);
    CHECK(c.controller.budget.max_active_per_layer == 3);
    CHECK(c.controller.budget.max_blueprint_params == 90000);
    CHECK(c.controller.budget.germination_cooldown_steps == 150);
    CHECK(c.controller.budget.max_germinations_per_decision == 2);
    CHECK(c.heuristic.germinations_per_round == 2);
    CHECK(c.heuristic.blueprint == BlueprintKind::kLowrank);
    CHECK(c.heuristic.blueprint_size == 4);
    CHECK(c.heuristic.strategy == "sigmoid");
    CHECK(c.heuristic.training_steps == 120);
    CHECK(c.heuristic.min_gradient_health == 0.65);
    CHECK(c.heuristic.training_patience_steps == 700);
    CHECK(c.heuristic.evaluation_steps == 80);
    CHECK(c.heuristic.min_benefit == 0.002);
    CHECK(c.heuristic.fine_tuning_steps == 160);
    CHECK(c.heuristic.cull_contribution == 0.01);

    // The effective config parses back to the same values.
    const Config again = parse_config(format_config(c), "effective.yaml");
    CHECK(format_config(again) == format_config(c));
    CHECK(again.view == c.view);
    CHECK(again.controller.budget == c.controller.budget);
}

TEST_CASE("tamiyo config errors name file, line and field", "[tamiyo][config]") {
    CHECK(error_of("tamiyo:\n  polcy: x\n") ==
          "run.yaml:2: tamiyo.polcy: unknown key (known: policy, decision_interval_steps, "
          "policy_time_budget_ms, pending_timeout_steps, plateau, budget, heuristic)");
    CHECK(error_of("tamiyo:\n  budget:\n    max_active_per_layer: many\n") ==
          "run.yaml:3: tamiyo.budget.max_active_per_layer: expected a non-negative integer, got "
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
