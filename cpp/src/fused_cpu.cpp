// The fused element-wise passes of fused_cpu.h. Each walks its tensors once, in address order, a
// token row of C channels at a time; rows are shared out among the threads.
//
// Compiled once per instruction set like bi_wkv_cpu.cpp (DRWKV_CPU_ISA names the namespace);
// bi_wkv_cpu_dispatch.cpp picks the build.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "drwkv/bi_wkv_math.h"
#include "drwkv/fused_cpu.h"

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

// What a token row becomes before the shift: h = (norm ? LayerNorm(x) : x) * scale1p + shift.
// The LayerNorm's statistics of every row are computed first, since the shift reads neighbours.
struct RowTransform {
  const float* sc = nullptr;   // scale1p of the row's image, or null: no modulation
  const float* sh = nullptr;
  const float* nw = nullptr;   // LayerNorm weight, or null: no LayerNorm
  const float* nb = nullptr;   // LayerNorm bias, or null
  const float* mean = nullptr; // per row of the whole tensor
  const float* rstd = nullptr;
};

template <bool kNorm, bool kModulate>
inline VecF transformed(const RowTransform& f, const float* p, int64_t row, int64_t c) {
  VecF z = load(p + c);
  if (kNorm) {
    z = (z - f.mean[row]) * f.rstd[row] * load(f.nw + c);
    if (f.nb != nullptr) z += load(f.nb + c);
  }
  return kModulate ? z * load(f.sc + c) + load(f.sh + c) : z;
}
template <bool kNorm, bool kModulate>
inline float transformed1(const RowTransform& f, const float* p, int64_t row, int64_t c) {
  float z = p[c];
  if (kNorm) {
    z = (z - f.mean[row]) * f.rstd[row] * f.nw[c];
    if (f.nb != nullptr) z += f.nb[c];
  }
  return kModulate ? z * f.sc[c] + f.sh[c] : z;
}

// The mixes of channels [c0, c1) of token `row` (values at x): h from x, xx from the neighbour row
// `nb_row` (at nb, transformed the same way) or zero when nb is null. Eight channels at a time.
template <int N, bool kNorm, bool kModulate>
inline void mix_channels(const RowTransform& f, const float* x, int64_t row, const float* nb, int64_t nb_row,
                         int64_t c0, int64_t c1, const float* const* mix, const float* const* keep,
                         float* const* out) {
  int64_t c = c0;
  for (; c + kWidth <= c1; c += kWidth) {
    const VecF h = transformed<kNorm, kModulate>(f, x, row, c);
    const VecF xx = nb == nullptr ? VecF{} : transformed<kNorm, kModulate>(f, nb, nb_row, c);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) store(out[i] + c, h * load(mix[i] + c) + xx * load(keep[i] + c));
  }
  for (; c < c1; ++c) {
    const float h = transformed1<kNorm, kModulate>(f, x, row, c);
    const float xx = nb == nullptr ? 0.0f : transformed1<kNorm, kModulate>(f, nb, nb_row, c);
#pragma GCC unroll 4
    for (int i = 0; i < N; ++i) out[i][c] = h * mix[i][c] + xx * keep[i][c];
  }
}

template <int N, bool kNorm, bool kModulate>
void shift_mix_typed(const float* x, const RowTransform& base, const float* scale1p, const float* shift, int64_t B,
                     int64_t H, int64_t W, int64_t C, const float* const* mix, const float* const* keep,
                     float* const* out, int threads) {
  const int64_t q = C / 4, T = H * W;
  for_rows(B * H, W * C * N, threads, [&](int64_t bi) {
    const int64_t b = bi / H, i = bi % H;
    RowTransform f = base;
    if (kModulate) f.sc = scale1p + b * C, f.sh = shift + b * C;
    for (int64_t j = 0; j < W; ++j) {
      const int64_t r = b * T + i * W + j, offset = r * C;
      const float* row = x + offset;
      float* o[N];
      for (int k = 0; k < N; ++k) o[k] = out[k] + offset;
      mix_channels<N, kNorm, kModulate>(f, row, r, j > 0 ? row - C : nullptr, r - 1, 0, q, mix, keep, o);
      mix_channels<N, kNorm, kModulate>(f, row, r, j < W - 1 ? row + C : nullptr, r + 1, q, 2 * q, mix, keep, o);
      mix_channels<N, kNorm, kModulate>(f, row, r, i > 0 ? row - W * C : nullptr, r - W, 2 * q, 3 * q, mix, keep, o);
      mix_channels<N, kNorm, kModulate>(f, row, r, i < H - 1 ? row + W * C : nullptr, r + W, 3 * q, 4 * q, mix, keep,
                                        o);
      mix_channels<N, kNorm, kModulate>(f, row, r, row, r, 4 * q, C, mix, keep, o);  // past the quarters: xx = h
    }
  });
}

