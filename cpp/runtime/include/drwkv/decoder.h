// Runs a latent model's VAE decoder engine (model.vae_decoder.plan and its sidecar, both written
// by python -m export.to_trt) beside drwkv::Engine: latents in the denoiser's space to images in
// [-1, 1], one tile batch at a time, no larger than the engine's profile. TensorRT stays out of
// this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "drwkv/engine.h"

namespace drwkv {

// The decoder's sidecar: which VAE it comes from and what it maps.
struct DecoderConfig {
  std::string vae_sha256;
  int downsample = 0;
  int latent_channels = 0;
  int image_channels = 0;
};

class Decoder {
 public:
  // Checks the sidecar (TensorRT version, GPU) and deserializes the plan onto `device`.
  // std::runtime_error on failure, with a message that says what to do.
  explicit Decoder(std::string const& plan_path, int device = 0);
  ~Decoder();
  Decoder(Decoder const&) = delete;
  Decoder& operator=(Decoder const&) = delete;

  DecoderConfig const& config() const;
  std::string const& path() const;
  int max_batch() const;  // the engine's optimization profile: batch and tile side (latent pixels)
  int min_tile() const;
  int max_tile() const;

  // One tile batch: images [n, C, h*f, w*f] from latents [n, c, h, w], host memory, n up to
  // max_batch() and h, w within the profile (std::runtime_error otherwise). drwkv::Pipeline runs
  // it in tiles (drwkv/tiling.h).
  void decode_tile(int64_t n, int64_t h, int64_t w, float const* latents, float* images);

  // This decoder as drwkv::Pipeline takes it (it must outlive the pipeline).
  PipelineDecoder pipeline_decoder();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The decoder of a latent model's engine: `plan_path`, or when empty the one its sidecar names
// next to it (model.vae_decoder.plan). Refuses (std::runtime_error) a pixel-space model, a missing
// decoder, or one of another VAE (weights sha256), latent channels or downsampling.
std::unique_ptr<Decoder> load_decoder(std::string const& model_plan, ModelConfig const& model,
                                      std::string plan_path = "", int device = 0);

}  // namespace drwkv
