// The sampling loop of drwkv.samplers.sample for any denoiser, with the noise of drwkv/noise.h: for
// the same seed, labels and image numbers it draws the same noise as the Python loop, so the images
// agree with the Python runtime's (to the samplers' float32 agreement, bit for bit where no float32
// exp is involved).
//
//     images = first_image + [0 .. B-1]
//     x = noise(seed, images, step 0)                                         x_T
//     for i in 0 .. steps-1:
//         out = model(x, timestep(i), y), guided when cfg_scale != 1         (one call on [x; x], [y; null])
//         x = sampler.step(i, x, out, noise(seed, images, step i + 1))       (noise for stochastic samplers)
//         stop (std::runtime_error) at the first step that gives a NaN or Inf, in drwkv.samplers' words
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "drwkv/samplers.h"

namespace drwkv {

// The model: out [n, C_out, H, W] = denoise(n, x [n, C, H, W], t [n], y [n]), host memory.
using Denoise = std::function<void(int64_t n, float const* x, float const* t, int64_t const* y, float* out)>;

// What the loop needs to know of the model (from its config).
struct DenoiserShape {
  int64_t channels = 0;           // C
  int64_t image_size = 0;         // H = W
  int64_t out_channels = 0;       // C_out: C, or 2C with learned variance
  int64_t num_classes = 0;        // the label num_classes is the null class; 0: unconditional
  int64_t guidance_channels = 0;  // channels guidance acts on (the config's; C if absent)
};

// Images number first_image .. first_image + B - 1 of a run with `seed`, B = labels.size():
// x_0, float [B, C, H, W] about [-1, 1]. Guidance when cfg_scale != 1 (combined in float32, as
// numpy does). after_step, when given, is called after every step. std::invalid_argument for
// guidance on an unconditional model or a bad shape, std::runtime_error for non-finite values;
// whatever `denoise` throws passes through.
std::vector<float> sample(Denoise const& denoise, DenoiserShape const& model, Sampler& sampler,
                          std::vector<int64_t> const& labels, double cfg_scale, uint64_t seed, uint64_t first_image = 0,
                          std::function<void()> const& after_step = {});

}  // namespace drwkv
