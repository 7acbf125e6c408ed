// The Bi-WKV maths, written once and compiled into every kernel (CPU, CUDA, TensorRT plugin).
//
//   l(t,i) = k_i - (|t-i| - 1) w   (i != t),   l(t,t) = u + k_t,   y_t = sum_i softmax_i(l(t,i)) v_i
//
// The sum over i splits into the tokens left of t, the tokens right of t, and t itself. Each side
// is kept as an *anchored* sum: the scaled accumulator a = sum_i x_i exp(l_i(t) - p(t)), where the
// anchor is the token with the largest logit and p(t) = key - (|t - pos| - 1) w is recomputed from
// the anchor's (key, pos) whenever it is needed. Two consequences:
//   * logits never accumulate rounding (p is not decremented by w token after token), so float32
//     stays exact to a few ulps even for T in the tens of thousands;
//   * adding two anchored sums of the same side does not depend on where they are evaluated, so
//     sums of chunks can be merged in any order: that is what lets the kernels split T freely.
// The backward pass needs first moments sum_i (|t-i| - 1) x_i exp(...) for the w gradient; an
// anchored sum carries them as m = sum_i s_i x_i exp(l_i - p) with s_i = |t-i| - |t-pos|, which is
// again independent of t.
//
// Everything is branch-free and written over a "lane" type: a scalar (float on CUDA, double for
// float64 inputs) or a CPU SIMD vector of channels (lanes_cpu.h), so one text serves every kernel.
// Positions are held in the logit type: exact integers up to 2^24 tokens in float32.
#pragma once

#include <cmath>
#include <cstdint>

// Every translation unit that compiles these kernels for a particular instruction set names its
// own DRWKV_KERNEL_NS, so that inline functions built for AVX2 and for the baseline never share a
// symbol (the linker would keep one copy for both, with the wrong calling convention for one).
#ifndef DRWKV_KERNEL_NS
#define DRWKV_KERNEL_NS portable
#endif

#if defined(__CUDACC__)
#define DRWKV_HD __host__ __device__ __forceinline__
#else
#define DRWKV_HD inline
#endif

namespace drwkv {
inline namespace DRWKV_KERNEL_NS {
namespace math {

// Which side of the evaluation position a sum holds: tokens to the left (i < t) or right (i > t).
enum Side : int { kLeft = 1, kRight = -1 };

// Scalar lanes. Vector lanes overload the same names in lanes_cpu.h.
template <class T> struct Lane { using Elem = T; static constexpr int kWidth = 1; };
DRWKV_HD float lane_exp(float x) { return expf(x); }
DRWKV_HD double lane_exp(double x) { return exp(x); }
DRWKV_HD float lane_log(float x) { return logf(x); }
DRWKV_HD double lane_log(double x) { return log(x); }
DRWKV_HD float lane_abs(float x) { return fabsf(x); }
DRWKV_HD double lane_abs(double x) { return fabs(x); }
DRWKV_HD float lane_max(float a, float b) { return a > b ? a : b; }
DRWKV_HD double lane_max(double a, double b) { return a > b ? a : b; }
DRWKV_HD float select(bool m, float a, float b) { return m ? a : b; }
DRWKV_HD double select(bool m, double a, double b) { return m ? a : b; }
template <class Acc> DRWKV_HD Acc to_acc(float x) { return Acc(x); }
template <class Acc> DRWKV_HD Acc to_acc(double x) { return Acc(x); }
template <class Calc> DRWKV_HD Calc to_calc_lane(float x) { return Calc(x); }
template <class Calc> DRWKV_HD Calc to_calc_lane(double x) { return Calc(x); }
template <class T> DRWKV_HD T splat(typename Lane<T>::Elem x) { return T{} + x; }

}  // namespace math
}  // namespace DRWKV_KERNEL_NS
}  // namespace drwkv

#include "drwkv/lanes_cpu.h"

