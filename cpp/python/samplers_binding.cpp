// drwkv._C bindings of the C++ runtime's host parts (drwkv/samplers.h, drwkv/noise.h, drwkv/sample.h,
// drwkv/png.h, drwkv/tiling.h, drwkv/pipeline.h, drwkv/settings.h), so that the test suite can check
// them against drwkv.samplers, drwkv.noise, drwkv.Pipeline and drwkv.settings. Python code samples
// with drwkv.samplers.
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
#include "drwkv/pipeline.h"
#include "drwkv/png.h"
#include "drwkv/sample.h"
#include "drwkv/samplers.h"
#include "drwkv/settings.h"
#include "drwkv/tiling.h"

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

using Bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

py::bytes encode_png(Bytes image, drwkv::PngText const& text) {
  if (image.ndim() != 2 && image.ndim() != 3) throw std::invalid_argument("image must have shape [H, W] or [H, W, C]");
  int const channels = image.ndim() == 3 ? int(image.shape(2)) : 1;
  std::vector<uint8_t> const png =
      drwkv::encode_png(int(image.shape(1)), int(image.shape(0)), channels, image.data(), text);
  return py::bytes(reinterpret_cast<char const*>(png.data()), png.size());
}

py::array_t<uint8_t> to_array(drwkv::Images const& images) {
  py::array_t<uint8_t> out({images.count, images.height, images.width, images.channels});
  std::copy(images.pixels.begin(), images.pixels.end(), out.mutable_data());
  return out;
}

