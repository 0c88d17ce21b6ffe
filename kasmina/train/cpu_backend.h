// The CPU step backend (the reference every other backend is tested against): the model's
// forward/backward through OpenBLAS and the kernels/ CPU references, then, when the step is
// kept, the host optimizer. With several ranks the host gradients are averaged over Gloo
// (DistributedSync's buckets) right after backward.
#pragma once

#include <vector>

#include "kasmina/train/step_backend.h"
#include "kernels/seed_layer.h"

namespace esper::kasmina {

class CpuBackend final : public StepBackend {
public:
    // `model`, `seeds`, `optimizer` and options.dist (when set) must outlive the backend.
    CpuBackend(Model& model, SeedManager& seeds, Optimizer& optimizer,
               const StepBackendOptions& options);

    std::string_view name() const override { return "cpu"; }
    StepResult run_step(const Batch& batch, const StepRates& rates, Telemetry& telemetry) override;
    void commit_step(const StepRates& rates) override;
    BatchResult eval_batch(const Batch& batch) override;
    void upload_all() override {}
    void download_all() override {}

private:
    bool gradients_finite() const;

    Model& model_;
    SeedManager& seeds_;
    Optimizer& optimizer_;
    DistributedSync* dist_;
    std::vector<kernels::SeedLayerView> views_;
};

}  // namespace esper::kasmina
