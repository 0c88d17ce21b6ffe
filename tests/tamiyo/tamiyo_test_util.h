// Helpers for the Tamiyo tests: build views from random telemetry, drive loss curves, and a
// recorder of every message ingested so a test can replay it into a fresh view.
#pragma once

#include <cstdint>
#include <random>
#include <variant>
#include <vector>

#include "tamiyo/view.h"

namespace esper::tamiyo::test {

using Message = std::variant<SeedTelemetry, TransitionEvent, RunStatus>;

// Ingests into a view and remembers the message.
struct Recorder {
    View& view;
    std::vector<Message> log;

    void telemetry(const SeedTelemetry& t) {
        view.ingest_telemetry(t);
        log.emplace_back(t);
    }
    void transition(const TransitionEvent& e) {
        view.ingest_transition(e);
        log.emplace_back(e);
    }
    void status(const RunStatus& s) {
        view.ingest_run_status(s);
        log.emplace_back(s);
    }
};

inline void replay(View& v, const std::vector<Message>& log) {
    for (const Message& m : log) {
        if (auto* t = std::get_if<SeedTelemetry>(&m))
            v.ingest_telemetry(*t);
        else if (auto* e = std::get_if<TransitionEvent>(&m))
            v.ingest_transition(*e);
        else
            v.ingest_run_status(std::get<RunStatus>(m));
    }
}

// The germination prices random_telemetry() publishes for every seed (an executor's numbers
// for chunk width 4; Tamiyo must take them as given, never recompute them).
inline constexpr int64_t kResidualMlpPrice = 1000;
inline constexpr int64_t kLowrankPrice = 300;
inline constexpr int64_t kScaleShiftPrice = 8;

// Random but plausible metrics (never zero) for one seed.
inline SeedTelemetry random_telemetry(std::mt19937& rng, uint32_t layer, uint32_t seed,
                                      uint64_t step, SeedStage stage = SeedStage::kDormant,
                                      uint32_t steps_in_stage = 0) {
    std::uniform_real_distribution<double> u(0.05, 0.95);
    SeedTelemetry t;
    t.layer = layer;
    t.seed = seed;
    t.step = step;
    t.stage = stage;
    t.steps_in_stage = steps_in_stage;
    t.alpha = stage == SeedStage::kGrafting ? static_cast<float>(u(rng)) : 0.0f;
    t.chunk_width = 4;
    t.germination_params = {kResidualMlpPrice, kLowrankPrice, kScaleShiftPrice};
    t.metrics.act_mean = u(rng) - 0.5;
    t.metrics.act_var = u(rng);
    t.metrics.dead_fraction = u(rng) * 0.2;
    t.metrics.grad_norm = u(rng);
    t.metrics.health = u(rng);
    if (stage != SeedStage::kDormant) {
        t.metrics.blueprint_grad_norm = u(rng);
        t.metrics.gradient_health = u(rng);
        t.metrics.contribution = u(rng) - 0.5;
    }
    return t;
}

// Every seed of `layers` × `seeds` reports once at `step` as DORMANT with random health.
inline void populate(Recorder& r, std::mt19937& rng, uint32_t layers, uint32_t seeds,
                     uint64_t step) {
    for (uint32_t l = 0; l < layers; ++l)
        for (uint32_t s = 0; s < seeds; ++s) r.telemetry(random_telemetry(rng, l, s, step));
}

inline RunStatus status_at(uint64_t step, double loss) {
    RunStatus s;
    s.step = step;
    s.loss = loss;
    s.accuracy = 1.0 - loss / 3.0;
    s.host_params = 55050;
    return s;
}

}  // namespace esper::tamiyo::test
