// Decoder: TensorRT runtime + device buffers for the profile's largest batch and tile.
#include "drwkv/decoder.h"

#include <climits>
#include <cstdlib>

#include <algorithm>
#include <fstream>
#include <stdexcept>

#include "trt_util.h"

namespace drwkv {
namespace {

// The decoder a sidecar names, which must be a file of the plan's own folder (the export writes
// its bare name): a sidecar may come from anyone, and may not send the runtime to other files.
std::string file_in_folder(std::string const& dir, std::string const& name, std::string const& model_plan) {
  std::string const refused = model_plan + ": its sidecar names the VAE decoder \"" + name +
                              "\", outside the engine's folder (an artifact may only name files inside its own folder)";
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) throw std::runtime_error(refused);
  std::string const path = dir + name;
  char folder_real[PATH_MAX], file_real[PATH_MAX];
  if (::realpath(dir.empty() ? "." : dir.c_str(), folder_real) != nullptr && ::realpath(path.c_str(), file_real) != nullptr) {
    std::string const resolved = file_real, folder = folder_real;
    if (resolved.compare(0, folder.size() + 1, folder + "/") != 0) throw std::runtime_error(refused);  // a link out
  }
  return path;
}

}  // namespace

struct Decoder::Impl {
  DecoderConfig config;
  std::string path;
  trt::Logger logger;
  // Declared in creation order: destroyed context first, runtime last.
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  trt::DeviceBuffer latents, image;
  cudaStream_t stream = nullptr;
  int min_batch = 0, max_batch = 0, min_tile = 0, max_tile = 0;