namespace drwkv {
inline namespace DRWKV_KERNEL_NS {
namespace math {

// An anchored sum of NV values (plus their first moments when MOMENTS). Calc is the lane type of
// logits and positions; Acc the lane type of the accumulators.
template <int NV, bool MOMENTS, class Calc, class Acc>
struct AnchoredSum {
  using EC = typename Lane<Calc>::Elem;
  using EA = typename Lane<Acc>::Elem;
  static constexpr int kValues = NV;
  Acc a[NV];
  Acc m[MOMENTS ? NV : 1];
  Calc key;  // logit of the anchor token, -inf while the sum is empty
  Calc pos;  // position of the anchor token

  DRWKV_HD void clear() {
    for (int j = 0; j < NV; ++j) a[j] = splat<Acc>(EA(0));
    for (int j = 0; j < (MOMENTS ? NV : 1); ++j) m[j] = splat<Acc>(EA(0));
    key = splat<Calc>(-EC(INFINITY));
    pos = splat<Calc>(EC(0));
  }

  // |t - pos| - 1 for t on the far side of every token held: the anchor's decay count at t.
  template <int SIDE>
  DRWKV_HD Calc gap_at(Calc t) const { return (t - pos) * EC(SIDE) - EC(1); }

  // Logit of the anchor as seen from position t.
  template <int SIDE>
  DRWKV_HD Calc logit_at(Calc t, Calc w) const { return key - gap_at<SIDE>(t) * w; }

  // this += o, two sums of the same SIDE. `delta` = |t - pos| - |t - o.pos| for any t beyond both.
  template <int SIDE>
  DRWKV_HD void merge(const AnchoredSum& o, Calc w) {
    const Calc delta = (o.pos - pos) * EC(SIDE);
    Calc d = key - o.key - delta * w;                    // logit(our anchor) - logit(o's anchor)
    d = select(o.key == -EC(INFINITY), splat<Calc>(EC(INFINITY)), d);  // o empty: keep ours
    const Acc c = to_acc<Acc>(lane_exp(-lane_abs(d)));   // exp of the smaller minus the larger
    const auto keep = to_acc<Acc>(d) >= EA(0);
    const Acc dA = to_acc<Acc>(delta);
    for (int j = 0; j < NV; ++j) {
      if (MOMENTS) m[j] = select(keep, m[j] + c * (o.m[j] - dA * o.a[j]), o.m[j] + c * (m[j] + dA * a[j]));
      a[j] = select(keep, a[j] + c * o.a[j], o.a[j] + c * a[j]);
    }
    const auto keep_c = d >= EC(0);
    key = select(keep_c, key, o.key);
    pos = select(keep_c, pos, o.pos);
  }

  // this += the token at position i with logit k and values x[0..NV).
  template <int SIDE>
  DRWKV_HD void push(Calc i, Calc k, const Acc* x, Calc w) {
    const Calc delta = (i - pos) * EC(SIDE);
    const Calc d = key - k - delta * w;                  // -inf while empty: the token becomes anchor
    const Acc c = to_acc<Acc>(lane_exp(-lane_abs(d)));
    const auto keep = to_acc<Acc>(d) >= EA(0);
    const Acc dA = to_acc<Acc>(delta);
    for (int j = 0; j < NV; ++j) {
      if (MOMENTS) m[j] = select(keep, m[j] - c * dA * x[j], c * (m[j] + dA * a[j]));
      a[j] = select(keep, a[j] + c * x[j], x[j] + c * a[j]);
    }
    const auto keep_c = d >= EC(0);
    key = select(keep_c, key, k);
    pos = select(keep_c, pos, i);
  }
};

// Forward: left and right sums of (v, 1) under logits k; self logit u + k_t.
template <class Calc, class Acc>
using ForwardSum = AnchoredSum<2, false, Calc, Acc>;

// Backward: left and right sums of (gy, gy*y) under logits -lse, with moments for the w gradient.
template <class Calc, class Acc>
using BackwardSum = AnchoredSum<2, true, Calc, Acc>;

// A sum with its accumulators rounded to the logit type: what the CPU kernel keeps at every token,
// half the memory traffic of the float64 accumulators for one float32 rounding.
template <int NV, bool MOMENTS, class Calc, class Acc>
DRWKV_HD AnchoredSum<NV, MOMENTS, Calc, Calc> narrow(const AnchoredSum<NV, MOMENTS, Calc, Acc>& s) {
  AnchoredSum<NV, MOMENTS, Calc, Calc> r;
  for (int j = 0; j < NV; ++j) r.a[j] = to_calc_lane<Calc>(s.a[j]);
  for (int j = 0; j < (MOMENTS ? NV : 1); ++j) r.m[j] = to_calc_lane<Calc>(s.m[j]);
  r.key = s.key;
  r.pos = s.pos;
  return r;
}

// exp(logit_j - largest) for three logits key_j - gap_j w, and the largest one's (key, gap). The
// logits are compared through exact integer gap differences, never as absolute values: with |w| T
// large, absolute logits are large and their float32 rounding would swamp the result.
template <class Calc>
DRWKV_HD void relative_weights(const Calc key[3], const Calc gap[3], Calc w, Calc e[3], Calc* ref_key, Calc* ref_gap) {
  Calc best_key = key[2], best_gap = gap[2], best = key[2] - gap[2] * w;
  for (int j = 0; j < 2; ++j) {
    const Calc logit = key[j] - gap[j] * w;
    const auto better = logit > best;
    best = select(better, logit, best);
    best_key = select(better, key[j], best_key);
    best_gap = select(better, gap[j], best_gap);
  }
  for (int j = 0; j < 3; ++j) e[j] = lane_exp((key[j] - best_key) - (gap[j] - best_gap) * w);
  *ref_key = best_key;
  *ref_gap = best_gap;
}

// y_t and (when lse is not null) log-sum-exp of the logits at t, from the sums on both sides and the token itself.
// Each of the three terms has logit key - gap * w (the token itself: key u + k, gap 0).
template <class Calc, class Acc, class RightAcc>
DRWKV_HD void forward_output(const ForwardSum<Calc, Acc>& left, const ForwardSum<Calc, RightAcc>& right, Calc t,
                             Calc k, Calc v, Calc u, Calc w, Calc* y, Calc* lse) {
  using EC = typename Lane<Calc>::Elem;
  const Calc key[3] = {left.key, right.key, u + k};
  const Calc gap[3] = {left.template gap_at<kLeft>(t), right.template gap_at<kRight>(t), splat<Calc>(EC(0))};
  Calc e[3], ref_key, ref_gap;
  relative_weights(key, gap, w, e, &ref_key, &ref_gap);
  Acc eA[3];
  for (int j = 0; j < 3; ++j) eA[j] = to_acc<Acc>(e[j]);
  const Acc num = left.a[0] * eA[0] + to_acc<Acc>(right.a[0]) * eA[1] + to_acc<Acc>(v) * eA[2];
  const Acc den = left.a[1] * eA[0] + to_acc<Acc>(right.a[1]) * eA[1] + eA[2];
  *y = to_calc_lane<Calc>(num / den);
  if (lse) *lse = ref_key - ref_gap * w + lane_log(to_calc_lane<Calc>(den));
}

// ---------------------------------------------------------------------------------------------
// Chunked forward. When |w| and u are moderate (always so in the model, which divides both by T),
// a chunk of up to kChunk tokens can share one reference logit M, the largest key in the chunk:
// each token's weight e_i = exp(k_i - M) is computed once, and the chunk's sums on either side of
// t are geometric in r = exp(-w), so Horner's rule accumulates them with no further exp. The sums
// entering the chunk from the left and right are anchored sums as above; a chunk's own sum joins
// them once per chunk. That is one exp per token and pass (or one in all, where a kernel keeps
// the weights between its passes) instead of 5, and the float32 sums inside a chunk never hold
// more than kChunk terms.
//
// The bounds make every quantity inside a chunk finite and every weight lost to underflow
// negligible: all of a chunk's tokens, including the one with key M, are seen from every t of
// the chunk (that one possibly as the token itself, weighted exp(u) >= exp(-30)), and their
// relative weights change by at most exp(|w| kChunk) across it.
constexpr int kChunk = 64;
constexpr float kMaxChunkDecay = 8.0f;  // |w| * kChunk at most this
constexpr float kMaxBonus = 30.0f;      // |u| at most this (exp(u) is a factor of the self term)

// Whether lanes with these w, u may take the chunked path.
template <class Calc>
DRWKV_HD auto chunk_ready(Calc w, Calc u) {
  using EC = typename Lane<Calc>::Elem;
  return (lane_abs(w) * EC(kChunk) <= EC(kMaxChunkDecay)) & (lane_abs(u) <= EC(kMaxBonus));
}

// The three groups that meet in a chunk [c0, c1): the left sum entering it, the chunk's own
// tokens (reference logit M) and the right sum entering it, scaled relative to the largest of
// the three so that nothing overflows. At token t = c0 + n, the total of (v, 1) is
//   own * (P_t + exp(u) e_t (v_t, 1) + S_t) + exp(-n w) left + exp(-(c1-1-t) w) right
// with P_t, S_t the chunk's own sums left and right of t, and its log-scale is `ref`
// (chunk_right_part and chunk_output below).
template <class Calc>
struct ChunkFrame {
  Calc own;       // weight of the chunk's own sums
  Calc left[2];   // the entering left sum (v, 1) as seen from c0
  Calc right[2];  // the entering right sum as seen from c1 - 1
  Calc ref;       // log of the common scale: the largest group's logit
};

// The entering sums come rounded to the logit type (see narrow): one rounding per chunk.
template <class Calc>
DRWKV_HD ChunkFrame<Calc> chunk_frame(const ForwardSum<Calc, Calc>& left, const ForwardSum<Calc, Calc>& right, Calc M,
                                      Calc c0, Calc c1, Calc w) {
  using EC = typename Lane<Calc>::Elem;
  // The entering sums' anchors seen from the chunk's edges, and the chunk's reference (M, gap 0).
  const Calc key[3] = {left.key, right.key, M};
  const Calc gap[3] = {left.template gap_at<kLeft>(c0), right.template gap_at<kRight>(c1 - EC(1)), splat<Calc>(EC(0))};
  Calc g[3], ref_key, ref_gap;
  relative_weights(key, gap, w, g, &ref_key, &ref_gap);
  ChunkFrame<Calc> f;
  for (int j = 0; j < 2; ++j) {
    f.left[j] = g[0] * left.a[j];
    f.right[j] = g[1] * right.a[j];
  }
  f.own = g[2];
  f.ref = ref_key - ref_gap * w;
  return f;
}

// A chunk's own sum of (v, 1) as an anchored sum: reference key M at position `pos`.
template <class Calc, class Acc>
DRWKV_HD ForwardSum<Calc, Acc> chunk_sum(Calc sum_v, Calc sum_1, Calc M, Calc pos) {
  ForwardSum<Calc, Acc> s;
  s.a[0] = to_acc<Acc>(sum_v);
  s.a[1] = to_acc<Acc>(sum_1);
  s.m[0] = splat<Acc>(typename Lane<Acc>::Elem(0));
  s.key = M;
  s.pos = pos;
  return s;
}

// Inside a chunk, the totals at t split into a part from t and its right, R_t, found on the walk
// right to left, and a part from its left, added on the walk left to right:
//   R_t = own * (S_t + self_t (v_t, 1)) + decay_right * right,   total_t = R_t + own * P_t + decay_left * left
// with decay_left = exp(-(t - c0) w), decay_right = exp(-(c1 - 1 - t) w), self_t = exp(u) e_t.
template <class Calc>
DRWKV_HD void chunk_right_part(const ChunkFrame<Calc>& f, Calc decay_right, const Calc S[2], Calc self, Calc v,
                               Calc R[2]) {
  R[0] = f.own * (S[0] + self * v) + decay_right * f.right[0];
  R[1] = f.own * (S[1] + self) + decay_right * f.right[1];
}

// y_t (and its log-sum-exp when lse is not null) from R_t and the chunk's own sums P_t left of t.
template <class Calc>
DRWKV_HD Calc chunk_output(const ChunkFrame<Calc>& f, Calc decay_left, const Calc P[2], const Calc R[2], Calc* lse) {
  const Calc num = f.own * P[0] + (decay_left * f.left[0] + R[0]);
  const Calc den = f.own * P[1] + (decay_left * f.left[1] + R[1]);
  if (lse) *lse = f.ref + lane_log(den);
  return num / den;
}

// Gradients at source position i, given the backward sums of the targets on both sides.
// Writes gk_i, gv_i and adds this position's share of gw and gu.
template <class Calc, class Acc, class RightAcc>
DRWKV_HD void backward_output(const BackwardSum<Calc, Acc>& left, const BackwardSum<Calc, RightAcc>& right, Calc i,
                              Calc k, Calc v, Calc y, Calc lse, Calc gy, Calc u, Calc w, Calc* gk, Calc* gv, Acc* gw,
                              Acc* gu) {
  // exp(k_i + anchor logit) is the attention weight of the anchor target on i: at most 1.
  const Acc el = to_acc<Acc>(lane_exp(k + left.template logit_at<kLeft>(i, w)));
  const Acc er = to_acc<Acc>(lane_exp(k + right.template logit_at<kRight>(i, w)));
  const Acc es = to_acc<Acc>(lane_exp(u + k - lse));  // weight of i on itself
  const Acc vA = to_acc<Acc>(v), yA = to_acc<Acc>(y);
  const Acc g_self = to_acc<Acc>(gy) * es;
  Acc ra[2], rm[2];
  for (int j = 0; j < 2; ++j) ra[j] = to_acc<Acc>(right.a[j]), rm[j] = to_acc<Acc>(right.m[j]);
  const Acc G = left.a[0] * el + ra[0] * er + g_self;       // sum_t P(t,i) gy_t
  const Acc H = left.a[1] * el + ra[1] * er + g_self * yA;  // sum_t P(t,i) gy_t y_t
  const Acc gl = to_acc<Acc>(left.template gap_at<kLeft>(i)), gr = to_acc<Acc>(right.template gap_at<kRight>(i));
  const Acc RG = el * (gl * left.a[0] + left.m[0]) + er * (gr * ra[0] + rm[0]);
  const Acc RH = el * (gl * left.a[1] + left.m[1]) + er * (gr * ra[1] + rm[1]);
  *gv = to_calc_lane<Calc>(G);
  *gk = to_calc_lane<Calc>(vA * G - H);
  *gw -= vA * RG - RH;
  *gu += g_self * (vA - yA);
}

}  // namespace math
}  // namespace DRWKV_KERNEL_NS
}  // namespace drwkv
