// CPU kernels of the dlsa_prod GMM ops.
//
// Forward: the dot products u.mu_k come from one BLAS GEMM (at::mm, B x K); a single fused
// pass per row then adds the norms and log-det, and keeps a running max, sum-exp and argmax
// (online logsumexp), writing log p_k in place only when asked.  Extra memory: O(B*K).
// Backward: G_bk = g_b softmax_k + grad_log_probs_bk (one pass), then grad_u = G mu - u rowsum(G).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../gmm_common.h"

namespace dlsa_prod {
namespace {

template <typename T>
void row_sq_norms(const T* x, int64_t rows, int64_t dim, T* out) {
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* p = x + r * dim;
      T s = 0;
      for (int64_t d = 0; d < dim; ++d) s += p[d] * p[d];
      out[r] = s;
    }
  });
}

// Fill row-wise log p_k into `lp` (which holds the dot products on entry).
template <typename T>
void add_norm_terms(T* lp, const T* un, const T* mn, const T* ld, const bool* mask, int64_t b, int64_t k, int64_t dim) {
  const T c = static_cast<T>(-0.5 * dim * kLog2Pi);
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = lp + r * k;
      const T base = c - T(0.5) * un[r] + (ld ? ld[r] : T(0));
      for (int64_t j = 0; j < k; ++j) row[j] = (mask && !mask[j]) ? ninf : row[j] - T(0.5) * mn[j] + base;
    }
  });
}

template <typename T>
void fused_forward(T* dot, const T* un, const T* mn, const T* ld, const bool* mask, T log_k, bool write, int64_t b,
                   int64_t k, int64_t dim, T* loglik, int64_t* cluster) {
  const T c = static_cast<T>(-0.5 * dim * kLog2Pi);
  const T ninf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = dot + r * k;
      const T base = c - T(0.5) * un[r] + (ld ? ld[r] : T(0));
      T m = ninf, s = 0;
      int64_t arg = 0;
      for (int64_t j = 0; j < k; ++j) {
        if (mask && !mask[j]) {
          if (write) row[j] = ninf;
          continue;
        }
        const T x = row[j] - T(0.5) * mn[j] + base;
        if (write) row[j] = x;
        if (x > m) {
          s = s * std::exp(m - x) + T(1);
          m = x;
          arg = j;
        } else {
          s += std::exp(x - m);
        }
      }
      loglik[r] = m + std::log(s) - log_k;
      cluster[r] = arg;
    }
  });
}

int64_t active_count(const std::optional<at::Tensor>& mask, int64_t k) {
  if (!mask.has_value()) return k;
  const int64_t n = mask->sum().item<int64_t>();
  TORCH_CHECK(n > 0, "dlsa_prod::gmm_loglik: the cluster mask leaves no active centre");
  return n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_loglik_fwd_cpu(const at::Tensor& u_, const at::Tensor& means_,
                                                                   const std::optional<at::Tensor>& log_det,
                                                                   const std::optional<at::Tensor>& mask,
                                                                   bool return_log_probs) {
  check_gmm_inputs(u_, means_, log_det, mask);
  TORCH_CHECK(u_.device().is_cpu(), "dlsa_prod::gmm_loglik_fwd (CPU kernel): u must be on the CPU");
  const auto u = u_.contiguous();
  const auto means = means_.contiguous();
  const int64_t b = u.size(0), k = means.size(0), dim = u.size(1);
  const int64_t k_active = active_count(mask, k);
  at::Tensor dot = at::mm(u, means.t()).contiguous();  // (B, K): becomes log_probs in place
  auto loglik = at::empty({b}, u.options());
  auto cluster = at::empty({b}, u.options().dtype(at::kLong));
  const auto ld = log_det.has_value() ? log_det->contiguous() : at::Tensor();
  const auto mk = mask.has_value() ? mask->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_fwd_cpu", [&] {
    auto un = at::empty({b}, u.options());
    auto mn = at::empty({k}, u.options());
    row_sq_norms(u.data_ptr<scalar_t>(), b, dim, un.data_ptr<scalar_t>());
    row_sq_norms(means.data_ptr<scalar_t>(), k, dim, mn.data_ptr<scalar_t>());
    fused_forward<scalar_t>(dot.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
                            ld.defined() ? ld.data_ptr<scalar_t>() : nullptr,
                            mk.defined() ? mk.data_ptr<bool>() : nullptr,
                            static_cast<scalar_t>(std::log(static_cast<double>(k_active))), return_log_probs, b, k,
                            dim, loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>());
  });
  at::Tensor log_probs = return_log_probs ? dot : at::empty({0, k}, u.options());
  return {loglik, cluster, log_probs};
}

