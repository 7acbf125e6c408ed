// Runs a drwkv TensorRT engine (model.plan and its sidecar model.plan.json, both written by
// python -m export.to_trt) as the denoiser of a drwkv::Pipeline. TensorRT stays out of this header.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "drwkv/pipeline.h"  // ModelConfig

namespace drwkv {

class Engine {
 public:
  // Registers the BiWKV plugin library with TensorRT (once per process; not for a plan of the
  // portable graph, whose sidecar names no plugin), checks the sidecar
  // (TensorRT version, GPU) and deserializes the plan onto `device`. std::runtime_error on failure,
  // with a message that says what to do.
  Engine(std::string const& plan_path, std::string const& plugin_path, int device = 0);
  ~Engine();
  Engine(Engine const&) = delete;
  Engine& operator=(Engine const&) = delete;

  ModelConfig const& config() const;  // from the sidecar
  int min_batch() const;  // the engine's optimization profile
  int max_batch() const;

  // out [n, C_out, H, W] = model(x [n, C, H, W], t [n], y [n]), host memory. Batches larger than
  // max_batch() run in chunks.
  void denoise(int64_t n, float const* x, float const* t, int64_t const* y, float* out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace drwkv
