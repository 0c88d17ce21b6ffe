// The GPU decoder of a build without CUDA (CMake compiles this file instead of
// cuda_generate.cpp): constructing one is an error; TextGenerator never asks for it here.
#include "core/error.h"
#include "kasmina/train/cuda_generate.h"

namespace esper::kasmina {

struct CudaDecoder::Impl {
    CudaDecodeStats stats;
};

CudaDecoder::CudaDecoder(const TransformerModel&, int32_t, CudaDecodePath) {
    ESPER_THROW(kUnimplemented, "GPU generation: this build has no CUDA");
}
CudaDecoder::~CudaDecoder() = default;
int32_t CudaDecoder::batch() const { return 0; }
std::vector<Generated> CudaDecoder::generate(std::span<const uint8_t>, const GenerateOptions&) {
    return {};
}
const CudaDecodeStats& CudaDecoder::last_stats() const { return impl_->stats; }

}  // namespace esper::kasmina
