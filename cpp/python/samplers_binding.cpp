// drwkv._C bindings of the C++ runtime's host parts (drwkv/samplers.h, drwkv/noise.h, drwkv/sample.h,
// drwkv/png.h), so that the test suite can check them against drwkv.samplers and drwkv.noise. Python
// code samples with drwkv.samplers.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "drwkv/noise.h"
#include "drwkv/png.h"
#include "drwkv/sample.h"
#include "drwkv/samplers.h"

namespace py = pybind11;

namespace {

using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;

drwkv::ImageShape image_shape(Floats const& x) {
  if (x.ndim() != 4) throw std::invalid_argument("x must have shape [B, C, H, W]");
  return {x.shape(0), x.shape(1), x.shape(2), x.shape(3)};
}

// Checks model_out (and noise) against x; returns C_out.
int64_t check_step_inputs(drwkv::ImageShape const& s, Floats const& out, std::optional<Floats> const& noise) {
  if (out.ndim() != 4 || out.shape(0) != s.batch || out.shape(2) != s.height || out.shape(3) != s.width)
    throw std::invalid_argument("model_out must have shape [B, C_out, H, W] matching x");
  if (noise && (noise->ndim() != 4 || noise->size() != s.numel() || noise->shape(1) != s.channels))
    throw std::invalid_argument("noise must have the shape of x");
  return out.shape(1);
}

py::array_t<float> step(drwkv::Sampler& sampler, int i, Floats x, Floats model_out, std::optional<Floats> noise) {
  drwkv::ImageShape const shape = image_shape(x);
  int64_t const out_channels = check_step_inputs(shape, model_out, noise);
  py::array_t<float> x_next({shape.batch, shape.channels, shape.height, shape.width});
  float* dst = x_next.mutable_data();
  {
    py::gil_scoped_release release;
    sampler.step(i, shape, x.data(), model_out.data(), out_channels, noise ? noise->data() : nullptr, dst);
  }
  return x_next;
}

py::array_t<float> guided(Floats out, float cfg_scale, int64_t in_channels, std::optional<int64_t> guidance_channels) {
  if (out.ndim() != 4 || out.shape(0) % 2 != 0)
    throw std::invalid_argument("out must have shape [2B, C_out, H, W] (conditional half first)");
  drwkv::ImageShape const shape{out.shape(0) / 2, in_channels, out.shape(2), out.shape(3)};
  py::array_t<float> result({shape.batch, out.shape(1), shape.height, shape.width});
  drwkv::guided_output(shape, out.data(), out.shape(1), cfg_scale, guidance_channels.value_or(in_channels),
                       result.mutable_data());
  return result;
}

py::bytes encode_png(py::array_t<uint8_t, py::array::c_style | py::array::forcecast> image) {
  if (image.ndim() != 2 && image.ndim() != 3) throw std::invalid_argument("image must have shape [H, W] or [H, W, C]");
  int const channels = image.ndim() == 3 ? int(image.shape(2)) : 1;
  std::vector<uint8_t> const png = drwkv::encode_png(int(image.shape(1)), int(image.shape(0)), channels, image.data());
  return py::bytes(reinterpret_cast<char const*>(png.data()), png.size());
}

py::array_t<uint8_t> to_uint8(Floats chw) {
  if (chw.ndim() != 3) throw std::invalid_argument("image must have shape [C, H, W]");
  int const C = int(chw.shape(0)), H = int(chw.shape(1)), W = int(chw.shape(2));
  std::vector<uint8_t> const hwc = drwkv::image_to_uint8(chw.data(), C, H, W);
  py::array_t<uint8_t> result({H, W, C});
  std::copy(hwc.begin(), hwc.end(), result.mutable_data());
  return result;
}

using Words = py::array_t<uint32_t, py::array::c_style | py::array::forcecast>;

py::tuple box_muller(Words a, Words b) {
  if (a.ndim() != 1 || b.ndim() != 1 || a.size() != b.size())
    throw std::invalid_argument("a and b must be 1-D arrays of the same length");
  py::array_t<double> z0(a.size()), z1(a.size());
  double *d0 = z0.mutable_data(), *d1 = z1.mutable_data();
  for (py::ssize_t k = 0; k < a.size(); ++k) {
    std::array<double, 2> const z = drwkv::box_muller(a.data()[k], b.data()[k]);
    d0[k] = z[0];
    d1[k] = z[1];
  }
  return py::make_tuple(z0, z1);
}

py::array_t<float> standard_normal(uint64_t seed, std::vector<uint64_t> const& images, uint32_t step,
                                   std::vector<py::ssize_t> shape) {
  py::ssize_t numel = 1;
  for (py::ssize_t n : shape) numel *= n;
  shape.insert(shape.begin(), py::ssize_t(images.size()));
  py::array_t<float> out(shape);
  for (size_t k = 0; k < images.size(); ++k)
    drwkv::standard_normal(seed, images[k], step, numel, out.mutable_data() + k * size_t(numel));
  return out;
}

// drwkv::sample with a Python denoiser(x, t, y) -> out (numpy arrays, as drwkv.samplers.sample calls it).
py::array_t<float> sample(py::function denoiser, drwkv::DenoiserShape const& model, drwkv::Sampler& sampler,
                          std::vector<int64_t> const& labels, float cfg_scale, uint64_t seed, uint64_t first_image) {
  int64_t const S = model.image_size;
  auto denoise = [&](int64_t n, float const* x, float const* t, int64_t const* y, float* out) {
    py::array_t<float> xs({n, model.channels, S, S}), ts(n);
    py::array_t<int64_t> ys(n);
    std::copy(x, x + xs.size(), xs.mutable_data());
    std::copy(t, t + n, ts.mutable_data());
    std::copy(y, y + n, ys.mutable_data());
    Floats const result = denoiser(xs, ts, ys);
    if (result.ndim() != 4 || result.shape(0) != n || result.shape(1) != model.out_channels ||
        result.shape(2) != S || result.shape(3) != S)
      throw std::invalid_argument("the denoiser must return [n, out_channels, image_size, image_size]");
    std::copy(result.data(), result.data() + result.size(), out);
  };
  std::vector<float> const x = drwkv::sample(denoise, model, sampler, labels, cfg_scale, seed, first_image);
  py::array_t<float> images({int64_t(labels.size()), model.channels, S, S});
  std::copy(x.begin(), x.end(), images.mutable_data());
  return images;
}

}  // namespace

