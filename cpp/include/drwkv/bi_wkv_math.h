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
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define DRWKV_HD __host__ __device__ __forceinline__
#else
#define DRWKV_HD inline
#endif

namespace drwkv {
namespace math {

// Which side of the evaluation position a sum holds: tokens to the left (i < t) or right (i > t).
enum Side : int { kLeft = 1, kRight = -1 };

template <class Calc>
DRWKV_HD Calc neg_inf() { return -INFINITY; }

DRWKV_HD float fast_exp(float x) { return ::expf(x); }
DRWKV_HD double fast_exp(double x) { return ::exp(x); }
DRWKV_HD float fast_log(float x) { return ::logf(x); }
DRWKV_HD double fast_log(double x) { return ::log(x); }

// An anchored sum of NV values (plus their first moments when MOMENTS). Calc is the type of the
// logits (float, or double for float64 inputs); Acc the type of the accumulators.
template <int NV, bool MOMENTS, class Calc, class Acc>
struct AnchoredSum {
  static constexpr int kValues = NV;
  Acc a[NV];
  Acc m[MOMENTS ? NV : 1];
  Calc key;     // logit of the anchor token, -inf while the sum is empty
  int64_t pos;  // position of the anchor token

  DRWKV_HD void clear() {
    for (int j = 0; j < NV; ++j) a[j] = Acc(0);
    for (int j = 0; j < (MOMENTS ? NV : 1); ++j) m[j] = Acc(0);
    key = neg_inf<Calc>();
    pos = 0;
  }

  // Log-weight of the anchor as seen from position t (t on the far side of every token held).
  template <int SIDE>
  DRWKV_HD Calc logit_at(int64_t t, Calc w) const {
    return key - Calc(SIDE * (t - pos) - 1) * w;
  }

  // Distance-minus-one from t to the anchor, the factor the moments are measured against.
  template <int SIDE>
  DRWKV_HD Calc gap_at(int64_t t) const { return Calc(SIDE * (t - pos) - 1); }

  // this += other (both sums of the same SIDE). Empty operands are handled without NaN.
  template <int SIDE>
  DRWKV_HD void merge(const AnchoredSum& o, Calc w) {
    if (o.key == neg_inf<Calc>()) return;
    // delta = |t - pos| - |t - o.pos| for any t beyond both tokens.
    const Calc delta = Calc(SIDE * (o.pos - pos));
    const Calc d = key - o.key - delta * w;  // logit(this anchor) - logit(other anchor); -inf if empty
    if (d >= Calc(0)) {
      const Acc c = Acc(fast_exp(-d));
      for (int j = 0; j < NV; ++j) {
        if (MOMENTS) m[j] += c * (o.m[j] - Acc(delta) * o.a[j]);
        a[j] += c * o.a[j];
      }
    } else {
      const Acc c = Acc(fast_exp(d));
      for (int j = 0; j < NV; ++j) {
        if (MOMENTS) m[j] = o.m[j] + c * (m[j] + Acc(delta) * a[j]);
        a[j] = o.a[j] + c * a[j];
      }
      key = o.key;
      pos = o.pos;
    }
  }

  // this += token at position i with logit `k` and values x[0..NV).
  template <int SIDE>
  DRWKV_HD void push(int64_t i, Calc k, const Acc* x, Calc w) {
    const Calc delta = Calc(SIDE * (i - pos));
    const Calc d = key - k - delta * w;
    if (d >= Calc(0)) {
      const Acc c = Acc(fast_exp(-d));
      for (int j = 0; j < NV; ++j) {
        if (MOMENTS) m[j] -= c * Acc(delta) * x[j];
        a[j] += c * x[j];
      }
    } else {
      const Acc c = Acc(fast_exp(d));  // 0 when this sum was empty
      for (int j = 0; j < NV; ++j) {
        if (MOMENTS) m[j] = c * (m[j] + Acc(delta) * a[j]);
        a[j] = x[j] + c * a[j];
      }
      key = k;
      pos = i;
    }
  }
};

// Forward: left and right sums of (v, 1) under logits k; self logit u + k_t.
template <class Calc, class Acc>
using ForwardSum = AnchoredSum<2, false, Calc, Acc>;

// Backward: left and right sums of (gy, gy*y) under logits -lse, with moments for the w gradient.
template <class Calc, class Acc>
using BackwardSum = AnchoredSum<2, true, Calc, Acc>;

// y_t and log-sum-exp of the logits at t, from the sums on both sides and the token itself.
// Each of the three terms has logit key - gap * w (the token itself: key u + k_t, gap 0). Logits are
// taken relative to the largest term with integer gap differences, never as absolute values: with
// |w| * T large, absolute logits are large and their float32 rounding would swamp the result.
template <class Calc, class Acc>
DRWKV_HD void forward_output(const ForwardSum<Calc, Acc>& left, const ForwardSum<Calc, Acc>& right,
                             int64_t t, Calc k, Calc v, Calc u, Calc w, Calc* y, Calc* lse) {
  const Calc key[3] = {left.key, right.key, u + k};
  const int64_t gap[3] = {t - left.pos - 1, right.pos - t - 1, 0};
  int ref = 2;
  Calc best = key[2];
  for (int j = 0; j < 2; ++j) {
    const Calc logit = key[j] - Calc(gap[j]) * w;  // only to choose the reference term
    if (logit > best) best = logit, ref = j;
  }
  Acc e[3];
  for (int j = 0; j < 3; ++j) e[j] = Acc(fast_exp((key[j] - key[ref]) - Calc(gap[j] - gap[ref]) * w));
  const Acc num = left.a[0] * e[0] + right.a[0] * e[1] + Acc(v) * e[2];
  const Acc den = left.a[1] * e[0] + right.a[1] * e[1] + e[2];
  *y = Calc(num / den);
  *lse = key[ref] - Calc(gap[ref]) * w + fast_log(Calc(den));
}

// Gradients at source position i, given the backward sums of the targets on both sides.
// Returns gk_i, gv_i and adds this position's share of gw and gu.
template <class Calc, class Acc>
DRWKV_HD void backward_output(const BackwardSum<Calc, Acc>& left, const BackwardSum<Calc, Acc>& right,
                              int64_t i, Calc k, Calc v, Calc y, Calc lse, Calc gy, Calc u, Calc w,
                              Calc* gk, Calc* gv, Acc* gw, Acc* gu) {
  // exp(k_i + anchor logit) is the attention weight of the anchor target on i: at most 1.
  const Acc el = Acc(fast_exp(k + left.template logit_at<kLeft>(i, w)));
  const Acc er = Acc(fast_exp(k + right.template logit_at<kRight>(i, w)));
  const Acc es = Acc(fast_exp(u + k - lse));  // weight of i on itself
  const Acc g_self = Acc(gy) * es;
  const Acc G = left.a[0] * el + right.a[0] * er + g_self;                 // sum_t P(t,i) gy_t
  const Acc H = left.a[1] * el + right.a[1] * er + g_self * Acc(y);        // sum_t P(t,i) gy_t y_t
  const Acc gl = Acc(left.template gap_at<kLeft>(i)), gr = Acc(right.template gap_at<kRight>(i));
  const Acc RG = el * (gl * left.a[0] + left.m[0]) + er * (gr * right.a[0] + right.m[0]);
  const Acc RH = el * (gl * left.a[1] + left.m[1]) + er * (gr * right.a[1] + right.m[1]);
  *gv = Calc(G);
  *gk = Calc(Acc(v) * G - H);
  *gw -= Acc(v) * RG - RH;
  *gu += g_self * (Acc(v) - Acc(y));
}

}  // namespace math
}  // namespace drwkv
