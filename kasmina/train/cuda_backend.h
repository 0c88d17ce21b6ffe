// CUDA training backend of kasmina: the model's forward/backward/update of one step on the GPU.
// Host GEMMs through cuBLAS (fp32; TF32 only when asked), seed layers, loss, bias+act and the
// optimizers through the kernels/ launchers. The whole step (batch upload, forward, backward,
// grad norms/clipping, optimizer, telemetry) is captured once into a CUDA graph and replayed;
// it is re-captured only when the set of blueprint slots in use changes (germination, cull).
// The host stays the authority for the lifecycle: sync_structure() mirrors the host seed tables
// with launch_seed_state_update and uploads newly initialised blueprint slots at step boundaries.
// Host-side copies of parameters/optimizer state are refreshed only by download_all() (snapshots,
// checkpoints); blueprint slots in use are refreshed after every step. This header has no CUDA
// types; the class is defined only in CUDA builds (cuda_backend.cpp), so code that calls its
// methods (tests, benchmarks) builds only there. Every handle it holds has an RAII owner
// (cuda_handles.h, NcclComm).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "kasmina/io/config.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/mlp.h"
#include "kasmina/train/optimizer.h"
#include "kasmina/train/step_backend.h"

namespace esper::kasmina {

class NcclComm;

struct CudaBackendOptions {
    int32_t batch = 0;        // training batch (the captured graph's shape)
    int32_t eval_batch = 0;   // largest evaluation batch
    bool seed_layers = true;  // false: bare host network (benchmarks: y = h, no seed kernels)
    bool tf32 = false;        // cuBLAS TF32 tensor-op math for the host GEMMs
    bool use_graphs = true;   // false: enqueue the step directly every time (tests)
    // Seed layers whose seeds cannot change the forward value or the input gradient (none in
    // GRAFTING..FOSSILIZED: y == h, dh == dy exactly) run their kernels (telemetry, TRAINING
    // blueprint grads) on a side stream, off the critical path of the host network.
    bool overlap_dormant = true;
    // Data parallelism over CUDA ranks (world > 1; not owned, must outlive the backend): inside
    // the captured step, between backward and the optimizer, the flat host-parameter gradients
    // and the live blueprint slots' gradients become their mean over ranks (one grouped
    // ncclAllReduce/ncclAvg), and rank 0's gradient sums of squares are broadcast so clipping
    // and finiteness agree bit for bit on every rank. Needs an NCCL build.
    NcclComm* nccl = nullptr;
    // Gradient buckets (data parallelism): consecutive layers in backward order (head first)
    // whose gradients reach about this many bytes form a bucket; its ncclAllReduce is enqueued
    // on a communication stream as soon as the bucket's last layer has its weight gradient
    // (event dependencies inside the captured graph), so it overlaps the earlier layers'
    // backward. Live blueprint slots travel with their layer's bucket. 0: one grouped
    // all-reduce after backward on the step's stream (no overlap).
    static constexpr int64_t kDefaultGradBucketBytes = int64_t{4} << 20;
    int64_t grad_bucket_bytes = kDefaultGradBucketBytes;
    // Records timing events around the gradient all-reduce (benchmarks: last_grad_reduce_ms).
    bool time_grad_reduce = false;
};

class CudaBackend final : public StepBackend {
public:
    // Mirrors `model`'s parameters, `optimizer`'s state and `seeds`' tables/arenas (all must
    // outlive the backend) to the current CUDA device; upload_all() is called here.
    CudaBackend(const Config& config, MlpModel& model, SeedManager* seeds, Optimizer& optimizer,
                const CudaBackendOptions& options);
    ~CudaBackend() override;
    CudaBackend(const CudaBackend&) = delete;
    CudaBackend& operator=(const CudaBackend&) = delete;

    // ---- StepBackend ----
    std::string_view name() const override { return "cuda"; }
    // sync_structure, set_batch, launch_step and finish_step (batch.rows must equal
    // CudaBackendOptions::batch).
    StepResult run_step(const Batch& batch, const StepRates& rates, Telemetry& telemetry) override;
    // The step's update is kept: advances the optimizer's step counters (AdamW bias correction).
    void commit_step(const StepRates& rates) override;
    // sync_structure, then forward + loss of an evaluation batch (uncaptured; syncs).
    BatchResult eval_batch(const Batch& batch) override;
    // Host → device: every parameter, optimizer state, blueprint slots in use, the full seed
    // tables. Used after restores (checkpoint, governor). Syncs.
    void upload_all() override;
    // Device → host: parameters, optimizer state, blueprint slots in use. Syncs.
    void download_all() override;
    CudaBackend* cuda() override { return this; }

    // ---- the step in pieces (benchmarks) and CUDA-only knobs ----
    // Step boundary: mirror seed-table changes (one SeedUpdate per changed seed), upload newly
    // acquired slots, invalidate the graph when the set of live slots changed.
    void sync_structure();
    // Copies the batch (x [batch, in], y [batch]) into the pinned staging buffers.
    void set_batch(const float* x, const int32_t* y);
    // Enqueues one step (graph replay; capture first if needed). lr / bp_lr: this step's rates.
    // Precondition: the previous step finished (finish_step) or used the same rates.
    void launch_step(double lr, double bp_lr);
    // sync-point: waits for the step, copies telemetry (when non-null) and the live slots' grads
    // and params into the host objects; returns loss, correct count, finiteness.
    StepResult finish_step(Telemetry* telemetry);
    // Blocks until all enqueued work is done.
    void synchronize();

    int64_t graph_captures() const;
    void set_use_graphs(bool on);
    // Before the first step (or at a step boundary): see CudaBackendOptions::overlap_dormant.
    void set_overlap_dormant(bool on);
    std::string device_name() const;
    // Bytes the gradient all-reduce moves per step (flat host grads + live slots' grads).
    int64_t grad_reduce_bytes() const;
    // With time_grad_reduce and an NcclComm: the all-reduce time of the last finished step
    // (device events inside the graph: first bucket enqueued → last bucket done), in ms; 0
    // otherwise, -1 when the events gave no time. Call after finish_step.
    double last_grad_reduce_ms() const;
    // As last_grad_reduce_ms, the part not hidden behind backward: end of backward → last
    // bucket done (≥ 0; equal to last_grad_reduce_ms without buckets).
    double last_grad_reduce_exposed_ms() const;
    // Buckets the gradient all-reduce runs in (1 without grad_bucket_bytes; 0 on one rank).
    int32_t grad_buckets() const;

private:
    struct Impl;
    void begin_blueprint_counts();
    void commit_blueprint_counts();
    void copy_optimizer_state(bool to_device);
    std::unique_ptr<Impl> impl_;
};

}  // namespace esper::kasmina
