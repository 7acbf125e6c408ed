// drwkv/noise.py in C++. Built with -ffp-contract=off (no fused multiply-adds): each operation
// rounds once, as numpy's array operations do, which makes the float64 results identical.
#include "drwkv/noise.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace drwkv {
namespace {

constexpr uint32_t kPhiloxM0 = 0xD2511F53u, kPhiloxM1 = 0xCD9E8D57u;  // round multipliers
constexpr uint32_t kPhiloxW0 = 0x9E3779B9u, kPhiloxW1 = 0xBB67AE85u;  // Weyl key increments
constexpr int kPhiloxRounds = 10;

constexpr double kLn2 = 0.6931471805599453;
constexpr double kSqrtHalf = 0.7071067811865476;
constexpr double kPiOver2To31 = 1.4629180792671596e-09;  // pi / 2^31
// 1 / (2k + 1), k = 0 .. 10 (log m = 2 atanh s)
constexpr double kAtanh[] = {1.0, 0.3333333333333333, 0.2, 0.14285714285714285, 0.1111111111111111,
                             0.09090909090909091, 0.07692307692307693, 0.06666666666666667, 0.058823529411764705,
                             0.05263157894736842, 0.047619047619047616};
// (-1)^k / (2k + 1)!, k = 0 .. 8, and (-1)^k / (2k)!, k = 0 .. 9
constexpr double kSin[] = {1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984,
                           2.7557319223985893e-06, -2.505210838544172e-08, 1.6059043836821613e-10,
                           -7.647163731819816e-13, 2.8114572543455206e-15};
constexpr double kCos[] = {1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05,
                           -2.755731922398589e-07, 2.08767569878681e-09, -1.1470745597729725e-11,
                           4.779477332387385e-14, -1.5619206968586225e-16};

// c0 + x (c1 + x (c2 + ...)), from the innermost term out.
template <size_t N>
double horner(double x, double const (&c)[N]) {
  double y = c[N - 1];
  for (size_t k = N - 1; k-- > 0;) y = y * x + c[k];
  return y;
}

// log((a + 1) / 2^32): a + 1 = m 2^e, m in [sqrt(1/2), sqrt(2)), log m = 2 atanh((m - 1) / (m + 1)).
double log_uniform(uint32_t a) {
  int e = 0;
  double m = std::frexp(double(a) + 1.0, &e);  // m in [1/2, 1), exact
  if (m < kSqrtHalf) {
    m = m * 2.0;
    e -= 1;
  }
  double const f = m - 1.0;  // exact (Sterbenz)
  double const s = f / (f + 2.0);
  return double(e - 32) * kLn2 + 2.0 * s * horner(s * s, kAtanh);
}

// (cos, sin) of 2 pi b / 2^32: b = n 2^30 + d with the nearest quarter turn n, |d| <= 2^29.
std::array<double, 2> cos_sin_turn(uint32_t b) {
  int64_t const n = (int64_t(b) + (int64_t(1) << 29)) >> 30;
  double const x = double(int64_t(b) - (n << 30)) * kPiOver2To31;
  double const x2 = x * x;
  double const s = x * horner(x2, kSin), c = horner(x2, kCos);
  switch (n & 3) {
    case 0: return {c, s};
    case 1: return {-s, c};
    case 2: return {-c, -s};
    default: return {s, -c};
  }
}

}  // namespace

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> key) {
  for (int round = 0; round < kPhiloxRounds; ++round) {
    uint64_t const p0 = uint64_t(kPhiloxM0) * c[0], p1 = uint64_t(kPhiloxM1) * c[2];
    c = {uint32_t(p1 >> 32) ^ c[1] ^ key[0], uint32_t(p1), uint32_t(p0 >> 32) ^ c[3] ^ key[1], uint32_t(p0)};
    key = {key[0] + kPhiloxW0, key[1] + kPhiloxW1};
  }
  return c;
}

std::array<double, 2> box_muller(uint32_t a, uint32_t b) {
  double const r = std::sqrt(-2.0 * log_uniform(a));
  std::array<double, 2> const cos_sin = cos_sin_turn(b);
  return {r * cos_sin[0], r * cos_sin[1]};
}

void standard_normal(uint64_t seed, uint64_t image, uint32_t step, int64_t numel, float* out) {
  if (numel < 0 || numel > (int64_t(1) << 34))
    throw std::invalid_argument("an image of " + std::to_string(numel) +
                                " elements is more than the noise generator addresses (2^34)");
  std::array<uint32_t, 2> const key = {uint32_t(seed), uint32_t(seed >> 32)};
  for (int64_t block = 0; 4 * block < numel; ++block) {
    std::array<uint32_t, 4> const w =
        philox4x32_10({uint32_t(block), step, uint32_t(image), uint32_t(image >> 32)}, key);
    std::array<double, 2> const z01 = box_muller(w[0], w[1]), z23 = box_muller(w[2], w[3]);
    double const z[4] = {z01[0], z01[1], z23[0], z23[1]};
    for (int64_t k = 0; k < 4 && 4 * block + k < numel; ++k) out[4 * block + k] = float(z[k]);
  }
}

}  // namespace drwkv
