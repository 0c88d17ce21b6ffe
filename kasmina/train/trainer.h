// Trainer: the training step of a run. Owns data, model, seed manager, optimizer, telemetry,
// governor and the step backend (CPU or CUDA, step_backend.h); step() runs one optimizer step
// (forward, loss, backward, vitals, update, lifecycle step end) on one path whatever the device,
// evaluate() the test split. The agents own the loop (agents/kasmina_main.cpp, kasmina_bus.cpp):
//   while (!trainer.done()) { apply commands; if (!trainer.boundary()) break;
//                             trainer.step(); act on trainer.after_step(); }
// and call apply(command) only between steps. Step numbers: a checkpoint at step N and the metrics
// line "step": N are taken after N optimizer steps. Writes `metrics.jsonl` and `events.jsonl` under
// run_dir when set.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/clock.h"
#include "kasmina/io/checkpoint.h"
#include "kasmina/io/config.h"
#include "kasmina/io/event_log.h"
#include "kasmina/io/metrics_log.h"
#include "kasmina/lifecycle/command.h"
#include "kasmina/lifecycle/governor.h"
#include "kasmina/lifecycle/seed_manager.h"
#include "kasmina/lifecycle/telemetry.h"
#include "kasmina/model/model.h"
#include "kasmina/train/data.h"
#include "kasmina/train/optimizer.h"
#include "kasmina/train/step_backend.h"
#include "kasmina/train/train_data.h"

namespace esper::kasmina {

class CudaBackend;
class Collectives;
class DistributedSync;
class NcclComm;

struct TrainStep {
    int64_t step = 0;   // optimizer steps done after this one (1-based)
    int64_t epoch = 0;  // epoch the batch came from (0-based)
    double loss = 0.0;
    double lr = 0.0;
    int32_t correct = 0;
    double samples_per_s = 0.0;
    bool governor_tripped = false;
};

struct EvalResult {
    int64_t step = 0;
    int64_t epoch = 0;
    double loss = 0.0;      // mean over the evaluation rows (text: nats per byte)
    double accuracy = 0.0;  // rows predicted right (text: next bytes)
    int64_t samples = 0;
    // Text (data.dataset: text): loss / ln 2 and exp(loss); absent for other data.
    std::optional<double> bits_per_byte, perplexity;
};

struct EpochSummary {
    int64_t epoch = 0;  // 1-based epochs completed
    int64_t step = 0;
    double train_loss = 0.0;  // mean over the epoch's steps
    EvalResult test;
    double seconds = 0.0;
    int64_t active_seeds = 0;  // seeds holding a blueprint (GERMINATED..FOSSILIZED)
    int64_t param_count = 0;   // host + live blueprints
};

// What became due after a step (Trainer::after_step); the agent loop acts on it.
struct StepReport {
    // Every run.telemetry_interval_steps: the window's per-seed records (the bus agent publishes
    // them; collecting closes the window).
    std::optional<std::vector<SeedTelemetryRecord>> telemetry;
    // At an epoch end and every run.eval_every_steps: the test split (already in metrics.jsonl).
    std::optional<EvalResult> eval;
    // At an epoch end (the last step ends one too).
    std::optional<EpochSummary> epoch;
    // Every run.checkpoint_every_steps with a run_dir: the checkpoint just written.
    std::optional<std::filesystem::path> checkpoint;
};

struct TrainerOptions {
    std::string run_dir;  // "" = no files
    int rank = 0;
    int world = 1;
    // world > 1: the collectives of this rank's group (not owned, must outlive the Trainer).
    // Gradients, step telemetry, loss and correct are combined over ranks, rank 0's seed state
    // is replicated at boundary(), digests compared (kasmina/distributed.h). Only
    // rank 0 writes run_dir files (metrics, events, checkpoints); the others write nothing.
    Collectives* collectives = nullptr;
    // world > 1 with run.device resolving to CUDA: this rank's NCCL communicator (not owned),
    // made on the device this rank trains on (cudaSetDevice(local_rank) before the Trainer).
    // The CUDA backend averages the device gradients with it inside the captured step; the
    // host-side work above (seed state, digests, loss and telemetry) stays on `collectives`.
    NcclComm* nccl = nullptr;
    // world > 1: the boundary's {seed state changed, stop} flags ride on the step's statistics
    // all-reduce (no collective of their own); commands then take effect one boundary later on
    // every rank. false: a flag all-reduce per boundary, commands at once (benchmarks compare).
    bool fold_sync_flags = true;
    // Benchmarks: CudaBackendOptions::time_grad_reduce (cuda()->last_grad_reduce_ms()).
    bool time_grad_reduce = false;
    // CUDA data parallelism: CudaBackendOptions::grad_bucket_bytes (< 0: its default; 0: one
    // all-reduce after backward, no overlap).
    int64_t grad_bucket_bytes = -1;
    int64_t eval_batch = 1000;
};

class Trainer {
public:
    Trainer(const Config& config, TrainerOptions options = {});
    // Tests: supply the data instead of loading config.data.
    Trainer(const Config& config, DataSplits data, TrainerOptions options = {});
    Trainer(const Config& config, std::unique_ptr<TrainData> data, TrainerOptions options = {});
    ~Trainer();
    Trainer(const Trainer&) = delete;
    Trainer& operator=(const Trainer&) = delete;

