// Bi-WKV on the CPU. The maths is in bi_wkv_math.h; this file only decides who scans what.
//
// Work is split into tasks of (batch b, block of CB channels, segment of T). Three phases:
//   1. each task sums its segment into one left-side and one right-side anchored sum per channel;
//   2. per (b, channel) the sums of the other segments are merged into the sums entering each segment;
//   3. each task walks its segment twice, once in each direction, producing the outputs.
// With enough (b, channel block) pairs to keep every thread busy there is a single segment and
// phases 1-2 vanish; long sequences with few channels get split along T instead.
//
// Phase 3 of the forward takes the chunked path (math::chunk_frame) for every lane of channels
// whose w and u allow it, which the model's always do; the backward and the other lanes take the
// anchored walk, which records the right-side sum at every token.
//
// This file is compiled once per instruction set (DRWKV_CPU_ISA names the namespace, see
// CMakeLists.txt); bi_wkv_cpu_dispatch.cpp picks the best one the processor supports.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <utility>
#include <stdexcept>
#include <type_traits>
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

// Channels per backward task.
constexpr int64_t kChannelBlock = 16;
constexpr int64_t kMinSegment = 512;

// Channels per forward task: whole rows when there are enough batch rows to keep every thread
// busy, since the chunked walk then reads each tensor as one stream; otherwise each row is split
// into as many blocks (of whole lanes, at least kMinForwardBlock channels) as it takes.
constexpr int64_t kMinForwardBlock = 32;
int64_t forward_block(int64_t B, int64_t C, int threads, int64_t width) {
  const int64_t per_row = (4 * threads + B - 1) / B;
  const int64_t block = ((C + per_row - 1) / per_row + width - 1) / width * width;
  return std::max(kMinForwardBlock, block);
}

// Token weights the chunked forward keeps from its first walk for its second, per thread, when they
// fit in this many bytes: within what the caches hold next to the rows being read.
constexpr int64_t kKeptWeightBytes = int64_t(2) << 20;

// Forward outputs of at least this many bytes, beyond what the caches of a few cores hold, are
// written around the caches.
constexpr int64_t kStreamBytes = int64_t(8) << 20;

// float32 and float16 run 8 channels per SIMD lane; float64 (for exact checks) one channel per lane.
// Long sums accumulate in double: float32 results stay exact to a few ulps for any T.
template <class IO> struct CalcOf { using elem = float; using calc = math::VecF; using acc = math::VecD; };
template <> struct CalcOf<double> { using elem = double; using calc = double; using acc = double; };
template <class IO> using CpuForward = ForwardOp<IO, typename CalcOf<IO>::calc, typename CalcOf<IO>::acc>;
template <class IO> using CpuBackward = BackwardOp<IO, typename CalcOf<IO>::calc, typename CalcOf<IO>::acc>;

