// The fused element-wise passes of fused_cpu.h. Each walks its tensors once, in address order, a
// token row of C channels at a time; rows are shared out among the threads.
//
// Compiled once per instruction set like bi_wkv_cpu.cpp (DRWKV_CPU_ISA names the namespace);
// bi_wkv_cpu_dispatch.cpp picks the build.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "drwkv/bi_wkv_math.h"

namespace drwkv {
namespace {

using math::VecF;
constexpr int64_t kWidth = 8;

// Below this many values a pass runs on one thread: starting the others costs more.
constexpr int64_t kParallelValues = int64_t(1) << 15;

inline VecF load(const float* p) {
  VecF x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
inline void store(float* p, VecF x) { std::memcpy(p, &x, sizeof x); }

inline VecF lane_sigmoid(VecF r) { return 1.0f / (1.0f + math::lane_exp(-r)); }
inline float sigmoid(float r) { return 1.0f / (1.0f + std::exp(-r)); }

// Runs fn(row) for row in [0, rows) on `threads` threads (one when the work is small).
template <class Fn>
void for_rows(int64_t rows, int64_t values_per_row, int threads, Fn fn) {
#ifdef _OPENMP
  const int n = rows * values_per_row < kParallelValues ? 1 : threads;
#pragma omp parallel for schedule(static) num_threads(n)
  for (int64_t i = 0; i < rows; ++i) fn(i);
#else
  (void)values_per_row;
  (void)threads;
  for (int64_t i = 0; i < rows; ++i) fn(i);
#endif
}

// The mixes of channels [c0, c1) of one token: h from x (modulated), xx from the neighbour row
// `nb` (modulated the same way) or zero when nb is null. Eight channels at a time, then the rest.
template <bool kModulate>
inline VecF modulated(const float* p, const float* sc, const float* sh, int64_t c) {
  return kModulate ? load(p + c) * load(sc + c) + load(sh + c) : load(p + c);
}
template <bool kModulate>
inline float modulated1(const float* p, const float* sc, const float* sh, int64_t c) {
  return kModulate ? p[c] * sc[c] + sh[c] : p[c];
}

template <int N, bool kModulate>
inline void mix_channels(const float* x, const float* nb, const float* sc, const float* sh, int64_t c0,
                         int64_t c1, const float* const* mix, const float* const* keep, float* const* out) {
  int64_t c = c0;
  for (; c + kWidth <= c1; c += kWidth) {
    const VecF h = modulated<kModulate>(x, sc, sh, c);
    const VecF xx = nb == nullptr ? VecF{} : modulated<kModulate>(nb, sc, sh, c);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) store(out[i] + c, h * load(mix[i] + c) + xx * load(keep[i] + c));
  }
  for (; c < c1; ++c) {
    const float h = modulated1<kModulate>(x, sc, sh, c);
    const float xx = nb == nullptr ? 0.0f : modulated1<kModulate>(nb, sc, sh, c);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) out[i][c] = h * mix[i][c] + xx * keep[i][c];
  }
}

template <int N, bool kModulate>
void shift_mix_typed(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W,
                     int64_t C, const float* const* mix, const float* const* keep, float* const* out, int threads) {
  const int64_t q = C / 4, T = H * W;
  for_rows(B * H, W * C * N, threads, [&](int64_t bi) {
    const int64_t b = bi / H, i = bi % H;
    const float* sc = kModulate ? scale1p + b * C : nullptr;
    const float* sh = kModulate ? shift + b * C : nullptr;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t offset = (b * T + i * W + j) * C;
      const float* row = x + offset;
      float* o[N];
      for (int k = 0; k < N; ++k) o[k] = out[k] + offset;
      mix_channels<N, kModulate>(row, j > 0 ? row - C : nullptr, sc, sh, 0, q, mix, keep, o);
      mix_channels<N, kModulate>(row, j < W - 1 ? row + C : nullptr, sc, sh, q, 2 * q, mix, keep, o);
      mix_channels<N, kModulate>(row, i > 0 ? row - W * C : nullptr, sc, sh, 2 * q, 3 * q, mix, keep, o);
      mix_channels<N, kModulate>(row, i < H - 1 ? row + W * C : nullptr, sc, sh, 3 * q, 4 * q, mix, keep, o);
      mix_channels<N, kModulate>(row, row, sc, sh, 4 * q, C, mix, keep, o);  // past the quarters: xx = h
    }
  });
}

