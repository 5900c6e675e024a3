// CUDA kernels of the dlsa_prod GMM ops and their launchers (raw pointers, no exceptions:
// input checks, allocation and error checks live in gmm_loglik_cuda.cpp).
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "../row_result.h"
#include "gmm_kernels.h"

namespace dlsa_prod {
namespace cuda_kernels {
namespace {

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return -static_cast<T>(INFINITY);
}

// Online logsumexp/argmax state (m: running max, s: sum of exp(x - m), arg: first argmax).
// A NaN term makes m NaN for good (so the row's loglik is NaN); ties keep the lower index (as
// torch.argmax).  Rows with no term above -inf keep m = -inf, s = 0.
template <typename T>
__device__ __forceinline__ void lse_combine(T& m, T& s, int64_t& arg, T om, T os, int64_t oa) {
  if (isnan(m)) return;
  if (isnan(om)) {
    m = om;
    return;
  }
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
    s = s + os * exp(om - m);  // om == m == +inf: NaN, as the rule wants
    if (om == m && oa < arg) arg = oa;
  }
}

template <typename T>
__device__ __forceinline__ void lse_push(T& m, T& s, int64_t& arg, T x, int64_t idx) {
  if (isnan(x)) {
    m = x;
  } else if (x > m) {
    s = (m == neg_inf<T>() ? T(0) : s * exp(m - x)) + T(1);
    m = x;
    arg = idx;
  } else if (x != neg_inf<T>()) {
    s += exp(x - m);  // m NaN: stays NaN; x == m == +inf: NaN
  }
}

// one row's result from its final state, by the shared non-finite rule (row_result.h)
template <typename T>
__device__ __forceinline__ void store_row(T m, T s, int64_t arg, T log_k, T* loglik, int64_t* cluster) {
  store_row_result(m + log(s) - log_k, arg, loglik, cluster);
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

// ---------------------------------------------------------------------------- tiled forward
template <typename T>
__global__ void __launch_bounds__(kThreads) gmm_fwd_tiled_kernel(
    const T* __restrict__ u, const T* __restrict__ mu, const T* __restrict__ un, const T* __restrict__ mn,
    const T* __restrict__ ld, int64_t B, int64_t K, int64_t D, T c, T* __restrict__ log_probs, T* __restrict__ part_m, T* __restrict__ part_s, int64_t* __restrict__ part_arg) {
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
      if (col >= K) continue;
      const T x = acc[i][j] - T(0.5) * mn[col] + base;
      if (log_probs && row_ok) log_probs[r * K + col] = x;
      lse_push(m, s, arg, x, col);
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
                                      T log_k, T* __restrict__ loglik, int64_t* __restrict__ cluster) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= B) return;
  T m = neg_inf<T>(), s = 0;
  int64_t arg = K;
  for (int64_t t = 0; t < tiles; ++t) lse_combine(m, s, arg, part_m[t * B + r], part_s[t * B + r], part_arg[t * B + r]);
  store_row(m, s, arg, log_k, loglik + r, cluster + r);
}

// ---------------------------------------------------------------------------- GEMM-based rows
// One warp per row over a (B, K) buffer holding u.mu; writes log p_k in place when asked.
template <typename T>
__global__ void fwd_rows_kernel(T* __restrict__ dot, const T* __restrict__ un, const T* __restrict__ mn,
                                const T* __restrict__ ld, int64_t B, int64_t K, T c, bool write, T log_k,
                                T* __restrict__ loglik, int64_t* __restrict__ cluster) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  T* row = dot + r * K;
  const T base = c - T(0.5) * un[r] + (ld ? ld[r] : T(0));
  T m = neg_inf<T>(), s = 0;
  int64_t arg = K;
  for (int64_t j = lane; j < K; j += 32) {
    const T x = row[j] - T(0.5) * mn[j] + base;
    if (write) row[j] = x;
    lse_push(m, s, arg, x, j);
  }
  for (int off = 16; off > 0; off /= 2) {
    const T om = __shfl_xor_sync(0xffffffffu, m, off);
    const T os = __shfl_xor_sync(0xffffffffu, s, off);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, off);
    lse_combine(m, s, arg, om, os, oa);
  }
  if (lane == 0) store_row(m, s, arg, log_k, loglik + r, cluster + r);
}

