#include "trt_util.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace drwkv::trt {

void check_cuda(cudaError_t status, char const* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

void Logger::log(Severity severity, char const* message) noexcept {
  if (severity <= Severity::kWARNING) std::fprintf(stderr, "TensorRT: %s\n", message);
}

std::string read_file(std::string const& path, char const* what) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(std::string(what) + " not found: " + path);
  return {std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>()};
}

json::Value const& member(json::Value const& object, std::string const& key, json::Value::Type type,
                          std::string const& source) {
  json::Value const* v = object.find(key);
  if (v == nullptr || v->type != type) throw std::runtime_error(source + ": sidecar lacks a valid \"" + key + "\"");
  return *v;
}

json::Value read_checked_sidecar(std::string const& plan_path, char const* format, int device) {
  using Type = json::Value::Type;
  std::string const path = plan_path + ".json";
  json::Value doc = json::parse(read_file(path, "engine sidecar (written by python -m export.to_trt)"));
  json::Value const* found = doc.find("format");
  if (found == nullptr || found->string != format)
    throw std::runtime_error(path + ": not a drwkv sidecar of format " + format);

  // The sidecar holds TensorRT's Python version string, e.g. "10.16.1.11": compare major.minor.patch.
  std::string const built = member(doc, "tensorrt_version", Type::kString, path).string;
  std::string const here = std::to_string(getInferLibMajorVersion()) + "." + std::to_string(getInferLibMinorVersion()) +
                           "." + std::to_string(getInferLibPatchVersion());
  if (built.compare(0, here.size(), here) != 0 || (built.size() > here.size() && built[here.size()] != '.'))
    throw std::runtime_error(plan_path + " was built with TensorRT " + built + ", this is TensorRT " + here +
                             ": rebuild it here with python -m export.to_trt");

  cudaDeviceProp props{};
  check_cuda(cudaGetDeviceProperties(&props, device), "cudaGetDeviceProperties");
  std::string const gpu = props.name;
  std::string const capability = std::to_string(props.major) + "." + std::to_string(props.minor);
  std::string const built_gpu = member(doc, "gpu", Type::kString, path).string;
  std::string const built_capability = member(doc, "compute_capability", Type::kString, path).string;
  if (built_gpu != gpu || built_capability != capability)
    throw std::runtime_error(plan_path + " was built for " + built_gpu + " (compute capability " + built_capability +
                             "), this GPU is " + gpu + " (" + capability + "): rebuild it here with python -m export.to_trt");
  return doc;
}

nvinfer1::Dims shape(std::initializer_list<int64_t> extents) {
  nvinfer1::Dims d{};
  for (int64_t e : extents) d.d[d.nbDims++] = e;
  return d;
}

}  // namespace drwkv::trt
