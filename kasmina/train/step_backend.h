// StepBackend: where a model's training step runs (DESIGN §4.1) — the CPU (cpu_backend.h, the
// reference) or the GPU (cuda_backend.h). The trainer has one step path over this interface and
// never branches on the device. Convention: host objects (model parameters, optimizer state,
// blueprint arenas) are the state checkpoints and snapshots read; a device backend refreshes them
// in download_all() and reloads them in upload_all(), both no-ops on the CPU.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/command.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/model.h"
#include "kasmina/train/optimizer.h"

namespace esper::kasmina {

class CudaBackend;
class DistributedSync;
class NcclComm;

// This step's learning rates (the schedule applied to optimizer.lr and optimizer.blueprint_lr).
struct StepRates {
    double lr = 0.0;
    double blueprint_lr = 0.0;
    // Host parameters whose rate is lr × ramp.scale this step (Model::host_lr_ramp).
    Model::LrRamp ramp;
};

struct StepResult {
    double loss = 0.0;    // mean over this rank's rows
    int32_t correct = 0;  // this rank's rows predicted right
    bool finite = true;   // loss and every gradient finite
};

class StepBackend {
public:
    virtual ~StepBackend() = default;

    virtual std::string_view name() const = 0;  // "cpu" | "cuda"
    // One step's forward, loss and backward of `batch` at a step boundary: fills `telemetry`'s
    // step accumulators and the live blueprint slots' gradients in the host arenas (the GPU
    // transformer keeps them on the device and records their Σg² with
    // Telemetry::set_blueprint_grad_sq instead); with several ranks the gradients are already
    // their mean over ranks. The CPU stops there; the CUDA backends also run the update (the
    // blueprints' included), which a governor trip then overwrites.
    virtual StepResult run_step(const Batch& batch, const StepRates& rates,
                                Telemetry& telemetry) = 0;
    // The step is kept: the CPU applies the optimizer update; the CUDA backend (update already
    // done) advances the optimizer's step counters.
    virtual void commit_step(const StepRates& rates) = 0;
    // Forward and loss of one evaluation batch (at most StepBackendOptions::eval_batch rows).
    virtual BatchResult eval_batch(const Batch& batch) = 0;
    // Host → device after the host state was restored (checkpoint, governor).
    virtual void upload_all() = 0;
    // Device → host before the host state is read (snapshot, checkpoint, digest).
    virtual void download_all() = 0;
    // The CUDA backend's own knobs (graphs, timings); null on the CPU.
    virtual CudaBackend* cuda() { return nullptr; }
    // Why this germination cannot run on this backend (one line), or empty when it can.
    virtual std::string germination_refusal(const GerminateCommand& /*g*/) const { return {}; }
};

struct StepBackendOptions {
    int32_t batch = 0;       // training rows per step
    int32_t eval_batch = 0;  // largest evaluation batch
    int world = 1;           // ranks of the data-parallel run
    // world > 1: host gradients are averaged over the ranks' Gloo collectives (CPU; not owned).
    DistributedSync* dist = nullptr;
    // world > 1 on CUDA: device gradients are averaged over NCCL inside the step (not owned).
    NcclComm* nccl = nullptr;
    // Benchmarks: CUDA events around the gradient all-reduce (CudaBackend::last_grad_reduce_ms).
    bool time_grad_reduce = false;
    // CUDA data parallelism: CudaBackendOptions::grad_bucket_bytes (< 0: its default).
    int64_t grad_bucket_bytes = -1;
};

// Whether a run of this config trains on the GPU: run.device resolved as resolve_use_cuda does;
// under `auto` a transformer whose config the GPU step cannot fully run (transformer_gpu_gap)
// stays on the CPU.
bool trainer_uses_cuda(const Config& config);

// Why the GPU transformer step would refuse part of what this config can grow or train (the
// attention's head dimension, the bf16 operands' multiples of 8), or empty: it runs all of it.
std::string transformer_gpu_gap(const Config& config);

// The backend trainer_uses_cuda(config) picks, over `model`, `seeds` and `optimizer` (all must
// outlive it). Throws esper::Error when CUDA is asked for and cannot be had.
std::unique_ptr<StepBackend> make_step_backend(const Config& config, Model& model,
                                               SeedManager& seeds, Optimizer& optimizer,
                                               const StepBackendOptions& options);

// ---- devices (defined by cuda_backend.cpp, or cuda_backend_none.cpp without CUDA) ----

// Devices this process can see (0 without CUDA or without a device).
int cuda_device_count();
// True when this build has CUDA and a device is visible.
bool cuda_device_available();
// run.device → use CUDA? auto = CUDA when available; cuda without a device throws esper::Error.
bool resolve_use_cuda(const std::string& device);
// The CUDA backend over an MLP (throws esper::Error in a build without CUDA).
std::unique_ptr<StepBackend> make_cuda_backend(const Config& config, Model& model,
                                               SeedManager& seeds, Optimizer& optimizer,
                                               const StepBackendOptions& options);

}  // namespace esper::kasmina
