// Bi-WKV on the CPU. The maths is in bi_wkv_math.h; this file only decides who scans what.
//
// Work is split into tasks of (batch b, block of CB channels, segment of T). Three phases:
//   1. each task sums its segment into one left-side and one right-side anchored sum per channel;
//   2. per (b, channel) the sums of the other segments are merged into the sums entering each segment;
//   3. each task walks its segment right to left (recording the right-side sum at every token),
//      then left to right, producing the outputs.
// With enough (b, channel block) pairs to keep every thread busy there is a single segment and
// phases 1-2 vanish; long sequences with few channels get split along T instead.
//
// This file is compiled once per instruction set (DRWKV_CPU_ISA names the namespace, see
// CMakeLists.txt); bi_wkv_cpu_dispatch.cpp picks the best one the processor supports.
#include <algorithm>
#include <cstring>
#include <utility>
#include <stdexcept>
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

// float32 and float16 run 4 channels per SIMD lane; float64 (for exact checks) one channel per lane.
// Long sums accumulate in double: float32 results stay exact to a few ulps for any T.
template <class IO> struct CalcOf { using elem = float; using calc = math::VecF; using acc = math::VecD; };
template <> struct CalcOf<double> { using elem = double; using calc = double; using acc = double; };
template <class IO> using CpuForward = ForwardOp<IO, typename CalcOf<IO>::calc, typename CalcOf<IO>::acc>;
template <class IO> using CpuBackward = BackwardOp<IO, typename CalcOf<IO>::calc, typename CalcOf<IO>::acc>;

inline double lane_value(double x, int) { return x; }
inline double lane_value(const math::VecD& x, int e) { return x[e]; }

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

// The three-phase bidirectional scan shared by forward and backward. `Op` supplies, for a lane of
// channels starting at c in row (b, t): key() the tokens' logits, values() what they carry, and
// output() which consumes the left and right sums there and may add to per-lane partial sums.
template <class Op>
void bidirectional_scan(const Op& op, int64_t B, int64_t T, int64_t C, int threads,
                        std::vector<typename Op::AccT>* partials) {
  using Sum = typename Op::Sum;
  using Acc = typename Op::AccT;
  using Calc = typename Op::CalcT;
  constexpr int kWidth = math::Lane<Calc>::kWidth;
  constexpr int kLanes = kChannelBlock / kWidth;  // lanes per task
  const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t bc_tasks = B * n_blocks;
  int64_t n_seg = 1;
  if (bc_tasks < 4 * threads) {
    n_seg = std::min<int64_t>((4 * threads + bc_tasks - 1) / bc_tasks, std::max<int64_t>(1, T / kMinSegment));
  }
  const int64_t seg_len = (T + n_seg - 1) / n_seg;
  n_seg = (T + seg_len - 1) / seg_len;
  const int64_t n_tasks = bc_tasks * n_seg;
  struct Task {
    int64_t b, c0, n_lanes, s;
  };
  auto task_of = [&](int64_t task) {
    const int64_t bc = task / n_seg, c0 = (bc % n_blocks) * kChannelBlock;
    return Task{bc / n_blocks, c0, std::min<int64_t>(kLanes, (C - c0 + kWidth - 1) / kWidth), task % n_seg};
  };
  auto pos = [](int64_t t) { return math::splat<Calc>(typename math::Lane<Calc>::Elem(t)); };

  // Sums entering each segment from the left and from the right, [task][lane]; only needed
  // (and only allocated) when T is split into segments.
  std::vector<Sum> enter_left, enter_right;
  auto entering = [](const std::vector<Sum>& sums, int64_t idx) {
    Sum s;
    if (sums.empty()) s.clear();
    else s = sums[idx];
    return s;
  };
  if (n_seg > 1) {
    enter_left.resize(n_tasks * kLanes);
    enter_right.resize(n_tasks * kLanes);
    for (auto& x : enter_left) x.clear();
    for (auto& x : enter_right) x.clear();
    std::vector<Sum> seg_left(enter_left.size()), seg_right(enter_right.size());
    parallel_for(n_tasks, threads, [&](int64_t task) {
      const Task tk = task_of(task);
      Sum* L = &seg_left[task * kLanes];
      Sum* R = &seg_right[task * kLanes];
      Acc x[Sum::kValues];
      for (int64_t j = 0; j < tk.n_lanes; ++j) L[j].clear(), R[j].clear();
      for (int64_t t = tk.s * seg_len; t < std::min(T, (tk.s + 1) * seg_len); ++t)
        for (int64_t j = 0; j < tk.n_lanes; ++j) {
          const int64_t c = tk.c0 + j * kWidth;
          const Calc key = op.key(tk.b, t, c);
          op.values(tk.b, t, c, x);
          L[j].template push<kLeft>(pos(t), key, x, op.w(c));
          R[j].template push<kRight>(pos(t), key, x, op.w(c));
        }
    });
    parallel_for(bc_tasks, threads, [&](int64_t bc) {
      const Task tk = task_of(bc * n_seg);
      for (int64_t j = 0; j < tk.n_lanes; ++j) {
        const Calc w = op.w(tk.c0 + j * kWidth);
        for (int64_t s = 1; s < n_seg; ++s) {
          Sum acc = enter_left[(bc * n_seg + s - 1) * kLanes + j];
          acc.template merge<kLeft>(seg_left[(bc * n_seg + s - 1) * kLanes + j], w);
          enter_left[(bc * n_seg + s) * kLanes + j] = acc;
        }
        for (int64_t s = n_seg - 2; s >= 0; --s) {
          Sum acc = enter_right[(bc * n_seg + s + 1) * kLanes + j];
          acc.template merge<kRight>(seg_right[(bc * n_seg + s + 1) * kLanes + j], w);
          enter_right[(bc * n_seg + s) * kLanes + j] = acc;
        }
      }
    });
  }

  if (partials) partials->assign(n_tasks * kLanes * Op::kPartials, math::splat<Acc>(0));
  parallel_for(n_tasks, threads, [&](int64_t task) {
    const Task tk = task_of(task);
    const int64_t t0 = tk.s * seg_len, t1 = std::min(T, t0 + seg_len);
    // One lane at a time: its sums stay in registers for the whole walk, and the buffer of
    // right-side sums at each token stays in cache.
    using Kept = decltype(math::narrow(std::declval<Sum>()));
    thread_local std::vector<Kept> right_at;
    if (right_at.size() < size_t(t1 - t0)) right_at.resize(t1 - t0);
    Acc x[Sum::kValues];
    for (int64_t j = 0; j < tk.n_lanes; ++j) {
      const int64_t c = tk.c0 + j * kWidth;
      const Calc w = op.w(c);
      Sum cur = entering(enter_right, task * kLanes + j);
      for (int64_t t = t1 - 1; t >= t0; --t) {
        right_at[t - t0] = math::narrow(cur);
        op.values(tk.b, t, c, x);
        cur.template push<kRight>(pos(t), op.key(tk.b, t, c), x, w);
      }
      cur = entering(enter_left, task * kLanes + j);
      Acc* part = partials ? &(*partials)[(task * kLanes + j) * Op::kPartials] : nullptr;
      for (int64_t t = t0; t < t1; ++t) {
        op.output(tk.b, t, c, cur, right_at[t - t0], part);
        op.values(tk.b, t, c, x);
        cur.template push<kLeft>(pos(t), op.key(tk.b, t, c), x, w);
      }
    }
  });
}

