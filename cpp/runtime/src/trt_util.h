// What the engine and decoder runners share: CUDA error checks, TensorRT's logger, device buffers,
// file reading and the sidecar checks (TensorRT version, GPU). Internal to drwkv::runtime.
#pragma once

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "json.h"

namespace drwkv::trt {

void check_cuda(cudaError_t status, char const* what);

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, char const* message) noexcept override;
};

std::string read_file(std::string const& path, char const* what);

json::Value const& member(json::Value const& object, std::string const& key, json::Value::Type type,
                          std::string const& source);

// The sidecar of `plan_path` (plan_path + ".json") with format `format`; refuses a plan built by
// another TensorRT version or for another GPU than `device`. std::runtime_error saying what to do.
json::Value read_checked_sidecar(std::string const& plan_path, char const* format, int device);

nvinfer1::Dims shape(std::initializer_list<int64_t> extents);

struct DeviceBuffer {
  void* ptr = nullptr;
  void allocate(size_t bytes) { check_cuda(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
};

}  // namespace drwkv::trt
