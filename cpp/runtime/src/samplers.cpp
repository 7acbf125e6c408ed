// The samplers of drwkv/samplers.py in C++. Tables are float64, computed in the order numpy
// computes them; per-element arithmetic is float32 with float32-rounded coefficients, as numpy
// applies Python floats to float32 arrays. Built with -ffp-contract=off so that no multiply-add is
// fused where numpy rounds twice.
#include "drwkv/samplers.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

namespace drwkv {
namespace {

// numpy.linspace(start, stop, num): i * step + start, the last point exactly stop.
std::vector<double> linspace(double start, double stop, int num) {
  std::vector<double> y(size_t(num), start);
  if (num < 2) return y;
  double const step = (stop - start) / double(num - 1);
  for (int i = 0; i < num; ++i) y[size_t(i)] = double(i) * step + start;
  y.back() = stop;
  return y;
}

std::vector<double> cumprod_one_minus(std::vector<double> const& betas) {
  std::vector<double> out(betas.size());
  double product = 1.0;
  for (size_t i = 0; i < betas.size(); ++i) out[i] = product *= (1.0 - betas[i]);
  return out;
}

// drwkv.schedule.respaced_timesteps: unique(round(linspace(0, T-1, N))), rounding half to even.
std::vector<int64_t> respaced_timesteps(int num_timesteps, int steps) {
  if (steps < 1 || steps > num_timesteps)
    throw std::invalid_argument("steps must be between 1 and " + std::to_string(num_timesteps) + ", got " +
                                std::to_string(steps));
  if (steps == 1) return {int64_t(num_timesteps - 1)};  // one step starts from pure noise
  std::vector<int64_t> kept;
  for (double t : linspace(0.0, double(num_timesteps - 1), steps)) kept.push_back(int64_t(std::nearbyint(t)));
  std::sort(kept.begin(), kept.end());
  kept.erase(std::unique(kept.begin(), kept.end()), kept.end());
  return kept;
}

}  // namespace

Process Process::respaced(ScheduleConfig const& schedule, int steps) {
  std::vector<double> const full = cumprod_one_minus(linspace(schedule.beta_start, schedule.beta_end,
                                                              schedule.num_timesteps));
  Process p;
  p.timesteps = respaced_timesteps(schedule.num_timesteps, steps);
  size_t const n = p.timesteps.size();
  // beta'_j = 1 - alphabar_{kept[j]} / alphabar_{kept[j-1]}; the tables are then derived from beta'
  // (alphabar' is recomputed as a cumulative product, exactly as the Python Schedule does).
  for (size_t j = 0; j < n; ++j) {
    double const previous = j == 0 ? 1.0 : full[size_t(p.timesteps[j - 1])];
    p.betas.push_back(1.0 - full[size_t(p.timesteps[j])] / previous);
  }
  p.alphas_cumprod = cumprod_one_minus(p.betas);
  std::vector<double> variance(n);
  for (size_t j = 0; j < n; ++j) {
    double const a = p.alphas_cumprod[j], a_prev = j == 0 ? 1.0 : p.alphas_cumprod[j - 1];
    p.alphas_cumprod_prev.push_back(a_prev);
    variance[j] = p.betas[j] * (1.0 - a_prev) / (1.0 - a);
    p.posterior_mean_coef1.push_back(p.betas[j] * std::sqrt(a_prev) / (1.0 - a));
    p.posterior_mean_coef2.push_back((1.0 - a_prev) * std::sqrt(1.0 - p.betas[j]) / (1.0 - a));
  }
  // log of the posterior variance, with j = 0 (where it is 0) taking the j = 1 value; a one-step
  // process has no j = 1 and uses log(beta) (its only step adds no noise anyway).
  for (size_t j = 0; j < n; ++j)
    p.posterior_log_variance_clipped.push_back(n == 1 ? std::log(p.betas[0]) : std::log(variance[j == 0 ? 1 : j]));
  return p;
}

// --- Sampler ---------------------------------------------------------------------------------------

Sampler::Sampler(ScheduleConfig const& schedule, int steps, bool clip_x0)
    : process_(Process::respaced(schedule, steps)), clip_x0_(clip_x0) {
  for (double a : process_.alphas_cumprod) {
    sqrt_recip_alphas_cumprod_.push_back(std::sqrt(1.0 / a));
    sqrt_recipm1_alphas_cumprod_.push_back(std::sqrt(1.0 / a - 1.0));
  }
}

int Sampler::index(int i) const {
  if (i < 0 || i >= steps())
    throw std::invalid_argument("step " + std::to_string(i) + " out of range for a " + std::to_string(steps()) +
                                "-step sampler");
  return steps() - 1 - i;
}

int64_t Sampler::timestep(int i) const { return process_.timesteps[size_t(index(i))]; }

float Sampler::predict_x0(int j, float x, float eps) const {
  float const x0 = float(sqrt_recip_alphas_cumprod_[size_t(j)]) * x - float(sqrt_recipm1_alphas_cumprod_[size_t(j)]) * eps;
  return clip_x0_ ? std::min(std::max(x0, -1.0f), 1.0f) : x0;
}

void Sampler::check_channels(ImageShape const& shape, int64_t out_channels) {
  if (out_channels != shape.channels && out_channels != 2 * shape.channels)
    throw std::invalid_argument("model output has " + std::to_string(out_channels) + " channels; expected " +
                                std::to_string(shape.channels) + " or " + std::to_string(2 * shape.channels));
}

namespace {

// Calls f(at, eps_at, v_at) for every element (b, c, p) of x: x[at] with at = (b*C + c)*P + p, its
// eps at (b*C_out + c)*P + p and its v (learned variance) C*P further on.
template <class F>
void for_each_element(ImageShape const& shape, int64_t out_channels, F&& f) {
  int64_t const P = shape.plane(), C = shape.channels;
  for (int64_t b = 0; b < shape.batch; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t p = 0; p < P; ++p) {
        int64_t const eps_at = (b * out_channels + c) * P + p;
        f((b * C + c) * P + p, eps_at, eps_at + C * P);
      }
}

}  // namespace

// --- DDPM ------------------------------------------------------------------------------------------

DDPM::DDPM(ScheduleConfig const& schedule, int steps, bool clip_x0) : Sampler(schedule, steps, clip_x0) {
  for (double beta : process_.betas) log_betas_.push_back(std::log(beta));
}

void DDPM::step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
                float const* noise, float* x_next) {
  int const j = index(i);
  check_channels(shape, out_channels);
  if (j > 0 && noise == nullptr) throw std::invalid_argument("ddpm: every step but the last needs noise");
  float const coef1 = float(process_.posterior_mean_coef1[size_t(j)]);
  float const coef2 = float(process_.posterior_mean_coef2[size_t(j)]);
  double const log_variance = process_.posterior_log_variance_clipped[size_t(j)];
  bool const learned = out_channels == 2 * shape.channels;
  float const log_beta = float(log_betas_[size_t(j)]), log_posterior = float(log_variance);
  float const fixed_std = float(std::exp(0.5 * log_variance));
  for_each_element(shape, out_channels, [&](int64_t at, int64_t eps_at, int64_t v_at) {
    float const x0 = predict_x0(j, x[at], model_out[eps_at]);
    float const mean = coef1 * x0 + coef2 * x[at];
    if (j == 0) {
      x_next[at] = mean;
    } else if (learned) {  // log variance interpolated between beta' and the posterior's
      float const frac = (model_out[v_at] + 1.0f) / 2.0f;
      float const log_var = frac * log_beta + (1.0f - frac) * log_posterior;
      x_next[at] = mean + std::exp(0.5f * log_var) * noise[at];
    } else {
      x_next[at] = mean + fixed_std * noise[at];
    }
  });
}

