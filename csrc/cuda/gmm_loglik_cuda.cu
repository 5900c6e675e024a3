// CUDA kernels of the dlsa_prod GMM ops (fp32 / fp64 arithmetic, never TF32).
//
// Forward, two implementations (DLSA_PROD_CUDA_FWD=gemm|tiled, default gemm, the faster one
// measured on an H100; see README):
//  * tiled: one kernel computes 64x64 tiles of u.mu over D in registers (SIMT FMA, exact
//    fp32) and fuses the epilogue: norms, log-det, optional log_probs write, and per-row
//    partial (max, sum-exp, argmax) over the tile's centres; a small kernel merges the
//    partials of the K tiles.  The B x K matrix is written only when asked.
//  * gemm: cuBLAS SGEMM with TF32 disabled for the dot products, then one fused row kernel.
// Backward: GEMM (or the saved log_probs) -> one fused row kernel forming G and its row
// sums -> GEMM G mu -> grad_u = G mu - u rowsum(G).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <tuple>

#include "../gmm_common.h"

namespace dlsa_prod {
namespace {

constexpr int kTile = 64;   // BM = BN
constexpr int kTileK = 16;  // BK
constexpr int kThreads = 256;

// cuBLAS must not use TF32 for these products, whatever the global setting.
struct NoTF32Guard {
  bool prev;
  NoTF32Guard() : prev(at::globalContext().allowTF32CuBLAS()) {
    if (prev) at::globalContext().setAllowTF32CuBLAS(false);
  }
  ~NoTF32Guard() {
    if (prev) at::globalContext().setAllowTF32CuBLAS(true);
  }
};

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// Online logsumexp/argmax state combine; ties keep the lower index (as torch.argmax).
template <typename T>
__device__ __forceinline__ void lse_combine(T& m, T& s, int64_t& arg, T om, T os, int64_t oa) {
  if (om == neg_inf<T>()) return;
  if (m == neg_inf<T>()) {
    m = om; s = os; arg = oa;
    return;
  }
  if (om > m) {
    s = s * exp(m - om) + os;
    m = om;
    arg = oa;
  } else {
    s = s + os * exp(om - m);
    if (om == m && oa < arg) arg = oa;
  }
}

template <typename T>
__device__ __forceinline__ void lse_push(T& m, T& s, int64_t& arg, T x, int64_t idx) {
  if (x > m) {
    s = (m == neg_inf<T>() ? T(0) : s * exp(m - x)) + T(1);
    m = x;
    arg = idx;
  } else if (x != neg_inf<T>()) {
    s += exp(x - m);
  }
}

template <typename T>
__device__ __forceinline__ T log_k_of(const int64_t* n_active, int64_t k) {
  return log(static_cast<T>(n_active ? *n_active : k));
}

// Squared row norms of u (rows 0..B-1) and of the centres (rows B..B+K-1) in one launch,
// one warp per row.
template <typename T>
__global__ void sq_norms_kernel(const T* __restrict__ u, int64_t b, const T* __restrict__ mu, int64_t k, int64_t dim,
                                T* __restrict__ un, T* __restrict__ mn) {
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= b + k) return;
  const T* p = warp < b ? u + warp * dim : mu + (warp - b) * dim;
  T s = 0;
  for (int64_t d = lane; d < dim; d += 32) s += p[d] * p[d];
  for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(0xffffffffu, s, off);
  if (lane == 0) (warp < b ? un[warp] : mn[warp - b]) = s;
}

template <typename T>
void sq_norms(const at::Tensor& u, const at::Tensor& mu, at::Tensor& un, at::Tensor& mn, cudaStream_t stream) {
  const int64_t rows = u.size(0) + mu.size(0);
  const int64_t blocks = (rows * 32 + kThreads - 1) / kThreads;
  sq_norms_kernel<T><<<blocks, kThreads, 0, stream>>>(u.data_ptr<T>(), u.size(0), mu.data_ptr<T>(), mu.size(0),
                                                      u.size(1), un.data_ptr<T>(), mn.data_ptr<T>());
}

// ---------------------------------------------------------------------------- tiled forward
template <typename T>
__global__ void __launch_bounds__(kThreads) gmm_fwd_tiled_kernel(
    const T* __restrict__ u, const T* __restrict__ mu, const T* __restrict__ un, const T* __restrict__ mn,
    const T* __restrict__ ld, const bool* __restrict__ mask, int64_t B, int64_t K, int64_t D, T c,
    T* __restrict__ log_probs, T* __restrict__ part_m, T* __restrict__ part_s, int64_t* __restrict__ part_arg) {
  __shared__ T As[kTileK][kTile + 1];
  __shared__ T Bs[kTileK][kTile + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t row0 = static_cast<int64_t>(blockIdx.y) * kTile, col0 = static_cast<int64_t>(blockIdx.x) * kTile;
  T acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0;

  for (int64_t k0 = 0; k0 < D; k0 += kTileK) {
#pragma unroll
    for (int i = 0; i < (kTile * kTileK) / kThreads; ++i) {
      const int idx = threadIdx.x + i * kThreads;
      const int r = idx / kTileK, kk = idx % kTileK;
      const int64_t gk = k0 + kk;
      const int64_t gr = row0 + r, gc = col0 + r;
      As[kk][r] = (gr < B && gk < D) ? u[gr * D + gk] : T(0);
      Bs[kk][r] = (gc < K && gk < D) ? mu[gc * D + gk] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; ++kk) {
      T a[4], b[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

  // fused epilogue
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t r = row0 + ty + 16 * i;
    const bool row_ok = r < B;
    const T base = row_ok ? c - T(0.5) * un[r] + (ld ? ld[r] : T(0)) : T(0);
    T m = neg_inf<T>(), s = 0;
    int64_t arg = K;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t col = col0 + tx + 16 * j;
      const bool active = col < K && (mask == nullptr || mask[col]);
      const T x = active ? acc[i][j] - T(0.5) * mn[col] + base : neg_inf<T>();
      if (log_probs && row_ok && col < K) log_probs[r * K + col] = x;
      if (active) lse_push(m, s, arg, x, col);
    }
#pragma unroll
    for (int off = 8; off > 0; off /= 2) {
      const T om = __shfl_xor_sync(0xffffffffu, m, off);
      const T os = __shfl_xor_sync(0xffffffffu, s, off);
      const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, off);
      lse_combine(m, s, arg, om, os, oa);
    }
    if (tx == 0 && row_ok) {
      const int64_t p = static_cast<int64_t>(blockIdx.x) * B + r;
      part_m[p] = m;
      part_s[p] = s;
      part_arg[p] = arg;
    }
  }
}

template <typename T>
__global__ void merge_partials_kernel(const T* __restrict__ part_m, const T* __restrict__ part_s,
                                      const int64_t* __restrict__ part_arg, int64_t tiles, int64_t B, int64_t K,
                                      const int64_t* __restrict__ n_active, T* __restrict__ loglik,
                                      int64_t* __restrict__ cluster) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= B) return;
  T m = neg_inf<T>(), s = 0;
  int64_t arg = K;
  for (int64_t t = 0; t < tiles; ++t) lse_combine(m, s, arg, part_m[t * B + r], part_s[t * B + r], part_arg[t * B + r]);
  loglik[r] = m + log(s) - log_k_of<T>(n_active, K);
  cluster[r] = arg;
}

