// How every GMM kernel stores one row's result, non-finite rows included (the rule is stated
// in include/dlsa_prod/ops.h; dlsa_prod/ops/gmm_torch.py applies the same one).  Plain C++,
// also compiled by nvcc for the device.
#pragma once

#include <cstdint>
#include <limits>

#if defined(__CUDACC__)
#define DLSA_PROD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DLSA_PROD_HOST_DEVICE inline
#endif

namespace dlsa_prod {

// ll: logsumexp_k log p_k - log K as computed (NaN when a term was NaN or two were +inf,
// +inf when one was +inf or the sum overflowed, -inf when every term was -inf); arg: the
// row's first argmax (may be out of range for a non-finite row).
template <typename T>
DLSA_PROD_HOST_DEVICE void store_row_result(T ll, int64_t arg, T* loglik, int64_t* cluster) {
  const bool finite = ll - ll == T(0);  // false for NaN and for +-inf
  if (finite) {
    *loglik = ll;
    *cluster = arg;
  } else {
    *loglik = ll < T(0) ? ll : ll - ll;  // -inf stays; +inf - +inf and NaN give NaN
    *cluster = 0;
  }
}

// loglik of a row with no entry above -inf: NaN when an entry is NaN, else -inf (host rows;
// the CUDA kernels carry NaN through their running max instead).
template <typename T>
inline T loglik_without_finite_max(const T* row, int64_t k) {
  for (int64_t j = 0; j < k; ++j)
    if (row[j] != row[j]) return std::numeric_limits<T>::quiet_NaN();
  return -std::numeric_limits<T>::infinity();
}

}  // namespace dlsa_prod
