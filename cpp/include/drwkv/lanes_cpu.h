// SIMD lanes for the CPU kernels: 8 channels per vector (GCC/Clang vector extensions), logits in
// float32 (one AVX register) and long sums in float64 (two), with the overloads bi_wkv_math.h
// needs. exp and log are branch-free polynomial versions (Cephes-style,
// about 1 ulp) so that whole vectors of channels are computed at once.
#pragma once

#if !defined(__CUDACC__)
#include <cstdint>
#include <cstring>

namespace drwkv {
inline namespace DRWKV_KERNEL_NS {
namespace math {

typedef float VecF __attribute__((vector_size(32)));
typedef double VecD __attribute__((vector_size(64)));
typedef int32_t VecI __attribute__((vector_size(32)));
typedef int64_t VecL __attribute__((vector_size(64)));

template <> struct Lane<VecF> { using Elem = float; static constexpr int kWidth = 8; };
template <> struct Lane<VecD> { using Elem = double; static constexpr int kWidth = 8; };

inline VecF select(VecI m, VecF a, VecF b) { return m ? a : b; }
inline VecD select(VecL m, VecD a, VecD b) { return m ? a : b; }
template <class Acc> inline Acc to_acc(VecF x) { return __builtin_convertvector(x, Acc); }
template <class Calc> inline Calc to_calc_lane(VecD x) { return __builtin_convertvector(x, Calc); }
inline VecF lane_abs(VecF x) { return x < 0.0f ? -x : x; }
inline VecF lane_max(VecF a, VecF b) { return a > b ? a : b; }
// True when every lane of a comparison result is set.
inline bool all_of(VecI m) {
  for (int j = 0; j < Lane<VecF>::kWidth; ++j)
    if (!m[j]) return false;
  return true;
}

inline VecF lane_exp(VecF x) {
  const VecF zero = {}, one = zero + 1.0f;
  // Beyond these bounds the result is 0 or inf (set at the end); clamping first keeps the
  // exponent arithmetic in range. Above 88.3 the scale 2^n would overflow to inf anyway.
  const VecF xc = x < -87.33f ? zero - 87.33f : (x > 88.3f ? zero + 88.3f : x);
  // n = nearest integer to x / ln 2 (adding and subtracting 1.5 * 2^23 rounds), so |r| <= ln 2 / 2.
  const VecF n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const VecF r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const VecF z = r * r;
  VecF p = 1.9875691500e-4f * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + one;
  const VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF scale;
  std::memcpy(&scale, &bits, sizeof scale);
  VecF result = p * scale;
  result = x < -87.33f ? zero : result;
  result = x > 88.3f ? zero + INFINITY : result;
  return result;
}

// Natural log of positive normal numbers (the denominators here are at least about 1).
inline VecF lane_log(VecF x) {
  VecI bits;
  std::memcpy(&bits, &x, sizeof bits);
  VecF e = __builtin_convertvector(((bits >> 23) & 0xff) - 127, VecF);
  const VecI mant_bits = (bits & 0x7fffff) | 0x3f800000;
  VecF m;
  std::memcpy(&m, &mant_bits, sizeof m);  // m in [1, 2)
  const auto big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1.0f : e;
  const VecF f = m - 1.0f, z = f * f;
  VecF p = 7.0376836292e-2f * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  VecF y = p * f * z;
  y = y + e * -2.12194440e-4f;
  y = y - 0.5f * z;
  return f + y + e * 0.693359375f;
}

}  // namespace math
}  // namespace DRWKV_KERNEL_NS
}  // namespace drwkv
#endif
