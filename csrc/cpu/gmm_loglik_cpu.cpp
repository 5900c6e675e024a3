// CPU kernels of the dlsa_prod GMM ops.
//
// Forward: the dot products u.mu_k come from one BLAS GEMM (at::mm, B x K); then, per row
// while it sits in L1, one vectorised pass adds the norms and log-det and takes the max, a
// scan finds the first argmax and a vectorised pass sums exp (logsumexp); store_row_result
// (row_result.h) applies the non-finite rule.  The B x K buffer becomes the log_probs output
// when asked.  Extra memory: O(B*K).
// Backward: G_bk = g_b softmax_k + grad_log_probs_bk and the row's -rowsum(G) u (one pass), then
// grad_u += G mu (one GEMM with beta = 1).
// Determinism: every row is computed by one thread with a fixed summation order, so results do
// not depend on the thread count; the GEMMs are MKL's (see docs/kernels.md, reproducibility).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>

#include "../gmm_common.h"
#include "rows_avx2.h"
#include "vector_exp.h"

// The row passes have AVX2+FMA float32 versions in rows_avx2.h, picked at run time.  For the
// rest (norms, float64, CPUs without AVX2), GCC builds an AVX2/FMA clone and picks it at load time where the CPU
// supports it.  The clone is named by ISA level, not by CPU: "arch=haswell" dispatches on the
// CPU *model* (__builtin_cpu_is), so an AMD EPYC with AVX2 silently got the scalar default;
// "arch=x86-64-v3" (GCC 12+) and "avx2" dispatch on features.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define DLSA_HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#elif defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DLSA_HOT __attribute__((target_clones("avx2", "default")))
#else
#define DLSA_HOT
#endif

namespace dlsa_prod {
namespace {

// |x|^2 with 8 independent partial sums, so the compiler can vectorise the reduction.
template <typename T>
DLSA_HOT T sq_norm(const T* p, int64_t n) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int l = 0; l < 8; ++l) acc[l] += p[i + l] * p[i + l];
  T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  for (; i < n; ++i) s += p[i] * p[i];
  return s;
}

template <typename T>
void row_sq_norms(const T* x, int64_t rows, int64_t dim, T* out) {
  at::parallel_for(0, rows, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) out[r] = sq_norm(x + r * dim, dim);
  });
}

// Fill row-wise log p_k into `lp` (which holds the dot products on entry).
template <typename T>
void add_norm_terms(T* lp, const T* un, const T* mn, const T* ld, int64_t b, int64_t k, int64_t dim) {
  const T c = static_cast<T>(-0.5 * dim * kLog2Pi);
  at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      T* row = lp + r * k;
      const T base = c - T(0.5) * un[r] + (ld ? ld[r] : T(0));
      for (int64_t j = 0; j < k; ++j) row[j] = row[j] - T(0.5) * mn[j] + base;
    }
  });
}

// One row: log p_k in place and its max, the first argmax, then the sum of exp.  Reductions
// keep 8 lanes of partial results so the compiler vectorises them (strict FP order forbids
// vectorising a single accumulator).  NaN entries never win the max; they make the sum NaN.
template <typename T>
DLSA_HOT void forward_row(T* __restrict__ row, const T* __restrict__ mn, T base, int64_t k, T log_k, T* loglik,
                          int64_t* cluster) {
#ifdef DLSA_PROD_HAVE_AVX2_ROWS
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return forward_row_avx2(row, mn, base, k, log_k, loglik, cluster);
  }