py::array_t<uint8_t> make_grid(Bytes images, int64_t nrow) {
  if (images.ndim() != 4) throw std::invalid_argument("images must have shape [B, H, W, C]");
  drwkv::Images in{images.shape(0), images.shape(1), images.shape(2), images.shape(3),
                   std::vector<uint8_t>(images.data(), images.data() + images.size())};
  drwkv::Images const grid = drwkv::make_grid(in, nrow);
  py::array_t<uint8_t> out({grid.height, grid.width, grid.channels});
  std::copy(grid.pixels.begin(), grid.pixels.end(), out.mutable_data());
  return out;
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

// A Python denoiser(x, t, y) -> out (numpy arrays, as drwkv.samplers.sample calls it) as the C++ callback.
drwkv::Denoise python_denoise(py::object denoiser, drwkv::DenoiserShape const& model) {
  return [denoiser, model](int64_t n, float const* x, float const* t, int64_t const* y, float* out) {
    int64_t const S = model.image_size;
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
}

// A Python decoder(latents [b, c, h, w]) -> images [b, C, h*f, w*f] as the C++ tile callback.
drwkv::TileDecoder python_decoder(py::object decoder, int64_t latent_channels, int64_t image_channels,
                                  int64_t downsample) {
  return [=](int64_t b, int64_t h, int64_t w, float const* latents, float* images) {
    py::array_t<float> in({b, latent_channels, h, w});
    std::copy(latents, latents + in.size(), in.mutable_data());
    Floats const result = decoder(in);
    if (result.ndim() != 4 || result.shape(0) != b || result.shape(1) != image_channels ||
        result.shape(2) != h * downsample || result.shape(3) != w * downsample)
      throw std::invalid_argument("the decoder must return [b, image_channels, h * downsample, w * downsample]");
    std::copy(result.data(), result.data() + result.size(), images);
  };
}

py::array_t<float> decode_tiled(py::function decoder, Floats latents, int64_t image_channels, int64_t downsample,
                                int64_t tile, int64_t overlap) {
  if (latents.ndim() != 4) throw std::invalid_argument("latents must have shape [B, c, h, w]");
  int64_t const B = latents.shape(0), c = latents.shape(1), h = latents.shape(2), w = latents.shape(3);
  py::array_t<float> images({B, image_channels, h * downsample, w * downsample});
  drwkv::decode_tiled(python_decoder(decoder, c, image_channels, downsample), B, c, h, w, image_channels, downsample,
                      tile, overlap, latents.data(), images.mutable_data());
  return images;
}

// drwkv::sample with a Python denoiser.
py::array_t<float> sample(py::function denoiser, drwkv::DenoiserShape const& model, drwkv::Sampler& sampler,
                          std::vector<int64_t> const& labels, double cfg_scale, uint64_t seed, uint64_t first_image) {
  int64_t const S = model.image_size;
  std::vector<float> const x =
      drwkv::sample(python_denoise(denoiser, model), model, sampler, labels, cfg_scale, seed, first_image);
  py::array_t<float> images({int64_t(labels.size()), model.channels, S, S});
  std::copy(x.begin(), x.end(), images.mutable_data());
  return images;
}

// The ModelConfig of a Python denoiser's config dict, read as the engine reads its sidecar's.
drwkv::ModelConfig model_config(py::dict const& c) {
  auto get = [](py::dict const& d, char const* key) { return d.contains(key) ? d[key] : py::object(py::none()); };
  drwkv::ModelConfig m;
  m.model = c["model"].cast<std::string>();
  m.image_size = c["image_size"].cast<int>();
  m.in_channels = c["in_channels"].cast<int>();
  m.num_classes = c["num_classes"].cast<int>();
  m.learn_sigma = c["learn_sigma"].cast<bool>();
  py::object const guidance = get(c, "guidance_channels"), names = get(c, "class_names");
  m.guidance_channels = guidance.is_none() ? m.in_channels : guidance.cast<int>();
  if (!names.is_none()) m.class_names = names.cast<std::vector<std::string>>();
  if (py::object const d = get(c, "diffusion"); !d.is_none()) {
    py::dict const diffusion = d;
    if (diffusion.contains("num_timesteps")) m.schedule.num_timesteps = diffusion["num_timesteps"].cast<int>();
    if (diffusion.contains("beta_start")) m.schedule.beta_start = diffusion["beta_start"].cast<double>();
    if (diffusion.contains("beta_end")) m.schedule.beta_end = diffusion["beta_end"].cast<double>();
  }
  m.image_channels = m.in_channels;
  if (py::object const l = get(c, "latent"); !l.is_none()) {
    py::dict const latent = l;
    m.latent_downsample = latent["downsample"].cast<int>();
    py::object const pixels = get(latent, "in_channels");  // the VAE's image channels (RGB when absent)
    m.image_channels = pixels.is_none() ? 3 : pixels.cast<int>();
  }
  return m;
}

// drwkv::Pipeline over a Python denoiser and decoder (drwkv.runtime's Denoiser and Decoder: the
// denoiser's config, path and __call__; the decoder's path, forward and batch and tile limits), as
// drwkv.Pipeline(denoiser, decoder, vae_tile, vae_tile_overlap) takes them.
drwkv::Pipeline make_pipeline(py::object denoiser, py::object decoder, std::optional<int64_t> vae_tile,
                              std::optional<int64_t> vae_tile_overlap) {
  drwkv::ModelConfig const m = model_config(denoiser.attr("config"));
  std::optional<drwkv::PipelineDecoder> tiles;
  if (!decoder.is_none()) {
    auto limit = [&decoder](char const* name) {
      py::object const value = decoder.attr(name);
      return value.is_none() ? int64_t(0) : value.cast<int64_t>();
    };
    tiles = drwkv::PipelineDecoder{
        py::str(decoder.attr("path")),
        python_decoder(decoder.attr("forward"), m.in_channels, m.image_channels, m.latent_downsample),
        limit("max_batch_size"), limit("max_tile")};
  }
  return drwkv::Pipeline(py::str(denoiser.attr("path")), m, python_denoise(denoiser, m.denoiser_shape()), tiles,
                         vae_tile, vae_tile_overlap);
}

// Pipeline.__call__'s arguments -> (uint8 images [n, H, W, C], the run's dict like drwkv.Pipeline.last_run).
// seed and first_image are Python ints, read as the command line reads them (drwkv::parse_seed).
py::tuple run_pipeline(drwkv::Pipeline const& pipe, py::object classes, int64_t num_images, std::string const& sampler,
                       int64_t steps, std::optional<double> cfg_scale, py::int_ seed, double eta,
                       std::optional<bool> clip_x0, int64_t batch_size, py::int_ first_image,
                       std::optional<py::function> progress) {
  drwkv::RunOptions run;
  if (py::isinstance<py::str>(classes) || py::isinstance<py::int_>(classes)) classes = py::make_tuple(classes);
  if (!classes.is_none())
    for (py::handle spec : classes) run.classes.push_back(py::str(spec));
  run.num_images = num_images;
  run.sampler = sampler;
  run.steps = steps;
  run.cfg_scale = cfg_scale;
  run.seed = drwkv::parse_seed(py::str(seed));
  run.eta = eta;
  run.clip_x0 = clip_x0;
  run.batch_size = batch_size;
  run.first_image = drwkv::parse_first_image(py::str(first_image), num_images);
  if (progress) run.progress = [f = *progress](int64_t done, int64_t total) { f(done, total); };
  drwkv::RunResult const r = pipe(run);
  py::dict last_run;
  last_run["labels"] = py::array_t<int64_t>(py::ssize_t(r.labels.size()), r.labels.data());
  last_run["clip_x0"] = r.clip_x0;
  last_run["cfg_scale"] = r.cfg_scale;
  last_run["steps"] = r.steps;
  last_run["batches"] = r.batches;
  last_run["sample_s"] = r.sample_s;
  last_run["decode_s"] = r.decode_s;
  last_run["tiles"] = r.tiles;
  return py::make_tuple(to_array(r.images), last_run);
}

drwkv::RunSettings run_settings(std::string software, std::string model, std::string artifact, std::string backend,
                                std::string sampler, int64_t steps, double eta, double cfg_scale, bool clip_x0,
                                uint64_t seed, int64_t batch_size, std::pair<int64_t, int64_t> size,
                                std::vector<std::string> class_names, bool conditional,
                                std::optional<std::string> vae_decoder, std::optional<int64_t> vae_tile,
                                std::optional<int64_t> vae_tile_overlap) {
  return {software, model, artifact, backend, sampler, steps, eta, cfg_scale, clip_x0, seed, batch_size,
          size.first, size.second, class_names, conditional, vae_decoder, vae_tile, vae_tile_overlap};
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
  m.def("encode_png", &encode_png, py::arg("image"), py::arg("text") = drwkv::PngText{},
        "PNG bytes of a uint8 [H, W] or [H, W, C] image with text chunks [(keyword, text), ...]");
  m.def("make_grid", &make_grid, py::arg("images"), py::arg("nrow") = 0,
        "uint8 [B, H, W, C] -> one grid image (drwkv/png.h; nrow 0: about square)");
  m.def("decode_tiled", &decode_tiled, py::arg("decoder"), py::arg("latents"), py::arg("image_channels"),
        py::arg("downsample"), py::arg("tile"), py::arg("overlap"),
        "The C++ tiled decode (drwkv/tiling.h) with a Python decoder(latents) -> images");
  m.def("python_float", &drwkv::python_float, py::arg("value"), "A float as C++ prints it for Python's str()");

  py::class_<drwkv::Pipeline>(m, "Pipeline", "drwkv::Pipeline (drwkv/pipeline.h) with Python callbacks")
      .def(py::init(&make_pipeline), py::arg("denoiser"), py::arg("decoder") = py::none(),
           py::arg("vae_tile") = py::none(), py::arg("vae_tile_overlap") = py::none())
      .def("__call__", &run_pipeline, py::arg("classes") = py::none(), py::arg("num_images") = 16,
           py::arg("sampler") = "ddim", py::arg("steps") = 50, py::arg("cfg_scale") = py::none(), py::arg("seed") = 0,
           py::arg("eta") = 0.0, py::arg("clip_x0") = py::none(), py::arg("batch_size") = 16,
           py::arg("first_image") = 0, py::arg("progress") = py::none(),
           "(uint8 images [n, H, W, C], the run's dict) as drwkv.Pipeline.__call__ and its last_run");
  py::class_<drwkv::RunSettings>(m, "RunSettings", "drwkv::RunSettings (drwkv/settings.h), the PNG text of a run")
      .def(py::init(&run_settings), py::arg("software"), py::arg("model"), py::arg("artifact"), py::arg("backend"),
           py::arg("sampler"), py::arg("steps"), py::arg("eta"), py::arg("cfg_scale"), py::arg("clip_x0"),
           py::arg("seed"), py::arg("batch_size"), py::arg("size"), py::arg("class_names") = std::vector<std::string>{},
           py::arg("conditional") = true, py::arg("vae_decoder") = py::none(), py::arg("vae_tile") = py::none(),
           py::arg("vae_tile_overlap") = py::none())
      .def("grid_text", &drwkv::RunSettings::grid_text, py::arg("labels"), py::arg("first_image"), py::arg("nrow"))
      .def("image_text", &drwkv::RunSettings::image_text, py::arg("index"), py::arg("label"))
      .def("image_file_name", &drwkv::RunSettings::image_file_name, py::arg("index"), py::arg("label"));
}
