// Loads the BiWKV plugin library the way TensorRT does (dlopen + getCreators) and exercises the
// plugin's build and runtime interfaces on the CPU: no GPU and no libnvinfer needed, only headers.
// Usage: test_bi_wkv_plugin <path to libdrwkv_trt_plugin.so>
#include <NvInferRuntime.h>
#include <dlfcn.h>

#include "check.h"

#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "drwkv/bi_wkv.h"

using namespace nvinfer1;

namespace {

// --- a logger for setLoggerFinder: the plugin reports refused fields through it -------------------
class RecordingLogger : public ILogger {
 public:
  void log(Severity severity, AsciiChar const* msg) noexcept override {
    if (severity <= Severity::kERROR) errors.emplace_back(msg);
  }
  std::vector<std::string> errors;
};

class Finder : public ILoggerFinder {
 public:
  explicit Finder(ILogger* logger) : mLogger(logger) {}
  ILogger* findLogger() override { return mLogger; }

 private:
  ILogger* mLogger;
};

// --- a tiny IExprBuilder: constant dimension expressions are all getOutputShapes needs here ---------
// IExprBuilder and IDimensionExpr forward to implementation objects (apiv::V*) that libnvinfer
// normally provides; implementing those here keeps the test free of libnvinfer.
class ConstantExpr : public IDimensionExpr {
 public:
  explicit ConstantExpr(int64_t value) : mValue(value) { mImpl = &mValue; }

 private:
  struct Value : apiv::VDimensionExpr {
    explicit Value(int64_t v) : value(v) {}
    bool isConstant() const override { return true; }
    int64_t getConstantValue() const override { return value; }
    bool isSizeTensor() const override { return false; }
    int64_t value;
  } mValue;
};

class ConstantExprBuilder : public IExprBuilder {
 public:
  ConstantExprBuilder() { mImpl = &mBuilder; }
  IDimensionExpr const* make(int64_t value) { return mBuilder.constant(value); }

 private:
  struct Builder : apiv::VExprBuilder {
    IDimensionExpr const* constant(int64_t value) override { return &exprs.emplace_back(value); }
    IDimensionExpr const* operation(DimensionOperation op, IDimensionExpr const& a, IDimensionExpr const& b) override {
      int64_t const x = a.getConstantValue(), y = b.getConstantValue();
      switch (op) {
        case DimensionOperation::kSUM: return constant(x + y);
        case DimensionOperation::kPROD: return constant(x * y);
        case DimensionOperation::kSUB: return constant(x - y);
        default: return nullptr;  // not needed by a shape-preserving plugin
      }
    }
    IDimensionExpr const* declareSizeTensor(int32_t, IDimensionExpr const&, IDimensionExpr const&) override {
      return nullptr;
    }
    std::deque<ConstantExpr> exprs;  // deque: stable addresses
  } mBuilder;
};

// --- helpers ------------------------------------------------------------------------------------------
Dims dims(std::initializer_list<int64_t> extents) {
  Dims d{};
  d.nbDims = int32_t(extents.size());
  int32_t i = 0;
  for (int64_t e : extents) d.d[i++] = e;
  return d;
}

DynamicPluginTensorDesc tensor(Dims const& shape, DataType type, TensorFormat format = TensorFormat::kLINEAR) {
  DynamicPluginTensorDesc t{};
  t.desc.dims = shape;
  t.desc.type = type;
  t.desc.format = format;
  t.min = t.opt = t.max = shape;
  return t;
}

// w, u, k, v, y with B=2, T=16, C=8.
std::vector<DynamicPluginTensorDesc> io(DataType k, DataType v, DataType y, DataType w = DataType::kFLOAT,
                                        TensorFormat kFormat = TensorFormat::kLINEAR) {
  return {tensor(dims({8}), w), tensor(dims({8}), DataType::kFLOAT), tensor(dims({2, 16, 8}), k, kFormat),
          tensor(dims({2, 16, 8}), v), tensor(dims({2, 16, 8}), y)};
}

bool allPositionsSupported(IPluginV3OneBuild* build, std::vector<DynamicPluginTensorDesc> const& inOut) {
  for (int32_t pos = 0; pos < 5; ++pos)
    if (!build->supportsFormatCombination(pos, inOut.data(), 4, 1)) return false;
  return true;
}

IPluginV3OneCore* core(IPluginV3* p) { return static_cast<IPluginV3OneCore*>(p->getCapabilityInterface(PluginCapabilityType::kCORE)); }
IPluginV3OneBuild* build(IPluginV3* p) { return static_cast<IPluginV3OneBuild*>(p->getCapabilityInterface(PluginCapabilityType::kBUILD)); }
IPluginV3OneRuntime* runtime(IPluginV3* p) { return static_cast<IPluginV3OneRuntime*>(p->getCapabilityInterface(PluginCapabilityType::kRUNTIME)); }

std::string serializedVersion(IPluginV3* p) {
  PluginFieldCollection const* fc = runtime(p)->getFieldsToSerialize();
  for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i)
    if (std::strcmp(fc->fields[i].name, "plugin_version") == 0 && fc->fields[i].type == PluginFieldType::kCHAR)
      return std::string(static_cast<char const*>(fc->fields[i].data), size_t(fc->fields[i].length));
  return "<missing>";
}