#endif
  const T ninf = -std::numeric_limits<T>::infinity();
  T mx[8] = {ninf, ninf, ninf, ninf, ninf, ninf, ninf, ninf};
  const int64_t k8 = k - k % 8;
  for (int64_t j = 0; j < k8; j += 8) {
    for (int l = 0; l < 8; ++l) {
      const T x = row[j + l] - T(0.5) * mn[j + l] + base;
      row[j + l] = x;
      mx[l] = x > mx[l] ? x : mx[l];
    }
  }
  for (int64_t j = k8; j < k; ++j) {
    const T x = row[j] - T(0.5) * mn[j] + base;
    row[j] = x;
    mx[0] = x > mx[0] ? x : mx[0];
  }
  T m = mx[0];
  for (int l = 1; l < 8; ++l) m = mx[l] > m ? mx[l] : m;
  if (m == ninf) return store_row_result(loglik_without_finite_max(row, k), int64_t(0), loglik, cluster);
  int64_t arg = 0;
  while (arg < k && row[arg] != m) ++arg;  // first maximum, as torch.argmax
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t j = 0; j < k8; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += vector_exp(row[j + l] - m);
  for (int64_t j = k8; j < k; ++j) acc[0] += vector_exp(row[j] - m);
  const T s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  store_row_result(m + std::log(s) - log_k, arg, loglik, cluster);
}

template <typename T>
void fused_forward(T* dot, const T* un, const T* mn, const T* ld, T log_k, int64_t b, int64_t k, int64_t dim,
                   T* loglik, int64_t* cluster) {
  const T c = static_cast<T>(-0.5 * dim * kLog2Pi);
  at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      forward_row<T>(dot + r * k, mn, c - T(0.5) * un[r] + (ld ? ld[r] : T(0)), k, log_k, loglik + r, cluster + r);
    }
  });
}

// G_j = g exp(L_j - lse) + glp_j, from the log-densities `src` into `dst` (which may be src
// itself: each element is read before it is written); returns sum_j G_j.
template <typename T>
DLSA_HOT T backward_row(const T* src, T* dst, const T* __restrict__ glp, T lse, T g, int64_t k) {
#ifdef DLSA_PROD_HAVE_AVX2_ROWS
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_has_avx2_fma()) return backward_row_avx2(src, dst, glp, lse, g, k);
  }
#endif
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t k8 = k - k % 8;
  for (int64_t j = 0; j < k; ++j) dst[j] = g * vector_exp(src[j] - lse);
  if (glp != nullptr)
    for (int64_t j = 0; j < k; ++j) dst[j] += glp[j];
  for (int64_t j = 0; j < k8; j += 8)
    for (int l = 0; l < 8; ++l) acc[l] += dst[j + l];
  for (int64_t j = k8; j < k; ++j) acc[0] += dst[j];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// out = -s x, the u-term of one row of grad_u (the GEMM adds G mu on top)
template <typename T>
DLSA_HOT void scaled_neg_row(const T* __restrict__ x, T s, int64_t dim, T* __restrict__ out) {
  for (int64_t d = 0; d < dim; ++d) out[d] = -s * x[d];
}

GmmFwdResult gmm_loglik_fwd_cpu(const at::Tensor& u_, const at::Tensor& means_,
                                const std::optional<at::Tensor>& log_det, bool return_log_probs) {
  const GMMInputs in = checked_gmm_inputs(u_, means_, log_det);
  const at::Tensor &u = in.u, &means = in.means, &ld = in.log_det;
  const int64_t b = in.b, k = in.k, dim = in.dim;
  TORCH_CHECK(u.device().is_cpu(), "dlsa_prod::gmm_loglik_fwd (CPU kernel): u must be on the CPU");
  at::Tensor dot = at::mm(u, means.t()).contiguous();  // (B, K): becomes log_probs in place
  auto loglik = at::empty({b}, u.options());
  auto cluster = at::empty({b}, u.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_fwd_cpu", [&] {
    auto un = at::empty({b}, u.options());
    auto mn = at::empty({k}, u.options());
    row_sq_norms(u.data_ptr<scalar_t>(), b, dim, un.data_ptr<scalar_t>());
    row_sq_norms(means.data_ptr<scalar_t>(), k, dim, mn.data_ptr<scalar_t>());
    fused_forward<scalar_t>(dot.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
                            optional_ptr<scalar_t>(ld), static_cast<scalar_t>(in.log_k()), b, k, dim,
                            loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>());
  });
  at::Tensor log_probs = return_log_probs ? dot : at::empty({0, k}, u.options());
  return {loglik, cluster, log_probs};
}
static_assert(std::is_same_v<decltype(gmm_loglik_fwd_cpu), GmmFwdSignature>);