  ~Impl() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  // One tile batch through the engine.
  void run(int64_t b, int64_t h, int64_t w, float const* in, float* out) {
    if (b < min_batch || std::min(h, w) < min_tile)
      throw std::runtime_error(path + ": latents of batch " + std::to_string(b) + ", " + std::to_string(h) + "x" +
                               std::to_string(w) + " are below the engine's profile (batch from " +
                               std::to_string(min_batch) + ", tiles from " + std::to_string(min_tile) + ")");
    int64_t const f = config.downsample;
    if (!context->setInputShape("latents", trt::shape({b, config.latent_channels, h, w})))
      throw std::runtime_error(path + ": the engine rejected latents " + std::to_string(h) + "x" + std::to_string(w));
    size_t const in_bytes = size_t(b * config.latent_channels * h * w) * sizeof(float);
    size_t const out_bytes = size_t(b * config.image_channels * h * f * w * f) * sizeof(float);
    trt::check_cuda(cudaMemcpyAsync(latents.ptr, in, in_bytes, cudaMemcpyHostToDevice, stream), "copy latents");
    if (!context->enqueueV3(stream)) throw std::runtime_error("TensorRT execution failed (see its log)");
    trt::check_cuda(cudaMemcpyAsync(out, image.ptr, out_bytes, cudaMemcpyDeviceToHost, stream), "copy image");
    trt::check_cuda(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
  }
};

Decoder::Decoder(std::string const& plan_path, int device) : impl_(new Impl) {
  using Type = json::Value::Type;
  Impl& m = *impl_;
  m.path = plan_path;
  trt::check_cuda(cudaSetDevice(device), "cudaSetDevice");
  json::Value const doc = trt::read_checked_sidecar(plan_path, "drwkv-tensorrt-vae-decoder", device);
  std::string const source = plan_path + ".json";
  m.config.vae_sha256 = trt::member(doc, "vae_sha256", Type::kString, source).string;
  m.config.downsample = int(trt::member(doc, "downsample", Type::kNumber, source).number);
  m.config.latent_channels = int(trt::member(doc, "latent_channels", Type::kNumber, source).number);
  m.config.image_channels = int(trt::member(doc, "image_channels", Type::kNumber, source).number);

  m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
  if (!m.runtime) throw std::runtime_error("cannot create the TensorRT runtime");
  std::string const plan = trt::read_file(plan_path, "TensorRT VAE decoder");
  m.engine.reset(m.runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!m.engine) throw std::runtime_error(plan_path + ": TensorRT could not deserialize the engine (see its log)");
  for (char const* name : {"latents", "image"})
    if (m.engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kNONE ||
        m.engine->getTensorDataType(name) != nvinfer1::DataType::kFLOAT)
      throw std::runtime_error(plan_path + ": expected I/O latents, image (float32)");
  m.context.reset(m.engine->createExecutionContext());
  if (!m.context) throw std::runtime_error(plan_path + ": cannot create an execution context");
  nvinfer1::Dims const low = m.engine->getProfileShape("latents", 0, nvinfer1::OptProfileSelector::kMIN);
  nvinfer1::Dims const high = m.engine->getProfileShape("latents", 0, nvinfer1::OptProfileSelector::kMAX);
  m.min_batch = int(low.d[0]);
  m.max_batch = int(high.d[0]);
  m.min_tile = int(std::max(low.d[2], low.d[3]));
  m.max_tile = int(std::min(high.d[2], high.d[3]));

  size_t const area = size_t(high.d[2] * high.d[3]), batch = size_t(m.max_batch), f = size_t(m.config.downsample);
  m.latents.allocate(batch * size_t(m.config.latent_channels) * area * sizeof(float));
  m.image.allocate(batch * size_t(m.config.image_channels) * area * f * f * sizeof(float));
  m.context->setTensorAddress("latents", m.latents.ptr);
  m.context->setTensorAddress("image", m.image.ptr);
  trt::check_cuda(cudaStreamCreate(&m.stream), "cudaStreamCreate");
}

Decoder::~Decoder() = default;

DecoderConfig const& Decoder::config() const { return impl_->config; }
std::string const& Decoder::path() const { return impl_->path; }
int Decoder::max_batch() const { return impl_->max_batch; }
int Decoder::min_tile() const { return impl_->min_tile; }
int Decoder::max_tile() const { return impl_->max_tile; }

void Decoder::decode_tile(int64_t n, int64_t h, int64_t w, float const* latents, float* images) {
  impl_->run(n, h, w, latents, images);
}

PipelineDecoder Decoder::pipeline_decoder() {
  auto decode = [this](int64_t n, int64_t h, int64_t w, float const* in, float* out) { decode_tile(n, h, w, in, out); };
  return {impl_->path, decode, impl_->max_batch, impl_->max_tile};
}

std::unique_ptr<Decoder> load_decoder(std::string const& model_plan, ModelConfig const& model, std::string plan_path,
                                      int device) {
  if (model.latent_downsample == 0)
    throw std::runtime_error(model_plan + " is a pixel-space model: it takes no VAE decoder");
  if (plan_path.empty()) {
    std::string const dir = model_plan.find('/') == std::string::npos ? "" : model_plan.substr(0, model_plan.rfind('/') + 1);
    std::string const root = model_plan.size() > 5 && model_plan.compare(model_plan.size() - 5, 5, ".plan") == 0
                                 ? model_plan.substr(0, model_plan.size() - 5) : model_plan;
    plan_path = model.vae_decoder.empty() ? root + ".vae_decoder.plan" : file_in_folder(dir, model.vae_decoder, model_plan);
    if (!std::ifstream(plan_path))
      throw std::runtime_error(model_plan + " is a latent model and its VAE decoder " + plan_path +
                               " is missing: build it with python -m export.to_trt, or give one with --vae-decoder");
  }
  auto decoder = std::make_unique<Decoder>(plan_path, device);
  DecoderConfig const& c = decoder->config();
  if (c.latent_channels != model.in_channels || c.downsample != model.latent_downsample)
    throw std::runtime_error(plan_path + " decodes " + std::to_string(c.latent_channels) + "-channel latents at " +
                             std::to_string(c.downsample) + "x, the model's are " + std::to_string(model.in_channels) +
                             "-channel at " + std::to_string(model.latent_downsample) + "x");
  if (c.vae_sha256 != model.vae_sha256)
    throw std::runtime_error(plan_path + " is the decoder of another VAE (weights sha256 " + c.vae_sha256.substr(0, 12) +
                             "..., the model's is " + model.vae_sha256.substr(0, 12) + "...)");
  return decoder;
}

}  // namespace drwkv