void bind_samplers(py::module_& m) {
  py::class_<drwkv::Sampler>(m, "Sampler", "C++ fixed-step sampler (drwkv/samplers.h); same maths as drwkv.samplers")
      .def_property_readonly("name", &drwkv::Sampler::name)
      .def_property_readonly("steps", &drwkv::Sampler::steps)
      .def_property_readonly("stochastic", &drwkv::Sampler::stochastic)
      .def("timestep", &drwkv::Sampler::timestep, py::arg("i"))
      .def("reset", &drwkv::Sampler::reset)
      .def("step", &step, py::arg("i"), py::arg("x"), py::arg("model_out"), py::arg("noise") = py::none(),
           "x_next for step i, from x [B,C,H,W], the model output [B,C or 2C,H,W] and the step's noise");
  m.def(
      "make_sampler",
      [](std::string const& name, int steps, double eta, bool clip_x0, int num_timesteps, double beta_start,
         double beta_end) {
        return drwkv::make_sampler(name, drwkv::ScheduleConfig{num_timesteps, beta_start, beta_end}, steps, eta,
                                   clip_x0);
      },
      py::arg("name"), py::arg("steps"), py::arg("eta") = 0.0, py::arg("clip_x0") = true,
      py::arg("num_timesteps") = 1000, py::arg("beta_start") = 1e-4, py::arg("beta_end") = 0.02,
      "A C++ sampler (ddpm, ddim, dpm++2m) over a linear schedule");
  m.def("guided_output", &guided, py::arg("out"), py::arg("cfg_scale"), py::arg("in_channels"),
        py::arg("guidance_channels") = py::none(),
        "Classifier-free guidance combine of a [cond; uncond] model output on the first guidance_channels "
        "channels (default: all in_channels)");
  m.def(
      "philox4x32_10",
      [](std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key) { return drwkv::philox4x32_10(counter, key); },
      py::arg("counter"), py::arg("key"), "Philox4x32-10 of one counter (4 words) under a key (2 words)");
  m.def("box_muller", &box_muller, py::arg("a"), py::arg("b"),
        "float64 (r cos theta, r sin theta) of uint32 word arrays a, b (drwkv/noise.h)");
  m.def("standard_normal", &standard_normal, py::arg("seed"), py::arg("images"), py::arg("step"), py::arg("shape"),
        "float32 [len(images), *shape]: the noise of drwkv/noise.h, as drwkv.noise.standard_normal");
  py::class_<drwkv::DenoiserShape>(m, "DenoiserShape", "What the C++ sampling loop needs to know of a model")
      .def(py::init([](int64_t channels, int64_t image_size, int64_t out_channels, int64_t num_classes,
                       int64_t guidance_channels) {
             return drwkv::DenoiserShape{channels, image_size, out_channels, num_classes, guidance_channels};
           }),
           py::arg("channels"), py::arg("image_size"), py::arg("out_channels"), py::arg("num_classes"),
           py::arg("guidance_channels") = 0);
  m.def("sample", &sample, py::arg("denoiser"), py::arg("model"), py::arg("sampler"), py::arg("labels"),
        py::arg("cfg_scale"), py::arg("seed"), py::arg("first_image") = 0,
        "The C++ sampling loop (drwkv/sample.h) with a Python denoiser(x, t, y) -> out");
  m.def("image_to_uint8", &to_uint8, py::arg("image"),
        "uint8 [H, W, C] of a float [C, H, W] image in [-1, 1]: round((x + 1) * 127.5) clamped");
  m.def("encode_png", &encode_png, py::arg("image"), "PNG bytes of a uint8 [H, W] or [H, W, C] image");
}
