// Picks the step backend of a run (see step_backend.h).
#include "kasmina/train/step_backend.h"

#include "core/check.h"
#include "core/log.h"
#include "kasmina/train/cpu_backend.h"

namespace esper::kasmina {

namespace {

Logger& backend_log() { return logger("kasmina.trainer"); }

}  // namespace

bool trainer_uses_cuda(const Config& config) {
    // The transformer trains on the GPU only when asked (run.device: cuda): its chunk and LoRA
    // seeds germinate on the CPU only, so `auto` keeps a growing run on the CPU (depth, width and
    // mlp_units / attention_head seeds grow on both).
    if (config.model.kind == ModelKind::kTransformer) {
        if (config.run.device == "cuda") return resolve_use_cuda(config.run.device);
        if (config.run.device == "auto")
            ESPER_LOG_AT(backend_log(), LogLevel::kInfo,
                         "device=cpu (the transformer's chunk and LoRA seeds germinate on the "
                         "CPU only; run.device: cuda trains the host and its mlp_units and "
                         "attention_head seeds on the GPU)");
        return false;
    }
    // Widening (layer-input) blueprints run on both backends (the CUDA one since issue 14); the
    // MLP's mlp_units seeds and their reserved room on the CPU only: `auto` stays there.
    if (config.model.widening_seeds > 0 || config.model.max_extra_units > 0) {
        ESPER_CHECK_INPUT(config.run.device != "cuda",
                          "run.device: cuda does not run the MLP's mlp_units seeds "
                          "(model.widening_seeds, model.max_extra_units) yet; use cpu or auto");
        if (config.run.device == "auto")
            ESPER_LOG_AT(backend_log(), LogLevel::kInfo,
                         "device=cpu (the MLP's mlp_units seeds run on the CPU only)");
        return false;
    }
    return resolve_use_cuda(config.run.device);
}

std::unique_ptr<StepBackend> make_step_backend(const Config& config, Model& model,
                                               SeedManager& seeds, Optimizer& optimizer,
                                               const StepBackendOptions& options) {
    if (trainer_uses_cuda(config))
        return make_cuda_backend(config, model, seeds, optimizer, options);
    return std::make_unique<CpuBackend>(model, seeds, optimizer, options);
}

}  // namespace esper::kasmina
