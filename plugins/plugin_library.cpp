// Entry points of the plugin shared library: TensorRT's IPluginRegistry::loadLibrary (used by
// trt.get_plugin_registry().load_library() and trtexec --dynamicPlugins) looks these up by name
// with dlsym, so the library registers its creators without linking libnvinfer.
#include <mutex>

#include "bi_wkv_plugin.h"

#define DRWKV_PLUGIN_API extern "C" __attribute__((visibility("default")))

namespace drwkv::trt {
namespace {

std::mutex gLoggerMutex;
nvinfer1::ILoggerFinder* gLoggerFinder = nullptr;

}  // namespace

void logError(std::string const& message) noexcept {
  std::lock_guard<std::mutex> lock(gLoggerMutex);
  if (gLoggerFinder == nullptr) return;
  if (nvinfer1::ILogger* logger = gLoggerFinder->findLogger())
    logger->log(nvinfer1::ILogger::Severity::kERROR, message.c_str());
}

}  // namespace drwkv::trt

// Every creator of the library, in one place.
DRWKV_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static drwkv::trt::BiWKVPluginCreator biWKVCreator;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&biWKVCreator};
  nbCreators = int32_t(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

// The older entry point name, for loaders that only look for it. TensorRT reads the entries as
// IPluginCreatorInterface and dispatches on getInterfaceInfo(), so the same list serves both.
DRWKV_PLUGIN_API nvinfer1::IPluginCreatorInterface* const* getPluginCreators(int32_t& nbCreators) {
  return getCreators(nbCreators);
}

DRWKV_PLUGIN_API void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  std::lock_guard<std::mutex> lock(drwkv::trt::gLoggerMutex);
  drwkv::trt::gLoggerFinder = finder;
}