    const Config& config() const { return config_; }
    const TrainData& data() const { return *data_; }
    TrainData& data() { return *data_; }
    int64_t steps_done() const { return step_; }
    int64_t steps_per_epoch() const { return data_->steps_per_epoch(); }
    int64_t total_steps() const { return total_steps_; }
    bool done() const { return step_ >= total_steps_; }
    // The loop stops at the next boundary() (SIGINT/SIGTERM in the agents).
    void request_stop() { stop_requested_ = true; }
    bool stop_requested() const { return stop_requested_; }
    // The newest step() and evaluate() results (step 0 / empty before the first).
    const TrainStep& last_step() const { return last_step_; }
    const EvalResult& last_eval() const { return last_eval_; }

    // The step boundary, after this rank's commands were applied; every rank calls it before
    // each step. With world > 1 it replicates rank 0's seed state (DistributedSync::
    // sync_boundary) and agrees on stopping. Returns false when the run stops here: a stop was
    // requested on this rank or, with world > 1, on any rank (with fold_sync_flags, one
    // boundary after the request, on every rank at the same one).
    bool boundary();
    TrainStep step();
    // After each step, on every rank: the digest comparison (world > 1; the device state is
    // downloaded first), then whatever became due — telemetry, an evaluation written to
    // metrics.jsonl, an epoch summary, a checkpoint into run_dir/checkpoints/<step>.
    StepReport after_step();
    EvalResult evaluate();
    // A lifecycle command, between steps. world > 1 with fold_sync_flags: the outcome is that of
    // applying it now (tried on a scratch copy); rank 0 applies it on every rank at the next
    // boundary (DistributedSync::submit). Otherwise applied at once.
    Outcome apply(const Command& command);
    std::vector<SeedTelemetryRecord> collect_telemetry();

    // faults.checkpoint_crash_after_files makes it throw midway (test-only).
    void save_checkpoint(const std::filesystem::path& dir);
    // Restores everything a bit-identical continuation needs; throws on integrity/shape errors.
    void load_checkpoint(const std::filesystem::path& dir);

    Model& model() { return *model_; }
    SeedManager& seeds() { return *seeds_; }
    const Governor& governor() const { return governor_; }
    // run.device resolved at construction (make_step_backend). On CUDA, model() parameters and
    // optimizer state on the host are refreshed only at snapshots and checkpoints; blueprint
    // slots in use after every step.
    StepBackend& backend() { return *backend_; }
    // The CUDA backend's own knobs (kasmina/train/cuda_backend.h), null on the CPU.
    CudaBackend* cuda() { return backend_->cuda(); }
    // The data-parallel glue when world > 1 (null otherwise).
    DistributedSync* distributed() { return dist_.get(); }
    // Host + live blueprint parameters.
    int64_t param_count() const;

private:
    void init();
    void init_distributed();
    bool stop_requested_ = false;
    TrainStep last_step_;
    EvalResult last_eval_;
    void capture(CheckpointData& out) const;
    // FOSSILIZED widening seeds become host parameters (Model::fold_widening) and give their
    // arena slot back; true when any did.
    bool fold_fossils();
    // blueprints.init other than random, for the seeds germinated since the last step: split —
    // a layer-input residual_mlp seed's hidden units on an MLP start as copies of its chunk's
    // host units; gradmax — an mlp_units seed's first units start along the directions where
    // their zero output weights get the largest gradient (kasmina/model/gradmax.h).
    void init_germinated();
    void split_units(int32_t layer, int32_t seed);
    void gradmax_units(int32_t layer, int32_t seed);
    // Training batches (from the current step's on) that GradMax's gradient is summed over.
    static constexpr int64_t kGradmaxBatches = 4;
    // lifecycle.contribution: ablation, at the last step `step` of each telemetry window (after
    // the update): per seed that blends its output in, the loss of the training batches of steps
    // step − ablation_batches + 1 … step without it minus the loss with it (an evaluation forward
    // each), averaged over the batches and ranks, into the step's telemetry
    // (Telemetry::set_ablated). Returns the forwards it ran, in batches of the step's size.
    int64_t measure_ablation(int64_t step);
    // Restores parameters/optimizer/arenas (and, when `with_seeds`, seed tables and step).
    void restore(const CheckpointData& in, bool with_seeds);

    Config config_;
    TrainerOptions options_;
    std::unique_ptr<TrainData> data_;
    std::unique_ptr<Model> model_;
    std::unique_ptr<EventLog> events_;
    std::unique_ptr<SeedManager> seeds_;
    std::unique_ptr<Optimizer> optimizer_;
    std::unique_ptr<Telemetry> telemetry_;
    Governor governor_;
    std::unique_ptr<DistributedSync> dist_;
    std::unique_ptr<StepBackend> backend_;  // after what it refers to: destroyed first
    int64_t total_steps_ = 0;
    int64_t step_ = 0;
    CheckpointData last_good_;
    SeedManagerSnapshot last_good_seeds_;
    std::unique_ptr<MetricsLog> metrics_;  // metrics.jsonl (rank 0 with a run_dir)
    double epoch_loss_sum_ = 0.0;
    int64_t epoch_loss_steps_ = 0;
    Stopwatch epoch_clock_;  // from the first boundary() or the last epoch end
    bool loop_started_ = false;
};

}  // namespace esper::kasmina