using PluginPtr = std::unique_ptr<IPluginV3>;

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <plugin library>\n", argv[0]);
    return 2;
  }
  void* library = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
    return 1;
  }

  // The three entry points TensorRT's loaders look up by name.
  using GetCreators = IPluginCreatorInterface* const* (*)(int32_t&);
  using SetLoggerFinder = void (*)(ILoggerFinder*);
  auto getCreators = reinterpret_cast<GetCreators>(dlsym(library, "getCreators"));
  auto getPluginCreators = reinterpret_cast<GetCreators>(dlsym(library, "getPluginCreators"));
  auto setLoggerFinder = reinterpret_cast<SetLoggerFinder>(dlsym(library, "setLoggerFinder"));
  CHECK(getCreators != nullptr);
  CHECK(getPluginCreators != nullptr);
  CHECK(setLoggerFinder != nullptr);
  if (getCreators == nullptr || setLoggerFinder == nullptr) return 1;

  RecordingLogger logger;
  Finder finder(&logger);
  setLoggerFinder(&finder);

  int32_t nbCreators = 0;
  IPluginCreatorInterface* const* creators = getCreators(nbCreators);
  CHECK(nbCreators == 1);
  int32_t nbOld = 0;
  CHECK(getPluginCreators != nullptr && getPluginCreators(nbOld) == creators && nbOld == 1);
  if (nbCreators != 1) return 1;

  // TensorRT checks the interface kind before it downcasts; so do we.
  InterfaceInfo const info = creators[0]->getInterfaceInfo();
  CHECK(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0);
  auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
  CHECK(std::strcmp(creator->getPluginName(), "BiWKV") == 0);
  CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);
  PluginFieldCollection const* names = creator->getFieldNames();
  CHECK(names != nullptr && names->nbFields == 1 && std::strcmp(names->fields[0].name, "plugin_version") == 0 &&
        names->fields[0].type == PluginFieldType::kCHAR);

  // --- build phase: fields as the ONNX parser passes them (the node's attributes) -------------------
  PluginField version1("plugin_version", "1", PluginFieldType::kCHAR, 1);
  PluginFieldCollection fields{1, &version1};
  PluginPtr plugin(creator->createPlugin("bi_wkv_0", &fields, TensorRTPhase::kBUILD));
  CHECK(plugin != nullptr);
  if (plugin == nullptr) return 1;
  PluginPtr noFields(creator->createPlugin("bi_wkv_1", nullptr, TensorRTPhase::kBUILD));
  CHECK(noFields != nullptr);  // plugin_version is optional

  PluginField version2("plugin_version", "2", PluginFieldType::kCHAR, 1);
  PluginFieldCollection wrongFields{1, &version2};
  CHECK(creator->createPlugin("bi_wkv_2", &wrongFields, TensorRTPhase::kBUILD) == nullptr);
  CHECK(logger.errors.size() == 1 && logger.errors[0].find("plugin_version \"2\"") != std::string::npos);

  CHECK(std::strcmp(core(plugin.get())->getPluginName(), "BiWKV") == 0);
  CHECK(std::strcmp(core(plugin.get())->getPluginVersion(), "1") == 0);
  CHECK(std::strcmp(core(plugin.get())->getPluginNamespace(), "") == 0);

  IPluginV3OneBuild* b = build(plugin.get());
  CHECK(b->getNbOutputs() == 1);

  DataType outType = DataType::kINT8;
  DataType const floatInputs[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT};
  CHECK(b->getOutputDataTypes(&outType, 1, floatInputs, 4) == 0 && outType == DataType::kFLOAT);
  DataType const halfInputs[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF, DataType::kHALF};
  CHECK(b->getOutputDataTypes(&outType, 1, halfInputs, 4) == 0 && outType == DataType::kHALF);
  DataType const intInputs[] = {DataType::kFLOAT, DataType::kFLOAT, DataType::kINT32, DataType::kINT32};
  CHECK(b->getOutputDataTypes(&outType, 1, intInputs, 4) != 0);

  // y's shape is k's shape, whatever the expressions are.
  ConstantExprBuilder exprs;
  DimsExprs in[4]{};
  in[0].nbDims = in[1].nbDims = 1;
  in[0].d[0] = in[1].d[0] = exprs.make(8);
  in[2].nbDims = in[3].nbDims = 3;
  for (int32_t i = 0; i < 3; ++i) in[2].d[i] = in[3].d[i] = exprs.make(i == 0 ? 4 : i == 1 ? 64 : 8);
  DimsExprs out[1]{};
  CHECK(b->getOutputShapes(in, 4, nullptr, 0, out, 1, exprs) == 0);
  CHECK(out[0].nbDims == 3 && out[0].d[0]->getConstantValue() == 4 && out[0].d[1]->getConstantValue() == 64 &&
        out[0].d[2]->getConstantValue() == 8);
  CHECK(b->getOutputShapes(in, 3, nullptr, 0, out, 1, exprs) != 0);

  // Accepted: float32 or float16 k, v, y of one type, float32 w and u, all linear.
  CHECK(allPositionsSupported(b, io(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT)));
  CHECK(allPositionsSupported(b, io(DataType::kHALF, DataType::kHALF, DataType::kHALF)));
  // Rejected, at the position that breaks the rule.
  CHECK(!b->supportsFormatCombination(0, io(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT, DataType::kHALF).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(2, io(DataType::kINT8, DataType::kINT8, DataType::kINT8).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(2, io(DataType::kBF16, DataType::kBF16, DataType::kBF16).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(3, io(DataType::kHALF, DataType::kFLOAT, DataType::kHALF).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(4, io(DataType::kHALF, DataType::kHALF, DataType::kFLOAT).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(2, io(DataType::kHALF, DataType::kHALF, DataType::kHALF, DataType::kFLOAT, TensorFormat::kHWC8).data(), 4, 1));
  CHECK(!b->supportsFormatCombination(5, io(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT).data(), 4, 1));

  auto good = io(DataType::kFLOAT, DataType::kFLOAT, DataType::kFLOAT);
  CHECK(b->configurePlugin(good.data(), 4, good.data() + 4, 1) == 0);
  auto badC = good;
  badC[0] = tensor(dims({7}), DataType::kFLOAT);  // w has 7 channels, k has 8
  CHECK(b->configurePlugin(badC.data(), 4, badC.data() + 4, 1) != 0);
  auto dynamic = good;
  dynamic[2].desc.dims = dynamic[3].desc.dims = dims({-1, -1, 8});  // dynamic batch and tokens
  CHECK(b->configurePlugin(dynamic.data(), 4, dynamic.data() + 4, 1) == 0);

  // Workspace sized by the kernel for the profile's largest shape.
  auto profile = good;
  profile[2].max = profile[3].max = dims({8, 256, 384});
  size_t const workspace = b->getWorkspaceSize(profile.data(), 4, profile.data() + 4, 1);
  CHECK(workspace > 0);
  CHECK(workspace == drwkv::bi_wkv_forward_workspace_size(8, 256, 384));

  // --- runtime phase: serialize, recreate from the fields, clone -----------------------------------
  IPluginV3OneRuntime* r = runtime(plugin.get());
  PluginTensorDesc shapes[5];
  for (int32_t i = 0; i < 5; ++i) shapes[i] = good[i].desc;
  CHECK(r->onShapeChange(shapes, 4, shapes + 4, 1) == 0);
  shapes[3].dims = dims({2, 15, 8});  // v no longer matches k
  CHECK(r->onShapeChange(shapes, 4, shapes + 4, 1) != 0);

  CHECK(serializedVersion(plugin.get()) == "1");
  PluginPtr restored(creator->createPlugin("bi_wkv_0", r->getFieldsToSerialize(), TensorRTPhase::kRUNTIME));
  CHECK(restored != nullptr);
  if (restored != nullptr) {
    CHECK(std::strcmp(core(restored.get())->getPluginName(), "BiWKV") == 0);
    CHECK(serializedVersion(restored.get()) == "1");
  }

  PluginPtr copy(plugin->clone());
  CHECK(copy != nullptr && copy.get() != plugin.get());
  plugin.reset();  // the clone must not depend on the original
  if (copy != nullptr) {
    CHECK(serializedVersion(copy.get()) == "1");
    CHECK(build(copy.get())->getNbOutputs() == 1);
    PluginPtr attached(runtime(copy.get())->attachToContext(nullptr));
    CHECK(attached != nullptr && attached.get() != copy.get());
  }

  setLoggerFinder(nullptr);
  if (drwkv_test::failures() == 0) std::printf("BiWKV plugin: all checks passed\n");
  return drwkv_test::failures() == 0 ? 0 : 1;
}
