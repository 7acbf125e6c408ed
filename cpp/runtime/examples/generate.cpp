// drwkv_generate: images from a TensorRT engine as PNG files; a thin shell over drwkv::Pipeline with
// the flags and defaults of drwkv-infer --engine:
//
//   drwkv_generate --engine model.plan --sampler dpm++2m --steps 20 --class sneaker,3 --out grid.png
//   drwkv_generate model.plan --num-images 4 --first-image 12 --out samples     # one PNG per image
//
// A .png --out is one grid, any other path a directory of one PNG per image (0012_sneaker.png). The
// images are drwkv-infer's for the same seed and settings (image k is image number first-image + k
// of the seed's run, whatever the batch size), and their PNG text is drwkv-infer's too
// (drwkv/settings.h), so drwkv-infer --info reads it back. A latent model's samples go through its
// VAE decoder engine (model.vae_decoder.plan next to the model, or --vae-decoder) in tiles.
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "drwkv/decoder.h"
#include "drwkv/engine.h"
#include "drwkv/pipeline.h"
#include "drwkv/png.h"
#include "drwkv/settings.h"

namespace {

char const* const kProg = "drwkv_generate";

char const* const kUsage =
    "usage: drwkv_generate [--engine] PLAN [--plugin SO] [--sampler {ddpm,ddim,dpm++2m}] [--steps N] [--eta E]\n"
    "                      [--cfg-scale S] [--no-clip] [--class NAME|INDEX ...] [--num-images N] [--batch-size N]\n"
    "                      [--seed N] [--out PATH] [--nrow N] [--first-image N] [--vae-decoder PLAN]\n"
    "                      [--vae-tile N] [--vae-tile-overlap N]\n"
    "\n"
    "Sample images from a Diffusion-RWKV TensorRT engine; the flags and defaults of drwkv-infer --engine:\n"
    "  --plugin SO            the BiWKV plugin library (default: $DRWKV_TRT_PLUGIN, else libdrwkv_trt_plugin.so)\n"
    "  --sampler NAME         ddpm, ddim or dpm++2m (default: ddim)\n"
    "  --steps N              model evaluations per image (default: 50)\n"
    "  --eta E                DDIM stochasticity in [0, 1] (default: 0)\n"
    "  --cfg-scale S          classifier-free guidance scale; 1 disables it (default: 1.5; none for\n"
    "                         unconditional models)\n"
    "  --no-clip              do not clip the predicted x0 to [-1, 1] (latent models never clip)\n"
    "  --class NAME|INDEX     class label(s), by name or index; repeat or comma-separate; images cycle\n"
    "                         through them (default: all classes in order)\n"
    "  --num-images N         how many images (default: 16)\n"
    "  --batch-size N         images per denoiser call (default: 16)\n"
    "  --seed N               random seed in [0, 2^64) (default: 0)\n"
    "  --out PATH             grid .png file, or a directory of one PNG per image (default: samples.png)\n"
    "  --nrow N               images per grid row (default: about square)\n"
    "  --first-image N        number the images N, N+1, ... (default: 0)\n"
    "  --vae-decoder PLAN     a latent model's decoder (default: PLAN's .vae_decoder.plan beside it)\n"
    "  --vae-tile N           decode in tiles of N x N latent pixels (default: 64, or the decoder's largest)\n"
    "  --vae-tile-overlap N   latent pixels neighbouring tiles share (default: a quarter of the tile)\n";

// Flags drwkv_generate had before it took drwkv-infer's, and what replaced them.
struct Renamed {
  char const* old_flag;
  char const* new_flag;
};
constexpr Renamed kRenamed[] = {{"--cfg", "--cfg-scale"}, {"--classes", "--class"}, {"--out-dir", "--out"}};

struct Options {
  std::string engine, plugin;
  drwkv::RunOptions run;
  std::string first_image = "0";  // parsed once --num-images is known
  std::string out = "samples.png";
  std::optional<int64_t> nrow;
  std::optional<std::string> vae_decoder;
  std::optional<int64_t> vae_tile, vae_tile_overlap;
};

// A usage error: one line, exit status 2 (as drwkv-infer's).
[[noreturn]] void usage_error(std::string const& message) {
  std::fprintf(stderr, "%s: error: %s (see --help)\n", kProg, message.c_str());
  std::exit(2);
}

int64_t whole_number(std::string const& flag, std::string const& text) {
  int64_t value = 0;
  auto const [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size())
    usage_error("argument " + flag + ": invalid int value: " + drwkv::python_repr(text));
  return value;
}

double real_number(std::string const& flag, std::string const& text) {
  size_t used = 0;
  double value = 0.0;
  try {
    value = std::stod(text, &used);
  } catch (std::exception const&) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    usage_error("argument " + flag + ": invalid float value: " + drwkv::python_repr(text));
  return value;
}

Options parse(int argc, char** argv) {
  Options o;
  char const* env_plugin = std::getenv("DRWKV_TRT_PLUGIN");
  o.plugin = env_plugin != nullptr ? env_plugin : "libdrwkv_trt_plugin.so";
  drwkv::RunOptions& run = o.run;
  std::string seed = "0";
  for (int i = 1; i < argc; ++i) {
    std::string const arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error("argument " + arg + ": expected one argument");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    for (Renamed const& r : kRenamed)
      if (arg == r.old_flag) usage_error(arg + " is now " + r.new_flag + ", as in drwkv-infer");
    if (arg == "--engine") o.engine = value();
    else if (arg == "--plugin") o.plugin = value();
    else if (arg == "--sampler") run.sampler = value();
    else if (arg == "--steps") run.steps = whole_number(arg, value());
    else if (arg == "--eta") run.eta = real_number(arg, value());
    else if (arg == "--cfg-scale") run.cfg_scale = real_number(arg, value());
    else if (arg == "--no-clip") run.clip_x0 = false;
    else if (arg == "--class") run.classes.push_back(value());
    else if (arg == "--num-images") run.num_images = whole_number(arg, value());
    else if (arg == "--batch-size") run.batch_size = whole_number(arg, value());
    else if (arg == "--seed") seed = value();
    else if (arg == "--out") o.out = value();
    else if (arg == "--nrow") o.nrow = whole_number(arg, value());
    else if (arg == "--first-image") o.first_image = value();
    else if (arg == "--vae-decoder") o.vae_decoder = value();
    else if (arg == "--vae-tile") o.vae_tile = whole_number(arg, value());
    else if (arg == "--vae-tile-overlap") o.vae_tile_overlap = whole_number(arg, value());
    else if (!arg.empty() && arg[0] != '-' && o.engine.empty()) o.engine = arg;
    else usage_error("unrecognized argument " + arg);
  }
  // drwkv-infer's checks, in its words, before anything is loaded
  if (o.engine.empty()) usage_error("give the engine: drwkv_generate [--engine] PLAN");
  if (o.nrow && !(*o.nrow >= 1 && *o.nrow <= run.num_images))
    usage_error("nrow must be between 1 and the number of images (" + std::to_string(run.num_images) + "), got " +
                std::to_string(*o.nrow));
  if (o.vae_tile && *o.vae_tile <= 0)
    usage_error("--vae-tile must be at least 1 latent pixel, got " + std::to_string(*o.vae_tile));
  if (o.vae_tile_overlap && !(*o.vae_tile_overlap >= 0 && (!o.vae_tile || *o.vae_tile_overlap < *o.vae_tile)))
    usage_error("--vae-tile-overlap must be at least 0 and below the tile, got " + std::to_string(*o.vae_tile_overlap));
  try {
    run.seed = drwkv::parse_seed(seed);
    run.first_image = drwkv::parse_first_image(o.first_image, run.num_images);
    drwkv::check_settings(run);
  } catch (std::invalid_argument const& e) {
    usage_error(e.what());
  }
  return o;
}

bool is_grid(std::string out) {  // a .png path, whatever its case
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out.size() >= 4 && out.compare(out.size() - 4, 4, ".png") == 0;
}

// Refuses an --out that cannot be written before any work, as drwkv-infer does: the folder (of
// the grid, or the folder itself) is made, and a probe file made and removed in it.
void check_writable(std::string const& out, bool grid) {
  namespace fs = std::filesystem;
  fs::path const folder = grid ? fs::path(out).parent_path() : fs::path(out);
  std::error_code error;
  if (!folder.empty()) fs::create_directories(folder, error);
  fs::path const probe = (folder.empty() ? fs::path(".") : folder) / (".drwkv-probe." + std::to_string(::getpid()));
  if (error || !std::ofstream(probe).good())
    throw std::runtime_error("cannot write --out " + out + (error ? ": " + error.message() : ""));
  fs::remove(probe, error);
}

// Runs o and returns what it wrote, for the summary line.
std::string generate(Options& o) {
  using Clock = std::chrono::steady_clock;
  auto const t0 = Clock::now();
  bool const grid = is_grid(o.out);
  check_writable(o.out, grid);
  drwkv::Engine engine(o.engine, o.plugin);
  drwkv::ModelConfig const& config = engine.config();
  bool const latent = config.latent_downsample > 0;
  // Checked before sampling: a missing or mismatched decoder costs no denoiser steps.
  std::unique_ptr<drwkv::Decoder> decoder;
  std::optional<drwkv::PipelineDecoder> tiles;
  if (latent) {
    decoder = drwkv::load_decoder(o.engine, config, o.vae_decoder.value_or(""));
    tiles = decoder->pipeline_decoder();
  } else if (o.vae_decoder) {
    throw std::runtime_error(o.engine + " is a pixel-space model: it takes no VAE decoder");
  }
  if (config.image_channels != 1 && config.image_channels != 3)
    throw std::runtime_error("PNG needs 1 or 3 channels, the images of " + config.model + " have " +
                             std::to_string(config.image_channels));
  auto denoise = [&engine](int64_t n, float const* x, float const* t, int64_t const* y, float* out) {
    engine.denoise(n, x, t, y, out);
  };
  drwkv::Pipeline const pipe(o.engine, config, denoise, tiles, o.vae_tile, o.vae_tile_overlap);
  double const load_s = std::chrono::duration<double>(Clock::now() - t0).count();

  if (isatty(STDERR_FILENO))
    o.run.progress = [](int64_t done, int64_t total) {
      std::fprintf(stderr, "\r%s: step %lld/%lld", kProg, (long long)done, (long long)total);
      if (done == total) std::fputc('\n', stderr);
    };
  drwkv::RunResult const r = pipe(o.run);

  drwkv::Images const& images = r.images;
  drwkv::RunSettings const settings{kProg, config.model, std::filesystem::path(o.engine).filename().string(),
                                    "tensorrt", o.run.sampler, o.run.steps, o.run.eta, r.cfg_scale, r.clip_x0,
                                    o.run.seed, o.run.batch_size, images.width, images.height, config.class_names,
                                    config.num_classes > 0, o.vae_decoder, o.vae_tile, o.vae_tile_overlap};
  std::string written;
  if (grid) {
    int64_t const nrow = o.nrow.value_or(int64_t(std::ceil(std::sqrt(double(images.count)))));
    drwkv::Images const g = drwkv::make_grid(images, nrow);
    drwkv::write_png(o.out, int(g.width), int(g.height), int(g.channels), g.pixels.data(),
                     settings.grid_text(r.labels, o.run.first_image, nrow));
    written = o.out;
  } else {
    for (int64_t i = 0; i < images.count; ++i) {
      uint64_t const number = o.run.first_image + uint64_t(i);
      int64_t const label = r.labels[size_t(i)];
      drwkv::write_png((std::filesystem::path(o.out) / settings.image_file_name(number, label)).string(),
                       int(images.width), int(images.height), int(images.channels), images.image(i),
                       settings.image_text(number, label));
    }
    written = std::to_string(images.count) + " PNGs in " + o.out;
  }

  // drwkv-infer's summary line
  char line[512];
  int64_t const batch = std::min(o.run.batch_size, o.run.num_images);
  std::snprintf(line, sizeof line,
                "tensorrt (%s), %s %d steps, cfg %s: %lld images in %.2f s = %.1f ms/step (batch %lld%s), "
                "%.2f images/s",
                config.model.c_str(), o.run.sampler.c_str(), r.steps, drwkv::python_float(r.cfg_scale).c_str(),
                (long long)images.count, r.sample_s, 1000 * r.sample_s / double(r.batches * r.steps),
                (long long)batch, r.cfg_scale != 1.0 ? " x2 for guidance" : "", double(images.count) / r.sample_s);
  std::string summary = line;
  if (decoder) {
    std::snprintf(line, sizeof line, "; %lld VAE tiles decoded in %.2f s (tensorrt)", (long long)r.tiles, r.decode_s);
    summary += line;
  }
  std::snprintf(line, sizeof line, "; model load %.2f s -> ", load_s);
  return summary + line + written;
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  try {
    std::string const summary = generate(o);
    std::fprintf(stderr, "%s: %s\n", kProg, summary.c_str());
  } catch (std::exception const& e) {
    std::fprintf(stderr, "%s: error: %s\n", kProg, e.what());
    return 1;
  }
  return 0;
}
