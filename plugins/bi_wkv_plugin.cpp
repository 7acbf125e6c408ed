// The BiWKV plugin: shape and type rules for the builder, and enqueue onto the shared CUDA kernel.
#include "bi_wkv_plugin.h"

#include <cstring>
#include <exception>

#include "drwkv/bi_wkv.h"

using nvinfer1::DataType;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::IPluginCapability;
using nvinfer1::IPluginV3;
using nvinfer1::PluginCapabilityType;
using nvinfer1::PluginField;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginFieldType;
using nvinfer1::PluginTensorDesc;
using nvinfer1::TensorFormat;

namespace drwkv::trt {
namespace {

constexpr int32_t kNbInputs = 4;  // w, u, k, v
constexpr int32_t kNbOutputs = 1;  // y
constexpr int32_t kInW = 0, kInU = 1, kInK = 2, kInV = 3, kOutY = 4;

bool isIoType(DataType type) { return type == DataType::kFLOAT || type == DataType::kHALF; }

// The kernel takes B, T, C from k's dimensions; w and u must be [C] and v must match k.
bool shapesAgree(nvinfer1::Dims const& w, nvinfer1::Dims const& u, nvinfer1::Dims const& k, nvinfer1::Dims const& v) {
  if (w.nbDims != 1 || u.nbDims != 1 || k.nbDims != 3 || v.nbDims != 3) return false;
  // -1 marks a dimension not known yet (build phase): it cannot contradict anything.
  auto same = [](int64_t a, int64_t b) { return a == -1 || b == -1 || a == b; };
  for (int32_t i = 0; i < 3; ++i)
    if (!same(k.d[i], v.d[i])) return false;
  return same(w.d[0], k.d[2]) && same(u.d[0], k.d[2]);
}

std::string fieldString(PluginField const& field) {
  std::string s(static_cast<char const*>(field.data), field.length > 0 ? size_t(field.length) : 0);
  // Producers differ on whether the length counts a trailing NUL.
  s.resize(std::strlen(s.c_str()));
  return s;
}

}  // namespace

// --- BiWKVPlugin ------------------------------------------------------------------------------------

BiWKVPlugin::BiWKVPlugin(BiWKVPlugin const& /*other*/) : BiWKVPlugin() {}

IPluginCapability* BiWKVPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept {
  switch (type) {
    case PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
  }
  return nullptr;
}

IPluginV3* BiWKVPlugin::clone() noexcept {
  try {
    return new BiWKVPlugin(*this);
  } catch (std::exception const& e) {
    logError(std::string("BiWKV clone: ") + e.what());
  }
  return nullptr;
}

char const* BiWKVPlugin::getPluginName() const noexcept { return kBiWKVPluginName; }
char const* BiWKVPlugin::getPluginVersion() const noexcept { return kBiWKVPluginVersion; }
char const* BiWKVPlugin::getPluginNamespace() const noexcept { return kBiWKVPluginNamespace; }

int32_t BiWKVPlugin::getNbOutputs() const noexcept { return kNbOutputs; }

int32_t BiWKVPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
                                     DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) return -1;
  if (!shapesAgree(in[kInW].desc.dims, in[kInU].desc.dims, in[kInK].desc.dims, in[kInV].desc.dims)) {
    logError("BiWKV: expected w [C], u [C], k [B, T, C] and v of k's shape");
    return -1;
  }
  return 0;
}

bool BiWKVPlugin::supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                            int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0 || pos > kOutY) return false;
  PluginTensorDesc const& desc = inOut[pos].desc;
  if (desc.format != TensorFormat::kLINEAR) return false;
  switch (pos) {
    case kInW:
    case kInU: return desc.type == DataType::kFLOAT;
    case kInK: return isIoType(desc.type);
    default: return desc.type == inOut[kInK].desc.type;  // v and y follow k (positions are decided in order)
  }
}

int32_t BiWKVPlugin::getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                                        int32_t nbInputs) const noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || !isIoType(inputTypes[kInK])) return -1;
  outputTypes[0] = inputTypes[kInK];
  return 0;
}