// G_bk = g_b exp(L_bk - loglik_b - log K) + grad_log_probs_bk, read from src and written to buf
// (may alias); rowsum_b = sum_k G_bk; and the u-term of grad_u, -rowsum_b u_b (the host adds
// G mu with one GEMM, beta = 1, as the CPU kernel does).  `from_dot`: src holds u.mu and L is
// formed here, else src holds the forward's log_probs.
template <typename T>
__global__ void bwd_rows_kernel(const T* src, T* buf, bool from_dot, const T* __restrict__ un,
                                const T* __restrict__ mn, const T* __restrict__ ld, const T* __restrict__ grad_ll,
                                const T* __restrict__ glp, const T* __restrict__ loglik, const T* __restrict__ u,
                                int64_t B, int64_t K, int64_t D, T c, T log_k, T* __restrict__ rowsum,
                                T* __restrict__ grad_u) {
  const int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (r >= B) return;
  const T* in = src + r * K;
  T* row = buf + r * K;
  const T base = from_dot ? c - T(0.5) * un[r] + (ld ? ld[r] : T(0)) : T(0);
  const T lse = loglik[r] + log_k;
  const T g = grad_ll[r];
  T acc = 0;
  for (int64_t j = lane; j < K; j += 32) {
    const T l = from_dot ? in[j] - T(0.5) * mn[j] + base : in[j];
    const T v = g * exp(l - lse) + (glp ? glp[r * K + j] : T(0));
    row[j] = v;
    acc += v;
  }
  for (int off = 16; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);  // every lane: the sum
  if (lane == 0) rowsum[r] = acc;
  for (int64_t d = lane; d < D; d += 32) grad_u[r * D + d] = -acc * u[r * D + d];
}

}  // namespace

inline int64_t warp_blocks(int64_t rows) { return (rows * 32 + kThreads - 1) / kThreads; }

template <typename T>
void launch_sq_norms(const T* u, int64_t b, const T* mu, int64_t k, int64_t dim, T* un, T* mn, cudaStream_t stream) {
  sq_norms_kernel<T><<<warp_blocks(b + k), kThreads, 0, stream>>>(u, b, mu, k, dim, un, mn);
}

template <typename T>
void launch_fwd_tiled(const T* u, const T* mu, const T* un, const T* mn, const T* ld, int64_t b, int64_t k, int64_t dim,
                      T c, T log_k, T* log_probs, T* part_m, T* part_s, int64_t* part_arg, T* loglik, int64_t* cluster,
                      cudaStream_t stream) {
  const int64_t tiles = (k + kTile - 1) / kTile;
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>((b + kTile - 1) / kTile));
  gmm_fwd_tiled_kernel<T><<<grid, kThreads, 0, stream>>>(u, mu, un, mn, ld, b, k, dim, c, log_probs, part_m, part_s,
                                                          part_arg);
  merge_partials_kernel<T><<<(b + kThreads - 1) / kThreads, kThreads, 0, stream>>>(part_m, part_s, part_arg, tiles, b,
                                                                                   k, log_k, loglik, cluster);
}

template <typename T>
void launch_fwd_rows(T* dot, const T* un, const T* mn, const T* ld, int64_t b, int64_t k, T c, T log_k, bool write,
                     T* loglik, int64_t* cluster, cudaStream_t stream) {
  fwd_rows_kernel<T><<<warp_blocks(b), kThreads, 0, stream>>>(dot, un, mn, ld, b, k, c, write, log_k, loglik, cluster);
}

template <typename T>
void launch_bwd_rows(const T* src, T* buf, bool from_dot, const T* un, const T* mn, const T* ld, const T* grad_ll,
                     const T* glp, const T* loglik, const T* u, int64_t b, int64_t k, int64_t dim, T c, T log_k,
                     T* rowsum, T* grad_u, cudaStream_t stream) {
  bwd_rows_kernel<T><<<warp_blocks(b), kThreads, 0, stream>>>(src, buf, from_dot, un, mn, ld, grad_ll, glp, loglik, u,
                                                              b, k, dim, c, log_k, rowsum, grad_u);
}

#define DLSA_INSTANTIATE(T)                                                                                        \
  template void launch_sq_norms<T>(const T*, int64_t, const T*, int64_t, int64_t, T*, T*, cudaStream_t);           \
  template void launch_fwd_tiled<T>(const T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, T, \
                                    T, T*, T*, T*, int64_t*, T*, int64_t*, cudaStream_t);                           \
  template void launch_fwd_rows<T>(T*, const T*, const T*, const T*, int64_t, int64_t, T, T, bool, T*, int64_t*,    \
                                   cudaStream_t);                                                                   \
  template void launch_bwd_rows<T>(const T*, T*, bool, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                   const T*, int64_t, int64_t, int64_t, T, T, T*, T*, cudaStream_t);
DLSA_INSTANTIATE(float)
DLSA_INSTANTIATE(double)
#undef DLSA_INSTANTIATE

}  // namespace cuda_kernels
}  // namespace dlsa_prod