template <int N>
void shift_mix_n(const float* x, const RowTransform& f, const float* scale1p, const float* shift, int64_t B,
                 int64_t H, int64_t W, int64_t C, const float* const* mix, const float* const* keep, float* const* out,
                 int threads) {
  const bool norm = f.nw != nullptr, modulate = scale1p != nullptr;
  if (norm && modulate) return shift_mix_typed<N, true, true>(x, f, scale1p, shift, B, H, W, C, mix, keep, out, threads);
  if (norm) return shift_mix_typed<N, true, false>(x, f, scale1p, shift, B, H, W, C, mix, keep, out, threads);
  if (modulate) return shift_mix_typed<N, false, true>(x, f, scale1p, shift, B, H, W, C, mix, keep, out, threads);
  shift_mix_typed<N, false, false>(x, f, scale1p, shift, B, H, W, C, mix, keep, out, threads);
}

// A growable aligned float buffer, one per thread that calls shift_mix (the rows' statistics).
// Not a std::vector<float>: see SimdBuffer in bi_wkv_cpu.cpp on instantiations shared by both builds.
float* stats_buffer(size_t n) {
  thread_local float* data = nullptr;
  thread_local size_t size = 0;
  if (n > size) {
    std::free(data);
    data = static_cast<float*>(std::malloc(n * sizeof(float)));
    if (data == nullptr) throw std::bad_alloc();
    size = n;
  }
  return data;
}

}  // namespace

namespace DRWKV_CPU_ISA {

void shift_mix(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W, int64_t C,
               int n, const float* const* mix, const float* const* keep, float* const* out, int threads,
               const LayerNormParams* norm) {
  RowTransform f;
  if (norm != nullptr) {
    // Mean and 1 / sqrt(var + eps) of every row: two passes over the row (in cache), the variance
    // from deviations rather than from squares, eight partial sums at a time.
    const int64_t rows = B * H * W;
    float* stats = stats_buffer(2 * rows);
    for_rows(rows, C, threads, [&](int64_t r) {
      const float* p = x + r * C;
      VecF lanes{};
      int64_t c = 0;
      for (; c + kWidth <= C; c += kWidth) lanes += load(p + c);
      double sum = 0.0;
      for (int e = 0; e < kWidth; ++e) sum += lanes[e];
      for (; c < C; ++c) sum += p[c];
      const float mean = float(sum / double(C));
      lanes = VecF{};
      for (c = 0; c + kWidth <= C; c += kWidth) {
        const VecF d = load(p + c) - mean;
        lanes += d * d;
      }
      double squares = 0.0;
      for (int e = 0; e < kWidth; ++e) squares += lanes[e];
      for (; c < C; ++c) squares += double(p[c] - mean) * double(p[c] - mean);
      stats[r] = mean;
      stats[rows + r] = float(1.0 / std::sqrt(squares / double(C) + double(norm->eps)));
    });
    f.nw = norm->weight, f.nb = norm->bias, f.mean = stats, f.rstd = stats + rows;
  }
  // Up to four mixes per pass (the model has two or three); more take further passes.
  for (int first = 0; first < n; first += 4) {
    const int count = std::min(4, n - first);
    const float* const* m = mix + first;
    const float* const* k = keep + first;
    float* const* o = out + first;
    switch (count) {
      case 1: shift_mix_n<1>(x, f, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      case 2: shift_mix_n<2>(x, f, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      case 3: shift_mix_n<3>(x, f, scale1p, shift, B, H, W, C, m, k, o, threads); break;
      default: shift_mix_n<4>(x, f, scale1p, shift, B, H, W, C, m, k, o, threads); break;
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
