// The CPU Bi-WKV kernels against the formula in float64, for every instruction-set build this
// processor runs (drwkv/cpu_builds.h) on one and two threads: forward and backward, the awkward
// shapes and extreme values of tests/test_bi_wkv.py with its tolerances, and NaN. Plain C++, so the
// same program checks the kernels on x86 and on aarch64. Usage: test_bi_wkv_cpu
//
//   l(t,i) = k_i - (|t-i| - 1) w   (i != t),   l(t,t) = u + k_t,   y_t = sum_i softmax_i(l(t,i)) v_i
//
// Forward error is measured per element against sum_i softmax_i |v_i|, the scale a float32 result
// can be known to (|y| itself can cancel to nearly zero); gradients against each gradient's largest
// magnitude.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "drwkv/bi_wkv.h"
#include "drwkv/cpu_builds.h"

namespace {

using drwkv::CpuBuild;
using drwkv::DType;

double const kNaN = std::nan("");

// Inputs as float64 holding exactly the values the kernel is given (float32, or float16 for the
// float16 case): the reference sees what the kernel sees.
struct Case {
  std::string name;
  int64_t B, T, C;
  std::vector<double> w, u, k, v;
  double at_k(int64_t b, int64_t t, int64_t c) const { return k[size_t((b * T + t) * C + c)]; }
  double at_v(int64_t b, int64_t t, int64_t c) const { return v[size_t((b * T + t) * C + c)]; }
};

std::vector<double> normals(std::mt19937& gen, int64_t n, double scale) {
  std::normal_distribution<float> normal;
  std::vector<double> x(static_cast<size_t>(n));
  for (double& e : x) e = double(float(normal(gen) * float(scale)));
  return x;
}

Case make_case(std::string name, int64_t B, int64_t T, int64_t C, double k_scale, double w_scale, unsigned seed) {
  std::mt19937 gen(seed);
  Case x{std::move(name), B, T, C, normals(gen, C, w_scale), normals(gen, C, 1.0), normals(gen, B * T * C, k_scale),
         normals(gen, B * T * C, 1.0)};
  return x;
}

std::vector<float> to_float(std::vector<double> const& x) { return std::vector<float>(x.begin(), x.end()); }

// float16, written here rather than taken from the kernels' own conversions: x rounded to float16's
// 11 significant bits (subnormal steps of 2^-24; |x| well below 65504), its bits, and back.
double round_to_half(double x) {
  int e = 0;
  std::frexp(x, &e);  // |x| = m 2^e, m in [1/2, 1)
  int const step = std::max(e - 11, -24);
  return std::ldexp(std::nearbyint(std::ldexp(x, -step)), step);
}
uint16_t half_bits(double x) {  // x a float16 value
  uint16_t const sign = std::signbit(x) ? 0x8000 : 0;
  x = std::fabs(x);
  if (x < std::ldexp(1.0, -14)) return uint16_t(sign | uint16_t(std::ldexp(x, 24)));  // subnormal or zero
  int e = 0;
  double const m = std::frexp(x, &e);
  return uint16_t(sign | (e + 14) << 10 | (uint16_t(std::ldexp(m, 11)) & 0x3ff));
}
double half_value(uint16_t h) {
  int const e = (h >> 10) & 0x1f, m = h & 0x3ff;
  double const mag = e == 0x1f ? (m ? kNaN : INFINITY) : e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return h & 0x8000 ? -mag : mag;
}

// --- the reference ------------------------------------------------------------------------------

double logit(Case const& x, int64_t b, int64_t t, int64_t i, int64_t c) {
  double const k = x.at_k(b, t == i ? t : i, c);
  return i == t ? x.u[size_t(c)] + k : k - double(std::llabs(t - i) - 1) * x.w[size_t(c)];
}

// The largest logit of row t: the exponentials are taken relative to it. fmax skips a NaN logit,
// which then makes its own exponential, and so the sums, NaN.
double max_logit(Case const& x, int64_t b, int64_t t, int64_t c) {
  double m = -INFINITY;
  for (int64_t i = 0; i < x.T; ++i) m = std::fmax(m, logit(x, b, t, i, c));
  return m;
}

// y at (b, t, c), and the same softmax applied to |v| (the error scale).
struct RefY {
  double y, scale;
};
RefY reference_y(Case const& x, int64_t b, int64_t t, int64_t c) {
  double const m = max_logit(x, b, t, c);
  double num = 0.0, abs_num = 0.0, den = 0.0;
  for (int64_t i = 0; i < x.T; ++i) {
    double const e = std::exp(logit(x, b, t, i, c) - m), v = x.at_v(b, i, c);
    num += e * v;
    abs_num += e * std::fabs(v);
    den += e;
  }
  return {num / den, abs_num / den};
}

struct Grads {
  std::vector<double> w, u, k, v;
};

// Gradients of sum(y * gy), by differentiating the formula: with p_i the softmax weights of row t,
// dy_t/dv_i = p_i and dy_t/dl(t,i) = p_i (v_i - y_t); l(t,i) has slope 1 in k_i, 1 in u when i = t
// and -(|t-i| - 1) in w otherwise. gw and gu are summed over the batch.
Grads reference_backward(Case const& x, std::vector<double> const& gy) {
  Grads g{std::vector<double>(size_t(x.C)), std::vector<double>(size_t(x.C)), std::vector<double>(x.k.size()),
          std::vector<double>(x.v.size())};
  std::vector<double> p(size_t(x.T));
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t c = 0; c < x.C; ++c)
      for (int64_t t = 0; t < x.T; ++t) {
        double const m = max_logit(x, b, t, c);
        double den = 0.0, y = 0.0;
        for (int64_t i = 0; i < x.T; ++i) den += p[size_t(i)] = std::exp(logit(x, b, t, i, c) - m);
        for (int64_t i = 0; i < x.T; ++i) y += (p[size_t(i)] /= den) * x.at_v(b, i, c);
        double const gy_t = gy[size_t((b * x.T + t) * x.C + c)];
        for (int64_t i = 0; i < x.T; ++i) {
          size_t const at = size_t((b * x.T + i) * x.C + c);
          double const gl = gy_t * p[size_t(i)] * (x.at_v(b, i, c) - y);
          g.v[at] += gy_t * p[size_t(i)];
          g.k[at] += gl;
          if (i == t) g.u[size_t(c)] += gl;
          else g.w[size_t(c)] -= double(std::llabs(t - i) - 1) * gl;
        }
      }
  return g;
}

