// Picks the CPU kernel build for this processor (Bi-WKV and the fused passes of fused_cpu.h): AVX2+FMA
// where available, the baseline otherwise.
#ifdef _OPENMP
#include <omp.h>
#endif

#include "drwkv/bi_wkv.h"
#include "drwkv/cpu_builds.h"
#include "drwkv/fused_cpu.h"

namespace drwkv {

#define DRWKV_DECLARE_CPU_KERNELS(isa)                                                                        \
  namespace isa {                                                                                            \
  void forward(DType, const void*, const void*, const void*, const void*, void*, void*, int64_t, int64_t,    \
               int64_t, int);                                                                                \
  void backward(DType, const void*, const void*, const void*, const void*, const void*, const void*,         \
                const void*, void*, void*, void*, void*, int64_t, int64_t, int64_t, int);                    \
  void shift_mix(const float*, const float*, const float*, int64_t, int64_t, int64_t, int64_t, int,          \
                 const float* const*, const float* const*, float* const*, int, const LayerNormParams*);     \
  void sigmoid_gate(float*, const float*, int64_t, int);                                                     \
  void relu_square(float*, int64_t, int);                                                                    \
  void gated_residual(const float*, const float*, const float*, const float*, float*, int64_t, int64_t,      \
                      int64_t, int);                                                                         \
  }
DRWKV_DECLARE_CPU_KERNELS(baseline)
#ifdef DRWKV_HAVE_AVX2
DRWKV_DECLARE_CPU_KERNELS(avx2)
#endif

#define DRWKV_CPU_BUILD(isa) \
  CpuBuild{#isa, isa::forward, isa::backward, isa::shift_mix, isa::sigmoid_gate, isa::relu_square, isa::gated_residual}

const std::vector<CpuBuild>& cpu_builds() {
  static const std::vector<CpuBuild> builds = [] {
    std::vector<CpuBuild> found;
#ifdef DRWKV_HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) found.push_back(DRWKV_CPU_BUILD(avx2));
#endif
    found.push_back(DRWKV_CPU_BUILD(baseline));
    return found;
  }();
  return builds;
}

namespace {

const CpuBuild& best() {
  static const CpuBuild& build = cpu_builds().front();
  return build;
}

int resolve_threads(int threads) {
  if (threads > 0) return threads;
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

void bi_wkv_forward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, void* y,
                        void* lse, int64_t B, int64_t T, int64_t C, int threads) {
  best().forward(dtype, w, u, k, v, y, lse, B, T, C, resolve_threads(threads));
}

void bi_wkv_backward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, const void* y,
                         const void* lse, const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B,
                         int64_t T, int64_t C, int threads) {
  best().backward(dtype, w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, resolve_threads(threads));
}

void shift_mix_cpu(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W,
                   int64_t C, int n, const float* const* mix, const float* const* keep, float* const* out,
                   int threads, const LayerNormParams* norm) {
  best().shift_mix(x, scale1p, shift, B, H, W, C, n, mix, keep, out, resolve_threads(threads), norm);
}

void sigmoid_gate_cpu(float* y, const float* r, int64_t n, int threads) {
  best().sigmoid_gate(y, r, n, resolve_threads(threads));
}

void relu_square_cpu(float* y, int64_t n, int threads) { best().relu_square(y, n, resolve_threads(threads)); }

void gated_residual_cpu(const float* x, const float* gate, const float* branch, const float* r, float* out,
                        int64_t B, int64_t T, int64_t C, int threads) {
  best().gated_residual(x, gate, branch, r, out, B, T, C, resolve_threads(threads));
}

}  // namespace drwkv
