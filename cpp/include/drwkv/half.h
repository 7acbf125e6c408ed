// IEEE binary16 storage for host code, with round-to-nearest-even conversion to and from float.
#pragma once

#include <cstdint>
#include <cstring>

#include "drwkv/bi_wkv_ops.h"

namespace drwkv {
inline namespace DRWKV_KERNEL_NS {

struct Half {
  uint16_t bits;
};

inline float half_to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  uint32_t exp = (h.bits >> 10) & 0x1fu;
  uint32_t mant = h.bits & 0x3ffu;
  uint32_t out;
  if (exp == 0x1f) {
    out = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    out = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    out = sign;
  } else {  // subnormal: normalise
    exp = 113;
    while (!(mant & 0x400u)) mant <<= 1, --exp;
    out = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &out, sizeof f);
  return f;
}

inline Half float_to_half(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) return Half{uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u))};
  if (abs >= 0x477ff000u) return Half{uint16_t(sign | 0x7c00u)};  // rounds past 65504: inf
  if (abs < 0x38800000u) {  // below the smallest normal half: subnormal or zero
    if (abs < 0x33000000u) return Half{sign};
    const uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14 .. 24
    uint32_t h = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half_way = 1u << (shift - 1);
    if (rem > half_way || (rem == half_way && (h & 1u))) ++h;
    return Half{uint16_t(sign | h)};
  }
  uint32_t h = ((abs - 0x38000000u) >> 13);
  const uint32_t rem = abs & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return Half{uint16_t(sign | h)};
}

// Hooks for the kernels in bi_wkv_ops.h.
inline float to_calc(Half h) { return half_to_float(h); }
inline void store_io(Half* p, float x) { *p = float_to_half(x); }

}  // namespace DRWKV_KERNEL_NS
}  // namespace drwkv
