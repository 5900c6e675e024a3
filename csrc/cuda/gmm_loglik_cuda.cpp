// CUDA implementations of the dlsa_prod GMM ops: input checks, allocation, cuBLAS products
// (TF32 off) and launches of the kernels in gmm_kernels.cu.  Built by the host compiler, so
// every error is raised from here rather than from nvcc-compiled code.
//
// Forward, two implementations (DLSA_PROD_CUDA_FWD=gemm|tiled, default gemm, the faster one
// measured on an H100; see README):
//  * gemm: cuBLAS SGEMM with TF32 disabled for the dot products, then one fused row kernel
//    (norms, log-det, optional log_probs write, running max / sum-exp / argmax).
//  * tiled: one kernel computes 64x64 tiles of u.mu over D in registers (SIMT FMA, exact
//    fp32) and fuses the same epilogue per tile; a small kernel merges the K tiles' partials.
//    The B x K matrix is written only when asked.
// Backward: the forward's log_probs (or a GEMM) -> one fused row kernel forming G and its row
// sums -> GEMM G mu -> grad_u = G mu - u rowsum(G).
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

#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../gmm_common.h"
#include "gmm_kernels.h"

namespace dlsa_prod {
namespace {

namespace ck = cuda_kernels;

bool use_tiled_forward() {
  const char* v = std::getenv("DLSA_PROD_CUDA_FWD");
  return v != nullptr && std::strcmp(v, "tiled") == 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_loglik_fwd_cuda(const at::Tensor& u_, const at::Tensor& means_,
                                                                    const std::optional<at::Tensor>& log_det,
                                                                    const std::optional<at::Tensor>& mask,
                                                                    bool return_log_probs) {
  const GMMInputs in = checked_gmm_inputs(u_, means_, log_det, mask);
  const at::Tensor &u = in.u, &means = in.means, &ld = in.log_det, &mk = in.mask;
  const int64_t b = in.b, k = in.k, dim = in.dim;
  TORCH_CHECK(u.is_cuda(), "dlsa_prod::gmm_loglik_fwd (CUDA kernel): u must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(u.device());
  const at::NoTF32Guard ieee_fp32;
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto n_active = mk.defined() ? mk.sum(at::kLong) : at::Tensor();
  auto loglik = at::empty({b}, u.options());
  auto cluster = at::empty({b}, u.options().dtype(at::kLong));
  at::Tensor log_probs = return_log_probs ? at::empty({b, k}, u.options()) : at::empty({0, k}, u.options());
  if (b == 0) return {loglik, cluster, log_probs};
  auto un = at::empty({b}, u.options());
  auto mn = at::empty({k}, u.options());
  const bool tiled = use_tiled_forward();
  at::Tensor dot;
  if (!tiled) {
    dot = return_log_probs ? at::mm_out(log_probs, u, means.t()) : at::mm(u, means.t());
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_fwd_cuda", [&] {
    ck::launch_sq_norms<scalar_t>(u.data_ptr<scalar_t>(), b, means.data_ptr<scalar_t>(), k, dim,
                                  un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), stream);
    const scalar_t c = static_cast<scalar_t>(-0.5 * dim * kLog2Pi);
    const scalar_t* ldp = ld.defined() ? ld.data_ptr<scalar_t>() : nullptr;
    const bool* mp = mk.defined() ? mk.data_ptr<bool>() : nullptr;
    const int64_t* nap = n_active.defined() ? n_active.data_ptr<int64_t>() : nullptr;
    if (tiled) {
      const int64_t tiles = (k + ck::kTile - 1) / ck::kTile;
      auto pm = at::empty({tiles, b}, u.options());
      auto ps = at::empty({tiles, b}, u.options());
      auto pa = at::empty({tiles, b}, u.options().dtype(at::kLong));
      ck::launch_fwd_tiled<scalar_t>(u.data_ptr<scalar_t>(), means.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(),
                                     mn.data_ptr<scalar_t>(), ldp, mp, b, k, dim, c,
                                     return_log_probs ? log_probs.data_ptr<scalar_t>() : nullptr,
                                     pm.data_ptr<scalar_t>(), ps.data_ptr<scalar_t>(), pa.data_ptr<int64_t>(), nap,
                                     loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>(), stream);
    } else {
      ck::launch_fwd_rows<scalar_t>(dot.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), ldp,
                                    mp, b, k, c, return_log_probs, nap, loglik.data_ptr<scalar_t>(),
                                    cluster.data_ptr<int64_t>(), stream);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loglik, cluster, log_probs};
}

std::tuple<at::Tensor, at::Tensor> gmm_loglik_bwd_cuda(const at::Tensor& grad_loglik_,
                                                       const std::optional<at::Tensor>& grad_log_probs,
                                                       const at::Tensor& u_, const at::Tensor& means_,
                                                       const at::Tensor& loglik_,
                                                       const std::optional<at::Tensor>& log_det,
                                                       const std::optional<at::Tensor>& mask,
                                                       const std::optional<at::Tensor>& log_probs) {
  const GMMInputs in = checked_gmm_inputs(u_, means_, log_det, mask);
  const at::Tensor &u = in.u, &means = in.means, &ld = in.log_det, &mk = in.mask;
  const int64_t b = in.b, k = in.k, dim = in.dim;
  check_bwd_inputs(grad_loglik_, grad_log_probs, u_, means_, loglik_, log_probs);
  const c10::cuda::CUDAGuard guard(u.device());
  const at::NoTF32Guard ieee_fp32;
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto gl = grad_loglik_.contiguous();
  const auto ll = loglik_.contiguous();
  const auto glp = present(grad_log_probs) ? grad_log_probs->contiguous() : at::Tensor();
  const auto n_active = mk.defined() ? mk.sum(at::kLong) : at::Tensor();
  const bool from_dot = !present(log_probs);
  at::Tensor src = from_dot ? at::mm(u, means.t()) : log_probs->contiguous();
  at::Tensor g = from_dot ? src : at::empty_like(src);
  auto rowsum = at::empty({b}, u.options());
  if (b == 0) return {at::zeros_like(u), rowsum};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_bwd_cuda", [&] {
    auto un = at::empty({b}, u.options());
    auto mn = at::empty({k}, u.options());
    if (from_dot)
      ck::launch_sq_norms<scalar_t>(u.data_ptr<scalar_t>(), b, means.data_ptr<scalar_t>(), k, dim,
                                    un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), stream);
    ck::launch_bwd_rows<scalar_t>(
        src.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), from_dot, un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
        ld.defined() ? ld.data_ptr<scalar_t>() : nullptr, mk.defined() ? mk.data_ptr<bool>() : nullptr,
        gl.data_ptr<scalar_t>(), glp.defined() ? glp.data_ptr<scalar_t>() : nullptr, ll.data_ptr<scalar_t>(), b, k,
        static_cast<scalar_t>(-0.5 * dim * kLog2Pi), n_active.defined() ? n_active.data_ptr<int64_t>() : nullptr,
        rowsum.data_ptr<scalar_t>(), stream);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto grad_u = at::mm(g, means);
  grad_u.addcmul_(u, rowsum.unsqueeze(1), -1);
  return {grad_u, rowsum};
}

std::tuple<at::Tensor, at::Tensor> filter_split_cuda(const at::Tensor& loglik, double threshold) {
  TORCH_CHECK(loglik.dim() == 1, "dlsa_prod::filter_split: loglik must be 1-D, got shape ", loglik.sizes());
  TORCH_CHECK(loglik.is_floating_point(), "dlsa_prod::filter_split: loglik must be floating point, got ",
              loglik.scalar_type());
  const c10::cuda::CUDAGuard guard(loglik.device());
  const auto keep = loglik >= threshold;
  return {at::nonzero(keep).flatten(), at::nonzero(keep.logical_not()).flatten()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dlsa_prod, CUDA, m) {
  m.impl("gmm_loglik_fwd", &gmm_loglik_fwd_cuda);
  m.impl("gmm_loglik_bwd", &gmm_loglik_bwd_cuda);
  m.impl("filter_split", &filter_split_cuda);
}

}  // namespace dlsa_prod
