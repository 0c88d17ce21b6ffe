// Softmax cross-entropy with accuracy over a batch of logits: mean loss, ∂loss/∂logits (already
// divided by the batch) and the number of rows whose first arg-max equals the label.
// Labels must lie in [0, classes); that is the caller's precondition (checked where data loads).
#pragma once

#include <cstdint>

#if ESPER_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace esper::kernels {

// logits, dlogits: [batch, classes] row-major; labels: [batch]. Writes *loss (mean over rows),
// dlogits (may alias logits) and *correct. The reference accumulates in double.
void softmax_xent_reference(const float* logits, const int32_t* labels, int32_t batch,
                            int32_t classes, float* loss, float* dlogits, int32_t* correct);

#if ESPER_HAVE_CUDA
// Device pointers. loss: one float, correct: one int32, both overwritten (no memset needed).
// Workspace: softmax_xent_workspace_bytes(batch) bytes of device memory, contents irrelevant.
size_t softmax_xent_workspace_bytes(int32_t batch);
[[nodiscard]] cudaError_t launch_softmax_xent(const float* logits, const int32_t* labels,
                                              int32_t batch, int32_t classes, float* loss,
                                              float* dlogits, int32_t* correct, void* workspace,
                                              size_t workspace_bytes, cudaStream_t stream);
#endif

}  // namespace esper::kernels
