// What the forward and backward passes feed into the bidirectional scan, element by element.
// Shared by the CPU and CUDA drivers; each driver supplies to_calc/store_io for its half type.
#pragma once

#include "drwkv/bi_wkv_math.h"

namespace drwkv {

DRWKV_HD float to_calc(float x) { return x; }
DRWKV_HD double to_calc(double x) { return x; }
DRWKV_HD void store_io(float* p, float x) { *p = x; }
DRWKV_HD void store_io(double* p, double x) { *p = x; }

// y and lse from w, u, k, v.
template <class IO, class Calc, class Acc>
struct ForwardOp {
  using Sum = math::ForwardSum<Calc, Acc>;
  using AccT = Acc;
  static constexpr int kPartials = 0;
  const Calc *w_, *u_;
  const IO *k_, *v_;
  IO* y_;
  Calc* lse_;  // may be null
  int64_t T, C;

  DRWKV_HD Calc w(int64_t c) const { return w_[c]; }
  DRWKV_HD Calc key(int64_t b, int64_t t, int64_t c) const { return Calc(to_calc(k_[(b * T + t) * C + c])); }
  DRWKV_HD void values(int64_t b, int64_t t, int64_t c, Acc* x) const {
    x[0] = Acc(to_calc(v_[(b * T + t) * C + c]));
    x[1] = Acc(1);
  }
  DRWKV_HD void output(int64_t b, int64_t t, int64_t c, const Sum& left, const Sum& right, Acc*) const {
    const int64_t idx = (b * T + t) * C + c;
    Calc y, lse;
    math::forward_output(left, right, t, Calc(to_calc(k_[idx])), Calc(to_calc(v_[idx])), u_[c], w_[c], &y, &lse);
    store_io(&y_[idx], y);
    if (lse_) lse_[idx] = lse;
  }
};

// gk, gv and per-channel partial sums of gw, gu from the forward's inputs, y, lse and gy.
template <class IO, class Calc, class Acc>
struct BackwardOp {
  using Sum = math::BackwardSum<Calc, Acc>;
  using AccT = Acc;
  static constexpr int kPartials = 2;  // gw, gu
  const Calc *w_, *u_;
  const IO *k_, *v_, *y_;
  const Calc* lse_;
  const IO* gy_;
  IO *gk_, *gv_;
  int64_t T, C;

  DRWKV_HD Calc w(int64_t c) const { return w_[c]; }
  // Targets are summed under key -lse, so that exp(key + logit) is the attention weight itself.
  DRWKV_HD Calc key(int64_t b, int64_t t, int64_t c) const { return -lse_[(b * T + t) * C + c]; }
  DRWKV_HD void values(int64_t b, int64_t t, int64_t c, Acc* x) const {
    const int64_t idx = (b * T + t) * C + c;
    const Acc g = Acc(to_calc(gy_[idx]));
    x[0] = g;
    x[1] = g * Acc(to_calc(y_[idx]));
  }
  DRWKV_HD void output(int64_t b, int64_t t, int64_t c, const Sum& left, const Sum& right, Acc* part) const {
    const int64_t idx = (b * T + t) * C + c;
    Calc gk, gv;
    math::backward_output(left, right, t, Calc(to_calc(k_[idx])), Calc(to_calc(v_[idx])), Calc(to_calc(y_[idx])),
                          lse_[idx], Calc(to_calc(gy_[idx])), u_[c], w_[c], &gk, &gv, &part[0], &part[1]);
    store_io(&gk_[idx], gk);
    store_io(&gv_[idx], gv);
  }
};

}  // namespace drwkv