// ---------------------------------------------------------------------------- GEMM-based rows
// One warp per row over a (B, K) buffer holding u.mu; writes log p_k in place when asked.
template <typename T>
__global__ void fwd_rows_kernel(T* __restrict__ dot, const T* __restrict__ un, const T* __restrict__ mn,
                                const T* __restrict__ ld, const bool* __restrict__ mask, int64_t B, int64_t K, T c,
                                bool write, const int64_t* __restrict__ n_active, T* __restrict__ loglik,
                                int64_t* __restrict__ cluster) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  T* row = dot + r * K;
  const T base = c - T(0.5) * un[r] + (ld ? ld[r] : T(0));
  T m = neg_inf<T>(), s = 0;
  int64_t arg = K;
  for (int64_t j = lane; j < K; j += 32) {
    const bool active = mask == nullptr || mask[j];
    const T x = active ? row[j] - T(0.5) * mn[j] + base : neg_inf<T>();
    if (write) row[j] = x;
    if (active) lse_push(m, s, arg, x, j);
  }
  for (int off = 16; off > 0; off /= 2) {
    const T om = __shfl_xor_sync(0xffffffffu, m, off);
    const T os = __shfl_xor_sync(0xffffffffu, s, off);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, off);
    lse_combine(m, s, arg, om, os, oa);
  }
  if (lane == 0) {
    loglik[r] = m + log(s) - log_k_of<T>(n_active, K);
    cluster[r] = arg;
  }
}

// G_bk = g_b exp(L_bk - loglik_b - log K_active) + grad_log_probs_bk (0 where masked), read from
// src and written to buf (may alias); rowsum_b = sum_k G_bk.  `from_dot`: src holds u.mu and L
// is formed here, else src holds the forward's log_probs.
template <typename T>
__global__ void bwd_rows_kernel(const T* src, T* buf, bool from_dot, const T* __restrict__ un,
                                const T* __restrict__ mn, const T* __restrict__ ld, const bool* __restrict__ mask,
                                const T* __restrict__ grad_ll, const T* __restrict__ glp, const T* __restrict__ loglik,
                                int64_t B, int64_t K, T c, const int64_t* __restrict__ n_active,
                                T* __restrict__ rowsum) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  const T* in = src + r * K;
  T* row = buf + r * K;
  const T base = from_dot ? c - T(0.5) * un[r] + (ld ? ld[r] : T(0)) : T(0);
  const T lse = loglik[r] + log_k_of<T>(n_active, K);
  const T g = grad_ll[r];
  T acc = 0;
  for (int64_t j = lane; j < K; j += 32) {
    T v = 0;
    if (mask == nullptr || mask[j]) {
      const T l = from_dot ? in[j] - T(0.5) * mn[j] + base : in[j];
      v = g * exp(l - lse) + (glp ? glp[r * K + j] : T(0));
    }
    row[j] = v;
    acc += v;
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
  if (lane == 0) rowsum[r] = acc;
}