// The reference backward against central differences of the reference forward (float64), so that
// the gradients the kernels are held to are themselves checked.
void check_reference_gradients() {
  Case x = make_case("finite differences", 2, 5, 3, 1.0, 0.5, 99);
  std::mt19937 gen(7);
  std::vector<double> const gy = normals(gen, x.B * x.T * x.C, 1.0);
  auto loss = [&] {
    double s = 0.0;
    for (int64_t b = 0; b < x.B; ++b)
      for (int64_t t = 0; t < x.T; ++t)
        for (int64_t c = 0; c < x.C; ++c) s += reference_y(x, b, t, c).y * gy[size_t((b * x.T + t) * x.C + c)];
    return s;
  };
  Grads const g = reference_backward(x, gy);
  auto check = [&](std::vector<double>& param, std::vector<double> const& grad) {
    for (size_t i = 0; i < param.size(); ++i) {
      double const keep = param[i], h = 1e-6;
      param[i] = keep + h;
      double const up = loss();
      param[i] = keep - h;
      double const down = loss();
      param[i] = keep;
      CHECK(std::fabs((up - down) / (2 * h) - grad[i]) < 1e-7);
    }
  };
  check(x.w, g.w);
  check(x.u, g.u);
  check(x.k, g.k);
  check(x.v, g.v);
}

