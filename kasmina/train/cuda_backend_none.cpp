// The device entry points of a build without CUDA (CMake compiles this file instead of
// cuda_backend.cpp): no device is ever visible, and asking for the CUDA backend is an error.
#include <string>

#include "core/error.h"
#include "kasmina/train/step_backend.h"

namespace esper::kasmina {

int cuda_device_count() { return 0; }

bool cuda_device_available() { return false; }

bool resolve_use_cuda(const std::string& device) {
    if (device == "cuda")
        ESPER_THROW(kUnimplemented, "run.device: cuda: this build has no CUDA (use cpu or auto)");
    return false;
}

std::unique_ptr<StepBackend> make_cuda_backend(const Config&, Model&, SeedManager&, Optimizer&,
                                               const StepBackendOptions&) {
    ESPER_THROW(kUnimplemented, "CUDA backend: this build has no CUDA");
}

}  // namespace esper::kasmina