inline int64_t warp_blocks(int64_t rows) { return (rows * 32 + kThreads - 1) / kThreads; }

bool use_tiled_forward() {
  const char* v = std::getenv("DLSA_PROD_CUDA_FWD");
  return v != nullptr && std::strcmp(v, "tiled") == 0;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gmm_loglik_fwd_cuda(const at::Tensor& u_, const at::Tensor& means_,
                                                                    const std::optional<at::Tensor>& log_det,
                                                                    const std::optional<at::Tensor>& mask,
                                                                    bool return_log_probs) {
  check_gmm_inputs(u_, means_, log_det, mask);
  TORCH_CHECK(u_.is_cuda(), "dlsa_prod::gmm_loglik_fwd (CUDA kernel): u must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(u_.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  const auto u = u_.contiguous();
  const auto means = means_.contiguous();
  const int64_t b = u.size(0), k = means.size(0), dim = u.size(1);
  const auto ld = log_det.has_value() ? log_det->contiguous() : at::Tensor();
  const auto mk = mask.has_value() ? mask->contiguous() : at::Tensor();
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
    NoTF32Guard no_tf32;
    dot = return_log_probs ? at::mm_out(log_probs, u, means.t()) : at::mm(u, means.t());
  }
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "gmm_loglik_fwd_cuda", [&] {
    sq_norms<scalar_t>(u, means, un, mn, stream);
    const scalar_t c = static_cast<scalar_t>(-0.5 * dim * kLog2Pi);
    const scalar_t* ldp = ld.defined() ? ld.data_ptr<scalar_t>() : nullptr;
    const bool* mp = mk.defined() ? mk.data_ptr<bool>() : nullptr;
    const int64_t* nap = n_active.defined() ? n_active.data_ptr<int64_t>() : nullptr;
    if (tiled) {
      const int64_t tiles = (k + kTile - 1) / kTile;
      auto pm = at::empty({tiles, b}, u.options());
      auto ps = at::empty({tiles, b}, u.options());
      auto pa = at::empty({tiles, b}, u.options().dtype(at::kLong));
      const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((b + kTile - 1) / kTile));
      gmm_fwd_tiled_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          u.data_ptr<scalar_t>(), means.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), ldp,
          mp, b, k, dim, c, return_log_probs ? log_probs.data_ptr<scalar_t>() : nullptr, pm.data_ptr<scalar_t>(),
          ps.data_ptr<scalar_t>(), pa.data_ptr<int64_t>());
      merge_partials_kernel<scalar_t><<<(b + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          pm.data_ptr<scalar_t>(), ps.data_ptr<scalar_t>(), pa.data_ptr<int64_t>(), tiles, b, k, nap,
          loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>());
    } else {
      fwd_rows_kernel<scalar_t><<<warp_blocks(b), kThreads, 0, stream>>>(
          dot.data_ptr<scalar_t>(), un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(), ldp, mp, b, k, c,
          return_log_probs, nap, loglik.data_ptr<scalar_t>(), cluster.data_ptr<int64_t>());
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
  check_gmm_inputs(u_, means_, log_det, mask);
  check_bwd_inputs(grad_loglik_, grad_log_probs, u_, means_, loglik_, log_probs);
  const c10::cuda::CUDAGuard guard(u_.device());
  auto stream = at::cuda::getCurrentCUDAStream();
  NoTF32Guard no_tf32;
  const auto u = u_.contiguous();
  const auto means = means_.contiguous();
  const int64_t b = u.size(0), k = means.size(0), dim = u.size(1);
  const auto gl = grad_loglik_.contiguous();
  const auto ll = loglik_.contiguous();
  const auto ld = log_det.has_value() ? log_det->contiguous() : at::Tensor();
  const auto mk = mask.has_value() ? mask->contiguous() : at::Tensor();
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
    if (from_dot) sq_norms<scalar_t>(u, means, un, mn, stream);
    bwd_rows_kernel<scalar_t><<<warp_blocks(b), kThreads, 0, stream>>>(
        src.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), from_dot, un.data_ptr<scalar_t>(), mn.data_ptr<scalar_t>(),
        ld.defined() ? ld.data_ptr<scalar_t>() : nullptr, mk.defined() ? mk.data_ptr<bool>() : nullptr,
        gl.data_ptr<scalar_t>(), glp.defined() ? glp.data_ptr<scalar_t>() : nullptr, ll.data_ptr<scalar_t>(), b, k,
        static_cast<scalar_t>(-0.5 * dim * kLog2Pi), n_active.defined() ? n_active.data_ptr<int64_t>() : nullptr,
        rowsum.data_ptr<scalar_t>());
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