// --- comparison ---------------------------------------------------------------------------------

// got against want: NaN exactly where want is NaN, finite where want is finite, and there
// |got - want| <= tol * scale(i). Prints the first offence under `what`.
template <class Scale>
bool close(std::string const& what, std::vector<double> const& got, std::vector<double> const& want, double tol,
           Scale scale) {
  for (size_t i = 0; i < want.size(); ++i) {
    bool const ok = std::isnan(want[i]) ? std::isnan(got[i])
                                        : std::isfinite(got[i]) && std::fabs(got[i] - want[i]) <= tol * scale(i);
    if (!ok) {
      std::fprintf(stderr, "%s: element %zu: got %.9g, want %.9g (tolerance %.3g)\n", what.c_str(), i, got[i],
                   want[i], tol * scale(i));
      return false;
    }
  }
  return true;
}

// Gradients: relative to the largest finite magnitude; exactly zero where that is zero.
bool close_grad(std::string const& what, std::vector<double> const& got, std::vector<double> const& want) {
  double largest = 0.0;
  for (double x : want)
    if (std::isfinite(x)) largest = std::max(largest, std::fabs(x));
  return close(what, got, want, 1e-4, [&](size_t) { return largest; });
}

// Where the forward is checked against the O(T^2 C B) formula: every row and channel up to a
// million terms; else both ends, the middle and every (T / 16)-th row (the segments' seams among
// them), and with more than 64 channels the first, middle and last eight of them.
struct Reference {
  std::vector<int64_t> rows, channels;
  std::vector<double> y, scale;  // [B, rows, channels]
};

Reference reference_forward(Case const& x) {
  Reference r;
  bool const all = x.B * x.T * x.T * x.C <= (int64_t(1) << 20);
  for (int64_t t = 0; t < x.T; ++t)
    if (all || t < 4 || t >= x.T - 4 || std::llabs(t - x.T / 2) <= 2 || t % std::max<int64_t>(1, x.T / 16) == 0)
      r.rows.push_back(t);
  for (int64_t c = 0; c < x.C; ++c)
    if (all || x.C <= 64 || c < 8 || c >= x.C - 8 || std::llabs(c - x.C / 2) < 4) r.channels.push_back(c);
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t t : r.rows)
      for (int64_t c : r.channels) {
        RefY const y = reference_y(x, b, t, c);
        r.y.push_back(y.y);
        r.scale.push_back(y.scale);
      }
  return r;
}

// The checked values of a kernel output [B, T, C].
template <class T, class Convert>
std::vector<double> pick(Case const& x, Reference const& ref, std::vector<T> const& y, Convert cv) {
  std::vector<double> out;
  for (int64_t b = 0; b < x.B; ++b)
    for (int64_t t : ref.rows)
      for (int64_t c : ref.channels) out.push_back(double(cv(y[size_t((b * x.T + t) * x.C + c)])));
  return out;
}

// --- the kernels --------------------------------------------------------------------------------

void check_forward(CpuBuild const& build, Case const& x, Reference const& ref, int threads) {
  std::vector<float> const w = to_float(x.w), u = to_float(x.u), k = to_float(x.k), v = to_float(x.v);
  std::vector<float> y(k.size(), kNaN), lse(k.size(), kNaN);
  build.forward(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y.data(), lse.data(), x.B, x.T, x.C, threads);
  std::string const what = std::string(build.name) + ", " + std::to_string(threads) + " threads, " + x.name;
  auto as_is = [](float f) { return f; };
  CHECK(close(what, pick(x, ref, y, as_is), ref.y, 1e-5, [&](size_t i) { return ref.scale[i]; }));
  // Every output is written (they start as NaN), the unchecked rows and channels too.
  if (std::none_of(ref.y.begin(), ref.y.end(), [](double v) { return std::isnan(v); }))
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return std::isfinite(v); }));
  // Without the lse output (inference) the kernel writes the same y.
  std::vector<float> y_only(k.size(), kNaN);
  build.forward(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y_only.data(), nullptr, x.B, x.T, x.C,
                threads);
  CHECK(std::memcmp(y.data(), y_only.data(), y.size() * sizeof(float)) == 0);
}

