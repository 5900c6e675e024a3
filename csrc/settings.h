// Run-time settings of the kernels, each read from the environment once per process.
#pragma once

namespace dlsa_prod {

enum class CudaForward { kGemm, kTiled };

// DLSA_PROD_CUDA_FWD=gemm|tiled (default gemm), read at the first call; the op
// dlsa_prod::_cuda_forward switches it for the whole process.
CudaForward cuda_forward();

}  // namespace dlsa_prod
