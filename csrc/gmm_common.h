// Shared declarations of the dlsa_prod GMM ops: input checks and constants.
//
// The GMM has K fixed centres mu (K x D), identity covariance and uniform weights.  For
// latents u (B x D) and an optional per-sample log|det J| (B):
//   log p_k(u) = -D/2 log(2 pi) - 0.5 |u|^2 + u.mu_k - 0.5 |mu_k|^2 + log_det     (B x K)
//   loglik     = logsumexp_k log p_k - log K_active,   cluster = argmax_k log p_k
// An optional boolean mask (K) keeps a subset of active centres.  The centres are fixed
// buffers: no gradient is computed for them.
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace dlsa_prod {
// Internal linkage: the CPU (g++) and CUDA (nvcc) translation units each keep their own copy,
// so no single inline definition is shared between objects built with different flags.
namespace {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

inline void check_gmm_inputs(const at::Tensor& u, const at::Tensor& means,
                             const std::optional<at::Tensor>& log_det,
                             const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(u.dim() == 2, "dlsa_prod::gmm_loglik: u must be 2-D (batch, dim), got shape ", u.sizes());
  TORCH_CHECK(means.dim() == 2, "dlsa_prod::gmm_loglik: means must be 2-D (K, dim), got shape ", means.sizes());
  TORCH_CHECK(u.size(1) == means.size(1), "dlsa_prod::gmm_loglik: u has dim ", u.size(1),
              " but means have dim ", means.size(1));
  TORCH_CHECK(means.size(0) >= 1, "dlsa_prod::gmm_loglik: means must hold at least one centre");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble,
              "dlsa_prod::gmm_loglik: u must be float32 or float64, got ", u.scalar_type());
  TORCH_CHECK(means.scalar_type() == u.scalar_type(), "dlsa_prod::gmm_loglik: means dtype ", means.scalar_type(),
              " differs from u dtype ", u.scalar_type());
  TORCH_CHECK(means.device() == u.device(), "dlsa_prod::gmm_loglik: means on ", means.device(), " but u on ",
              u.device());
  if (log_det.has_value()) {
    const auto& ld = *log_det;
    TORCH_CHECK(ld.dim() == 1 && ld.size(0) == u.size(0), "dlsa_prod::gmm_loglik: log_det must have shape (",
                u.size(0), "), got ", ld.sizes());
    TORCH_CHECK(ld.scalar_type() == u.scalar_type(), "dlsa_prod::gmm_loglik: log_det dtype ", ld.scalar_type(),
                " differs from u dtype ", u.scalar_type());
    TORCH_CHECK(ld.device() == u.device(), "dlsa_prod::gmm_loglik: log_det on ", ld.device(), " but u on ",
                u.device());
  }
  if (mask.has_value()) {
    const auto& m = *mask;
    TORCH_CHECK(m.dim() == 1 && m.size(0) == means.size(0), "dlsa_prod::gmm_loglik: cluster mask must have shape (",
                means.size(0), "), got ", m.sizes());
    TORCH_CHECK(m.scalar_type() == at::kBool, "dlsa_prod::gmm_loglik: cluster mask must be bool, got ",
                m.scalar_type());
    TORCH_CHECK(m.device() == u.device(), "dlsa_prod::gmm_loglik: cluster mask on ", m.device(), " but u on ",
                u.device());
  }
}

inline void check_bwd_inputs(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                             const at::Tensor& u, const at::Tensor& means, const at::Tensor& loglik,
                             const std::optional<at::Tensor>& log_probs) {
  const auto b = u.size(0), k = means.size(0);
  TORCH_CHECK(grad_loglik.dim() == 1 && grad_loglik.size(0) == b, "dlsa_prod::gmm_loglik_bwd: grad_loglik shape ",
              grad_loglik.sizes(), ", expected (", b, ")");
  TORCH_CHECK(loglik.dim() == 1 && loglik.size(0) == b, "dlsa_prod::gmm_loglik_bwd: loglik shape ", loglik.sizes());
  for (const auto* t : {&grad_log_probs, &log_probs}) {
    if (t->has_value()) {
      TORCH_CHECK((*t)->dim() == 2 && (*t)->size(0) == b && (*t)->size(1) == k,
                  "dlsa_prod::gmm_loglik_bwd: (B, K) input has shape ", (*t)->sizes());
      TORCH_CHECK((*t)->scalar_type() == u.scalar_type() && (*t)->device() == u.device(),
                  "dlsa_prod::gmm_loglik_bwd: (B, K) input dtype/device mismatch");
    }
  }
}

// an optional tensor made contiguous, or an undefined tensor when absent
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The inputs every GMM kernel starts from: checked, contiguous, with their sizes.
struct GMMInputs {
  at::Tensor u, means, log_det, mask;  // log_det, mask: undefined when absent
  int64_t b, k, dim;
};

inline GMMInputs checked_gmm_inputs(const at::Tensor& u, const at::Tensor& means,
                                    const std::optional<at::Tensor>& log_det, const std::optional<at::Tensor>& mask) {
  check_gmm_inputs(u, means, log_det, mask);
  return {u.contiguous(), means.contiguous(), contiguous_or_undefined(log_det), contiguous_or_undefined(mask),
          u.size(0), means.size(0), u.size(1)};
}

// true when an optional (B, K) tensor is present and non-empty
inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->numel() > 0; }

}  // namespace
}  // namespace dlsa_prod
