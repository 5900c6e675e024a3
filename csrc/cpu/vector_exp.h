// exp(x) for float in a form GCC auto-vectorises (no libm call, no branches): Cody-Waite
// range reduction by ln 2 and the Cephes degree-5 polynomial; max relative error ~2e-7 on
// the range used here (x <= 0).  Inputs below -87.3 return 0 (below FLT_MIN anyway).
#pragma once

#include <cstdint>
#include <cstring>

namespace dlsa_prod {

inline float vector_exp(float x) {
  const float under = x < -87.3f ? 0.0f : 1.0f;
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float fx = x * 1.44269504088896341f + 0.5f;
  float n = static_cast<float>(static_cast<int32_t>(fx));
  n = n > fx ? n - 1.0f : n;  // floor
  const float g = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * g + 1.3981999507e-3f;
  y = y * g + 8.3334519073e-3f;
  y = y * g + 4.1665795894e-2f;
  y = y * g + 1.6666665459e-1f;
  y = y * g + 5.0000001201e-1f;
  y = y * g * g + g + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return y * scale * under;
}

inline double vector_exp(double x) { return __builtin_exp(x); }

}  // namespace dlsa_prod
