// SIMD lanes for the CPU kernels: 8 channels per vector (GCC/Clang vector extensions), logits in
// float32 (one AVX register) and long sums in float64 (two), with the overloads bi_wkv_math.h
// needs. exp and log are branch-free polynomial versions (log Cephes-style, about 1 ulp; exp
// within 2 ulp) so that whole vectors of channels are computed at once.
#pragma once

#if !defined(__CUDACC__)
#include <cstdint>
#include <cstring>
#if defined(__AVX__)
#include <immintrin.h>
#endif

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

// exp(x) for x in [-87.33, 88.3], where neither 2^n below overflows nor the result is subnormal.
inline VecF exp_in_range(VecF x) {
  const VecF one = VecF{} + 1.0f;
  // t = x / ln 2 + 1.5 * 2^23 rounds: t - 1.5 * 2^23 = n, the nearest integer to x / ln 2, so that
  // |r| <= ln 2 / 2; and t's low mantissa bits hold n, from which 2^n is built.
  const VecF t = x * 1.44269504088896341f + 12582912.0f;
  const VecF n = t - 12582912.0f;
  const VecF r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  // exp(r) = 1 + r + r^2 q(r), q a cubic fitted to the least largest relative error over
  // |r| <= ln 2 / 2: exp is then within 2e-7 (2 ulp) of exact over the whole range.
  const VecF z = r * r;
  VecF p = 8.3124954253e-3f * r + 4.1890051216e-2f;
  p = p * r + 1.6667114198e-1f;
  p = p * r + 4.9999231100e-1f;
  p = p * z + r + one;
  VecI bits;
  std::memcpy(&bits, &t, sizeof bits);
  bits = (bits + 127) << 23;  // (n + 127) << 23: t's bits are n + 0x4B400000, whose top part shifts out
  VecF scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline VecF lane_exp(VecF x) {
  const VecF zero = {};
  // Beyond these bounds the result is 0 or inf (set at the end); NaN stays NaN.
  const VecF xc = x < -87.33f ? zero - 87.33f : (x > 88.3f ? zero + 88.3f : x);
  VecF result = exp_in_range(xc);
  result = x < -87.33f ? zero : result;
  result = x > 88.3f ? zero + INFINITY : result;
  return result;
}

// exp(x) for x <= 0 (or NaN), the chunked forward's weights: no overflow to handle, and below
// -87.33 the result stays at exp(-87.33) = 1.2e-38, nothing next to the chunk's largest weight, 1.
inline VecF lane_exp_nonpositive(VecF x) {
  return exp_in_range(x < -87.33f ? VecF{} - 87.33f : x);
}

// Stores a vector at p (32-byte aligned) around the caches, for outputs too large to stay in
// them: no line is read in before it is written. stream_fence() orders such stores before later ones.
inline void stream_store(float* p, VecF x) {
#if defined(__AVX__)
  _mm256_stream_ps(p, (__m256)x);
#else
  std::memcpy(p, &x, sizeof x);
#endif
}
inline void stream_fence() {
#if defined(__AVX__)
  _mm_sfence();
#endif
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