// float16 I/O: x holds float16 values.
void check_forward_float16(CpuBuild const& build, Case const& x, Reference const& ref, int threads) {
  std::vector<uint16_t> k, v;
  for (double e : x.k) k.push_back(half_bits(e));
  for (double e : x.v) v.push_back(half_bits(e));
  std::vector<float> const w = to_float(x.w), u = to_float(x.u);
  std::vector<uint16_t> y(k.size(), 0x7e00);  // NaN: a value left unwritten shows
  std::vector<float> lse(k.size());
  build.forward(DType::kFloat16, w.data(), u.data(), k.data(), v.data(), y.data(), lse.data(), x.B, x.T, x.C, threads);
  // Exact up to the rounding of the float16 output (2^-11 relative).
  CHECK(close(std::string(build.name) + ", float16", pick(x, ref, y, half_value), ref.y, 1e-3,
              [&](size_t i) { return ref.scale[i]; }));
}

void check_float64_is_exact(CpuBuild const& build, Case const& x, Reference const& ref, int threads) {
  std::vector<double> y(x.k.size(), kNaN), lse(x.k.size());
  build.forward(DType::kFloat64, x.w.data(), x.u.data(), x.k.data(), x.v.data(), y.data(), lse.data(), x.B, x.T, x.C,
                threads);
  CHECK(close(std::string(build.name) + ", float64", pick(x, ref, y, [](double d) { return d; }), ref.y, 1e-12,
              [](size_t) { return 1.0; }));
}

void check_backward(CpuBuild const& build, Case const& x, Grads const& want, std::vector<double> const& gy64,
                    int threads) {
  std::vector<float> const w = to_float(x.w), u = to_float(x.u), k = to_float(x.k), v = to_float(x.v), gy = to_float(gy64);
  std::vector<float> y(k.size()), lse(k.size());
  build.forward(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y.data(), lse.data(), x.B, x.T, x.C, threads);
  std::vector<float> gw(w.size(), kNaN), gu(u.size(), kNaN), gk(k.size(), kNaN), gv(v.size(), kNaN);
  build.backward(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y.data(), lse.data(), gy.data(), gw.data(),
                 gu.data(), gk.data(), gv.data(), x.B, x.T, x.C, threads);
  std::string const what = std::string(build.name) + ", " + std::to_string(threads) + " threads, " + x.name + ", g";
  auto wide = [](std::vector<float> const& f) { return std::vector<double>(f.begin(), f.end()); };
  CHECK(close_grad(what + "w", wide(gw), want.w));
  CHECK(close_grad(what + "u", wide(gu), want.u));
  CHECK(close_grad(what + "k", wide(gk), want.k));
  CHECK(close_grad(what + "v", wide(gv), want.v));
}

// --- the cases of tests/test_bi_wkv.py ----------------------------------------------------------

