// drwkv_generate: class-conditional images from a TensorRT engine, written as PNG files.
//
//   drwkv_generate model.plan --plugin libdrwkv_trt_plugin.so --sampler ddim --steps 50
//                  --cfg 1.5 --classes 0,1,2,3 --seed 0 --out-dir samples
//
// Image k (k = 0, 1, ...) is image first-image + k of the run with that seed (drwkv/noise.h): the same
// image as drwkv-infer's with that number, seed and class.
// Pixel-space models only (1 or 3 channels): a latent model's output needs its decoder.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

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
  bool clip_x0 = true;
  float cfg = 1.0f;
  std::vector<int64_t> classes = {0};
  uint64_t seed = 0;
  uint64_t first_image = 0;
  std::string out_dir = ".";
};

[[noreturn]] void usage(char const* problem) {
  std::fprintf(stderr,
               "drwkv_generate: %s\n"
               "usage: drwkv_generate model.plan [--plugin PATH] [--sampler ddpm|ddim|dpm++2m] [--steps N]\n"
               "                      [--eta E] [--no-clip] [--cfg S] [--classes 0,1,...] [--seed N] [--first-image N]\n"
               "                      [--out-dir DIR]\n"
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
      else if (arg == "--no-clip") o.clip_x0 = false;
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
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  Options const o = parse(argc, argv);
  try {
    drwkv::Engine engine(o.plan, o.plugin);
    drwkv::ModelConfig const& config = engine.config();
    if (config.in_channels != 1 && config.in_channels != 3)
      throw std::runtime_error("model " + config.model + " has " + std::to_string(config.in_channels) +
                               " channels; this example writes pixel-space (1 or 3 channel) images only");
    for (int64_t label : o.classes)
      if (label < 0 || label > config.num_classes)
        throw std::runtime_error("class " + std::to_string(label) + " outside 0.." + std::to_string(config.num_classes));

    std::unique_ptr<drwkv::Sampler> sampler = drwkv::make_sampler(o.sampler, config.schedule, o.steps, o.eta, o.clip_x0);
    std::vector<float> const images = drwkv::generate(engine, *sampler, o.classes, o.cfg, o.seed, o.first_image);

    std::filesystem::create_directories(o.out_dir);
    int const C = config.in_channels, S = config.image_size;
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
