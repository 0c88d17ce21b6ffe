// Shared by the distributed tests (Gloo and NCCL): a small teacher-task config whose seeds move
// through the lifecycle within tens of steps, and commands for the leader's scripted decisions.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/command.h"

namespace esper::kasmina::test {

inline Config small_dist_config(const std::string& device, uint64_t seed, int64_t batch,
                                TeacherConfig teacher, std::vector<int64_t> hidden) {
    Config c;
    c.run.seed = seed;
    c.run.device = device;
    c.run.max_steps = 40;
    c.run.digest_every_steps = 5;
    c.run.telemetry_interval_steps = 10;
    c.data.dataset = "teacher";
    c.data.batch_size = batch;
    c.data.teacher = teacher;
    c.model.hidden = std::move(hidden);
    c.model.seeds_per_layer = 4;
    c.lifecycle.training_steps = 3;
    c.lifecycle.stabilization_steps = 3;
    c.lifecycle.evaluation_steps = 3;
    c.lifecycle.fine_tuning_steps = 30;
    c.lifecycle.gates.min_gradient_health = 0.0;
    c.lifecycle.grafting.ramp_steps = 4;
    c.governor.snapshot_every_steps = 10;
    return c;
}

inline Command make(std::variant<GerminateCommand, TransitionCommand, CullCommand, CancelCommand,
                                 RollbackCommand, SetAlphaScheduleCommand, BatchCommand>
                        body) {
    Command c;
    c.origin = TransitionOrigin::kOperator;
    c.body = std::move(body);
    return c;
}

}  // namespace esper::kasmina::test