std::tuple<at::Tensor, at::Tensor> gmm_loglik_bwd_cpu(const at::Tensor& grad_loglik_,
                                                      const std::optional<at::Tensor>& grad_log_probs,
                                                      const at::Tensor& u_, const at::Tensor& means_,
                                                      const at::Tensor& loglik_,
                                                      const std::optional<at::Tensor>& log_det,
                                                      const std::optional<at::Tensor>& mask,
                                                      const std::optional<at::Tensor>& log_probs) {
  check_gmm_inputs(u_, means_, log_det, mask);
  check_bwd_inputs(grad_loglik_, grad_log_probs, u_, means_, loglik_, log_probs);
  const auto u = u_.contiguous();
  const auto means = means_.contiguous();
  const int64_t b = u.size(0), k = means.size(0), dim = u.size(1);
  const int64_t k_active = active_count(mask, k);
  const auto gl = grad_loglik_.contiguous();
  const auto ll = loglik_.contiguous();
  const auto mk = mask.has_value() ? mask->contiguous() : at::Tensor();
  const auto glp = present(grad_log_probs) ? grad_log_probs->contiguous() : at::Tensor();
  at::Tensor g;  // (B, K): log_probs, then G in place
  if (present(log_probs)) {
    g = log_probs->clone(at::MemoryFormat::Contiguous);
  } else {
    g = at::mm(u, means.t()).contiguous();
  }
  auto rowsum = at::empty({b}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_bwd_cpu", [&] {
    scalar_t* G = g.data_ptr<scalar_t>();
    const bool* mp = mk.defined() ? mk.data_ptr<bool>() : nullptr;
    if (!present(log_probs)) {
      auto un = at::empty({b}, u.options());
      auto mn = at::empty({k}, u.options());
      row_sq_norms(u.data_ptr<scalar_t>(), b, dim, un.data_ptr<scalar_t>());
      row_sq_norms(means.data_ptr<scalar_t>(), k, dim, mn.data_ptr<scalar_t>());
      const auto ld = log_det.has_value() ? log_det->contiguous() : at::Tensor();
      add_norm_terms<scalar_t>(G, un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
                               ld.defined() ? ld.data_ptr<scalar_t>() : nullptr, mp, b, k, dim);
    }
    const scalar_t log_k = static_cast<scalar_t>(std::log(static_cast<double>(k_active)));
    const scalar_t* glv = gl.data_ptr<scalar_t>();
    const scalar_t* llv = ll.data_ptr<scalar_t>();
    const scalar_t* glpv = glp.defined() ? glp.data_ptr<scalar_t>() : nullptr;
    scalar_t* rs = rowsum.data_ptr<scalar_t>();
    at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        scalar_t* row = G + r * k;
        const scalar_t lse = llv[r] + log_k, gr = glv[r];
        scalar_t acc = 0;
        for (int64_t j = 0; j < k; ++j) {
          if (mp && !mp[j]) {
            row[j] = 0;
            continue;
          }
          const scalar_t v = gr * std::exp(row[j] - lse) + (glpv ? glpv[r * k + j] : scalar_t(0));
          row[j] = v;
          acc += v;
        }
        rs[r] = acc;
      }
    });
  });
  auto grad_u = at::mm(g, means);
  grad_u.sub_(u * rowsum.unsqueeze(1));
  return {grad_u, rowsum};
}

std::tuple<at::Tensor, at::Tensor> filter_split_cpu(const at::Tensor& loglik_, double threshold) {
  TORCH_CHECK(loglik_.dim() == 1, "dlsa_prod::filter_split: loglik must be 1-D, got shape ", loglik_.sizes());
  TORCH_CHECK(loglik_.is_floating_point(), "dlsa_prod::filter_split: loglik must be floating point, got ",
              loglik_.scalar_type());
  const auto ll = loglik_.contiguous();
  const int64_t n = ll.size(0);
  auto keep = at::empty({n}, ll.options().dtype(at::kLong));
  auto rest = at::empty({n}, ll.options().dtype(at::kLong));
  int64_t nk = 0, nr = 0;
  AT_DISPATCH_FLOATING_TYPES(ll.scalar_type(), "filter_split_cpu", [&] {
    const scalar_t* p = ll.data_ptr<scalar_t>();
    int64_t* kp = keep.data_ptr<int64_t>();
    int64_t* rp = rest.data_ptr<int64_t>();
    const scalar_t t = static_cast<scalar_t>(threshold);
    for (int64_t i = 0; i < n; ++i) {
      if (p[i] >= t) kp[nk++] = i; else rp[nr++] = i;
    }
  });
  return {keep.narrow(0, 0, nk).clone(), rest.narrow(0, 0, nr).clone()};
}

}  // namespace

TORCH_LIBRARY_IMPL(dlsa_prod, CPU, m) {
  m.impl("gmm_loglik_fwd", &gmm_loglik_fwd_cpu);
  m.impl("gmm_loglik_bwd", &gmm_loglik_bwd_cpu);
  m.impl("filter_split", &filter_split_cpu);
}

}  // namespace dlsa_prod
