// The BiWKV TensorRT plugin (IPluginV3): y = bi_wkv(w, u, k, v), the bidirectional WKV operator of
// README.md ("The operator"), computed by the same CUDA kernel as the PyTorch op (drwkv::bi_wkv_forward_cuda).
//
// Inputs:  0 w [C] float32, 1 u [C] float32, 2 k [B, T, C], 3 v [B, T, C] (float32 or float16).
// Output:  0 y [B, T, C], shape and type of k. All tensors linear (contiguous).
//
// Name "BiWKV", version "1", namespace "": the ONNX parser's fallback importer maps the export's
// node (domain drwkv, op_type BiWKV, plugin_version "1") to this plugin by op_type.
#pragma once

#include <NvInferRuntime.h>

#include <string>
#include <vector>

#include "drwkv/bi_wkv.h"

namespace drwkv::trt {

using drwkv::kBiWKVPluginName;
using drwkv::kBiWKVPluginNamespace;
using drwkv::kBiWKVPluginVersion;
// The only plugin field: the version the ONNX node asks for (attribute plugin_version).
constexpr char const* kPluginVersionField = "plugin_version";

class BiWKVPlugin final : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuild,
                          public nvinfer1::IPluginV3OneRuntime {
 public:
  BiWKVPlugin() = default;
  BiWKVPlugin(BiWKVPlugin const& other);
  BiWKVPlugin& operator=(BiWKVPlugin const&) = delete;
  ~BiWKVPlugin() override = default;

  // IPluginV3
  nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
  nvinfer1::IPluginV3* clone() noexcept override;

  // IPluginV3OneCore
  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;

  // IPluginV3OneBuild
  int32_t getNbOutputs() const noexcept override;
  int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
  bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t nbOutputs) noexcept override;
  int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
                             nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
  int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
                          int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
                          nvinfer1::IExprBuilder& exprBuilder) noexcept override;
  size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                          nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

  // IPluginV3OneRuntime
  int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
                        int32_t nbOutputs) noexcept override;
  int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
                  void const* const* inputs, void* const* outputs, void* workspace,
                  cudaStream_t stream) noexcept override;
  nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

 private:
  // The plugin has no attributes besides its version, so this is all it serializes. The field
  // points into this object, hence the copy constructor rebuilds it instead of copying pointers.
  std::vector<nvinfer1::PluginField> mDataToSerialize;
  nvinfer1::PluginFieldCollection mFCToSerialize{};
};

class BiWKVPluginCreator final : public nvinfer1::IPluginCreatorV3One {
 public:
  BiWKVPluginCreator();
  ~BiWKVPluginCreator() override = default;

  char const* getPluginName() const noexcept override;
  char const* getPluginVersion() const noexcept override;
  char const* getPluginNamespace() const noexcept override;
  nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
  // Same fields in both phases: at build time from the ONNX node's attributes, at runtime from
  // getFieldsToSerialize. A plugin_version other than "1" is refused (nullptr).
  nvinfer1::IPluginV3* createPlugin(char const* name, nvinfer1::PluginFieldCollection const* fc,
                                    nvinfer1::TensorRTPhase phase) noexcept override;

 private:
  std::vector<nvinfer1::PluginField> mPluginAttributes;
  nvinfer1::PluginFieldCollection mFC{};
};

// Logs through the logger TensorRT hands the library (setLoggerFinder); silent before that.
void logError(std::string const& message) noexcept;

}  // namespace drwkv::trt