// A growable heap array of trivially copyable values, aligned for SIMD. std containers are not
// instantiated on the raw vector types: both instruction-set builds of this file would share those
// instantiations (the types have the same names in both), and the linker keeps one copy for both,
// with the other build's alignment and calling convention.
template <class T>
class SimdBuffer {
 public:
  SimdBuffer() = default;
  SimdBuffer(const SimdBuffer&) = delete;
  SimdBuffer& operator=(const SimdBuffer&) = delete;
  ~SimdBuffer() { std::free(data_); }
  // At least n elements; what was there before is not kept.
  T* reserve(size_t n) {
    if (n > size_) {
      std::free(data_);
      const size_t align = alignof(T) < sizeof(void*) ? sizeof(void*) : alignof(T);
      data_ = static_cast<T*>(std::aligned_alloc(align, (n * sizeof(T) + align - 1) / align * align));
      if (!data_) throw std::bad_alloc();
      size_ = n;
    }
    return data_;
  }
  T& operator[](size_t i) { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

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

// The three-phase bidirectional scan shared by forward and backward, over tasks of `block`
// channels (a multiple of the lane width). `Op` supplies, for a lane of channels starting at c in
// row (b, t): key() the tokens' logits and values() what they carry.
// `walk(b, c0, n_lanes, t0, t1, left, right, part)` produces the outputs of a task's lanes over a
// segment from the sums entering it (arrays of one per lane), and may add to their partial sums.
// Returns the number of tasks; `partials` (may be null) gets Op::kPartials zeroed values per lane
// of every task before the walks add to them.
template <class Op, class Walk>
int64_t bidirectional_scan(const Op& op, int64_t B, int64_t T, int64_t C, int64_t block, int threads,
                           SimdBuffer<typename Op::AccT>* partials, Walk walk) {
  using Sum = typename Op::Sum;
  using Acc = typename Op::AccT;
  using Calc = typename Op::CalcT;
  constexpr int kWidth = math::Lane<Calc>::kWidth;
  const int64_t kLanes = block / kWidth;  // lanes per task
  const int64_t n_blocks = (C + block - 1) / block;
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
    const int64_t bc = task / n_seg, c0 = (bc % n_blocks) * block;
    return Task{bc / n_blocks, c0, std::min<int64_t>(kLanes, (C - c0 + kWidth - 1) / kWidth), task % n_seg};
  };
  auto pos = [](int64_t t) { return math::splat<Calc>(typename math::Lane<Calc>::Elem(t)); };

  // Sums entering each segment from the left and from the right, [task][lane]; only allocated
  // when T is split into segments. A single segment has nothing entering: `none`, for every task.
  std::vector<Sum> enter_left, enter_right, none(kLanes);
  for (auto& x : none) x.clear();
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

  Acc* part = partials ? partials->reserve(n_tasks * kLanes * Op::kPartials) : nullptr;
  for (int64_t i = 0; part && i < n_tasks * kLanes * Op::kPartials; ++i) part[i] = math::splat<Acc>(0);
  parallel_for(n_tasks, threads, [&](int64_t task) {
    const Task tk = task_of(task);
    const int64_t t0 = tk.s * seg_len, t1 = std::min(T, t0 + seg_len);
    const bool split = n_seg > 1;
    walk(tk.b, tk.c0, tk.n_lanes, t0, t1, split ? &enter_left[task * kLanes] : none.data(),
         split ? &enter_right[task * kLanes] : none.data(),
         part ? &part[task * kLanes * Op::kPartials] : nullptr);
  });
  return n_tasks;
}

// Outputs of one lane of channels over tokens [t0, t1), given the sums entering from either side:
// a walk right to left that records the right-side sum at every token, then left to right. The
// lane's sums stay in registers for the whole walk, and its buffer in cache.
template <class Op>
void anchored_walk(const Op& op, int64_t b, int64_t c, int64_t t0, int64_t t1, typename Op::Sum left,
                   typename Op::Sum right, typename Op::AccT* part) {
  using Sum = typename Op::Sum;
  using Calc = typename Op::CalcT;
  auto pos = [](int64_t t) { return math::splat<Calc>(typename math::Lane<Calc>::Elem(t)); };
  using Kept = decltype(math::narrow(std::declval<Sum>()));
  thread_local std::vector<Kept> right_at;
  if (right_at.size() < size_t(t1 - t0)) right_at.resize(t1 - t0);
  typename Op::AccT x[Sum::kValues];
  const Calc w = op.w(c);
  for (int64_t t = t1 - 1; t >= t0; --t) {
    right_at[t - t0] = math::narrow(right);
    op.values(b, t, c, x);
    right.template push<kRight>(pos(t), op.key(b, t, c), x, w);
  }
  for (int64_t t = t0; t < t1; ++t) {
    op.output(b, t, c, left, right_at[t - t0], part);
    op.values(b, t, c, x);
    left.template push<kLeft>(pos(t), op.key(b, t, c), x, w);
  }
}

// What the chunked forward needs of a lane's w and u, computed once per call.
struct ChunkLaneConst {
  math::VecF w, r, self_scale, decay[math::kChunk];  // r = exp(-w), self_scale = exp(u), decay[n] = exp(-n w)
};

ChunkLaneConst chunk_lane_const(math::VecF w, math::VecF u) {
  ChunkLaneConst lc;
  lc.w = w;
  lc.r = math::lane_exp(-w);
  lc.self_scale = math::lane_exp(u);
  for (int n = 0; n < math::kChunk; ++n) lc.decay[n] = math::lane_exp(-w * float(n));
  return lc;
}

// The forward of a task's lanes over [t0, t1) in chunks of math::kChunk tokens (see
// math::chunk_frame), for the lanes whose w and u allow it. Pass 1 walks the chunks left to right
// and keeps the left sum entering each; pass 2 walks them right to left and writes the outputs,
// starting where pass 1 ended, on rows still in cache.
// Both passes read the tensors in place, with the memory traffic overlapping the arithmetic:
//   * pass 1 goes along a chunk's rows, all lanes at a time, reading each row in address order
//     (which the hardware prefetchers follow) and prefetching the next chunk's rows as it goes;
//   * pass 2 needs a lane's tokens in turn, so it goes one lane at a time, down the rows (32
//     bytes of each), a walk the prefetchers do not follow: each lane prefetches, one line per
//     token, its share of the rows the next chunk will read (prefetches in bursts did not overlap).
// Pass 2 starts from the token weights pass 1 kept, when they fit in cache. Its outputs go through
// a tile in cache (tile[j * kTileStride + i]: lane j at the chunk's token i) and are written back
// row by row.
template <class IO>
void chunked_forward(const CpuForward<IO>& op, const ChunkLaneConst* lane_const, int64_t b, int64_t c0, int64_t n_lanes,
                     const bool* ready, int64_t t0, int64_t t1, const math::ForwardSum<math::VecF, math::VecD>* enter_left,
                     const math::ForwardSum<math::VecF, math::VecD>* enter_right, bool large_output) {
  using math::VecF;
  using Sum = math::ForwardSum<VecF, math::VecD>;
  using Kept = math::ForwardSum<VecF, VecF>;
  using LaneIO = LaneIO<VecF>;
  constexpr int64_t L = math::kChunk, W = math::Lane<VecF>::kWidth;
  // A lane's tile is one vector longer than a chunk, so that the lanes' tiles do not all fall in
  // the same cache sets.
  constexpr int64_t kTileStride = L + 1;
  const int64_t n_chunks = (t1 - t0 + L - 1) / L, C = op.C;
  const int last_width = op.lanes(c0 + (n_lanes - 1) * W);
  thread_local std::vector<Sum> sums;
  // [chunk][lane]: the left sum entering each chunk, and the chunk's largest key
  thread_local std::vector<Kept> left_at;
  thread_local SimdBuffer<VecF> chunk_max_buffer, weight_buffer, tile_buffer;
  sums.resize(n_lanes);
  if (left_at.size() < size_t(n_chunks * n_lanes)) left_at.resize(n_chunks * n_lanes);
  VecF* chunk_max = chunk_max_buffer.reserve(n_chunks * n_lanes);
  // Each token's weight exp(k - M), [chunk][lane][token] with lanes kTileStride apart: pass 1
  // computes them and, when they fit in cache, keeps them for pass 2, which then reads neither k
  // nor computes an exp.
  const bool keep_weights = n_chunks * n_lanes * L * int64_t(sizeof(VecF)) <= kKeptWeightBytes;
  VecF* weights = weight_buffer.reserve(keep_weights ? n_chunks * n_lanes * kTileStride : L);
  VecF* tile_y = tile_buffer.reserve(2 * kTileStride * n_lanes);
  VecF* tile_lse = tile_y + kTileStride * n_lanes;
  auto pos = [](int64_t t) { return math::splat<VecF>(float(t)); };
  // Offset of row t of the block; rows are C apart. Every lane is full but possibly the last.
  auto row = [&](int64_t t) { return (b * op.T + t) * C + c0; };
  const int64_t full_lanes = last_width == W ? n_lanes : n_lanes - 1;
  auto chunk_rows = [&](int64_t ch, int64_t* first, int64_t* n) {
    *first = t0 + ch * L;
    *n = std::min(t1, *first + L) - *first;
  };

  // Lane j of a chunk as float32 vectors `stride` floats apart: the tensor itself, or a copy in
  // `buffer` for a partial lane or other input types.
  struct LaneView {
    const float* p;
    int64_t stride;
    VecF at(int64_t i) const {
      VecF x;
      std::memcpy(&x, p + i * stride, sizeof x);
      return x;
    }
  };
  auto lane_view = [&](const IO* src, int64_t first, int64_t n, int64_t j, VecF* buffer) {
    if constexpr (std::is_same_v<IO, float>) {
      if (j < full_lanes) return LaneView{src + row(first) + j * W, C};
    }
    for (int64_t i = 0; i < n; ++i) buffer[i] = LaneIO::load(src + row(first + i) + j * W, 0, j < full_lanes ? int(W) : last_width);
    return LaneView{reinterpret_cast<const float*>(buffer), W};
  };

  // What lane j prefetches at token i: the line at `line + i * stride`, a share of the rows of
  // `tensors` (k and v, or v alone) the walk reads next; lane j takes tensor j % n_tensors. A task
  // of whole rows reads one block of memory per chunk and tensor, prefetched in address order, L
  // lines per lane; a narrower block takes one line of every row. Lanes with nothing to prefetch
  // touch a line they have just read (stride 0).
  struct LanePrefetch {
    const char* line;
    int64_t stride;
  };
  const bool whole_rows = c0 == 0 && n_lanes * W >= C;
  auto lane_prefetch = [&](int64_t next_ch, int64_t j, const IO* const* tensors, int64_t n_tensors, const float* own) {
    const LanePrefetch none{reinterpret_cast<const char*>(own), 0};
    if (next_ch < 0 || next_ch >= n_chunks) return none;
    int64_t first, n;
    chunk_rows(next_ch, &first, &n);
    const char* start = reinterpret_cast<const char*>(tensors[j % n_tensors] + row(first));
    const int64_t share = j / n_tensors, row_bytes = C * int64_t(sizeof(IO));
    if (whole_rows) {
      const int64_t offset = share * L * 64;
      return offset < n * row_bytes ? LanePrefetch{start + offset, 64} : none;
    }
    return share * 64 < n_lanes * W * int64_t(sizeof(IO)) ? LanePrefetch{start + share * 64, row_bytes} : none;
  };

  // The chunked lanes' outputs from a tile back to rows [first, first + n). Large float32 outputs
  // bypass the caches (rows of full lanes are then written whole, line after line).
  auto scatter = [&](const VecF* tile, auto* out, int64_t first, int64_t n) {
    using Out = std::remove_reference_t<decltype(*out)>;
    const bool stream = large_output && reinterpret_cast<uintptr_t>(out) % 32 == 0 && (C * sizeof(Out)) % 32 == 0;
    for (int64_t i = 0; i < n; ++i) {
      Out* o = &out[row(first + i)];
      #pragma GCC unroll 4
      for (int64_t j = 0; j < full_lanes; ++j) {
        if (!ready[j]) continue;
        if constexpr (std::is_same_v<Out, float>) {
          if (stream) {
            math::stream_store(o + j * W, tile[j * kTileStride + i]);
            continue;
          }
        }
        LaneIO::store(o + j * W, 0, tile[j * kTileStride + i], W);
      }
      if (full_lanes < n_lanes && ready[full_lanes])
        LaneIO::store(o + full_lanes * W, 0, tile[full_lanes * kTileStride + i], last_width);
    }
  };

  // Pass 1 goes along a chunk's rows, all lanes at a time, with the lanes' running values in
  // small arrays: each row is then read whole, in address order, which the hardware prefetchers
  // follow and overlap with the arithmetic. A first sweep finds each lane's largest key M.
  thread_local SimdBuffer<VecF> lane_buffer;
  VecF* lane_values = lane_buffer.reserve(4 * n_lanes);
  VecF *lane_M = lane_values, *lane_P0 = lane_values + n_lanes, *lane_P1 = lane_values + 2 * n_lanes;
  VecF* lane_r = lane_values + 3 * n_lanes;
  for (int64_t j = 0; j < n_lanes; ++j) lane_r[j] = ready[j] ? lane_const[j].r : VecF{};
  // `each_lane(fn)` calls fn(j, width) for every lane, the width a compile-time W for full lanes.
  auto each_lane = [&](auto fn) {
    for (int64_t j = 0; j < full_lanes; ++j) fn(j, std::integral_constant<int, int(W)>{});
    if (full_lanes < n_lanes) fn(full_lanes, last_width);
  };
  auto pass1_chunk = [&](int64_t ch, int64_t first, int64_t n) {
    const IO *k_rows = op.k_ + row(first), *v_rows = op.v_ + row(first);  // row i is C further on
    for (int64_t j = 0; j < n_lanes; ++j) lane_M[j] = VecF{} - INFINITY, lane_P0[j] = lane_P1[j] = VecF{};
    for (int64_t i = 0; i < n; ++i)
      each_lane([&](int64_t j, auto width) { lane_M[j] = math::lane_max(lane_M[j], LaneIO::load(k_rows + i * C + j * W, 0, width)); });
    // The second sweep also prefetches the next chunk's rows, for the first sweep there.
    int64_t next_first = first, next_n = 0;
    if (ch + 1 < n_chunks) chunk_rows(ch + 1, &next_first, &next_n);
    const IO *k_next = op.k_ + row(next_first), *v_next = op.v_ + row(next_first);
    auto sweep = [&](auto keep) {
      VecF* kept = keep ? &weights[ch * n_lanes * kTileStride] : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const IO *k = k_rows + i * C, *v = v_rows + i * C;
        const int64_t ahead = i < next_n ? i * C : 0;  // rows past the next chunk's end: none
        each_lane([&](int64_t j, auto width) {
          __builtin_prefetch(k_next + ahead + j * W);
          __builtin_prefetch(v_next + ahead + j * W);
          const VecF e = math::lane_exp_nonpositive(LaneIO::load(k + j * W, 0, width) - lane_M[j]);
          if (keep) kept[j * kTileStride + i] = e;
          lane_P0[j] = lane_P0[j] * lane_r[j] + e * LaneIO::load(v + j * W, 0, width);
          lane_P1[j] = lane_P1[j] * lane_r[j] + e;
        });
      }
    };
    if (keep_weights) sweep(std::true_type{});
    else sweep(std::false_type{});
    for (int64_t j = 0; j < n_lanes; ++j) {
      if (!ready[j]) continue;
      left_at[ch * n_lanes + j] = math::narrow(sums[j]);
      chunk_max[ch * n_lanes + j] = lane_M[j];
      sums[j].template merge<kLeft>(
          math::chunk_sum<VecF, math::VecD>(lane_P0[j], lane_P1[j], lane_M[j], pos(first + n - 1)), lane_const[j].w);
    }
  };

