// Public C++ interface of the dlsa_prod ops: their typed signatures and callers through the
// dispatcher (every backend, autograd included).  Link the library that registers them
// (the Python extension dlsa_prod._C, or libdlsa_prod_ops built by CMakeLists.txt) and
// include <dlsa_prod/ops.h>.
//
// The schemas these signatures mirror are registered in csrc/ops.cpp; each kernel checks its
// own signature against the aliases below at compile time, so they cannot drift apart.
//
// The model: K fixed centres mu (K x D), identity covariance, uniform weights.  For latents u
// (B x D) and an optional per-sample log|det J| (B):
//   log p_k(u) = -D/2 log(2 pi) - 0.5 |u|^2 + u.mu_k - 0.5 |mu_k|^2 + log_det          (B x K)
//   loglik     = logsumexp_k log p_k - log K,        cluster = first argmax_k log p_k
// Non-finite rows (identical on the CPU and CUDA kernels and the pure-torch path):
//   * loglik is NaN when any log p_k of the row is NaN or +inf (or the sum overflows);
//   * loglik is -inf when every log p_k of the row is -inf (e.g. |u|^2 overflows);
//   * whenever loglik is not finite, cluster is 0.  cluster is always in [0, K).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <tuple>

namespace dlsa_prod {

// ---------------------------------------------------------------------------- signatures
// gmm_loglik_fwd(u, means, log_det?, return_log_probs) -> (loglik (B), cluster (B, int64),
// log_probs (B, K) when return_log_probs, else an empty (0, K) tensor).  Differentiable in u
// and log_det (through loglik and log_probs); means are fixed buffers (no gradient).
using GmmFwdResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using GmmFwdSignature = GmmFwdResult(const at::Tensor& u, const at::Tensor& means,
                                     const std::optional<at::Tensor>& log_det, bool return_log_probs);

// _gmm_loglik_bwd (private: the autograd's backward) -> (grad_u (B, D), grad_log_det (B)).
// log_probs: the forward's (B, K) output when it was materialised (saves a GEMM), else None.
using GmmBwdResult = std::tuple<at::Tensor, at::Tensor>;
using GmmBwdSignature = GmmBwdResult(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                                     const at::Tensor& u, const at::Tensor& means, const at::Tensor& loglik,
                                     const std::optional<at::Tensor>& log_det,
                                     const std::optional<at::Tensor>& log_probs);

// filter_split(loglik, threshold) -> (indices with loglik >= threshold, the rest), both
// ascending; NaN goes to the rest.
using FilterSplitResult = std::tuple<at::Tensor, at::Tensor>;
using FilterSplitSignature = FilterSplitResult(const at::Tensor& loglik, double threshold);

// ---------------------------------------------------------------------------- callers
inline GmmFwdResult gmm_loglik_fwd(const at::Tensor& u, const at::Tensor& means,
                                   const std::optional<at::Tensor>& log_det = std::nullopt,
                                   bool return_log_probs = false) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::gmm_loglik_fwd", "").typed<GmmFwdSignature>();
  return op.call(u, means, log_det, return_log_probs);
}

namespace detail {  // the private backward op: for the autograd (and tests), not for users
inline GmmBwdResult gmm_loglik_bwd(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                                   const at::Tensor& u, const at::Tensor& means, const at::Tensor& loglik,
                                   const std::optional<at::Tensor>& log_det,
                                   const std::optional<at::Tensor>& log_probs) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::_gmm_loglik_bwd", "").typed<GmmBwdSignature>();
  return op.call(grad_loglik, grad_log_probs, u, means, loglik, log_det, log_probs);
}
}  // namespace detail

inline FilterSplitResult filter_split(const at::Tensor& loglik, double threshold) {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("dlsa_prod::filter_split", "").typed<FilterSplitSignature>();
  return op.call(loglik, threshold);
}

}  // namespace dlsa_prod
