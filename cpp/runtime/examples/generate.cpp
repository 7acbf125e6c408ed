// drwkv_generate: class-conditional images from a TensorRT engine, written as PNG files.
//
//   drwkv_generate model.plan --plugin libdrwkv_trt_plugin.so --sampler ddim --steps 50
//                  --cfg 1.5 --classes 0,1,2,3 --seed 0 --out-dir samples
//
// Image k (k = 0, 1, ...) is image first-image + k of the run with that seed (drwkv/noise.h): the same
// image as drwkv-infer's with that number, seed and class. A latent model's samples go through its
// VAE decoder engine (model.vae_decoder.plan next to the model, or --vae-decoder), in tiles of
// --vae-tile latent pixels overlapping by --vae-tile-overlap, and are written as RGB (or grey) PNGs.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "drwkv/decoder.h"
#include "drwkv/engine.h"
#include "drwkv/png.h"
#include "drwkv/samplers.h"

namespace {

struct Options {
  std::string plan;
  std::string plugin;
  std::string sampler = "ddim";
  int steps = 50;
  double eta = 0.0;
  bool no_clip = false;  // pixel models clip the predicted x0 to [-1, 1], latent models never do
  float cfg = 1.0f;
  std::vector<int64_t> classes = {0};
  uint64_t seed = 0;
  uint64_t first_image = 0;
  std::string out_dir = ".";
  std::string vae_decoder;  // empty: the one next to the model
  int vae_tile = 0;         // 0: the decoder's default
  int vae_tile_overlap = -1;
};

[[noreturn]] void usage(char const* problem) {
  std::fprintf(stderr,
               "drwkv_generate: %s\n"
               "usage: drwkv_generate model.plan [--plugin PATH] [--sampler ddpm|ddim|dpm++2m] [--steps N]\n"
               "                      [--eta E] [--no-clip] [--cfg S] [--classes 0,1,...] [--seed N] [--first-image N]\n"
               "                      [--out-dir DIR] [--vae-decoder PLAN] [--vae-tile N] [--vae-tile-overlap N]\n"
               "The plugin library defaults to $DRWKV_TRT_PLUGIN, else libdrwkv_trt_plugin.so on the library path.\n",
               problem);
  std::exit(2);
}

std::vector<int64_t> parse_classes(std::string const& text) {
  std::vector<int64_t> classes;
  std::stringstream list(text);
  for (std::string item; std::getline(list, item, ',');) classes.push_back(std::stoll(item));
  if (classes.empty()) usage("--classes needs at least one label");
  return classes;
}

Options parse(int argc, char** argv) {
  Options o;
  char const* env_plugin = std::getenv("DRWKV_TRT_PLUGIN");
  o.plugin = env_plugin != nullptr ? env_plugin : "libdrwkv_trt_plugin.so";
  for (int i = 1; i < argc; ++i) {
    std::string const arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage((arg + " needs a value").c_str());
      return argv[++i];
    };
    try {
      if (arg == "--plugin") o.plugin = value();
      else if (arg == "--sampler") o.sampler = value();
      else if (arg == "--steps") o.steps = std::stoi(value());
      else if (arg == "--eta") o.eta = std::stod(value());
      else if (arg == "--no-clip") o.no_clip = true;
      else if (arg == "--vae-decoder") o.vae_decoder = value();
      else if (arg == "--vae-tile") {
        o.vae_tile = std::stoi(value());
        if (o.vae_tile <= 0) usage("--vae-tile must be at least 1");
      } else if (arg == "--vae-tile-overlap") {
        o.vae_tile_overlap = std::stoi(value());
        if (o.vae_tile_overlap < 0) usage("--vae-tile-overlap must be at least 0");
      }
      else if (arg == "--cfg") o.cfg = std::stof(value());
      else if (arg == "--classes") o.classes = parse_classes(value());
      else if (arg == "--seed") o.seed = std::stoull(value());
      else if (arg == "--first-image") o.first_image = std::stoull(value());
      else if (arg == "--out-dir") o.out_dir = value();
      else if (!arg.empty() && arg[0] != '-' && o.plan.empty()) o.plan = arg;
      else usage(("unexpected argument " + arg).c_str());
    } catch (std::logic_error const&) {  // std::sto* on a malformed number
      usage(("bad value for " + arg).c_str());
    }
  }
  if (o.plan.empty()) usage("no engine given");
  if (o.vae_tile > 0 && o.vae_tile_overlap >= o.vae_tile) usage("--vae-tile-overlap must be below --vae-tile");
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options const o = parse(argc, argv);
  try {
    drwkv::Engine engine(o.plan, o.plugin);
    drwkv::ModelConfig const& config = engine.config();
    bool const latent = config.latent_downsample > 0;
    // Checked before sampling: a missing or mismatched decoder costs no denoiser steps.
    std::unique_ptr<drwkv::Decoder> decoder;
    if (latent) decoder = drwkv::load_decoder(o.plan, config, o.vae_decoder);
    else if (!o.vae_decoder.empty() || o.vae_tile != 0 || o.vae_tile_overlap != -1)
      throw std::runtime_error(o.plan + " is a pixel-space model: it takes no VAE decoder or tiles");
    if (config.image_channels != 1 && config.image_channels != 3)
      throw std::runtime_error("model " + config.model + " makes " + std::to_string(config.image_channels) +
                               "-channel images; PNGs take 1 or 3");
    for (int64_t label : o.classes)
      if (label < 0 || label > config.num_classes)
        throw std::runtime_error("class " + std::to_string(label) + " outside 0.." + std::to_string(config.num_classes));

    std::unique_ptr<drwkv::Sampler> sampler = drwkv::make_sampler(o.sampler, config.schedule, o.steps, o.eta,
                                                                  !latent && !o.no_clip);
    std::vector<float> images = drwkv::generate(engine, *sampler, o.classes, o.cfg, o.seed, o.first_image);
    int const C = config.image_channels, S = config.image_size * (latent ? config.latent_downsample : 1);
    if (latent) {
      std::vector<float> pixels(o.classes.size() * size_t(C * S * S));
      int64_t const tiles = decoder->decode(int64_t(o.classes.size()), config.image_size, config.image_size,
                                            images.data(), pixels.data(), o.vae_tile, o.vae_tile_overlap);
      std::fprintf(stderr, "drwkv_generate: decoded %zu images in %lld VAE tiles\n", o.classes.size(), (long long)tiles);
      images.swap(pixels);
    }

    std::filesystem::create_directories(o.out_dir);
    for (size_t i = 0; i < o.classes.size(); ++i) {
      std::vector<uint8_t> const pixels = drwkv::image_to_uint8(images.data() + i * size_t(C * S * S), C, S, S);
      std::string const path = o.out_dir + "/sample_" + std::to_string(i) + "_class_" + std::to_string(o.classes[i]) + ".png";
      drwkv::write_png(path, S, S, C, pixels.data());
      std::printf("%s\n", path.c_str());
    }
  } catch (std::exception const& e) {
    std::fprintf(stderr, "drwkv_generate: %s\n", e.what());
    return 1;
  }
  return 0;
}