template <class IO>
void forward_typed(const void* w, const void* u, const void* k, const void* v, void* y, void* lse, int64_t B,
                   int64_t T, int64_t C, int threads) {
  using Op = CpuForward<IO>;
  using E = typename CalcOf<IO>::elem;
  Op op{static_cast<const E*>(w), static_cast<const E*>(u), static_cast<const IO*>(k), static_cast<const IO*>(v),
        static_cast<IO*>(y), static_cast<E*>(lse), T, C};
  bidirectional_scan(op, B, T, C, threads, nullptr);
}

template <class IO>
void backward_typed(const void* w, const void* u, const void* k, const void* v, const void* y, const void* lse,
                    const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B, int64_t T, int64_t C,
                    int threads) {
  using Op = CpuBackward<IO>;
  using E = typename CalcOf<IO>::elem;
  constexpr int kWidth = math::Lane<typename Op::CalcT>::kWidth;
  Op op{static_cast<const E*>(w), static_cast<const E*>(u), static_cast<const IO*>(k), static_cast<const IO*>(v),
        static_cast<const IO*>(y), static_cast<const E*>(lse), static_cast<const IO*>(gy), static_cast<IO*>(gk),
        static_cast<IO*>(gv), T, C};
  std::vector<typename Op::AccT> partials;
  bidirectional_scan(op, B, T, C, threads, &partials);
  // Deterministic reduction of the per-task partials over batch and segments. Task order is
  // (b, channel block, segment), lanes within a task hold kWidth consecutive channels.
  const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t lanes = kChannelBlock / kWidth;
  const int64_t n_tasks = static_cast<int64_t>(partials.size()) / (lanes * Op::kPartials);
  const int64_t per_block = n_tasks / (B * n_blocks);
  std::vector<double> sw(C, 0.0), su(C, 0.0);
  for (int64_t task = 0; task < n_tasks; ++task) {
    const int64_t c0 = ((task / per_block) % n_blocks) * kChannelBlock;
    for (int64_t j = 0; j < lanes; ++j) {
      const auto& pw = partials[(task * lanes + j) * Op::kPartials + 0];
      const auto& pu = partials[(task * lanes + j) * Op::kPartials + 1];
      for (int e = 0; e < kWidth && c0 + j * kWidth + e < C; ++e) {
        sw[c0 + j * kWidth + e] += lane_value(pw, e);
        su[c0 + j * kWidth + e] += lane_value(pu, e);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    static_cast<E*>(gw)[c] = E(sw[c]);
    static_cast<E*>(gu)[c] = E(su[c]);
  }
}

}  // namespace

namespace DRWKV_CPU_ISA {

void forward(DType dtype, const void* w, const void* u, const void* k, const void* v, void* y, void* lse, int64_t B,
             int64_t T, int64_t C, int threads) {
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(w, u, k, v, y, lse, B, T, C, threads);
    case DType::kFloat16: return forward_typed<Half>(w, u, k, v, y, lse, B, T, C, threads);
    case DType::kFloat64: return forward_typed<double>(w, u, k, v, y, lse, B, T, C, threads);
  }
  throw std::invalid_argument("bi_wkv_forward_cpu: unsupported dtype");
}

void backward(DType dtype, const void* w, const void* u, const void* k, const void* v, const void* y,
              const void* lse, const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B, int64_t T,
              int64_t C, int threads) {
  switch (dtype) {
    case DType::kFloat32: return backward_typed<float>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
    case DType::kFloat16: return backward_typed<Half>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
    case DType::kFloat64: return backward_typed<double>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
  }
  throw std::invalid_argument("bi_wkv_backward_cpu: unsupported dtype");
}

}  // namespace DRWKV_CPU_ISA
}  // namespace drwkv
