// What the forward and backward passes feed into the bidirectional scan, lane by lane (a lane is
// one channel on CUDA, a vector of channels on the CPU). Shared by the CPU and CUDA drivers; each
// driver supplies to_calc/store_io for its half-precision type.
#pragma once

#include <cstring>

#include "drwkv/bi_wkv_math.h"

namespace drwkv {
inline namespace DRWKV_KERNEL_NS {

DRWKV_HD float to_calc(float x) { return x; }
DRWKV_HD double to_calc(double x) { return x; }
DRWKV_HD void store_io(float* p, float x) { *p = x; }
DRWKV_HD void store_io(double* p, double x) { *p = x; }

// Loads and stores of the first `n` of a lane's channels (n <= 0: a lane past the last channel,
// which reads zeros and stores nothing).
template <class Calc>
struct LaneIO {
  template <class IO> DRWKV_HD static Calc load(const IO* p, int64_t idx, int n) {
    return n > 0 ? Calc(to_calc(p[idx])) : Calc(0);
  }
  template <class IO> DRWKV_HD static void store(IO* p, int64_t idx, Calc x, int n) {
    if (n > 0) store_io(&p[idx], x);
  }
};

#if !defined(__CUDACC__)
template <>
struct LaneIO<math::VecF> {
  template <class IO> static math::VecF load(const IO* p, int64_t idx, int n) {
    math::VecF r = {};
    for (int j = 0; j < n; ++j) r[j] = to_calc(p[idx + j]);
    return r;
  }
  static math::VecF load(const float* p, int64_t idx, int n) {
    math::VecF r;
    if (n == math::Lane<math::VecF>::kWidth) {
      std::memcpy(&r, p + idx, sizeof r);
    } else {
      r = math::VecF{};
      for (int j = 0; j < n; ++j) r[j] = p[idx + j];
    }
    return r;
  }
  template <class IO> static void store(IO* p, int64_t idx, math::VecF x, int n) {
    for (int j = 0; j < n; ++j) store_io(&p[idx + j], x[j]);
  }
  static void store(float* p, int64_t idx, math::VecF x, int n) {
    if (n == math::Lane<math::VecF>::kWidth) std::memcpy(p + idx, &x, sizeof x);
    else for (int j = 0; j < n; ++j) p[idx + j] = x[j];
  }
};
#endif

// y and lse from w, u, k, v.
template <class IO, class Calc, class Acc>
struct ForwardOp {
  using Sum = math::ForwardSum<Calc, Acc>;
  using CalcT = Calc;
  using AccT = Acc;
  using L = LaneIO<Calc>;
  static constexpr int kPartials = 0;
  const typename math::Lane<Calc>::Elem *w_, *u_;
  const IO *k_, *v_;
  IO* y_;
  typename math::Lane<Calc>::Elem* lse_;  // may be null
  int64_t T, C;

  DRWKV_HD int lanes(int64_t c) const { return int(C - c < math::Lane<Calc>::kWidth ? C - c : math::Lane<Calc>::kWidth); }
  DRWKV_HD Calc w(int64_t c) const { return L::load(w_, c, lanes(c)); }
  DRWKV_HD Calc u(int64_t c) const { return L::load(u_, c, lanes(c)); }
  DRWKV_HD Calc key(int64_t b, int64_t t, int64_t c) const { return L::load(k_, (b * T + t) * C + c, lanes(c)); }
  DRWKV_HD Calc value(int64_t b, int64_t t, int64_t c) const { return L::load(v_, (b * T + t) * C + c, lanes(c)); }
  DRWKV_HD void values(int64_t b, int64_t t, int64_t c, Acc* x) const {
    x[0] = math::to_acc<Acc>(value(b, t, c));
    x[1] = math::splat<Acc>(1);
  }
  DRWKV_HD bool wants_lse() const { return lse_ != nullptr; }
  DRWKV_HD void store(int64_t b, int64_t t, int64_t c, Calc y, Calc lse) const {
    const int64_t idx = (b * T + t) * C + c;
    L::store(y_, idx, y, lanes(c));
    if (lse_) L::store(lse_, idx, lse, lanes(c));
  }
  template <class RightSum>
  DRWKV_HD void output(int64_t b, int64_t t, int64_t c, const Sum& left, const RightSum& right, Acc*) const {
    Calc y, lse = math::splat<Calc>(0);
    math::forward_output(left, right, math::splat<Calc>(t), key(b, t, c), value(b, t, c), u(c), w(c), &y,
                         lse_ ? &lse : nullptr);
    store(b, t, c, y, lse);
  }
};

// gk, gv and per-channel partial sums of gw, gu from the forward's inputs, y, lse and gy.
template <class IO, class Calc, class Acc>
struct BackwardOp {
  using Sum = math::BackwardSum<Calc, Acc>;
  using CalcT = Calc;
  using AccT = Acc;
  using L = LaneIO<Calc>;
  static constexpr int kPartials = 2;  // gw, gu
  const typename math::Lane<Calc>::Elem *w_, *u_;
  const IO *k_, *v_, *y_;
  const typename math::Lane<Calc>::Elem* lse_;
  const IO* gy_;
  IO *gk_, *gv_;
  int64_t T, C;

  DRWKV_HD int lanes(int64_t c) const { return int(C - c < math::Lane<Calc>::kWidth ? C - c : math::Lane<Calc>::kWidth); }
  DRWKV_HD Calc w(int64_t c) const { return L::load(w_, c, lanes(c)); }
  // Targets are summed under key -lse, so that exp(key + logit) is the attention weight itself.
  DRWKV_HD Calc key(int64_t b, int64_t t, int64_t c) const { return -L::load(lse_, (b * T + t) * C + c, lanes(c)); }
  DRWKV_HD void values(int64_t b, int64_t t, int64_t c, Acc* x) const {
    const int64_t idx = (b * T + t) * C + c;
    const int n = lanes(c);
    const Acc g = math::to_acc<Acc>(L::load(gy_, idx, n));
    x[0] = g;
    x[1] = g * math::to_acc<Acc>(L::load(y_, idx, n));
  }
  template <class RightSum>
  DRWKV_HD void output(int64_t b, int64_t t, int64_t c, const Sum& left, const RightSum& right, Acc* part) const {
    const int64_t idx = (b * T + t) * C + c;
    const int n = lanes(c);
    Calc gk, gv;
    math::backward_output(left, right, math::splat<Calc>(t), L::load(k_, idx, n), L::load(v_, idx, n),
                          L::load(y_, idx, n), L::load(lse_, idx, n), L::load(gy_, idx, n), L::load(u_, c, n),
                          L::load(w_, c, n), &gk, &gv, &part[0], &part[1]);
    L::store(gk_, idx, gk, n);
    L::store(gv_, idx, gv, n);
  }
};

}  // namespace DRWKV_KERNEL_NS
}  // namespace drwkv
