// Fixed-step samplers for C++ applications: the same maths as drwkv/samplers.py and
// drwkv/schedule.py, step for step (the Python test suite checks both agree to 1e-6 per step).
//
// A sampler walks the respaced schedule in `steps()` model calls. Step i = 0 .. steps()-1 works on
// process index j = steps()-1-i; the model is called at timestep(i). Each step is
//
//     x_next = step(i, x, model_out, noise)
//
// with x float32 [B, C, H, W], the model output at (x, timestep(i)) float32 [B, C_out, H, W]
// (C_out = 2C with learned variance: eps, then v in [-1, 1]; C_out = C: eps only) and the step's
// standard normal noise like x (stochastic samplers; ignored otherwise, may be null). Coefficients
// are float64 from the schedule, rounded to float32 and applied in float32, as numpy does.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace drwkv {

// The diffusion schedule of a model config ("diffusion" entry): linear betas.
struct ScheduleConfig {
  int num_timesteps = 1000;
  double beta_start = 1e-4;
  double beta_end = 0.02;
};

// A respaced process: float64 tables indexed by j = 0 .. size()-1 in increasing noise
// (as drwkv.schedule.Schedule.respace).
struct Process {
  static Process respaced(ScheduleConfig const& schedule, int steps);
  int size() const { return int(timesteps.size()); }

  std::vector<int64_t> timesteps;  // original timestep given to the model
  std::vector<double> betas, alphas_cumprod, alphas_cumprod_prev;
  std::vector<double> posterior_log_variance_clipped, posterior_mean_coef1, posterior_mean_coef2;
};

struct ImageShape {
  int64_t batch, channels, height, width;
  int64_t plane() const { return height * width; }
  int64_t numel() const { return batch * channels * plane(); }
};

class Sampler {
 public:
  Sampler(ScheduleConfig const& schedule, int steps, bool clip_x0);
  virtual ~Sampler() = default;

  virtual char const* name() const = 0;
  // Whether step() takes noise. The loop gives a stochastic sampler fresh noise at every step, the
  // last included, so that the random stream does not depend on the step.
  virtual bool stochastic() const { return false; }
  // Forget state carried between steps; call before step 0.
  virtual void reset() {}

  int steps() const { return process_.size(); }
  int64_t timestep(int i) const;  // the timestep the model is called with at step i
  Process const& process() const { return process_; }

  // One step. out_channels is C_out of model_out (C or 2C). x_next may be x (in place).
  // Throws std::invalid_argument for a bad step index, channel count or missing noise.
  virtual void step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
                    float const* noise, float* x_next) = 0;

 protected:
  int index(int i) const;  // process index j of step i
  // x0 = sqrt(1/a_j) x - sqrt(1/a_j - 1) eps, clipped to [-1, 1] when clip_x0 (one element).
  float predict_x0(int j, float x, float eps) const;
  static void check_channels(ImageShape const& shape, int64_t out_channels);

  Process process_;
  bool clip_x0_;
  std::vector<double> sqrt_recip_alphas_cumprod_, sqrt_recipm1_alphas_cumprod_;
};

// Ancestral DDPM; learned-range variance when out_channels = 2C, fixed posterior variance otherwise.
class DDPM final : public Sampler {
 public:
  DDPM(ScheduleConfig const& schedule, int steps, bool clip_x0 = true);
  char const* name() const override { return "ddpm"; }
  bool stochastic() const override { return true; }
  void step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
            float const* noise, float* x_next) override;

 private:
  std::vector<double> log_betas_;
};

// DDIM with stochasticity eta in [0, 1].
class DDIM final : public Sampler {
 public:
  DDIM(ScheduleConfig const& schedule, int steps, double eta = 0.0, bool clip_x0 = true);
  char const* name() const override { return "ddim"; }
  bool stochastic() const override { return eta_ > 0; }
  void step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
            float const* noise, float* x_next) override;

 private:
  double eta_;
  std::vector<double> sigmas_;
};

// DPM-Solver++(2M): multistep, keeps the previous step's x0 (steps run in order after reset());
// first order at the first step and the last two.
class DPMSolverPP2M final : public Sampler {
 public:
  DPMSolverPP2M(ScheduleConfig const& schedule, int steps, bool clip_x0 = true);
  char const* name() const override { return "dpm++2m"; }
  void reset() override { prev_x0_.clear(); }
  void step(int i, ImageShape const& shape, float const* x, float const* model_out, int64_t out_channels,
            float const* noise, float* x_next) override;

 private:
  std::vector<double> alphas_, sigmas_, lambdas_;
  std::vector<float> prev_x0_;  // empty before the first step
};

// A sampler by name: "ddpm", "ddim" (eta) or "dpm++2m"; std::invalid_argument otherwise.
std::unique_ptr<Sampler> make_sampler(std::string const& name, ScheduleConfig const& schedule, int steps,
                                      double eta = 0.0, bool clip_x0 = true);

// Classifier-free guidance: the model ran once on [x; x] with labels [y; null], giving
// out [2B, C_out, H, W]. Writes guided [B, C_out, H, W]:
//     eps = eps_uncond + cfg_scale (eps_cond - eps_uncond)   (first guidance_channels channels)
//     then the other channels of the conditional half.
// guidance_channels is the model config's (1..C; the paper's released models guide 3 of 4 latent
// channels); std::invalid_argument outside that range.
void guided_output(ImageShape const& shape, float const* out, int64_t out_channels, float cfg_scale,
                   int64_t guidance_channels, float* guided);

}  // namespace drwkv