  // Pass 2 goes lane by lane, rows [first, first + n) of a chunk.
  VecF k_buffer[L], v_buffer[L];
  const IO* const both_inputs[2] = {op.k_, op.v_};
  auto pass2_lane = [&](int64_t j, int64_t ch, int64_t first, int64_t n) {
    const ChunkLaneConst& lc = lane_const[j];
    const LaneView v = lane_view(op.v_, first, n, j, v_buffer);
    const LaneView k = keep_weights ? v : lane_view(op.k_, first, n, j, k_buffer);  // k only for the weights
    const LanePrefetch pf = keep_weights ? lane_prefetch(ch - 1, j, &op.v_, 1, v.p)
                                         : lane_prefetch(ch - 1, j, both_inputs, 2, k.p);
    const VecF M = chunk_max[ch * n_lanes + j];
    VecF* e = keep_weights ? &weights[(ch * n_lanes + j) * kTileStride] : weights;
    const math::ChunkFrame<VecF> frame = math::chunk_frame(left_at[ch * n_lanes + j], math::narrow(sums[j]), M,
                                                           pos(first), pos(first + n), lc.w);
    // Right to left: each token's weight e (unless kept), its weighted value ev, and R, the part
    // of its totals from itself and its right; the chunk's own sum joins the running right sum.
    VecF ev[L], R[L][2], acc[2] = {};
    auto right_to_left = [&](auto weights_kept) {
      #pragma GCC unroll 8
      for (int64_t i = n - 1; i >= 0; --i) {
        __builtin_prefetch(pf.line + (n - 1 - i) * pf.stride);
        if (!weights_kept) e[i] = math::lane_exp_nonpositive(k.at(i) - M);
        ev[i] = e[i] * v.at(i);
        math::chunk_right_part(frame, lc.decay[n - 1 - i], acc, lc.self_scale * e[i], v.at(i), R[i]);
        acc[0] = acc[0] * lc.r + ev[i];
        acc[1] = acc[1] * lc.r + e[i];
      }
    };
    if (keep_weights) right_to_left(std::true_type{});
    else right_to_left(std::false_type{});
    sums[j].template merge<kRight>(math::chunk_sum<VecF, math::VecD>(acc[0], acc[1], M, pos(first)), lc.w);
    // Left to right: the outputs, from R and the chunk's sums left of each token.
    auto outputs = [&](auto with_lse) {
      VecF *y = &tile_y[j * kTileStride], *lse = &tile_lse[j * kTileStride], P[2] = {};
      #pragma GCC unroll 8
      for (int64_t i = 0; i < n; ++i) {
        y[i] = math::chunk_output(frame, lc.decay[i], P, R[i], with_lse ? &lse[i] : nullptr);
        P[0] = P[0] * lc.r + ev[i];
        P[1] = P[1] * lc.r + e[i];
      }
    };
    if (op.lse_) outputs(std::true_type{});
    else outputs(std::false_type{});
  };
  for (int64_t j = 0; j < n_lanes; ++j) sums[j] = enter_left[j];
  for (int64_t ch = 0; ch < n_chunks; ++ch) {
    int64_t first, n;
    chunk_rows(ch, &first, &n);
    pass1_chunk(ch, first, n);
  }
  for (int64_t j = 0; j < n_lanes; ++j) sums[j] = enter_right[j];
  for (int64_t ch = n_chunks - 1; ch >= 0; --ch) {
    int64_t first, n;
    chunk_rows(ch, &first, &n);
    for (int64_t j = 0; j < n_lanes; ++j)
      if (ready[j]) pass2_lane(j, ch, first, n);
    scatter(tile_y, op.y_, first, n);
    if (op.lse_) scatter(tile_lse, op.lse_, first, n);
  }
  math::stream_fence();
}

