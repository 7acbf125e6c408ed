# FindTensorRT: TensorRT headers (required) and libnvinfer (optional: only what links an engine
# runtime needs it; plugins load into TensorRT and need the headers only).
#
# Hints: TensorRT_ROOT (CMake or environment variable; the headers in <root>/include, the library in
# <root>/lib) or TensorRT_INCLUDE_DIR (the folder holding NvInferRuntime.h).
# Defines: TensorRT_FOUND, TensorRT_INCLUDE_DIR, TensorRT_VERSION, TensorRT_VERSION_MAJOR,
#          TensorRT_nvinfer_LIBRARY (when found), and the targets
#          TensorRT::headers (interface: headers only) and TensorRT::nvinfer (when the library is found).

find_path(TensorRT_INCLUDE_DIR
  NAMES NvInferRuntime.h
  HINTS ${TensorRT_ROOT} $ENV{TensorRT_ROOT} $ENV{TensorRT_INCLUDE_DIR}
  PATH_SUFFIXES include
  DOC "Folder holding the TensorRT headers (NvInferRuntime.h, NvInferVersion.h)")

find_library(TensorRT_nvinfer_LIBRARY
  NAMES nvinfer
  HINTS ${TensorRT_ROOT} $ENV{TensorRT_ROOT}
  PATH_SUFFIXES lib lib64 lib/x86_64-linux-gnu
  DOC "libnvinfer (optional)")

# Newer headers define the version through TRT_*_ENTERPRISE; older ones as plain numbers.
if(TensorRT_INCLUDE_DIR AND EXISTS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h")
  file(READ "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _drwkv_trt_version_h)
  foreach(_part MAJOR MINOR PATCH)
    if(_drwkv_trt_version_h MATCHES "#define TRT_${_part}_ENTERPRISE ([0-9]+)")
      set(TensorRT_VERSION_${_part} "${CMAKE_MATCH_1}")
    elseif(_drwkv_trt_version_h MATCHES "#define NV_TENSORRT_${_part} ([0-9]+)")
      set(TensorRT_VERSION_${_part} "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  set(TensorRT_VERSION "${TensorRT_VERSION_MAJOR}.${TensorRT_VERSION_MINOR}.${TensorRT_VERSION_PATCH}")
  unset(_drwkv_trt_version_h)
endif()

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(TensorRT
  REQUIRED_VARS TensorRT_INCLUDE_DIR TensorRT_VERSION_MAJOR
  VERSION_VAR TensorRT_VERSION)

if(TensorRT_FOUND AND NOT TARGET TensorRT::headers)
  add_library(TensorRT::headers INTERFACE IMPORTED GLOBAL)
  set_target_properties(TensorRT::headers PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
endif()
if(TensorRT_FOUND AND TensorRT_nvinfer_LIBRARY AND NOT TARGET TensorRT::nvinfer)
  add_library(TensorRT::nvinfer UNKNOWN IMPORTED GLOBAL)
  set_target_properties(TensorRT::nvinfer PROPERTIES
    IMPORTED_LOCATION "${TensorRT_nvinfer_LIBRARY}"
    INTERFACE_LINK_LIBRARIES TensorRT::headers)
endif()
mark_as_advanced(TensorRT_INCLUDE_DIR TensorRT_nvinfer_LIBRARY)
