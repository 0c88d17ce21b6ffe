// Converters from C-library status codes to esper::Error, used at the call site:
//   ESPER_CUDA_CHECK(cudaMemcpyAsync(...));  ESPER_NCCL_CHECK(ncclAllReduce(...));
// Header-only and templated on the status type so that core/ itself never links CUDA.
#pragma once

#include "core/error.h"

namespace esper::detail {
template <typename Status, typename ToString>
inline void check_status(Status status, Status ok, ToString to_string, const char* lib,
                         const char* expr, const char* func, const char* file, int line) {
    if (status == ok) [[likely]]
        return;
    throw ::esper::Error(::esper::ErrorKind::kFailed,
                         concat(lib, " error ", static_cast<int>(status), " (", to_string(status),
                                ") in ", func, ": ", expr),
                         file, line);
}
}  // namespace esper::detail

#define ESPER_CUDA_CHECK(expr)                                                            \
    ::esper::detail::check_status((expr), cudaSuccess, cudaGetErrorString, "CUDA", #expr, \
                                  __func__, __FILE__, __LINE__)
#define ESPER_CUBLAS_CHECK(expr)                                                                  \
    ::esper::detail::check_status((expr), CUBLAS_STATUS_SUCCESS, cublasGetStatusString, "cuBLAS", \
                                  #expr, __func__, __FILE__, __LINE__)
#define ESPER_NCCL_CHECK(expr)                                                            \
    ::esper::detail::check_status((expr), ncclSuccess, ncclGetErrorString, "NCCL", #expr, \
                                  __func__, __FILE__, __LINE__)