template <class IO>
void forward_typed(const void* w, const void* u, const void* k, const void* v, void* y, void* lse, int64_t B,
                   int64_t T, int64_t C, int threads) {
  using Op = CpuForward<IO>;
  using E = typename CalcOf<IO>::elem;
  Op op{static_cast<const E*>(w), static_cast<const E*>(u), static_cast<const IO*>(k), static_cast<const IO*>(v),
        static_cast<IO*>(y), static_cast<E*>(lse), T, C};
  constexpr int64_t W = math::Lane<typename Op::CalcT>::kWidth;
  const int64_t block = forward_block(B, C, threads, W);
  const bool large_output = B * T * C * int64_t(sizeof(IO)) >= kStreamBytes;
  // Which lanes take the chunked path, and their constants: once per call, for every task.
  const int64_t n_all_lanes = (C + W - 1) / W;
  std::unique_ptr<bool[]> ready(new bool[n_all_lanes]());
  SimdBuffer<ChunkLaneConst> lane_const;
  if constexpr (std::is_same_v<typename Op::CalcT, math::VecF>) {
    ChunkLaneConst* lc = lane_const.reserve(n_all_lanes);
    for (int64_t j = 0; j < n_all_lanes; ++j) {
      ready[j] = math::all_of(math::chunk_ready(op.w(j * W), op.u(j * W)));
      if (ready[j]) lc[j] = chunk_lane_const(op.w(j * W), op.u(j * W));
    }
  }
  bidirectional_scan(op, B, T, C, block, threads, nullptr,
                     [&](int64_t b, int64_t c0, int64_t n_lanes, int64_t t0, int64_t t1, const typename Op::Sum* left,
                         const typename Op::Sum* right, void*) {
    const bool* task_ready = &ready[c0 / W];
    if constexpr (std::is_same_v<typename Op::CalcT, math::VecF>)
      chunked_forward(op, &lane_const[c0 / W], b, c0, n_lanes, task_ready, t0, t1, left, right, large_output);
    for (int64_t j = 0; j < n_lanes; ++j)
      if (!task_ready[j]) anchored_walk(op, b, c0 + j * W, t0, t1, left[j], right[j], nullptr);
  });
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
  SimdBuffer<typename Op::AccT> partials;
  const int64_t n_tasks = bidirectional_scan(op, B, T, C, kChannelBlock, threads, &partials,
                     [&](int64_t b, int64_t c0, int64_t n_lanes, int64_t t0, int64_t t1, const typename Op::Sum* left,
                         const typename Op::Sum* right, typename Op::AccT* part) {
    for (int64_t j = 0; j < n_lanes; ++j)
      anchored_walk(op, b, c0 + j * kWidth, t0, t1, left[j], right[j], &part[j * Op::kPartials]);
  });
  // Deterministic reduction of the per-task partials over batch and segments. Task order is
  // (b, channel block, segment), lanes within a task hold kWidth consecutive channels.
  const int64_t n_blocks = (C + kChannelBlock - 1) / kChannelBlock;
  const int64_t lanes = kChannelBlock / kWidth;
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
