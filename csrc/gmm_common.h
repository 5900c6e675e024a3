// What the CPU and CUDA GMM kernels share: input checks, the checked/contiguous inputs of the
// forward and the backward, the filter_split check, constants.  The ops' model and their
// non-finite semantics are described in include/dlsa_prod/ops.h.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <optional>

#include "dlsa_prod/ops.h"
#include "row_result.h"

namespace dlsa_prod {
// Internal linkage: the CPU (g++) and CUDA (host compiler, other flags) translation units each
// keep their own copy, so no inline definition is shared between objects built differently.
namespace {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;

inline void check_gmm_inputs(const at::Tensor& u, const at::Tensor& means, const std::optional<at::Tensor>& log_det) {
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
}

inline void check_bwd_inputs(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                             const at::Tensor& u, const at::Tensor& means, const at::Tensor& loglik,
                             const std::optional<at::Tensor>& log_probs) {
  const auto b = u.size(0), k = means.size(0);
  TORCH_CHECK(grad_loglik.dim() == 1 && grad_loglik.size(0) == b, "dlsa_prod::_gmm_loglik_bwd: grad_loglik shape ",
              grad_loglik.sizes(), ", expected (", b, ")");
  TORCH_CHECK(loglik.dim() == 1 && loglik.size(0) == b, "dlsa_prod::_gmm_loglik_bwd: loglik shape ", loglik.sizes(),
              ", expected (", b, ")");
  for (const auto* t : {&grad_loglik, &loglik}) {
    TORCH_CHECK(t->scalar_type() == u.scalar_type() && t->device() == u.device(),
                "dlsa_prod::_gmm_loglik_bwd: (B) input dtype/device mismatch");
  }
  for (const auto* t : {&grad_log_probs, &log_probs}) {
    if (t->has_value() && (*t)->numel() > 0) {
      TORCH_CHECK((*t)->dim() == 2 && (*t)->size(0) == b && (*t)->size(1) == k,
                  "dlsa_prod::_gmm_loglik_bwd: (B, K) input has shape ", (*t)->sizes(), ", expected (", b, ", ", k,
                  ")");
      TORCH_CHECK((*t)->scalar_type() == u.scalar_type() && (*t)->device() == u.device(),
                  "dlsa_prod::_gmm_loglik_bwd: (B, K) input dtype/device mismatch");
    }
  }
}

inline void check_filter_split_input(const at::Tensor& loglik) {
  TORCH_CHECK(loglik.dim() == 1, "dlsa_prod::filter_split: loglik must be 1-D, got shape ", loglik.sizes());
  TORCH_CHECK(loglik.is_floating_point(), "dlsa_prod::filter_split: loglik must be floating point, got ",
              loglik.scalar_type());
}

// an optional tensor made contiguous, or an undefined tensor when absent or empty
inline at::Tensor contiguous_or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() && t->numel() > 0 ? t->contiguous() : at::Tensor();
}

// data pointer of an optional input (undefined when absent), or nullptr
template <typename T>
inline const T* optional_ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// The inputs every GMM kernel starts from: checked, contiguous, with their sizes.
struct GMMInputs {
  at::Tensor u, means, log_det;  // log_det: undefined when absent
  int64_t b, k, dim;
  double log_k() const { return std::log(static_cast<double>(k)); }
};

inline GMMInputs checked_gmm_inputs(const at::Tensor& u, const at::Tensor& means,
                                    const std::optional<at::Tensor>& log_det) {
  check_gmm_inputs(u, means, log_det);
  return {u.contiguous(), means.contiguous(), contiguous_or_undefined(log_det), u.size(0), means.size(0), u.size(1)};
}

// The backward's inputs, checked and contiguous.  grad_log_probs and log_probs are undefined
// when absent (or the (0, K) placeholder): log_probs absent means the kernel recomputes u.mu.
struct GMMBwdInputs {
  GMMInputs fwd;
  at::Tensor grad_loglik, loglik, grad_log_probs, log_probs;
};

inline GMMBwdInputs checked_bwd_inputs(const at::Tensor& grad_loglik,
                                       const std::optional<at::Tensor>& grad_log_probs, const at::Tensor& u,
                                       const at::Tensor& means, const at::Tensor& loglik,
                                       const std::optional<at::Tensor>& log_det,
                                       const std::optional<at::Tensor>& log_probs) {
  GMMInputs fwd = checked_gmm_inputs(u, means, log_det);
  check_bwd_inputs(grad_loglik, grad_log_probs, u, means, loglik, log_probs);
  return {std::move(fwd), grad_loglik.contiguous(), loglik.contiguous(), contiguous_or_undefined(grad_log_probs),
          contiguous_or_undefined(log_probs)};
}

}  // namespace
}  // namespace dlsa_prod