std::vector<Case> forward_cases() {
  std::vector<Case> cases;
  int64_t const shapes[][3] = {
      {1, 1, 1},     // T = 1: only the token itself
      {3, 1, 5},     //
      {2, 2, 3},     //
      {1, 17, 33},   // C odd and not a multiple of the lane width or the channel block
      {2, 64, 384},  //
      {4, 255, 7},   //
      {1, 4099, 3},  // long T, few channels: the kernel splits T into segments
      {2, 1500, 20},
  };
  for (auto const& s : shapes) {
    std::string const shape = "B" + std::to_string(s[0]) + " T" + std::to_string(s[1]) + " C" + std::to_string(s[2]);
    unsigned const seed = unsigned(s[0] * 1000 + s[1] + s[2]);
    // "model": w = decay / T as DRWKV passes it; "random": |w| ~ 1, strong decay or growth per token.
    cases.push_back(make_case(shape + " model w", s[0], s[1], s[2], 1.0, 1.0 / double(s[1]), seed));
    cases.push_back(make_case(shape + " random w", s[0], s[1], s[2], 1.0, 1.0, seed));
  }
  // |k| up to 60: exp(k) overflows float32 without a running maximum.
  for (double w : {-2.0, -0.05, 0.0, 0.05, 3.0}) {
    Case x = make_case("extreme k, u, w = " + std::to_string(w), 2, 700, 6, 20.0, 1.0, 7);
    for (double& k : x.k) k = std::clamp(k, -60.0, 60.0);
    for (int64_t c = 0; c < x.C; ++c) x.k[size_t(5 * x.C + c)] = 60.0, x.k[size_t((2 * x.T - 3) * x.C + c)] = -60.0;
    x.w.assign(size_t(x.C), w);
    x.u = {60.0, -60.0, 0.0, 5.0, -5.0, 30.0};
    cases.push_back(x);
  }
  // w < 0 with |w| T in the thousands: absolute logits are huge, only differences are meaningful.
  Case growth = make_case("long sequence, strong growth", 1, 5000, 2, 3.0, 1.0, 3);
  growth.w = {-1.5, 0.7};
  cases.push_back(growth);
  // The chunked path (|w| * 64 <= 8 and u <= 30) and the anchored one: the bounds themselves, keys
  // 120 apart inside one chunk, T around the chunk length.
  for (int64_t T : {1, 63, 64, 65, 129, 5000})
    for (auto [w, u] : {std::pair{0.125, 30.0}, {-0.125, 30.0}, {0.125, -100.0}, {-0.125, -100.0}, {1e-4, 0.0}}) {
      Case x = make_case("chunk edges T" + std::to_string(T) + " w " + std::to_string(w) + " u " + std::to_string(u), 1,
                         T, 8, 20.0, 1.0, unsigned(T));
      for (double& k : x.k) k = std::clamp(k, -60.0, 60.0);
      for (int64_t c = 0; c < x.C; ++c) x.k[size_t(T / 2 * x.C + c)] = 60.0, x.k[size_t((T - 1) * x.C + c)] = -60.0;
      x.w.assign(size_t(x.C), w);
      x.u.assign(size_t(x.C), u);
      cases.push_back(x);
    }
  // 8-channel lanes: the first and last take the chunked path, the middle one cannot.
  Case mixed = make_case("chunked and anchored lanes", 3, 300, 21, 5.0, 0.01, 4);
  for (int c = 8; c < 16; ++c) mixed.w[size_t(c)] = -2.0 + 4.0 * (c - 8) / 7.0;
  cases.push_back(mixed);
  // Outputs of 8 MB, written around the caches (streaming stores on x86).
  Case large = make_case("large output", 2, 4096, 256, 3.0, 1.0 / 4096, 21);
  cases.push_back(large);
  // NaN in each input: the reference's NaN (the whole (b, c) column for k and v, the channel in
  // every batch row for w and u) and nothing else, on the chunked path (model w) and the anchored one.
  for (double w_scale : {0.01, 2.0})
    for (char const* where : {"w", "u", "k", "v"}) {
      Case x = make_case(std::string("NaN in ") + where + (w_scale < 1 ? ", chunked" : ", anchored"), 2, 100, 11, 3.0,
                         w_scale, 13);
      switch (where[0]) {
        case 'w': x.w[3] = kNaN; break;
        case 'u': x.u[9] = kNaN; break;
        case 'k': x.k[size_t((1 * x.T + 80) * x.C + 9)] = kNaN; break;
        default: x.v[size_t(37 * x.C + 3)] = kNaN; break;
      }
      cases.push_back(x);
    }
  return cases;
}

}  // namespace

