// Engine: TensorRT runtime + device buffers for the profile's largest batch.
#include "drwkv/engine.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <stdexcept>

#include "drwkv/bi_wkv.h"  // the plugin's name and version
#include "trt_util.h"

namespace drwkv {
namespace {

using trt::check_cuda;
using trt::shape;

constexpr char const* kIoNames[] = {"x", "t", "y", "out"};

// Reads the sidecar (refusing a plan built by another TensorRT version or for another GPU);
// `needs_plugin`: false for a plan of the portable graph (its "plugin" is null: no BiWKV layer).
ModelConfig read_sidecar(std::string const& plan_path, int device, bool& needs_plugin) {
  using Type = json::Value::Type;
  using trt::member;
  std::string const path = plan_path + ".json";
  json::Value const doc = trt::read_checked_sidecar(plan_path, "drwkv-tensorrt-engine", device);

  json::Value const* plugin = doc.find("plugin");
  needs_plugin = plugin == nullptr || plugin->type != Type::kNull;
  json::Value const& c = member(doc, "config", Type::kObject, path);
  ModelConfig config;
  config.model = member(c, "model", Type::kString, path).string;
  config.image_size = int(member(c, "image_size", Type::kNumber, path).number);
  config.in_channels = int(member(c, "in_channels", Type::kNumber, path).number);
  config.num_classes = int(member(c, "num_classes", Type::kNumber, path).number);
  config.learn_sigma = member(c, "learn_sigma", Type::kBool, path).boolean;
  json::Value const* guidance = c.find("guidance_channels");
  config.guidance_channels = guidance != nullptr && guidance->type == Type::kNumber ? int(guidance->number)
                                                                                    : config.in_channels;
  if (json::Value const* names = c.find("class_names"); names != nullptr && names->type == Type::kArray)
    for (json::Value const& name : names->array)
      if (name.type == Type::kString) config.class_names.push_back(name.string);
  // The schedule as drwkv.schedule.Schedule.from_config reads it (DiT's defaults when absent).
  if (json::Value const* diffusion = c.find("diffusion"); diffusion != nullptr && diffusion->type == Type::kObject) {
    if (json::Value const* kind = diffusion->find("schedule"); kind != nullptr && kind->string != "linear")
      throw std::runtime_error(path + ": unsupported diffusion schedule '" + kind->string + "' (only linear)");
    if (json::Value const* v = diffusion->find("num_timesteps")) config.schedule.num_timesteps = int(v->number);
    if (json::Value const* v = diffusion->find("beta_start")) config.schedule.beta_start = v->number;
    if (json::Value const* v = diffusion->find("beta_end")) config.schedule.beta_end = v->number;
  }
  config.image_channels = config.in_channels;
  if (json::Value const* latent = c.find("latent"); latent != nullptr && latent->type == Type::kObject) {
    config.latent_downsample = int(member(*latent, "downsample", Type::kNumber, path).number);
    json::Value const* pixels = latent->find("in_channels");  // the VAE's image channels (RGB when absent)
    config.image_channels = pixels != nullptr && pixels->type == Type::kNumber ? int(pixels->number) : 3;
    json::Value const* exported = doc.find("vae_sha256");    // the export may tie it to another VAE (--force)
    config.vae_sha256 = exported != nullptr && exported->type == Type::kString
                            ? exported->string : member(*latent, "vae_sha256", Type::kString, path).string;
    if (json::Value const* file = doc.find("vae_decoder"); file != nullptr && file->type == Type::kString)
      config.vae_decoder = file->string;
  }
  return config;
}

}  // namespace

struct Engine::Impl {
  ModelConfig config;
  trt::Logger logger;
  // Declared in creation order: destroyed context first, runtime last.
  std::unique_ptr<nvinfer1::IRuntime> runtime;
  std::unique_ptr<nvinfer1::ICudaEngine> engine;
  std::unique_ptr<nvinfer1::IExecutionContext> context;
  trt::DeviceBuffer x, t, y, out;
  cudaStream_t stream = nullptr;
  int min_batch = 0, max_batch = 0;

  ~Impl() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }
};

