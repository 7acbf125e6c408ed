// drwkv.samplers.sample in C++ (see drwkv/sample.h).
#include "drwkv/sample.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "drwkv/noise.h"

namespace drwkv {

std::vector<float> sample(Denoise const& denoise, DenoiserShape const& model, Sampler& sampler,
                          std::vector<int64_t> const& labels, double cfg_scale, uint64_t seed, uint64_t first_image,
                          std::function<void()> const& after_step) {
  if (model.channels < 1 || model.image_size < 1 ||
      (model.out_channels != model.channels && model.out_channels != 2 * model.channels))
    throw std::invalid_argument("sample: a model needs channels >= 1, image_size >= 1 and out_channels C or 2C");
  ImageShape const shape{int64_t(labels.size()), model.channels, model.image_size, model.image_size};
  int64_t const B = shape.batch, out_channels = model.out_channels;
  size_t const image = size_t(shape.channels * shape.plane());
  bool const guided = cfg_scale != 1.0;
  if (guided && model.num_classes == 0)
    throw std::invalid_argument("an unconditional model (num_classes 0) takes no guidance; use cfg_scale 1");

  // The noise of every image of the batch at one step.
  auto draw = [&](uint32_t step, std::vector<float>& v) {
    for (int64_t b = 0; b < B; ++b)
      standard_normal(seed, first_image + uint64_t(b), step, int64_t(image), v.data() + size_t(b) * image);
  };
  std::vector<float> x(size_t(shape.numel())), noise(sampler.stochastic() ? x.size() : 0);
  draw(0, x);
  // With guidance the model sees [x; x] with labels [y; null] in one call.
  std::vector<int64_t> y(labels);
  if (guided) y.insert(y.end(), labels.size(), model.num_classes);
  size_t const out_image = size_t(out_channels * shape.plane());
  std::vector<float> model_in(guided ? 2 * x.size() : 0), t(y.size());
  std::vector<float> raw(y.size() * out_image), out(guided ? size_t(B) * out_image : 0);
  int64_t const guidance_channels = model.guidance_channels > 0 ? model.guidance_channels : model.channels;

  sampler.reset();
  for (int i = 0; i < sampler.steps(); ++i) {
    std::fill(t.begin(), t.end(), float(sampler.timestep(i)));
    if (guided) {
      std::copy(x.begin(), x.end(), model_in.begin());
      std::copy(x.begin(), x.end(), model_in.begin() + long(x.size()));
    }
    denoise(int64_t(y.size()), guided ? model_in.data() : x.data(), t.data(), y.data(), raw.data());
    if (guided) guided_output(shape, raw.data(), out_channels, float(cfg_scale), guidance_channels, out.data());
    if (sampler.stochastic()) draw(uint32_t(i + 1), noise);
    sampler.step(i, shape, x.data(), guided ? out.data() : raw.data(), out_channels,
                 sampler.stochastic() ? noise.data() : nullptr, x.data());
    // A NaN never recovers: stop instead of writing black images.
    if (!std::all_of(x.begin(), x.end(), [](float v) { return std::isfinite(v); }))
      throw std::runtime_error("sampling gave non-finite values (NaN or Inf) at step " + std::to_string(i + 1) + " of " +
                               std::to_string(sampler.steps()) + " (images " + std::to_string(first_image) + ".." +
                               std::to_string(first_image + uint64_t(B) - 1) +
                               "): the model's weights or the settings are broken");
    if (after_step) after_step();
  }
  return x;
}

}  // namespace drwkv
