// Bi-WKV on the CPU. The maths is in bi_wkv_math.h; this file only decides who scans what.
//
// Work is split into tasks of (batch b, block of CB channels, segment of T). Three phases:
//   1. each task sums its segment into one left-side and one right-side anchored sum per channel;
//   2. per (b, channel) the sums of the other segments are merged into the sums entering each segment;
//   3. each task walks its segment right to left (recording the right-side sum at every token),
//      then left to right, producing the outputs.
// With enough (b, channel block) pairs to keep every thread busy there is a single segment and
// phases 1-2 vanish; long sequences with few channels get split along T instead.
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "drwkv/bi_wkv.h"
#include "drwkv/half.h"
#include "drwkv/bi_wkv_ops.h"

namespace drwkv {
namespace {

using math::kLeft;
using math::kRight;

constexpr int64_t kChannelBlock = 16;
constexpr int64_t kMinSegment = 512;

template <class IO> struct CalcOf { using type = float; };
template <> struct CalcOf<double> { using type = double; };

// Long sums accumulate in double: float32 results stay exact to a few ulps for any T.
template <class IO> using CpuForward = ForwardOp<IO, typename CalcOf<IO>::type, double>;
template <class IO> using CpuBackward = BackwardOp<IO, typename CalcOf<IO>::type, double>;

int resolve_threads(int threads) {
  if (threads > 0) return threads;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Runs `fn(task)` for task in [0, n) on `threads` threads.
template <class Fn>
void parallel_for(int64_t n, int threads, Fn fn) {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
  for (int64_t i = 0; i < n; ++i) fn(i);
#else
  (void)threads;
  for (int64_t i = 0; i < n; ++i) fn(i);
#endif
}

// The three-phase bidirectional scan shared by forward and backward. `Op` supplies, for element
// (b, t, c): key() the logit of the token, values() what it carries, and output() which consumes
// the left and right sums at that position and may add to per-channel partial reductions.
template <class Sum, class Op>
void bidirectional_scan(const Op& op, int64_t B, int64_t T, int64_t C, int threads,
                        std::vector<typename Op::AccT>* partials) {
  using Acc = typename Op::AccT;
  const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t bc_tasks = B * n_blocks;
  int64_t n_seg = 1;
  if (bc_tasks < 4 * threads) {
    n_seg = std::min<int64_t>((4 * threads + bc_tasks - 1) / bc_tasks, std::max<int64_t>(1, T / kMinSegment));
  }
  const int64_t seg_len = (T + n_seg - 1) / n_seg;
  n_seg = (T + seg_len - 1) / seg_len;
  const int64_t n_tasks = bc_tasks * n_seg;
  auto task_range = [&](int64_t task, int64_t* b, int64_t* c0, int64_t* c1, int64_t* s) {
    *s = task % n_seg;
    const int64_t bc = task / n_seg;
    *b = bc / n_blocks;
    *c0 = (bc % n_blocks) * kChannelBlock;
    *c1 = std::min(C, *c0 + kChannelBlock);
  };

  // Sums entering each segment from the left and from the right, [task][channel in block].
  std::vector<Sum> enter_left(n_tasks * kChannelBlock), enter_right(n_tasks * kChannelBlock);
  for (auto& x : enter_left) x.clear();
  for (auto& x : enter_right) x.clear();
  if (n_seg > 1) {
    std::vector<Sum> seg_left(enter_left.size()), seg_right(enter_right.size());
    parallel_for(n_tasks, threads, [&](int64_t task) {
      int64_t b, c0, c1, s;
      task_range(task, &b, &c0, &c1, &s);
      Sum* L = &seg_left[task * kChannelBlock];
      Sum* R = &seg_right[task * kChannelBlock];
      Acc x[Sum::kValues];
      for (int64_t c = c0; c < c1; ++c) L[c - c0].clear(), R[c - c0].clear();
      for (int64_t t = s * seg_len; t < std::min(T, (s + 1) * seg_len); ++t)
        for (int64_t c = c0; c < c1; ++c) {
          const auto key = op.key(b, t, c);
          op.values(b, t, c, x);
          L[c - c0].template push<kLeft>(t, key, x, op.w(c));
          R[c - c0].template push<kRight>(t, key, x, op.w(c));
        }
    });
    parallel_for(bc_tasks, threads, [&](int64_t bc) {
      const int64_t c0 = (bc % n_blocks) * kChannelBlock;
      for (int64_t j = 0; j < kChannelBlock && c0 + j < C; ++j) {
        const auto w = op.w(c0 + j);
        for (int64_t s = 1; s < n_seg; ++s) {
          Sum acc = enter_left[(bc * n_seg + s - 1) * kChannelBlock + j];
          acc.template merge<kLeft>(seg_left[(bc * n_seg + s - 1) * kChannelBlock + j], w);
          enter_left[(bc * n_seg + s) * kChannelBlock + j] = acc;
        }
        for (int64_t s = n_seg - 2; s >= 0; --s) {
          Sum acc = enter_right[(bc * n_seg + s + 1) * kChannelBlock + j];
          acc.template merge<kRight>(seg_right[(bc * n_seg + s + 1) * kChannelBlock + j], w);
          enter_right[(bc * n_seg + s) * kChannelBlock + j] = acc;
        }
      }
    });
  }

  if (partials) partials->assign(n_tasks * kChannelBlock * Op::kPartials, Acc(0));
  parallel_for(n_tasks, threads, [&](int64_t task) {
    int64_t b, c0, c1, s;
    task_range(task, &b, &c0, &c1, &s);
    const int64_t t0 = s * seg_len, t1 = std::min(T, t0 + seg_len), width = c1 - c0;
    std::vector<Sum> right_at((t1 - t0) * width);  // right-side sum at each token of the segment
    Sum cur[kChannelBlock];
    Acc x[Sum::kValues];
    for (int64_t j = 0; j < width; ++j) cur[j] = enter_right[task * kChannelBlock + j];
    for (int64_t t = t1 - 1; t >= t0; --t)
      for (int64_t j = 0; j < width; ++j) {
        right_at[(t - t0) * width + j] = cur[j];
        op.values(b, t, c0 + j, x);
        cur[j].template push<kRight>(t, op.key(b, t, c0 + j), x, op.w(c0 + j));
      }
    for (int64_t j = 0; j < width; ++j) cur[j] = enter_left[task * kChannelBlock + j];
    Acc* part = partials ? &(*partials)[task * kChannelBlock * Op::kPartials] : nullptr;
    for (int64_t t = t0; t < t1; ++t)
      for (int64_t j = 0; j < width; ++j) {
        op.output(b, t, c0 + j, cur[j], right_at[(t - t0) * width + j], part ? part + j * Op::kPartials : nullptr);
        op.values(b, t, c0 + j, x);
        cur[j].template push<kLeft>(t, op.key(b, t, c0 + j), x, op.w(c0 + j));
      }
  });
}

template <class IO>
void forward_typed(const void* w, const void* u, const void* k, const void* v, void* y, void* lse, int64_t B,
                   int64_t T, int64_t C, int threads) {
  using Op = CpuForward<IO>;
  using Calc = typename CalcOf<IO>::type;
  Op op{static_cast<const Calc*>(w), static_cast<const Calc*>(u), static_cast<const IO*>(k),
        static_cast<const IO*>(v), static_cast<IO*>(y), static_cast<Calc*>(lse), T, C};
  bidirectional_scan<typename Op::Sum>(op, B, T, C, threads, nullptr);
}

template <class IO>
void backward_typed(const void* w, const void* u, const void* k, const void* v, const void* y, const void* lse,
                    const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B, int64_t T, int64_t C,
                    int threads) {
  using Op = CpuBackward<IO>;
  using Calc = typename CalcOf<IO>::type;
  Op op{static_cast<const Calc*>(w), static_cast<const Calc*>(u), static_cast<const IO*>(k),
        static_cast<const IO*>(v), static_cast<const IO*>(y), static_cast<const Calc*>(lse),
        static_cast<const IO*>(gy), static_cast<IO*>(gk), static_cast<IO*>(gv), T, C};
  std::vector<double> partials;
  bidirectional_scan<typename Op::Sum>(op, B, T, C, threads, &partials);
  // Deterministic reduction of the per-task partials over batch and segments.
  const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t n_tasks = static_cast<int64_t>(partials.size()) / (kChannelBlock * Op::kPartials);
  const int64_t per_block = n_tasks / (B * n_blocks);
  std::vector<double> sw(C, 0.0), su(C, 0.0);
  for (int64_t task = 0; task < n_tasks; ++task) {
    const int64_t c0 = ((task / per_block) % n_blocks) * kChannelBlock;
    for (int64_t j = 0; j < kChannelBlock && c0 + j < C; ++j) {
      sw[c0 + j] += partials[(task * kChannelBlock + j) * Op::kPartials + 0];
      su[c0 + j] += partials[(task * kChannelBlock + j) * Op::kPartials + 1];
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    static_cast<Calc*>(gw)[c] = Calc(sw[c]);
    static_cast<Calc*>(gu)[c] = Calc(su[c]);
  }
}

}  // namespace

void bi_wkv_forward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, void* y,
                        void* lse, int64_t B, int64_t T, int64_t C, int threads) {
  threads = resolve_threads(threads);
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(w, u, k, v, y, lse, B, T, C, threads);
    case DType::kFloat16: return forward_typed<Half>(w, u, k, v, y, lse, B, T, C, threads);
    case DType::kFloat64: return forward_typed<double>(w, u, k, v, y, lse, B, T, C, threads);
  }
  throw std::invalid_argument("bi_wkv_forward_cpu: unsupported dtype");
}

void bi_wkv_backward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, const void* y,
                         const void* lse, const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B,
                         int64_t T, int64_t C, int threads) {
  threads = resolve_threads(threads);
  switch (dtype) {
    case DType::kFloat32: return backward_typed<float>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
    case DType::kFloat16: return backward_typed<Half>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
    case DType::kFloat64: return backward_typed<double>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
  }
  throw std::invalid_argument("bi_wkv_backward_cpu: unsupported dtype");
}

}  // namespace drwkv
