// CUDA implementations of the dlsa_prod GMM ops: input checks, allocation, cuBLAS products
// (TF32 off) and launches of the kernels in gmm_kernels.cu.  Built by the host compiler, so
// every error is raised from here rather than from nvcc-compiled code.
//
// Forward, two implementations (settings.h: DLSA_PROD_CUDA_FWD=gemm|tiled read once, default
// gemm, the faster one measured on an H200; see docs/kernels.md):
//  * gemm: cuBLAS SGEMM with TF32 disabled for the dot products, then one fused row kernel
//    (norms, log-det, optional log_probs write, running max / sum-exp / argmax).
//  * tiled: one kernel computes 64x64 tiles of u.mu over D in registers (SIMT FMA, exact
//    fp32) and fuses the same epilogue per tile; a small kernel merges the K tiles' partials.
//    The B x K matrix is written only when asked.
// Backward, as the CPU kernel: the forward's log_probs (or a GEMM) -> one fused row kernel
// forming G, its row sums and grad_u = -rowsum(G) u -> grad_u += G mu (one GEMM, beta = 1).
//
// TF32: each op holds an at::NoTF32Guard (thread-local: it also covers the backward that
// the autograd engine runs on its device thread), so cuBLAS runs these products in IEEE fp32
// whatever the global TF32 setting; the tiled forward never uses TF32 at all.  (The global
// flag is never flipped: that would race with other threads, and mixing torch's legacy and
// new TF32 APIs raises.)
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>
#include <type_traits>

#include "../gmm_common.h"
#include "../settings.h"
#include "gmm_kernels.h"

namespace dlsa_prod {
namespace {

namespace ck = cuda_kernels;

GmmFwdResult gmm_loglik_fwd_cuda(const at::Tensor& u_, const at::Tensor& means_,
                                 const std::optional<at::Tensor>& log_det, bool return_log_probs) {
  const GMMInputs in = checked_gmm_inputs(u_, means_, log_det);
  const at::Tensor &u = in.u, &means = in.means, &ld = in.log_det;
  const int64_t b = in.b, k = in.k, dim = in.dim;
  TORCH_CHECK(u.is_cuda(), "dlsa_prod::gmm_loglik_fwd (CUDA kernel): u must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(u.device());
  const at::NoTF32Guard ieee_fp32;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto loglik = at::empty({b}, u.options());
  auto cluster = at::empty({b}, u.options().dtype(at::kLong));
  at::Tensor log_probs = return_log_probs ? at::empty({b, k}, u.options()) : at::empty({0, k}, u.options());
  if (b == 0) return {loglik, cluster, log_probs};
  auto un = at::empty({b}, u.options());
  auto mn = at::empty({k}, u.options());
  const bool tiled = cuda_forward() == CudaForward::kTiled;
  at::Tensor dot;
  if (!tiled) {
    dot = return_log_probs ? at::mm_out(log_probs, u, means.t()) : at::mm(u, means.t());
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_fwd_cuda", [&] {
    ck::launch_sq_norms<scalar_t>(u.data_ptr<scalar_t>(), b, means.data_ptr<scalar_t>(), k, dim,
                                  un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), stream);
    const scalar_t c = static_cast<scalar_t>(-0.5 * dim * kLog2Pi);
    const scalar_t log_k = static_cast<scalar_t>(in.log_k());
    if (tiled) {
      const int64_t tiles = (k + ck::kTile - 1) / ck::kTile;
      auto pm = at::empty({tiles, b}, u.options());
      auto ps = at::empty({tiles, b}, u.options());
      auto pa = at::empty({tiles, b}, u.options().dtype(at::kLong));
      ck::launch_fwd_tiled<scalar_t>(u.data_ptr<scalar_t>(), means.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(),
                                     mn.data_ptr<scalar_t>(), optional_ptr<scalar_t>(ld), b, k, dim, c, log_k,
                                     return_log_probs ? log_probs.data_ptr<scalar_t>() : nullptr,
                                     pm.data_ptr<scalar_t>(), ps.data_ptr<scalar_t>(), pa.data_ptr<int64_t>(),
                                     loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>(), stream);
    } else {
      ck::launch_fwd_rows<scalar_t>(dot.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
                                    optional_ptr<scalar_t>(ld), b, k, c, log_k, return_log_probs,
                                    loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>(), stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loglik, cluster, log_probs};
}
static_assert(std::is_same_v<decltype(gmm_loglik_fwd_cuda), GmmFwdSignature>);

GmmBwdResult gmm_loglik_bwd_cuda(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                                 const at::Tensor& u_, const at::Tensor& means_, const at::Tensor& loglik,
                                 const std::optional<at::Tensor>& log_det,
                                 const std::optional<at::Tensor>& log_probs) {
  const GMMBwdInputs in = checked_bwd_inputs(grad_loglik, grad_log_probs, u_, means_, loglik, log_det, log_probs);
  const at::Tensor &u = in.fwd.u, &means = in.fwd.means, &ld = in.fwd.log_det;
  const int64_t b = in.fwd.b, k = in.fwd.k, dim = in.fwd.dim;
  const c10::cuda::CUDAGuard guard(u.device());
  const at::NoTF32Guard ieee_fp32;
  auto stream = at::cuda::getCurrentCUDAStream();
  auto rowsum = at::empty({b}, u.options());
  if (b == 0) return {at::zeros_like(u), rowsum};
  const bool from_dot = !in.log_probs.defined();
  at::Tensor src = from_dot ? at::mm(u, means.t()) : in.log_probs;
  at::Tensor g = from_dot ? src : at::empty_like(src);
  auto grad_u = at::empty({b, dim}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_bwd_cuda", [&] {
    auto un = at::empty({b}, u.options());
    auto mn = at::empty({k}, u.options());
    if (from_dot)
      ck::launch_sq_norms<scalar_t>(u.data_ptr<scalar_t>(), b, means.data_ptr<scalar_t>(), k, dim,
                                    un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), stream);
    ck::launch_bwd_rows<scalar_t>(
        src.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), from_dot, un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
        optional_ptr<scalar_t>(ld), in.grad_loglik.data_ptr<scalar_t>(), optional_ptr<scalar_t>(in.grad_log_probs),
        in.loglik.data_ptr<scalar_t>(), u.data_ptr<scalar_t>(), b, k, dim,
        static_cast<scalar_t>(-0.5 * dim * kLog2Pi), static_cast<scalar_t>(in.fwd.log_k()),
        rowsum.data_ptr<scalar_t>(), grad_u.data_ptr<scalar_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  grad_u.addmm_(g, means);  // grad_u = G mu - u rowsum(G), one cuBLAS call with beta = 1
  return {grad_u, rowsum};
}
static_assert(std::is_same_v<decltype(gmm_loglik_bwd_cuda), GmmBwdSignature>);

FilterSplitResult filter_split_cuda(const at::Tensor& loglik, double threshold) {
  check_filter_split_input(loglik);
  const c10::cuda::CUDAGuard guard(loglik.device());
  const auto keep = loglik >= threshold;
  return {at::nonzero(keep).flatten(), at::nonzero(keep.logical_not()).flatten()};
}
static_assert(std::is_same_v<decltype(filter_split_cuda), FilterSplitSignature>);

}  // namespace

TORCH_LIBRARY_IMPL(dlsa_prod, CUDA, m) {
  m.impl("gmm_loglik_fwd", &gmm_loglik_fwd_cuda);
  m.impl("_gmm_loglik_bwd", &gmm_loglik_bwd_cuda);
  m.impl("filter_split", &filter_split_cuda);
}

}  // namespace dlsa_prod