// --- DDIM ------------------------------------------------------------------------------------------

DDIM::DDIM(ScheduleConfig const& schedule, int steps, double eta, bool clip_x0)
    : Sampler(schedule, steps, clip_x0), eta_(eta) {
  if (!(eta >= 0.0 && eta <= 1.0))
    throw std::invalid_argument("eta must be between 0 and 1, got " + std::to_string(eta));
  for (int j = 0; j < process_.size(); ++j) {
    double const a = process_.alphas_cumprod[size_t(j)], a_prev = process_.alphas_cumprod_prev[size_t(j)];
    sigmas_.push_back(eta * std::sqrt((1.0 - a_prev) / (1.0 - a)) * std::sqrt(1.0 - a / a_prev));
  }
}

void DDIM::step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
                float const* noise, float* x_next) {
  int const j = index(i);
  check_channels(shape, out_channels);
  double const a_prev = process_.alphas_cumprod_prev[size_t(j)], sigma = sigmas_[size_t(j)];
  if (sigma > 0 && noise == nullptr) throw std::invalid_argument("ddim with eta > 0 needs noise");
  float const sqrt_recip = float(sqrt_recip_alphas_cumprod_[size_t(j)]);
  float const sqrt_recipm1 = float(sqrt_recipm1_alphas_cumprod_[size_t(j)]);
  float const x0_coef = float(std::sqrt(a_prev)), eps_coef = float(std::sqrt(1.0 - a_prev - sigma * sigma));
  float const noise_coef = float(sigma);
  for_each_element(shape, out_channels, [&](int64_t at, int64_t eps_at, int64_t /*v_at*/) {
    float const x0 = predict_x0(j, x[at], model_out[eps_at]);
    float const eps = (sqrt_recip * x[at] - x0) / sqrt_recipm1;  // eps re-derived from the clipped x0
    float next = x0_coef * x0 + eps_coef * eps;
    if (sigma > 0) next = next + noise_coef * noise[at];
    x_next[at] = next;
  });
}

