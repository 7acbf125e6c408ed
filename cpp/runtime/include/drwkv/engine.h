// Runs a drwkv TensorRT engine (model.plan and its sidecar model.plan.json, both written by
// python -m export.to_trt) in the fixed-step sampling loop. TensorRT stays out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "drwkv/sample.h"
#include "drwkv/samplers.h"

namespace drwkv {

// The model config from the engine's sidecar.
struct ModelConfig {
  std::string model;
  int image_size = 0;
  int in_channels = 0;
  int num_classes = 0;  // the label num_classes is the null class (classifier-free guidance)
  bool learn_sigma = false;
  int guidance_channels = 0;  // channels classifier-free guidance acts on ("guidance_channels"; in_channels if absent)
  ScheduleConfig schedule;
  // A latent model's VAE (config["latent"]); latent_downsample is 0 for a pixel-space model.
  int latent_downsample = 0;
  int image_channels = 0;   // of the decoded images (in_channels of a pixel-space model)
  std::string vae_sha256;   // of the VAE weights its decoder must come from
  std::string vae_decoder;  // the decoder plan's file name next to the engine, when the sidecar names one
  int out_channels() const { return learn_sigma ? 2 * in_channels : in_channels; }
};

class Engine {
 public:
  // Registers the BiWKV plugin library with TensorRT (once per process), checks the sidecar
  // (TensorRT version, GPU) and deserializes the plan onto `device`. std::runtime_error on failure,
  // with a message that says what to do.
  Engine(std::string const& plan_path, std::string const& plugin_path, int device = 0);
  ~Engine();
  Engine(Engine const&) = delete;
  Engine& operator=(Engine const&) = delete;

  ModelConfig const& config() const;
  int min_batch() const;  // the engine's optimization profile
  int max_batch() const;

  // out [n, C_out, H, W] = model(x [n, C, H, W], t [n], y [n]), host memory. Batches larger than
  // max_batch() run in chunks.
  void denoise(int64_t n, float const* x, float const* t, int64_t const* y, float* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// drwkv::sample (drwkv/sample.h) with this engine as the denoiser: images first_image ..
// first_image + B - 1 of a run with `seed`, B = labels.size(), with the noise of drwkv/noise.h, so
// the same seed, labels and image numbers give the images of the Python runtime (drwkv-infer).
// Returns x_0, float [B, C, H, W] about [-1, 1].
std::vector<float> generate(Engine& engine, Sampler& sampler, std::vector<int64_t> const& labels, float cfg_scale,
                            uint64_t seed, uint64_t first_image = 0);

}  // namespace drwkv