GmmBwdResult gmm_loglik_bwd_cpu(const at::Tensor& grad_loglik, const std::optional<at::Tensor>& grad_log_probs,
                                const at::Tensor& u_, const at::Tensor& means_, const at::Tensor& loglik,
                                const std::optional<at::Tensor>& log_det,
                                const std::optional<at::Tensor>& log_probs) {
  const GMMBwdInputs in = checked_bwd_inputs(grad_loglik, grad_log_probs, u_, means_, loglik, log_det, log_probs);
  const at::Tensor &u = in.fwd.u, &means = in.fwd.means, &ld = in.fwd.log_det;
  const int64_t b = in.fwd.b, k = in.fwd.k, dim = in.fwd.dim;
  // G (B, K): from the saved log_probs into a new buffer (they stay intact for a retained graph),
  // or formed in place from a recomputed GEMM
  const bool saved = in.log_probs.defined();
  const at::Tensor src = saved ? in.log_probs : at::mm(u, means.t()).contiguous();
  at::Tensor g = saved ? at::empty_like(src, at::MemoryFormat::Contiguous) : src;
  auto rowsum = at::empty({b}, u.options());
  auto grad_u = at::empty({b, dim}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_bwd_cpu", [&] {
    scalar_t* G = g.data_ptr<scalar_t>();
    if (!saved) {
      auto un = at::empty({b}, u.options());
      auto mn = at::empty({k}, u.options());
      row_sq_norms(u.data_ptr<scalar_t>(), b, dim, un.data_ptr<scalar_t>());
      row_sq_norms(means.data_ptr<scalar_t>(), k, dim, mn.data_ptr<scalar_t>());
      add_norm_terms<scalar_t>(G, un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), optional_ptr<scalar_t>(ld), b, k,
                               dim);
    }
    const scalar_t log_k = static_cast<scalar_t>(in.fwd.log_k());
    const scalar_t* S = src.data_ptr<scalar_t>();
    const scalar_t* glv = in.grad_loglik.data_ptr<scalar_t>();
    const scalar_t* llv = in.loglik.data_ptr<scalar_t>();
    const scalar_t* glpv = optional_ptr<scalar_t>(in.grad_log_probs);
    const scalar_t* uv = u.data_ptr<scalar_t>();
    scalar_t* rs = rowsum.data_ptr<scalar_t>();
    scalar_t* gu = grad_u.data_ptr<scalar_t>();
    at::parallel_for(0, b, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        rs[r] = backward_row<scalar_t>(S + r * k, G + r * k, glpv ? glpv + r * k : nullptr, llv[r] + log_k, glv[r], k);
        scaled_neg_row<scalar_t>(uv + r * dim, rs[r], dim, gu + r * dim);
      }
    });
  });
  grad_u.addmm_(g, means);  // grad_u = G mu - u rowsum(G), one BLAS call with beta = 1
  return {grad_u, rowsum};
}
static_assert(std::is_same_v<decltype(gmm_loglik_bwd_cpu), GmmBwdSignature>);

FilterSplitResult filter_split_cpu(const at::Tensor& loglik_, double threshold) {
  check_filter_split_input(loglik_);
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
static_assert(std::is_same_v<decltype(filter_split_cpu), FilterSplitSignature>);

std::string cpu_row_isa() {
#ifdef DLSA_PROD_HAVE_AVX2_ROWS
  if (cpu_has_avx2_fma()) return "avx2+fma";
#endif
  return "portable";
}

}  // namespace

TORCH_LIBRARY_IMPL(dlsa_prod, CompositeExplicitAutograd, m) {
  m.impl("cpu_row_isa", &cpu_row_isa);
}

TORCH_LIBRARY_IMPL(dlsa_prod, CPU, m) {
  m.impl("gmm_loglik_fwd", &gmm_loglik_fwd_cpu);
  m.impl("_gmm_loglik_bwd", &gmm_loglik_bwd_cpu);
  m.impl("filter_split", &filter_split_cpu);
}

}  // namespace dlsa_prod
