// The transformer host's training step on one GPU per rank (DESIGN §14, issue 13): fp32 master
// weights, activations and optimizer state on the device; GEMMs through cuBLASLt in bf16 on the
// tensor cores with fp32 accumulation (run.precision: bf16, the default) or in fp32
// (run.precision: fp32, no TF32); LayerNorm, fused causal attention, GELU, embeddings, softmax
// cross-entropy, gradient clipping and the optimizer as kernels/ launchers. Every seed kind
// germinates on it: widening seeds (mlp_units, attention_head, lora) and chunk seeds
// (residual_mlp, lowrank, scale_shift: the fused seed-layer kernels over the MLP hidden, in fp32,
// while one of a site's seeds runs). With a SeedManager attached, a live seed's
// arena slot (parameters and optimizer state) stays in a device mirror past the host parameters
// from the step it starts running, computed with the CPU host's stage rules and stepped by the
// blueprint optimizer on the device; the trained parameters, each seed's gradient Σg² and the
// telemetry sums come back every step, the optimizer moments in download_all (upload_all takes
// the host arenas as the state again). A step with live seeds runs uncaptured. Germinating a
// LoRA seed of a rank that is not a multiple of 8 in bf16, or mlp_units not in groups of 8, is
// refused with a one-line reason (germination_refusal). The host's
// reserved room trains on it: extra units and heads in use (folded seeds, a resumed checkpoint,
// model.transformer.initial_extra_units/heads) run as the CPU host runs them, and upload_all()
// takes a change of them into the step. Depth grows
// on it (model.transformer.grow_depth): the flat buffers hold the waiting blocks from the start,
// and upload_all() after TransformerModel::grow_host takes the new blocks into the step (the
// activations, buckets and graphs follow). Built in CUDA builds only. With run.cuda_graph (the
// default) the step is one CUDA graph per batch shape, captured at the shape's second step and
// replayed after; the host still waits once per step for its loss (run_step's contract: the
// governor and the seed lifecycle read it within the same step). Data parallelism (world > 1, an
// NcclComm per rank): inside the step, every gradient becomes its mean over the ranks in buckets of
// whole blocks, each all-reduced on a communication stream as soon as backward has finished its
// blocks, overlapping the earlier blocks' backward; the embeddings' bucket follows the embedding
// backward. Rank 0's gradient sum of squares is broadcast, so clipping and finiteness agree bit for
// bit and the ranks' parameters stay equal.
#pragma once

#include <memory>
#include <string>

#include "kasmina/io/config.h"
#include "kasmina/model/transformer.h"
#include "kasmina/train/optimizer.h"
#include "kasmina/train/step_backend.h"

namespace esper::kasmina {

class NcclComm;

class CudaTransformerBackend final : public StepBackend {
public:
    // batch / eval_batch: rows per training / largest evaluation batch. nccl: the rank's
    // communicator when world > 1 (not owned, must outlive the backend; needs an NCCL build).
    // grad_bucket_bytes: consecutive blocks in backward order (the last first, with the final
    // LayerNorm and an untied head) form a bucket once their gradients reach this many bytes;
    // 0: one all-reduce of every gradient after backward (no overlap); < 0: the default
    // (CudaBackendOptions::kDefaultGradBucketBytes). seeds: the trainer's seed manager (not owned,
    // must outlive the backend), or null for a bare host (germinations then refused).
    CudaTransformerBackend(const Config& config, TransformerModel& model, Optimizer& optimizer,
                           int32_t batch, int32_t eval_batch, NcclComm* nccl = nullptr,
                           int64_t grad_bucket_bytes = -1, SeedManager* seeds = nullptr);
    ~CudaTransformerBackend() override;
    CudaTransformerBackend(const CudaTransformerBackend&) = delete;
    CudaTransformerBackend& operator=(const CudaTransformerBackend&) = delete;

    std::string_view name() const override { return "cuda"; }
    StepResult run_step(const Batch& batch, const StepRates& rates, Telemetry& telemetry) override;
    void commit_step(const StepRates& rates) override;
    BatchResult eval_batch(const Batch& batch) override;
    void upload_all() override;
    void download_all() override;
    std::string germination_refusal(const GerminateCommand& g) const override;

    // Step graphs captured so far (one per new batch shape; 0 with run.cuda_graph: false).
    int64_t graph_captures() const;
    // Gradient buckets all-reduced during backward (0 on one rank or without buckets).
    int32_t grad_buckets() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace esper::kasmina
