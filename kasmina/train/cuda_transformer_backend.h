// The transformer host's training step on one GPU (DESIGN §14, issue 13): fp32 master weights,
// activations and optimizer state on the device; GEMMs through cuBLASLt in bf16 on the tensor
// cores with fp32 accumulation (run.precision: bf16, the default) or in fp32 (run.precision:
// fp32, no TF32); LayerNorm, fused causal attention, GELU, embeddings, softmax cross-entropy,
// gradient clipping and the optimizer as kernels/ launchers. The bare host only: germinating a
// seed on it is refused with a one-line reason (germination_refusal), and a host grown by folded
// units or heads (a resumed checkpoint) is refused at construction. Built in CUDA builds only.
// With run.cuda_graph (the default) the step is one CUDA graph per batch shape, captured at the
// shape's second step and replayed after; the host still waits once per step for its loss
// (run_step's contract: the governor and the seed lifecycle read it within the same step).
#pragma once

#include <memory>
#include <string>

#include "kasmina/io/config.h"
#include "kasmina/model/transformer.h"
#include "kasmina/train/optimizer.h"
#include "kasmina/train/step_backend.h"

namespace esper::kasmina {

class CudaTransformerBackend final : public StepBackend {
public:
    // batch / eval_batch: sequences per training / largest evaluation batch.
    CudaTransformerBackend(const Config& config, TransformerModel& model, Optimizer& optimizer,
                           int32_t batch, int32_t eval_batch);
    ~CudaTransformerBackend() override;
    CudaTransformerBackend(const CudaTransformerBackend&) = delete;
    CudaTransformerBackend& operator=(const CudaTransformerBackend&) = delete;

    std::string_view name() const override { return "cuda"; }
    StepResult run_step(const Batch& batch, const StepRates& rates, Telemetry& telemetry) override;
    void commit_step(const StepRates& rates) override;
    BatchResult eval_batch(const Batch& batch) override;
    void upload_all() override;
    void download_all() override;
    std::string germination_refusal() const override;

    // Step graphs captured so far (one per new batch shape; 0 with run.cuda_graph: false).
    int64_t graph_captures() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace esper::kasmina
