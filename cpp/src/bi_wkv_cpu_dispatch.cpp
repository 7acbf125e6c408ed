// Picks the CPU kernel build for this processor: AVX2+FMA where available, the baseline otherwise.
#ifdef _OPENMP
#include <omp.h>
#endif

#include "drwkv/bi_wkv.h"

namespace drwkv {

#define DRWKV_DECLARE_CPU_KERNELS(isa)                                                                        \
  namespace isa {                                                                                            \
  void forward(DType, const void*, const void*, const void*, const void*, void*, void*, int64_t, int64_t,    \
               int64_t, int);                                                                                \
  void backward(DType, const void*, const void*, const void*, const void*, const void*, const void*,         \
                const void*, void*, void*, void*, void*, int64_t, int64_t, int64_t, int);                    \
  }
DRWKV_DECLARE_CPU_KERNELS(baseline)
#ifdef DRWKV_HAVE_AVX2
DRWKV_DECLARE_CPU_KERNELS(avx2)
#endif

namespace {

bool use_avx2() {
#ifdef DRWKV_HAVE_AVX2
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
#else
  return false;
#endif
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
  threads = resolve_threads(threads);
#ifdef DRWKV_HAVE_AVX2
  if (use_avx2()) return avx2::forward(dtype, w, u, k, v, y, lse, B, T, C, threads);
#endif
  baseline::forward(dtype, w, u, k, v, y, lse, B, T, C, threads);
}

void bi_wkv_backward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, const void* y,
                         const void* lse, const void* gy, void* gw, void* gu, void* gk, void* gv, int64_t B,
                         int64_t T, int64_t C, int threads) {
  threads = resolve_threads(threads);
#ifdef DRWKV_HAVE_AVX2
  if (use_avx2()) return avx2::backward(dtype, w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
#endif
  baseline::backward(dtype, w, u, k, v, y, lse, gy, gw, gu, gk, gv, B, T, C, threads);
}

}  // namespace drwkv