int32_t BiWKVPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
                                     int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
                                     nvinfer1::IExprBuilder& /*exprBuilder*/) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs || inputs[kInK].nbDims != 3) return -1;
  outputs[0] = inputs[kInK];  // y has k's shape; no arithmetic on dimensions needed
  return 0;
}

size_t BiWKVPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
                                     DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept {
  if (nbInputs != kNbInputs || inputs[kInK].max.nbDims != 3) return 0;
  nvinfer1::Dims const& k = inputs[kInK].max;  // the largest shape of the optimization profile
  return bi_wkv_forward_workspace_size(k.d[0], k.d[1], k.d[2]);
}

int32_t BiWKVPlugin::onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/,
                                   int32_t nbOutputs) noexcept {
  if (nbInputs != kNbInputs || nbOutputs != kNbOutputs) return -1;
  if (!shapesAgree(in[kInW].dims, in[kInU].dims, in[kInK].dims, in[kInV].dims)) {
    logError("BiWKV: expected w [C], u [C], k [B, T, C] and v of k's shape");
    return -1;
  }
  return 0;
}

int32_t BiWKVPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
                             void const* const* inputs, void* const* outputs, void* workspace,
                             cudaStream_t stream) noexcept {
  nvinfer1::Dims const& k = inputDesc[kInK].dims;
  DType const dtype = inputDesc[kInK].type == DataType::kHALF ? DType::kFloat16 : DType::kFloat32;
  int const status = bi_wkv_forward_cuda(dtype, static_cast<float const*>(inputs[kInW]),
                                         static_cast<float const*>(inputs[kInU]), inputs[kInK], inputs[kInV],
                                         outputs[0], /*lse=*/nullptr, workspace, k.d[0], k.d[1], k.d[2], stream);
  if (status != 0) logError(std::string("BiWKV enqueue: ") + cuda_error_string(status));
  return status;
}

IPluginV3* BiWKVPlugin::attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept {
  return clone();  // no per-context resources
}

PluginFieldCollection const* BiWKVPlugin::getFieldsToSerialize() noexcept {
  mDataToSerialize.clear();
  mDataToSerialize.emplace_back(kPluginVersionField, kBiWKVPluginVersion, PluginFieldType::kCHAR,
                                int32_t(std::strlen(kBiWKVPluginVersion)));
  mFCToSerialize.nbFields = int32_t(mDataToSerialize.size());
  mFCToSerialize.fields = mDataToSerialize.data();
  return &mFCToSerialize;
}

// --- BiWKVPluginCreator -----------------------------------------------------------------------------

BiWKVPluginCreator::BiWKVPluginCreator() {
  mPluginAttributes.emplace_back(kPluginVersionField, nullptr, PluginFieldType::kCHAR, 0);
  mFC.nbFields = int32_t(mPluginAttributes.size());
  mFC.fields = mPluginAttributes.data();
}

char const* BiWKVPluginCreator::getPluginName() const noexcept { return kBiWKVPluginName; }
char const* BiWKVPluginCreator::getPluginVersion() const noexcept { return kBiWKVPluginVersion; }
char const* BiWKVPluginCreator::getPluginNamespace() const noexcept { return kBiWKVPluginNamespace; }
PluginFieldCollection const* BiWKVPluginCreator::getFieldNames() noexcept { return &mFC; }

IPluginV3* BiWKVPluginCreator::createPlugin(char const* /*name*/, PluginFieldCollection const* fc,
                                            nvinfer1::TensorRTPhase /*phase*/) noexcept {
  try {
    for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
      PluginField const& field = fc->fields[i];
      if (field.name == nullptr || std::strcmp(field.name, kPluginVersionField) != 0) continue;
      if (field.type != PluginFieldType::kCHAR || field.data == nullptr) {
        logError("BiWKV: plugin_version must be a string");
        return nullptr;
      }
      std::string const version = fieldString(field);
      if (version != kBiWKVPluginVersion) {
        logError("BiWKV: plugin_version \"" + version + "\" is not supported (this library implements \"" +
                 kBiWKVPluginVersion + "\")");
        return nullptr;
      }
    }
    return new BiWKVPlugin();
  } catch (std::exception const& e) {
    logError(std::string("BiWKV createPlugin: ") + e.what());
  }
  return nullptr;
}

}  // namespace drwkv::trt
