// The fused CPU passes of drwkv/fused_cpu.h against float64 references, for every instruction-set
// build this processor runs (drwkv/cpu_builds.h) on one and two threads: the shapes, extreme values
// and tolerances of tests/test_fused_cpu.py, so that the same program checks the passes on x86 and
// on aarch64. Every buffer lies inside a larger one (guard values either side, at an address not
// aligned to the 8-float vectors); the guards and the inputs must be left as they were, and the
// outputs start as NaN, so a value left unwritten shows. Usage: test_fused_cpu
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "drwkv/cpu_builds.h"
#include "drwkv/fused_cpu.h"

namespace {

using drwkv::CpuBuild;

float const kNaN = std::nanf("");
float const kInf = INFINITY;

// --- guarded buffers ----------------------------------------------------------------------------

constexpr size_t kGuard = 37;  // odd: interior addresses are not aligned to 8 floats
constexpr float kGuardValue = -31415.0f;

bool same_bits(float const* a, float const* b, size_t n) { return std::memcmp(a, b, n * sizeof(float)) == 0; }

class Arena {
 public:
  float* place(std::vector<float> const& values) {
    std::vector<float>& buf = buffers_.emplace_back(values.size() + 2 * kGuard, kGuardValue);
    std::copy(values.begin(), values.end(), buf.begin() + kGuard);
    return buf.data() + kGuard;
  }
  // An input: placed, and remembered so that inputs_unchanged() can compare it afterwards.
  float const* input(std::vector<float> const& values) {
    float* p = place(values);
    inputs_.push_back({p, values});
    return p;
  }
  bool guards_intact() const {
    std::vector<float> const guard(kGuard, kGuardValue);
    for (std::vector<float> const& buf : buffers_)
      if (!same_bits(buf.data(), guard.data(), kGuard) || !same_bits(buf.data() + buf.size() - kGuard, guard.data(), kGuard))
        return false;
    return true;
  }
  bool inputs_unchanged() const {
    for (auto const& [p, values] : inputs_)
      if (!same_bits(p, values.data(), values.size())) return false;
    return true;
  }

