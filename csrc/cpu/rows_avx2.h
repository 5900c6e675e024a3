// AVX2 + FMA versions (float32) of the per-row passes of the CPU GMM kernels, chosen at run
// time when the CPU has both (cpu_has_avx2_fma); the portable loops in gmm_loglik_cpu.cpp
// are the fallback and the float64 path.  GCC does not auto-vectorise the exp polynomial
// (it keeps its clamps as control flow), hence intrinsics, in functions compiled for
// AVX2/FMA by target attribute, so the rest of the extension still runs on any x86-64.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DLSA_PROD_HAVE_AVX2_ROWS 1
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "../row_result.h"
#include "vector_exp.h"

namespace dlsa_prod {
namespace {

#define DLSA_AVX2 __attribute__((target("avx2,fma")))

// DLSA_PROD_CPU_SIMD=off forces the portable loops (tests compare both paths).
inline bool cpu_has_avx2_fma() {
  static const bool ok = [] {
    const char* env = std::getenv("DLSA_PROD_CPU_SIMD");
    const bool off = env != nullptr && (std::strcmp(env, "off") == 0 || std::strcmp(env, "0") == 0);
    return !off && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return ok;
}

// exp on 8 lanes: the same Cody-Waite reduction and Cephes polynomial as vector_exp (max
// relative error ~2e-7); below -87.3 gives 0, NaN stays NaN.
DLSA_AVX2 inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_set1_ps(88.3f), _mm256_max_ps(lo, x));  // operand order keeps NaN
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 g = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  g = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), g);
  __m256 y = _mm256_set1_ps(1.9875691500e-4f);
  y = _mm256_fmadd_ps(y, g, _mm256_set1_ps(1.3981999507e-3f));
  y = _mm256_fmadd_ps(y, g, _mm256_set1_ps(8.3334519073e-3f));
  y = _mm256_fmadd_ps(y, g, _mm256_set1_ps(4.1665795894e-2f));
  y = _mm256_fmadd_ps(y, g, _mm256_set1_ps(1.6666665459e-1f));
  y = _mm256_fmadd_ps(y, g, _mm256_set1_ps(5.0000001201e-1f));
  y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(y, g), g, g), _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

DLSA_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

DLSA_AVX2 inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Forward row (see forward_row): log p_k in place, first argmax, logsumexp - log_k.
DLSA_AVX2 void forward_row_avx2(float* __restrict__ row, const float* __restrict__ mn, float base, int64_t k,
                                float log_k, float* loglik, int64_t* cluster) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const __m256 vbase = _mm256_set1_ps(base), half = _mm256_set1_ps(-0.5f);
  __m256 vmax = _mm256_set1_ps(ninf);
  const int64_t k8 = k - k % 8;
  for (int64_t j = 0; j < k8; j += 8) {
    const __m256 x = _mm256_add_ps(_mm256_fmadd_ps(_mm256_loadu_ps(mn + j), half, _mm256_loadu_ps(row + j)), vbase);
    _mm256_storeu_ps(row + j, x);
    vmax = _mm256_max_ps(x, vmax);  // a NaN x leaves the running max alone, as the scalar loop
  }
  float m = hmax8(vmax);
  for (int64_t j = k8; j < k; ++j) {
    const float x = row[j] - 0.5f * mn[j] + base;
    row[j] = x;
    m = x > m ? x : m;
  }
  if (m == ninf) return store_row_result(loglik_without_finite_max(row, k), int64_t(0), loglik, cluster);
  int64_t arg = 0;
  const __m256 vm = _mm256_set1_ps(m);
  for (; arg < k8; arg += 8) {
    const int hits = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(row + arg), vm, _CMP_EQ_OQ));
    if (hits != 0) {
      arg += __builtin_ctz(static_cast<unsigned>(hits));
      break;
    }
  }
  if (arg >= k8)
    while (arg < k && row[arg] != m) ++arg;  // first maximum, as torch.argmax
  __m256 acc = _mm256_setzero_ps();
  for (int64_t j = 0; j < k8; j += 8) acc = _mm256_add_ps(acc, exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), vm)));
  float s = hsum8(acc);
  for (int64_t j = k8; j < k; ++j) s += vector_exp(row[j] - m);
  store_row_result(m + std::log(s) - log_k, arg, loglik, cluster);
}

// Backward row (see backward_row): G_j = g exp(L_j - lse) + glp_j from src into dst (may be
// src); returns sum_j G_j.
DLSA_AVX2 float backward_row_avx2(const float* src, float* dst, const float* __restrict__ glp, float lse, float g,
                                  int64_t k) {
  const __m256 vl = _mm256_set1_ps(lse), vg = _mm256_set1_ps(g);
  __m256 acc = _mm256_setzero_ps();
  const int64_t k8 = k - k % 8;
  for (int64_t j = 0; j < k8; j += 8) {
    __m256 v = _mm256_mul_ps(vg, exp8(_mm256_sub_ps(_mm256_loadu_ps(src + j), vl)));
    if (glp != nullptr) v = _mm256_add_ps(v, _mm256_loadu_ps(glp + j));
    _mm256_storeu_ps(dst + j, v);
    acc = _mm256_add_ps(acc, v);
  }
  float s = hsum8(acc);
  for (int64_t j = k8; j < k; ++j) {
    const float v = g * vector_exp(src[j] - lse) + (glp != nullptr ? glp[j] : 0.0f);
    dst[j] = v;
    s += v;
  }
  return s;
}

#undef DLSA_AVX2

}  // namespace
}  // namespace dlsa_prod
#endif
