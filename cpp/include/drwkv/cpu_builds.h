// The instruction-set builds of the CPU kernels. bi_wkv_cpu.cpp and fused_cpu.cpp are compiled once
// per instruction set (CMakeLists.txt, drwkv_cpu_kernels); the functions of bi_wkv.h and fused_cpu.h
// call the first build in cpu_builds(). The C++ tests check every build through this table, since
// a processor runs only one of them through the dispatch.
#pragma once

#include <cstdint>
#include <vector>

#include "drwkv/bi_wkv.h"
#include "drwkv/fused_cpu.h"

namespace drwkv {

// One build's entry points: the arguments of bi_wkv.h and fused_cpu.h, with threads >= 1.
struct CpuBuild {
  const char* name;  // "baseline", "avx2"
  void (*forward)(DType, const void*, const void*, const void*, const void*, void*, void*, int64_t, int64_t,
                  int64_t, int);
  void (*backward)(DType, const void*, const void*, const void*, const void*, const void*, const void*,
                   const void*, void*, void*, void*, void*, int64_t, int64_t, int64_t, int);
  void (*shift_mix)(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int,
                    const float* const*, const float* const*, float* const*, int, const LayerNormParams*);
  void (*sigmoid_gate)(float*, const float*, int64_t, int);
  void (*relu_square)(float*, int64_t, int);
  void (*gated_residual)(const float*, const float*, const float*, const float*, float*, int64_t, int64_t,
                         int64_t, int);
};

// The builds this processor can run, best first.
const std::vector<CpuBuild>& cpu_builds();

}  // namespace drwkv