 private:
  std::deque<std::vector<float>> buffers_;  // deque: stable addresses
  std::vector<std::pair<float const*, std::vector<float>>> inputs_;
};

std::vector<float> normals(std::mt19937& gen, size_t n, float scale, float offset = 0.0f) {
  std::normal_distribution<float> normal;
  std::vector<float> x(n);
  for (float& e : x) e = offset + scale * normal(gen);
  return x;
}
std::vector<float> uniforms(std::mt19937& gen, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> uniform(lo, hi);
  std::vector<float> x(n);
  for (float& e : x) e = uniform(gen);
  return x;
}
// `values` repeated to n entries: with a period prime to 8, each value lands in every vector lane.
std::vector<float> tiled(std::vector<float> const& values, size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = values[i % values.size()];
  return x;
}

// --- comparison (tests/test_fused_cpu.py's assert_matches) --------------------------------------

// got (float32) against want: NaN exactly where want is NaN, the same infinities, finite where want
// is finite, and there within rtol of want's largest finite magnitude or, with per_element, of each
// value's own. Prints the first offence under `what`.
bool matches(std::string const& what, float const* got, std::vector<double> const& want, double rtol = 1e-6,
             bool per_element = false) {
  double largest = 1e-30;
  for (double w : want)
    if (std::isfinite(w)) largest = std::max(largest, std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    double const g = got[i], w = want[i];
    bool const ok = std::isnan(w)   ? std::isnan(g)
                    : std::isinf(w) ? g == w
                                    : std::isfinite(g) && std::fabs(g - w) <= rtol * (per_element ? std::fabs(w) : largest);
    if (!ok) {
      std::fprintf(stderr, "%s: element %zu: got %.9g, want %.9g\n", what.c_str(), i, g, w);
      return false;
    }
  }
  return true;
}

std::string label(CpuBuild const& build, int threads, std::string const& what) {
  return std::string(build.name) + ", " + std::to_string(threads) + " threads, " + what;
}

double sigmoid(double r) { return 1.0 / (1.0 + std::exp(-r)); }

// --- shift_mix ----------------------------------------------------------------------------------

struct MixInputs {
  int64_t B, H, W, C;
  std::vector<float> x, scale1p, shift;  // scale1p, shift empty: no modulation
  std::vector<std::vector<float>> mixes, keeps;
  std::vector<float> norm_weight, norm_bias;  // empty: no LayerNorm (bias empty: none)
  float eps = 1e-5f;
};

MixInputs mix_inputs(int64_t B, int64_t H, int64_t W, int64_t C, int n, bool modulated, unsigned seed) {
  std::mt19937 gen(seed);
  MixInputs in{B, H, W, C, normals(gen, size_t(B * H * W * C), 1.0f), {}, {}, {}, {}, {}, {}};
  if (modulated) {
    in.scale1p = normals(gen, size_t(B * C), 0.5f, 1.0f);
    in.shift = normals(gen, size_t(B * C), 0.5f);
  }
  // General mixes and keeps (the model's keep is 1 - mix; the pass takes any), some negative.
  for (int i = 0; i < n; ++i) in.mixes.push_back(uniforms(gen, size_t(C), -0.3f, 1.3f));
  for (int i = 0; i < n; ++i) in.keeps.push_back(uniforms(gen, size_t(C), -0.3f, 1.3f));
  return in;
}

// h = LayerNorm(x) (when given) * scale1p + shift (when given), then h * mix + qshift(h) * keep, in
// float64: qshift takes channel quarter 0 from the left neighbour, 1 from the right, 2 from above,
// 3 from below (zero past the border), and channels from 4 * (C / 4) on from the token itself.
std::vector<std::vector<double>> reference_shift_mix(MixInputs const& in) {
  int64_t const B = in.B, H = in.H, W = in.W, C = in.C, T = H * W, q = C / 4;
  std::vector<double> h(in.x.begin(), in.x.end());
  for (int64_t r = 0; r < B * T; ++r) {
    double* p = &h[size_t(r * C)];
    if (!in.norm_weight.empty()) {
      double mean = 0.0, var = 0.0;
      for (int64_t c = 0; c < C; ++c) mean += p[c] / double(C);
      for (int64_t c = 0; c < C; ++c) var += (p[c] - mean) * (p[c] - mean) / double(C);
      for (int64_t c = 0; c < C; ++c)
        p[c] = (p[c] - mean) / std::sqrt(var + double(in.eps)) * in.norm_weight[size_t(c)] +
               (in.norm_bias.empty() ? 0.0 : double(in.norm_bias[size_t(c)]));
    }
    if (!in.scale1p.empty())
      for (int64_t c = 0; c < C; ++c)
        p[c] = p[c] * in.scale1p[size_t(r / T * C + c)] + double(in.shift[size_t(r / T * C + c)]);
  }
  std::vector<std::vector<double>> outs;
  for (size_t m = 0; m < in.mixes.size(); ++m) {
    std::vector<double> out(h.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t i = 0; i < H; ++i)
        for (int64_t j = 0; j < W; ++j)
          for (int64_t c = 0; c < C; ++c) {
            int64_t di = 0, dj = 0;  // the neighbour this channel takes
            bool const inside = c < q       ? (dj = -1, j > 0)
                                : c < 2 * q ? (dj = 1, j < W - 1)
                                : c < 3 * q ? (di = -1, i > 0)
                                : c < 4 * q ? (di = 1, i < H - 1)
                                            : true;
            size_t const at = size_t(((b * H + i) * W + j) * C + c);
            double const xx = inside ? h[size_t(((b * H + i + di) * W + j + dj) * C + c)] : 0.0;
            out[at] = h[at] * in.mixes[m][size_t(c)] + xx * in.keeps[m][size_t(c)];
          }
    outs.push_back(out);
  }
  return outs;
}

// shift_mix on guarded copies; checks guards and inputs, then each output against the reference.
void check_shift_mix(CpuBuild const& build, MixInputs const& in, int threads, std::string const& what,
                     double rtol = 1e-6) {
  Arena arena;
  int64_t const n = int64_t(in.x.size());
  float const* x = arena.input(in.x);
  float const* sc = in.scale1p.empty() ? nullptr : arena.input(in.scale1p);
  float const* sh = in.shift.empty() ? nullptr : arena.input(in.shift);
  std::vector<float const*> mixes, keeps;
  std::vector<float*> outs;
  for (auto const& m : in.mixes) mixes.push_back(arena.input(m));
  for (auto const& k : in.keeps) keeps.push_back(arena.input(k));
  for (size_t i = 0; i < in.mixes.size(); ++i) outs.push_back(arena.place(std::vector<float>(size_t(n), kNaN)));
  drwkv::LayerNormParams norm{nullptr, nullptr, in.eps};
  if (!in.norm_weight.empty()) {
    norm.weight = arena.input(in.norm_weight);
    norm.bias = in.norm_bias.empty() ? nullptr : arena.input(in.norm_bias);
  }
  build.shift_mix(x, sc, sh, in.B, in.H, in.W, in.C, int(mixes.size()), mixes.data(), keeps.data(), outs.data(),
                  threads, in.norm_weight.empty() ? nullptr : &norm);
  std::string const where = label(build, threads, what);
  CHECK(arena.guards_intact());
  CHECK(arena.inputs_unchanged());
  std::vector<std::vector<double>> const want = reference_shift_mix(in);
  for (size_t i = 0; i < want.size(); ++i)
    CHECK(matches(where + ", out[" + std::to_string(i) + "]", outs[i], want[i], rtol));
}

void test_shift_mix(CpuBuild const& build, int threads) {
  int64_t const shapes[][4] = {
      // B, H, W, C
      {1, 4, 4, 8},    // quarters of 2: scalar tails only
      {2, 3, 7, 13},   // C % 4 == 1, wider than tall
      {3, 7, 3, 14},   // C % 4 == 2, taller than wide
      {1, 5, 5, 15},   // C % 4 == 3
      {2, 4, 4, 1},    // C < 4: no quarters, every channel passes through
      {1, 3, 5, 2},    //
      {2, 5, 3, 3},    //
      {2, 6, 1, 12},   // one token wide: left and right neighbours are all border
      {3, 1, 6, 12},   // one token tall: upper and lower neighbours are all border
      {2, 1, 1, 9},    // one token
      {1, 1, 1, 3},    // one token, no quarters
      {1, 2, 9, 37},   // quarters of 9: one 8-wide vector and a scalar tail each, 1 pass-through
      {2, 4, 5, 35},   // quarters of 8: exactly one vector each, 3 pass-through
      {1, 3, 3, 64},   // quarters of 16: vectors only
      {3, 9, 11, 45},  // enough values (with 3 mixes) for the rows to be shared among threads
  };
  for (auto const& s : shapes) {
    std::string const shape = "B" + std::to_string(s[0]) + " " + std::to_string(s[1]) + "x" + std::to_string(s[2]) +
                              " C" + std::to_string(s[3]);
    for (bool modulated : {false, true}) {
      MixInputs in = mix_inputs(s[0], s[1], s[2], s[3], 3, modulated, 0);
      check_shift_mix(build, in, threads, "shift_mix " + shape + (modulated ? " modulated" : " plain"));
      // After a LayerNorm, with and without its bias.
      std::mt19937 gen(1);
      in.norm_weight = normals(gen, size_t(s[3]), 0.5f, 1.0f);
      check_shift_mix(build, in, threads, "shift_mix LayerNorm " + shape);
      in.norm_bias = normals(gen, size_t(s[3]), 0.5f);
      check_shift_mix(build, in, threads, "shift_mix LayerNorm with bias " + shape);
    }
  }
  // More than four mixes take further passes of up to four: every output must still be its own mix.
  for (int n = 1; n <= 6; ++n)
    for (auto const& s : {std::array<int64_t, 4>{2, 16, 17, 39}, {3, 1, 4, 6}})
      for (bool modulated : {false, true})
        check_shift_mix(build, mix_inputs(s[0], s[1], s[2], s[3], n, modulated, unsigned(n)), threads,
                        "shift_mix " + std::to_string(n) + " mixes");
  // A model-sized SpatialMix input: B = 16, 32 x 32 tokens, C = 128, keep = 1 - mix.
  MixInputs model = mix_inputs(16, 32, 32, 128, 3, true, 7);
  for (size_t i = 0; i < 3; ++i)
    for (size_t c = 0; c < 128; ++c) model.keeps[i][c] = 1.0f - model.mixes[i][c];
  check_shift_mix(build, model, threads, "shift_mix model-sized");
}

// NaN and infinities in each input: NaN exactly where the float64 reference has it, the shifted
// neighbours included, and nowhere else. B = 2, 5 x 6 tokens, C = 19 (quarters of 4, channels
// 16..18 pass through).
void test_shift_mix_nan(CpuBuild const& build, int threads) {
  int64_t const B = 2, H = 5, W = 6, C = 19;
  struct Special {
    int64_t b, i, j, c;
    float value;
  };
  Special const specials[] = {
      {0, 0, 0, 1, kNaN},    // quarter 0 (from the left), corner: reaches (0, 1)
      {0, 2, 3, 5, kNaN},    // quarter 1 (from the right), interior: reaches (2, 2)
      {1, 4, 5, 9, kNaN},    // quarter 2 (from above), bottom row: no token below takes it
      {1, 0, 2, 13, kNaN},   // quarter 3 (from below), top row: no token above takes it
      {1, 2, 4, 14, kNaN},   // quarter 3, interior: reaches (1, 4)
      {0, 3, 1, 17, kNaN},   // pass-through channel
      {1, 2, 2, 3, kInf},    // infinities: inf * mix, and inf * 0 = NaN where a mix is zero
      {0, 1, 4, 10, -kInf},
  };
  for (std::string where : {"x", "x modulated", "scale1p", "shift", "mix", "keep"}) {
    MixInputs in = mix_inputs(B, H, W, C, 3, where != "x", 3);
    in.mixes[1][3] = 0.0f;  // inf * 0 in one output
    in.keeps[2][10] = 0.0f;
    if (where[0] == 'x') {
      for (Special const& s : specials) in.x[size_t(((s.b * H + s.i) * W + s.j) * C + s.c)] = s.value;
    } else if (where == "scale1p") {
      in.scale1p[1 * C + 6] = kNaN, in.scale1p[17] = kInf;
    } else if (where == "shift") {
      in.shift[2] = kNaN, in.shift[1 * C + 12] = -kInf;
    } else if (where == "mix") {
      in.mixes[0][4] = kNaN, in.mixes[2][18] = kInf;
    } else {
      in.keeps[1][11] = kNaN, in.keeps[0][0] = -kInf;
    }
    // The reference is not trivially NaN-free, and not all NaN: NaN reaches more tokens than those
    // holding it (for x: token (0, 1) of batch 0, channel 1, from the NaN at (0, 0)).
    std::vector<std::vector<double>> const want = reference_shift_mix(in);
    size_t nan_tokens = 0;
    for (int64_t t = 0; t < B * H * W; ++t)
      for (auto const& out : want)
        if (std::any_of(&out[size_t(t * C)], &out[size_t(t * C)] + C, [](double v) { return std::isnan(v); })) {
          ++nan_tokens;
          break;
        }
    CHECK(nan_tokens > (where[0] == 'x' ? 2u : 0u));
    for (auto const& out : want) CHECK(std::any_of(out.begin(), out.end(), [](double v) { return std::isfinite(v); }));
    if (where[0] == 'x')
      for (auto const& out : want) CHECK(std::isnan(out[size_t(1 * C + 1)]));
    check_shift_mix(build, in, threads, "shift_mix NaN in " + where);
  }
}

// --- sigmoid_gate and relu_square ---------------------------------------------------------------

size_t const kSizes[] = {1, 7, 8, 9, 4097, 100003};  // tails only, one vector, vector + tail, blocks, threads

// y (in place) in a guarded buffer, r as a guarded input; with `chunk`, one call per `chunk` values
// (chunk < 8 runs only the pass's scalar tail).
std::vector<float> run_sigmoid_gate(CpuBuild const& build, std::vector<float> const& y, std::vector<float> const& r,
                                    int threads, size_t chunk = 0) {
  Arena arena;
  float* ys = arena.place(y);
  float const* rs = arena.input(r);
  size_t const step = chunk ? chunk : y.size();
  for (size_t s = 0; s < y.size(); s += step) build.sigmoid_gate(ys + s, rs + s, int64_t(std::min(step, y.size() - s)), threads);
  CHECK(arena.guards_intact());
  CHECK(arena.inputs_unchanged());
  return std::vector<float>(ys, ys + y.size());
}

std::vector<float> run_relu_square(CpuBuild const& build, std::vector<float> const& y, int threads, size_t chunk = 0) {
  Arena arena;
  float* ys = arena.place(y);
  size_t const step = chunk ? chunk : y.size();
  for (size_t s = 0; s < y.size(); s += step) build.relu_square(ys + s, int64_t(std::min(step, y.size() - s)), threads);
  CHECK(arena.guards_intact());
  return std::vector<float>(ys, ys + y.size());
}

// relu(y)^2 as torch computes it in float32: one rounding; NaN stays NaN, -0.0 and -inf give +0.
float relu_square_f32(float y) {
  float const r = std::isnan(y) ? y : (y > 0.0f ? y : 0.0f);
  return r * r;
}

void test_sigmoid_gate_and_relu_square(CpuBuild const& build, int threads) {
  for (size_t n : kSizes) {
    std::mt19937 gen{unsigned(n)};
    std::vector<float> const y = normals(gen, n, 3.0f), r = normals(gen, n, 6.0f);
    std::vector<double> want(n);
    for (size_t i = 0; i < n; ++i) want[i] = sigmoid(r[i]) * y[i];
    CHECK(matches(label(build, threads, "sigmoid_gate n=" + std::to_string(n)),
                  run_sigmoid_gate(build, y, r, threads).data(), want));

    std::vector<float> const v = normals(gen, n, 4.0f);
    std::vector<float> const got = run_relu_square(build, v, threads);
    std::vector<double> want64(n);
    std::vector<float> want32(n);
    for (size_t i = 0; i < n; ++i) {
      want64[i] = v[i] > 0 ? double(v[i]) * v[i] : 0.0;
      want32[i] = relu_square_f32(v[i]);
    }
    std::string const what = label(build, threads, "relu_square n=" + std::to_string(n));
    CHECK(matches(what, got.data(), want64));
    CHECK(same_bits(got.data(), want32.data(), n));  // bit for bit: one rounding each
  }
}

// r = +inf gates by 1, -inf by 0, +-100 saturate, NaN gives NaN; y * 0 of an infinite y is NaN. The
// reference is float32's own sigmoid (as torch's): exp(100) overflows there, so sigmoid(-100) is 0
// and inf * sigmoid(-100) NaN. In the vector lanes and in the scalar tail.
void test_extreme_gates(CpuBuild const& build) {
  std::vector<float> const r_values = {kInf, -kInf, 100.0f, -100.0f, kNaN, 0.0f, 20.0f, -20.0f, 3.0f};  // 9
  std::vector<float> const y_values = {1.5f, -2.0f, 0.0f, kInf, -kInf, kNaN, 3e38f};                     // 7
  size_t const n = r_values.size() * y_values.size() * 8;  // every (y, r) pair, in every lane
  std::vector<float> const r = tiled(r_values, n), y = tiled(y_values, n);
  std::vector<double> want(n);
  for (size_t i = 0; i < n; ++i) want[i] = (1.0f / (1.0f + std::exp(-r[i]))) * y[i];
  CHECK(std::any_of(want.begin(), want.end(), [](double v) { return std::isnan(v); }));
  CHECK(std::any_of(want.begin(), want.end(), [](double v) { return std::isinf(v); }));
  for (size_t chunk : {size_t(0), size_t(1)}) {
    std::string const what = std::string(build.name) + ", sigmoid_gate extreme values, " + (chunk ? "scalar" : "vector");
    std::vector<float> const got = run_sigmoid_gate(build, y, r, 1, chunk);
    CHECK(matches(what, got.data(), want, 1e-6, true));
    for (size_t i = 0; i < n; ++i) {
      if (std::isfinite(y[i]) && r[i] == kInf) CHECK(got[i] == y[i]);    // gate exactly 1
      if (std::isfinite(y[i]) && r[i] == -kInf) CHECK(got[i] == 0.0f);  // gate exactly 0
      if (std::isnan(r[i])) CHECK(std::isnan(got[i]));
    }
  }

  // NaN stays NaN, -inf and -0.0 give +0, +inf stays inf, squares past float32's range overflow to
  // inf and tiny ones underflow, as float32's relu(y)^2, bit for bit (signed zeros, subnormals).
  std::vector<float> const values = {kNaN, -kInf, kInf, -0.0f, 0.0f, 1e20f, -1e20f, 1.8e19f, 1.9e19f, 3.4e38f,
                                     1e-30f, 1e-20f, 1e-45f, -1e-45f, 2.0f, -3.0f, -kNaN};  // 17
  std::vector<float> const v = tiled(values, values.size() * 8);
  for (size_t chunk : {size_t(0), size_t(1)}) {
    std::string const what = std::string(build.name) + ", relu_square extreme values, " + (chunk ? "scalar" : "vector");
    std::vector<float> const got = run_relu_square(build, v, 1, chunk);
    for (size_t i = 0; i < v.size(); ++i) {
      float const want = relu_square_f32(v[i]);
      bool const ok = std::isnan(want) ? std::isnan(got[i]) : same_bits(&got[i], &want, 1);
      if (!ok) std::fprintf(stderr, "%s: relu_square(%g) = %g, want %g\n", what.c_str(), v[i], got[i], want);
      CHECK(ok);
    }
  }
}

// --- gated_residual -----------------------------------------------------------------------------

struct Residual {
  int64_t B, T, C;
  std::vector<float> x, gate, branch, r;  // r empty: no receptance gate
};

Residual residual_inputs(int64_t B, int64_t T, int64_t C, bool with_r, unsigned seed) {
  std::mt19937 gen(seed);
  size_t const n = size_t(B * T * C);
  Residual in{B, T, C, normals(gen, n, 1.0f), normals(gen, size_t(B * C), 1.0f), normals(gen, n, 1.0f), {}};
  if (with_r) in.r = normals(gen, n, 4.0f);
  return in;
}

std::vector<double> reference_residual(Residual const& in) {
  std::vector<double> out(in.x.size());
  for (size_t i = 0; i < out.size(); ++i) {
    double const branch = in.r.empty() ? double(in.branch[i]) : sigmoid(in.r[i]) * in.branch[i];
    out[i] = in.x[i] + double(in.gate[size_t(int64_t(i) / (in.T * in.C) * in.C + int64_t(i) % in.C)]) * branch;
  }
  return out;
}

// gated_residual on guarded copies into a fresh NaN-filled output, or over x or branch ("x",
// "branch"); checks the guards and the inputs it does not write.
std::vector<float> run_residual(CpuBuild const& build, Residual const& in, int threads, std::string const& out = "new") {
  Arena arena;
  float* x = out == "x" ? arena.place(in.x) : const_cast<float*>(arena.input(in.x));
  float const* gate = arena.input(in.gate);
  float* branch = out == "branch" ? arena.place(in.branch) : const_cast<float*>(arena.input(in.branch));
  float const* r = in.r.empty() ? nullptr : arena.input(in.r);
  float* target = out == "x" ? x : out == "branch" ? branch : arena.place(std::vector<float>(in.x.size(), kNaN));
  build.gated_residual(x, gate, branch, r, target, in.B, in.T, in.C, threads);
  CHECK(arena.guards_intact());
  CHECK(arena.inputs_unchanged());
  return std::vector<float>(target, target + in.x.size());
}

void test_gated_residual(CpuBuild const& build, int threads) {
  int64_t const shapes[][3] = {{1, 1, 1}, {2, 5, 3}, {3, 7, 7}, {1, 4, 8}, {2, 3, 9}, {3, 11, 17}, {2, 1, 130},
                               {3, 129, 130}};  // the last: enough values for the rows to be shared among threads
  for (auto const& s : shapes)
    for (bool with_r : {false, true}) {
      Residual const in = residual_inputs(s[0], s[1], s[2], with_r, 0);
      std::string const what = label(build, threads, "gated_residual B" + std::to_string(s[0]) + " T" +
                                                         std::to_string(s[1]) + " C" + std::to_string(s[2]) +
                                                         (with_r ? " r" : ""));
      std::vector<float> const separate = run_residual(build, in, threads);
      CHECK(matches(what, separate.data(), reference_residual(in)));
      // Over x or over branch (as ort_split does when nothing reads them later): bit for bit the same.
      for (char const* out : {"x", "branch"}) CHECK(run_residual(build, in, threads, out) == separate);
    }
}

// Whether a build rounds x + g * b once (a fused multiply-add): the x86 baseline has no FMA
// instruction; the AVX2+FMA build and aarch64 (FMA is part of the base instruction set, and GCC
// contracts by default) do. It decides one case: x infinite and g * b overflowing to the other
// infinity gives x fused (as torch's addcmul) and NaN (inf - inf) unfused.
bool fuses_multiply_add(CpuBuild const& build) {
#if defined(__aarch64__)
  (void)build;
  return true;
#else
  return std::string(build.name) != "baseline";
#endif
}

// Magnitudes of 1e30 whose products overflow: every (x, gate, branch) triple, gate varying along C
// and (x, branch) along T, C = 7 * 3 so that both the vector lanes and the scalar tail see each
// gate; a second batch row with the gates reversed, so gate[b] must be per batch.
void test_gated_residual_extreme(CpuBuild const& build, int threads) {
  std::vector<float> const values = {0.0f, 1.0f, -1.0f, 2.5f, -2.5f, 1e30f, -1e30f};
  std::vector<float> xs = values;
  xs.push_back(kInf), xs.push_back(-kInf);
  int64_t const C = int64_t(values.size()) * 3, T = int64_t(xs.size() * values.size()), B = 2;
  for (bool with_r : {false, true}) {
    Residual in{B, T, C, {}, {}, {}, {}};
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        for (int64_t c = 0; c < C; ++c) {
          in.x.push_back(xs[size_t(t) / values.size()]);
          in.branch.push_back(values[size_t(t) % values.size()]);
        }
    for (int64_t c = 0; c < C; ++c) in.gate.push_back(values[size_t(c) % values.size()]);
    for (int64_t c = 0; c < C; ++c) in.gate.push_back(values[size_t(C - 1 - c) % values.size()]);
    if (with_r)  // gates exact in float32: 0.5, 1, 0, 1, 0, NaN
      in.r = tiled({0.0f, 100.0f, -100.0f, kInf, -kInf, kNaN}, size_t(B * T * C));
    // The float64 result rounded to float32 (overflowing to inf), from float32's sigmoid; unfused
    // builds give NaN where x is infinite and the float32 product overflows to the other infinity.
    std::vector<double> want(in.x.size());
    bool const fused = fuses_multiply_add(build);
    for (size_t i = 0; i < want.size(); ++i) {
      float const s = in.r.empty() ? 1.0f : 1.0f / (1.0f + std::exp(-in.r[i]));
      float const g = in.gate[size_t(int64_t(i) / (T * C) * C + int64_t(i) % C)];
      want[i] = double(float(double(in.x[i]) + double(g) * double(s * in.branch[i])));
      float const product = g * (s * in.branch[i]);
      if (!fused && std::isinf(in.x[i]) && std::isinf(product) && product != in.x[i]) want[i] = NAN;
    }
    CHECK(std::any_of(want.begin(), want.end(), [](double v) { return std::isinf(v); }));
    if (with_r) CHECK(std::any_of(want.begin(), want.end(), [](double v) { return std::isnan(v); }));
    std::vector<float> const got = run_residual(build, in, threads);
    CHECK(matches(label(build, threads, std::string("gated_residual extreme values") + (with_r ? " r" : "")),
                  got.data(), want, 1e-6, true));
  }
}

}  // namespace

int main() {
  std::vector<CpuBuild> const& builds = drwkv::cpu_builds();
  for (CpuBuild const& build : builds) {
    for (int threads : {1, 2}) {
      test_shift_mix(build, threads);
      test_shift_mix_nan(build, threads);
      test_sigmoid_gate_and_relu_square(build, threads);
      test_gated_residual(build, threads);
      test_gated_residual_extreme(build, threads);
    }
    test_extreme_gates(build);
  }
  std::string names;
  for (CpuBuild const& build : builds) names += (names.empty() ? "" : ", ") + std::string(build.name);
  if (drwkv_test::failures() == 0) std::printf("fused_cpu (%s): all checks passed\n", names.c_str());
  return drwkv_test::failures() == 0 ? 0 : 1;
}
