// Autograd of dlsa_prod::gmm_loglik_fwd, in C++ (registered for the Autograd key, so every
// device and every caller, Python or libtorch, gets it; no Python runs on the backward path).
//
// Gradients flow to u and log_det from both differentiable outputs (loglik and log_probs);
// cluster is an integer output and never differentiable; the centres are fixed buffers (an
// input `means` that requires grad is refused: the pure-torch path differentiates them).
//
// When a gradient will be needed the forward always materialises the (B, K) log-densities
// (the kernels form them at no extra GEMM), saves them, and the backward (the private op
// dlsa_prod::_gmm_loglik_bwd) reuses them instead of recomputing u.mu.  The caller still gets
// the empty (0, K) tensor it asked for.  With grad mode off, or no input requiring grad, the
// call goes straight to the kernel.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>

#include "dlsa_prod/ops.h"

namespace dlsa_prod {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

GmmFwdResult call_fwd_kernel(const at::Tensor& u, const at::Tensor& means, const std::optional<at::Tensor>& log_det,
                             bool return_log_probs) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return gmm_loglik_fwd(u, means, log_det, return_log_probs);
}

std::optional<at::Tensor> saved_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class GMMLogLikFunction : public torch::autograd::Function<GMMLogLikFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& u, const at::Tensor& means,
                               const std::optional<at::Tensor>& log_det, bool return_log_probs) {
    auto [loglik, cluster, log_probs] = call_fwd_kernel(u, means, log_det, /*return_log_probs=*/true);
    ctx->set_materialize_grads(false);  // an unused output's gradient stays undefined: no (B, K) zeros
    ctx->saved_data["return_log_probs"] = return_log_probs;
    ctx->save_for_backward({u, means, loglik, log_det.value_or(at::Tensor()), log_probs});
    ctx->mark_non_differentiable({cluster});
    // sym sizes: torch.compile / opcheck trace this with symbolic shapes
    at::Tensor returned = return_log_probs ? log_probs : at::empty_symint({0, means.sym_size(0)}, u.options());
    return {loglik, cluster, returned};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &u = saved[0], &means = saved[1], &loglik = saved[2];
    at::Tensor grad_loglik = grads[0].defined() ? grads[0] : at::zeros_like(loglik);
    std::optional<at::Tensor> grad_lp;
    // the (0, K) placeholder returned when log_probs were not asked for carries no gradient
    if (ctx->saved_data["return_log_probs"].toBool() && grads[2].defined()) grad_lp = grads[2];
    auto [grad_u, grad_log_det] =
        detail::gmm_loglik_bwd(grad_loglik, grad_lp, u, means, loglik, saved_optional(saved[3]), saved_optional(saved[4]));
    const bool has_log_det = saved[3].defined();  // saved undefined when the call had none
    return {grad_u, at::Tensor(), has_log_det ? grad_log_det : at::Tensor(), at::Tensor()};
  }
};

GmmFwdResult gmm_loglik_fwd_autograd(const at::Tensor& u, const at::Tensor& means,
                                     const std::optional<at::Tensor>& log_det, bool return_log_probs) {
  const bool ld_grad = log_det.has_value() && log_det->defined() && log_det->requires_grad();
  if (!at::GradMode::is_enabled() || !(u.requires_grad() || ld_grad || means.requires_grad())) {
    return call_fwd_kernel(u, means, log_det, return_log_probs);
  }
  TORCH_CHECK(!means.requires_grad(),
              "dlsa_prod::gmm_loglik_fwd: the centres are fixed buffers and get no gradient here; detach them, "
              "or use dlsa_prod.ops.gmm_loglik(..., backend='torch') for trainable centres");
  auto out = GMMLogLikFunction::apply(u, means, log_det, return_log_probs);
  return {out[0], out[1], out[2]};
}
static_assert(std::is_same_v<decltype(gmm_loglik_fwd_autograd), GmmFwdSignature>);

}  // namespace

TORCH_LIBRARY_IMPL(dlsa_prod, Autograd, m) {
  m.impl("gmm_loglik_fwd", &gmm_loglik_fwd_autograd);
}

}  // namespace dlsa_prod
