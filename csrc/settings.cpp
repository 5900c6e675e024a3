// Run-time settings of the kernels (settings.h) and the op that reports / switches them.
#include "settings.h"

#include <c10/util/Exception.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace dlsa_prod {
namespace {

CudaForward parse_cuda_forward(const std::string& v, const char* source) {
  if (v == "gemm") return CudaForward::kGemm;
  if (v == "tiled") return CudaForward::kTiled;
  TORCH_CHECK(false, "dlsa_prod: ", source, " must be gemm or tiled, got '", v, "'");
}

std::atomic<CudaForward>& cuda_forward_state() {
  static std::atomic<CudaForward> state{[] {
    const char* env = std::getenv("DLSA_PROD_CUDA_FWD");
    return env == nullptr || *env == '\0' ? CudaForward::kGemm : parse_cuda_forward(env, "DLSA_PROD_CUDA_FWD");
  }()};
  return state;
}

std::string select_cuda_forward(std::string select) {
  if (!select.empty()) cuda_forward_state().store(parse_cuda_forward(select, "_cuda_forward(select)"));
  return cuda_forward() == CudaForward::kTiled ? "tiled" : "gemm";
}

}  // namespace

CudaForward cuda_forward() { return cuda_forward_state().load(std::memory_order_relaxed); }

TORCH_LIBRARY_IMPL(dlsa_prod, CompositeExplicitAutograd, m) {
  m.impl("_cuda_forward", &select_cuda_forward);
}

}  // namespace dlsa_prod