template <int N>
void shift_mix_n(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W,
                 int64_t C, const float* const* mix, const float* const* keep, float* const* out, int threads) {
  if (scale1p != nullptr) return shift_mix_typed<N, true>(x, scale1p, shift, B, H, W, C, mix, keep, out, threads);
  shift_mix_typed<N, false>(x, scale1p, shift, B, H, W, C, mix, keep, out, threads);
}

}  // namespace

namespace DRWKV_CPU_ISA {

void shift_mix(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W, int64_t C,
               int n, const float* const* mix, const float* const* keep, float* const* out, int threads) {
  // Up to four mixes per pass (the model has two or three); more take further passes.
  for (int first = 0; first < n; first += 4) {
    const int count = std::min(4, n - first);
    const float* const* m = mix + first;
    const float* const* k = keep + first;
    float* const* o = out + first;
    switch (count) {
      case 1: shift_mix_n<1>(x, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      case 2: shift_mix_n<2>(x, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      case 3: shift_mix_n<3>(x, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      default: shift_mix_n<4>(x, scale1p, shift, B, H, W, C, m, k, o, threads); break;
    }
  }
}

void sigmoid_gate(float* y, const float* r, int64_t n, int threads) {
  const int64_t block = 4096;
  for_rows((n + block - 1) / block, block, threads, [&](int64_t blk) {
    const int64_t start = blk * block, end = std::min(n, start + block);
    int64_t i = start;
    for (; i + kWidth <= end; i += kWidth) store(y + i, load(y + i) * lane_sigmoid(load(r + i)));
    for (; i < end; ++i) y[i] *= sigmoid(r[i]);
  });
}

void relu_square(float* y, int64_t n, int threads) {
  const int64_t block = 4096;
  for_rows((n + block - 1) / block, block, threads, [&](int64_t blk) {
    const int64_t start = blk * block, end = std::min(n, start + block);
    int64_t i = start;
    for (; i + kWidth <= end; i += kWidth) {
      const VecF v = load(y + i);
      const VecF r = v > 0.0f ? v : (v == v ? VecF{} : v);  // NaN stays NaN, as relu's
      store(y + i, r * r);
    }
    for (; i < end; ++i) {
      const float r = y[i] > 0.0f ? y[i] : (y[i] == y[i] ? 0.0f : y[i]);
      y[i] = r * r;
    }
  });
}

void gated_residual(const float* x, const float* gate, const float* branch, const float* r, float* out, int64_t B,
                    int64_t T, int64_t C, int threads) {
  for_rows(B * T, C, threads, [&](int64_t row) {
    const float* g = gate + (row / T) * C;
    const int64_t offset = row * C;
    const float* xr = x + offset;
    const float* br = branch + offset;
    float* o = out + offset;
    int64_t c = 0;
    if (r != nullptr) {
      const float* rr = r + offset;
      for (; c + kWidth <= C; c += kWidth)
        store(o + c, load(xr + c) + load(g + c) * (lane_sigmoid(load(rr + c)) * load(br + c)));
      for (; c < C; ++c) o[c] = xr[c] + g[c] * (sigmoid(rr[c]) * br[c]);
    } else {
      for (; c + kWidth <= C; c += kWidth) store(o + c, load(xr + c) + load(g + c) * load(br + c));
      for (; c < C; ++c) o[c] = xr[c] + g[c] * br[c];
    }
  });
}

}  // namespace DRWKV_CPU_ISA
}  // namespace drwkv