int main() {
  check_reference_gradients();
  std::vector<CpuBuild> const& builds = drwkv::cpu_builds();
  std::vector<Case> const cases = forward_cases();
  for (Case const& x : cases) {
    Reference const ref = reference_forward(x);
    // The NaN cases must see NaN in the reference (and finite values beside it).
    if (x.name.rfind("NaN", 0) == 0)
      CHECK(std::count_if(ref.y.begin(), ref.y.end(), [](double y) { return std::isnan(y); }) >= x.T &&
            std::any_of(ref.y.begin(), ref.y.end(), [](double y) { return std::isfinite(y); }));
    for (CpuBuild const& build : builds)
      for (int threads : {1, 2}) check_forward(build, x, ref, threads);
  }
  Case half = make_case("float16", 2, 300, 24, 1.0, 0.01, 5);
  for (double& e : half.k) e = round_to_half(e);
  for (double& e : half.v) e = round_to_half(e);
  Reference const half_ref = reference_forward(half);
  Case const exact = make_case("float64", 2, 300, 5, 5.0, 1.0, 11);
  Reference const exact_ref = reference_forward(exact);
  for (CpuBuild const& build : builds) {
    check_forward_float16(build, half, half_ref, 2);
    check_float64_is_exact(build, exact, exact_ref, 2);
  }

  // Backward: the shapes of tests/test_bi_wkv.py (T = 1 has no token at distance >= 2: gw is exactly
  // zero), and a NaN in v.
  struct BackwardCase {
    int64_t B, T, C;
    double w_scale;
  };
  for (BackwardCase const s : {BackwardCase{2, 37, 5, 1.0}, {1, 1, 4, 1.0}, {3, 200, 9, 0.02}, {1, 1100, 3, 0.002}}) {
    Case const x = make_case("backward B" + std::to_string(s.B) + " T" + std::to_string(s.T) + " C" + std::to_string(s.C),
                             s.B, s.T, s.C, 3.0, s.w_scale, unsigned(s.T));
    std::mt19937 gen(1);
    std::vector<double> const gy = normals(gen, s.B * s.T * s.C, 1.0);
    Grads const want = reference_backward(x, gy);
    for (CpuBuild const& build : builds)
      for (int threads : {1, 2}) check_backward(build, x, want, gy, threads);
  }
  Case nan_v = make_case("backward, NaN in v", 2, 50, 11, 3.0, 0.02, 17);
  nan_v.v[size_t((1 * nan_v.T + 20) * nan_v.C + 4)] = kNaN;
  std::mt19937 gen(2);
  std::vector<double> const gy = normals(gen, 2 * 50 * 11, 1.0);
  Grads const want = reference_backward(nan_v, gy);
  CHECK(std::isnan(want.w[4]) && std::isfinite(want.w[5]));
  for (CpuBuild const& build : builds) check_backward(build, nan_v, want, gy, 2);

  // The functions of bi_wkv.h run the first build.
  Case const x = make_case("dispatch", 2, 70, 13, 1.0, 0.05, 1);
  std::vector<float> const w = to_float(x.w), u = to_float(x.u), k = to_float(x.k), v = to_float(x.v);
  std::vector<float> y(k.size()), y_first(k.size());
  drwkv::bi_wkv_forward_cpu(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y.data(), nullptr, x.B, x.T, x.C, 2);
  builds.front().forward(DType::kFloat32, w.data(), u.data(), k.data(), v.data(), y_first.data(), nullptr, x.B, x.T,
                         x.C, 2);
  CHECK(std::memcmp(y.data(), y_first.data(), y.size() * sizeof(float)) == 0);

  std::string names;
  for (CpuBuild const& build : builds) names += (names.empty() ? "" : ", ") + std::string(build.name);
  if (drwkv_test::failures() == 0)
    std::printf("bi_wkv_cpu (%s): %zu forward cases, all checks passed\n", names.c_str(), cases.size());
  return drwkv_test::failures() == 0 ? 0 : 1;
}