// --- DPM-Solver++(2M) ------------------------------------------------------------------------------

DPMSolverPP2M::DPMSolverPP2M(ScheduleConfig const& schedule, int steps, bool clip_x0)
    : Sampler(schedule, steps, clip_x0) {
  for (double a : process_.alphas_cumprod) {
    alphas_.push_back(std::sqrt(a));
    sigmas_.push_back(std::sqrt(1.0 - a));
    lambdas_.push_back(std::log(alphas_.back()) - std::log(sigmas_.back()));
  }
}

void DPMSolverPP2M::step(int i, ImageShape const& shape, float const* x, float const* model_out,
                         int64_t out_channels, float const* /*noise*/, float* x_next) {
  int const j = index(i);
  check_channels(shape, out_channels);
  bool const first = prev_x0_.empty();
  if (!first && prev_x0_.size() != size_t(shape.numel()))
    throw std::invalid_argument("dpm++2m: the image shape changed between steps (call reset())");
  // j = 0 goes to clean data (x_next = x0); otherwise x_next = s x - k D with D = x0 at the first
  // step and into j-1 = 0 ("lower order final": that step is the largest in lambda, where
  // extrapolating is unstable), and the two-step combination of x0 and the previous x0 otherwise.
  float x_coef = 0.0f, d_coef = 0.0f, d_now = 1.0f, d_prev = 0.0f;
  bool const first_order = first || j == 1;
  if (j > 0) {
    double const h = lambdas_[size_t(j - 1)] - lambdas_[size_t(j)];
    if (!first_order) {
      double const r = (lambdas_[size_t(j)] - lambdas_[size_t(j + 1)]) / h;
      d_now = float(1.0 + 0.5 / r);
      d_prev = float(0.5 / r);
    }
    x_coef = float(sigmas_[size_t(j - 1)] / sigmas_[size_t(j)]);
    d_coef = float(alphas_[size_t(j - 1)] * std::expm1(-h));
  }
  std::vector<float> x0s(size_t(shape.numel()));
  for_each_element(shape, out_channels, [&](int64_t at, int64_t eps_at, int64_t /*v_at*/) {
    float const x0 = predict_x0(j, x[at], model_out[eps_at]);
    x0s[size_t(at)] = x0;
    if (j == 0) {
      x_next[at] = x0;
    } else {
      float const d = first_order ? x0 : d_now * x0 - d_prev * prev_x0_[size_t(at)];
      x_next[at] = x_coef * x[at] - d_coef * d;
    }
  });
  prev_x0_ = std::move(x0s);
}

std::unique_ptr<Sampler> make_sampler(std::string const& name, ScheduleConfig const& schedule, int steps,
                                      double eta, bool clip_x0) {
  if (name == "ddpm") return std::make_unique<DDPM>(schedule, steps, clip_x0);
  if (name == "ddim") return std::make_unique<DDIM>(schedule, steps, eta, clip_x0);
  if (name == "dpm++2m") return std::make_unique<DPMSolverPP2M>(schedule, steps, clip_x0);
  throw std::invalid_argument("unknown sampler '" + name + "'; choose one of ddpm, ddim, dpm++2m");
}

void guided_output(ImageShape const& shape, float const* out, int64_t out_channels, float cfg_scale,
                   int64_t guidance_channels, float* guided) {
  if (guidance_channels < 1 || guidance_channels > shape.channels)
    throw std::invalid_argument("guidance_channels must be between 1 and " + std::to_string(shape.channels) +
                                ", got " + std::to_string(guidance_channels));
  int64_t const P = shape.plane(), C = guidance_channels, B = shape.batch;
  for (int64_t b = 0; b < B; ++b) {
    float const* cond = out + b * out_channels * P;
    float const* uncond = out + (B + b) * out_channels * P;
    float* dst = guided + b * out_channels * P;
    for (int64_t k = 0; k < C * P; ++k) dst[k] = uncond[k] + cfg_scale * (cond[k] - uncond[k]);
    for (int64_t k = C * P; k < out_channels * P; ++k) dst[k] = cond[k];
  }
}

}  // namespace drwkv