Engine::Engine(std::string const& plan_path, std::string const& plugin_path, int device) : impl_(new Impl) {
  Impl& m = *impl_;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  bool needs_plugin = true;
  m.config = read_sidecar(plan_path, device, needs_plugin);

  m.runtime.reset(nvinfer1::createInferRuntime(m.logger));
  if (!m.runtime) throw std::runtime_error("cannot create the TensorRT runtime");
  // The registry is process-wide: a second Engine finds BiWKV already registered.
  nvinfer1::IPluginRegistry& registry = m.runtime->getPluginRegistry();
  if (needs_plugin && registry.getCreator(kBiWKVPluginName, kBiWKVPluginVersion, kBiWKVPluginNamespace) == nullptr &&
      registry.loadLibrary(plugin_path.c_str()) == nullptr)
    throw std::runtime_error("TensorRT could not load the BiWKV plugin library " + plugin_path);

  std::string const plan = trt::read_file(plan_path, "TensorRT engine");
  m.engine.reset(m.runtime->deserializeCudaEngine(plan.data(), plan.size()));
  if (!m.engine) throw std::runtime_error(plan_path + ": TensorRT could not deserialize the engine (see its log)");
  for (char const* name : kIoNames) {
    nvinfer1::DataType const expected = std::string(name) == "y" ? nvinfer1::DataType::kINT64 : nvinfer1::DataType::kFLOAT;
    if (m.engine->getTensorIOMode(name) == nvinfer1::TensorIOMode::kNONE || m.engine->getTensorDataType(name) != expected)
      throw std::runtime_error(plan_path + ": expected I/O x, t (float32), y (int64), out (float32)");
  }
  m.context.reset(m.engine->createExecutionContext());
  if (!m.context) throw std::runtime_error(plan_path + ": cannot create an execution context");
  m.min_batch = int(m.engine->getProfileShape("x", 0, nvinfer1::OptProfileSelector::kMIN).d[0]);
  m.max_batch = int(m.engine->getProfileShape("x", 0, nvinfer1::OptProfileSelector::kMAX).d[0]);

  size_t const plane = size_t(m.config.image_size) * size_t(m.config.image_size), batch = size_t(m.max_batch);
  m.x.allocate(batch * size_t(m.config.in_channels) * plane * sizeof(float));
  m.t.allocate(batch * sizeof(float));
  m.y.allocate(batch * sizeof(int64_t));
  m.out.allocate(batch * size_t(m.config.out_channels()) * plane * sizeof(float));
  m.context->setTensorAddress("x", m.x.ptr);
  m.context->setTensorAddress("t", m.t.ptr);
  m.context->setTensorAddress("y", m.y.ptr);
  m.context->setTensorAddress("out", m.out.ptr);
  check_cuda(cudaStreamCreate(&m.stream), "cudaStreamCreate");
}

Engine::~Engine() = default;

ModelConfig const& Engine::config() const { return impl_->config; }
int Engine::min_batch() const { return impl_->min_batch; }
int Engine::max_batch() const { return impl_->max_batch; }

void Engine::denoise(int64_t n, float const* x, float const* t, int64_t const* y, float* out) {
  Impl& m = *impl_;
  int64_t const C = m.config.in_channels, S = m.config.image_size, in_size = C * S * S;
  int64_t const out_size = int64_t(m.config.out_channels()) * S * S;
  for (int64_t start = 0; start < n; start += m.max_batch) {
    int64_t const b = std::min<int64_t>(m.max_batch, n - start);
    if (b < m.min_batch)
      throw std::runtime_error("batch of " + std::to_string(b) + " is below the engine's minimum " +
                               std::to_string(m.min_batch));
    if (!m.context->setInputShape("x", shape({b, C, S, S})) || !m.context->setInputShape("t", shape({b})) ||
        !m.context->setInputShape("y", shape({b})))
      throw std::runtime_error("the engine rejected input batch " + std::to_string(b));
    auto const to_device = cudaMemcpyHostToDevice;
    check_cuda(cudaMemcpyAsync(m.x.ptr, x + start * in_size, size_t(b * in_size) * sizeof(float), to_device, m.stream),
               "copy x");
    check_cuda(cudaMemcpyAsync(m.t.ptr, t + start, size_t(b) * sizeof(float), to_device, m.stream), "copy t");
    check_cuda(cudaMemcpyAsync(m.y.ptr, y + start, size_t(b) * sizeof(int64_t), to_device, m.stream), "copy y");
    if (!m.context->enqueueV3(m.stream)) throw std::runtime_error("TensorRT execution failed (see its log)");
    check_cuda(cudaMemcpyAsync(out + start * out_size, m.out.ptr, size_t(b * out_size) * sizeof(float),
                               cudaMemcpyDeviceToHost, m.stream),
               "copy out");
    check_cuda(cudaStreamSynchronize(m.stream), "cudaStreamSynchronize");
  }
}

}  // namespace drwkv
