// The CPU step backend (see cpu_backend.h).
#include "kasmina/train/cpu_backend.h"

#include <cmath>
#include <span>

#include "kasmina/dist/distributed.h"

namespace esper::kasmina {

namespace {

bool all_finite(std::span<const float> v) {
    for (float x : v)
        if (!std::isfinite(x)) return false;
    return true;
}

}  // namespace

CpuBackend::CpuBackend(Model& model, SeedManager& seeds, Optimizer& optimizer,
                       const StepBackendOptions& options)
    : model_(model),
      seeds_(seeds),
      optimizer_(optimizer),
      dist_(options.dist),
      views_(size_t(seeds.num_layers())) {}

StepResult CpuBackend::run_step(const Batch& batch, const StepRates&, Telemetry& telemetry) {
    for (int32_t l = 0; l < seeds_.num_layers(); ++l) {
        views_[size_t(l)] = seeds_.view(l, batch.rows);
        seeds_.arenas(l).zero_grads();
    }
    const BatchResult r = model_.train_batch(batch, views_, telemetry.step_accums());
    if (dist_ != nullptr) dist_->reduce_gradients();
    return StepResult{r.loss, r.correct, gradients_finite()};
}

bool CpuBackend::gradients_finite() const {
    bool finite = true;
    for (const ParamRef& p : model_.params()) finite = finite && all_finite(p.grad->span());
    for (int32_t l = 0; l < seeds_.num_layers() && finite; ++l)
        for (int k = 0; k < kNumBlueprintKinds; ++k)
            finite = finite && all_finite(seeds_.arenas(l).all_grads(BlueprintKind(k)));
    return finite;
}

void CpuBackend::commit_step(const StepRates& rates) {
    optimizer_.step_host(rates.lr, rates.ramp);
    optimizer_.step_blueprints(seeds_, rates.blueprint_lr);
}

BatchResult CpuBackend::eval_batch(const Batch& batch) {
    for (int32_t l = 0; l < seeds_.num_layers(); ++l)
        views_[size_t(l)] = seeds_.view(l, batch.rows);
    return model_.eval_batch(batch, views_);
}

}  // namespace esper::kasmina
