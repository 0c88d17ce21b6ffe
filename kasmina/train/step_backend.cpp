// Picks the step backend of a run (see step_backend.h).
#include "kasmina/train/step_backend.h"

#include "core/check.h"
#include "core/log.h"
#include "kasmina/train/cpu_backend.h"

namespace esper::kasmina {

namespace {

Logger& backend_log() { return logger("kasmina.trainer"); }

}  // namespace

std::string transformer_gpu_gap(const Config& config) {
    const TransformerConfig& t = config.model.transformer;
    const int64_t head_dim = t.n_head > 0 ? t.d_model / t.n_head : 0;
    if (head_dim != 32 && head_dim != 64 && head_dim != 128)
        return "its head dimension d_model / n_head = " + std::to_string(head_dim) +
               " is not 32, 64 or 128 (the fused attention kernels)";
    if (t.d_model % 8 != 0) return "model.transformer.d_model is not a multiple of 8";
    if (t.widening_seeds <= 0) return {};
    const BlueprintsConfig& b = config.blueprints;
    if (b.mlp_units.units % 8 != 0 || t.max_extra_units % 8 != 0)
        return "blueprints.mlp_units.units and model.transformer.max_extra_units are not both "
               "multiples of 8 (the GPU computes units in groups of 8)";
    if (b.lora.rank > 4 * t.d_model) return "blueprints.lora.rank exceeds 4·d_model";
    if (config.run.precision != "fp32" && b.lora.rank % 8 != 0)
        return "blueprints.lora.rank " + std::to_string(b.lora.rank) +
               " is not a multiple of 8, which the GPU's bf16 adapters need";
    return {};
}

bool trainer_uses_cuda(const Config& config) {
    // The transformer goes to a visible GPU under `auto` when the GPU step runs every seed this
    // config can germinate; else `auto` keeps it on the CPU and says why.
    if (config.model.kind == ModelKind::kTransformer) {
        if (config.run.device != "auto") return resolve_use_cuda(config.run.device);
        if (!resolve_use_cuda("auto")) return false;
        const std::string gap = transformer_gpu_gap(config);
        if (gap.empty()) return true;
        ESPER_LOG_AT(backend_log(), LogLevel::kInfo, "device=cpu (", gap,
                     "; run.device: cuda trains there and refuses what it cannot run)");
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
