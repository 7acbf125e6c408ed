// drwkv::Pipeline, drwkv.Pipeline (drwkv/pipeline.py) in C++: a denoiser callback, a sampler
// (drwkv/samplers.h), the noise (drwkv/noise.h) and, for a latent model, a VAE decoder callback run
// in tiles (drwkv/tiling.h) -> uint8 images.
//
//     drwkv::Pipeline pipe(path, config, denoise, decoder);
//     drwkv::RunOptions run;  run.classes = {"sneaker", "3"};  run.num_images = 16;  run.seed = 0;
//     drwkv::RunResult result = pipe(run);          // result.images: [16, H, W, C] uint8
//
// A run is checked with the rules and messages of the Python library (check_settings,
// Pipeline.__call__), so what drwkv-infer refuses is refused here in the same words, and what it
// takes gives the same images: image i has class classes[i mod len(classes)] and is image number
// first_image + i of the seed's run, whatever the batch size.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "drwkv/png.h"
#include "drwkv/sample.h"
#include "drwkv/samplers.h"
#include "drwkv/tiling.h"

namespace drwkv {

// The model config (an engine sidecar's "config", the config dict of a Python denoiser).
struct ModelConfig {
  std::string model;
  int image_size = 0;
  int in_channels = 0;
  int num_classes = 0;  // the label num_classes is the null class (classifier-free guidance)
  bool learn_sigma = false;
  int guidance_channels = 0;  // channels classifier-free guidance acts on ("guidance_channels"; in_channels if absent)
  std::vector<std::string> class_names;  // may be empty
  ScheduleConfig schedule;
  // A latent model's VAE (config["latent"]); latent_downsample is 0 for a pixel-space model.
  int latent_downsample = 0;
  int image_channels = 0;   // of the decoded images (in_channels of a pixel-space model)
  std::string vae_sha256;   // of the VAE weights its decoder must come from
  std::string vae_decoder;  // the decoder plan's file name next to the engine, when the sidecar names one
  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
  DenoiserShape denoiser_shape() const {
    return {in_channels, image_size, out_channels(), num_classes, guidance_channels};
  }
};

// A latent model's VAE decoder, one batch of tiles per call.
struct PipelineDecoder {
  std::string path;     // named in messages
  TileDecoder decode;   // latents [b, in_channels, h, w] -> images [b, image_channels, h*f, w*f]
  int64_t max_batch = 0;  // the most latents one call takes (0: any number)
  int64_t max_tile = 0;   // the largest tile side it takes (0: any)
};

// Tiles of this many latent pixels when none is given (and a quarter of it overlap), or the
// decoder's largest when smaller: drwkv.runtime.base.AUTO_TILE.
constexpr int64_t kAutoTile = 64;

// What one run takes (Pipeline.__call__'s arguments).
struct RunOptions {
  std::vector<std::string> classes;  // names or indices, comma lists too; empty: every class in turn
  int64_t num_images = 16;
  std::string sampler = "ddim";
  int64_t steps = 50;
  std::optional<double> cfg_scale;  // none: 1.5, and 1 (no guidance) for an unconditional model
  uint64_t seed = 0;
  double eta = 0.0;
  std::optional<bool> clip_x0;  // none: pixel models clip the predicted x0 to [-1, 1], latent ones never
  int64_t batch_size = 16;
  uint64_t first_image = 0;
  std::function<void(int64_t done, int64_t total)> progress;  // after every denoiser step
};

// The images of a run and what it used (Pipeline.last_run).
struct RunResult {
  Images images;                // [num_images, H, W, C]: C = 3 for RGB models, 1 for grey ones
  std::vector<int64_t> labels;  // each image's class
  bool clip_x0 = false;
  double cfg_scale = 1.0;
  int steps = 0;  // denoiser steps per batch
  int64_t batches = 0;
  double sample_s = 0.0, decode_s = 0.0;
  int64_t tiles = 0;  // VAE tiles decoded (0 for a pixel model)
};

// std::invalid_argument (one line, Python's words) for settings no model accepts. The C++ types
// already hold seed and first_image to [0, 2^64); parse_seed and parse_first_image refuse text
// outside with check_settings' words.
void check_settings(RunOptions const& run);
uint64_t parse_seed(std::string const& text);
uint64_t parse_first_image(std::string const& text, int64_t num_images);

// Class names or indices (comma lists too) -> class indices; std::invalid_argument naming a bad one.
// An unconditional model takes none and labels its images 0.
std::vector<int64_t> parse_classes(std::vector<std::string> const& specs, ModelConfig const& config);

// The guidance scale to sample with: cfg_scale, by default 1.5, and 1 for an unconditional model,
// which refuses any other (std::invalid_argument).
double guidance_scale(std::optional<double> cfg_scale, ModelConfig const& config);

class Pipeline {
 public:
  // `path` names the model in messages. A latent model needs `decoder`; a pixel model takes no
  // decoder or tiles. The tiles are checked here, before any sampling (std::invalid_argument).
  Pipeline(std::string path, ModelConfig config, Denoise denoise, std::optional<PipelineDecoder> decoder = std::nullopt,
           std::optional<int64_t> vae_tile = std::nullopt, std::optional<int64_t> vae_tile_overlap = std::nullopt);

  ModelConfig const& config() const { return config_; }
  bool latent() const { return config_.latent_downsample > 0; }

  // The images of a run; std::invalid_argument for settings it refuses (before any work: also a
  // run whose images or batches do not fit in the memory available), std::runtime_error for a
  // sampling that gives NaN or Inf.
  RunResult operator()(RunOptions const& run) const;

 private:
  void check_memory(int64_t num_images, int64_t batch_size, bool guided) const;

  std::string path_;
  ModelConfig config_;
  Denoise denoise_;
  std::optional<PipelineDecoder> decoder_;
  int64_t tile_ = 0, overlap_ = 0;  // of the decoder
};

}  // namespace drwkv
