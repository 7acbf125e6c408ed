// Bi-WKV on CUDA. The maths is in bi_wkv_math.h; this file maps it onto threads.
//
// One block covers kChannels channels of one batch row and all of T, cut into kSegments segments
// (thread = channel x segment, so a warp reads 4 segments x 32 contiguous bytes per load).
//   1. Each thread sums its segment into a left-side sum and, chunk by chunk, right-side sums whose
//      suffixes it keeps in the workspace (the right sum at each chunk's end, within the segment).
//   2. Through shared memory, each thread merges the other segments' sums into the sums entering
//      its own segment: any T runs with kSegments-way parallelism along T and no limit on T.
//   3. Each thread walks its segment chunk by chunk: right to left through a register-resident
//      chunk (recording the right sum at each token), then left to right producing outputs.
// k and v are read twice; the workspace holds one sum per chunk (2.5 bytes per element forward).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "drwkv/bi_wkv.h"
#include "drwkv/bi_wkv_ops.h"

// Half-precision hooks for bi_wkv_ops.h (found by argument-dependent lookup on __half).
DRWKV_HD float to_calc(__half h) { return __half2float(h); }
DRWKV_HD void store_io(__half* p, float x) { *p = __float2half_rn(x); }

namespace drwkv {
namespace {

using math::kLeft;
using math::kRight;

constexpr int kChannels = 8;
constexpr int kSegments = 32;
constexpr int kThreads = kChannels * kSegments;
constexpr int kForwardChunk = 8;
constexpr int kBackwardChunk = 4;  // backward sums are larger: keep the chunk in registers

template <class IO> using GpuForward = ForwardOp<IO, float, float>;
template <class IO> using GpuBackward = BackwardOp<IO, float, float>;

int64_t chunks_per_segment(int64_t T, int chunk) {
  const int64_t seg_len = (T + kSegments - 1) / kSegments;
  return (seg_len + chunk - 1) / chunk;
}

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

template <class Sum>
size_t boundary_bytes(int64_t B, int64_t T, int64_t C, int chunk) {
  return align_up(size_t(B) * C * kSegments * chunks_per_segment(T, chunk) * sizeof(Sum));
}

template <class Op, int CHUNK>
__global__ void __launch_bounds__(kThreads, 2)
    bidirectional_scan_kernel(Op op, int64_t T, int64_t C, typename Op::Sum* boundary,
                              typename Op::AccT* partials) {
  using Sum = typename Op::Sum;
  using Acc = typename Op::AccT;
  constexpr int kP = Op::kPartials > 0 ? Op::kPartials : 1;
  __shared__ Sum shared_left[kSegments][kChannels];
  __shared__ Sum shared_right[kSegments][kChannels];
  __shared__ Acc shared_part[kSegments][kChannels][kP];

  const int lane = threadIdx.x % kChannels, seg = threadIdx.x / kChannels;
  const int64_t b = blockIdx.y, c = int64_t(blockIdx.x) * kChannels + lane;
  const bool active = c < C;
  const int64_t seg_len = (T + kSegments - 1) / kSegments;
  const int64_t n_chunks = (seg_len + CHUNK - 1) / CHUNK;
  const int64_t t0 = min(T, seg * seg_len), t1 = min(T, t0 + seg_len);
  Sum* chunk_right = boundary + ((b * C + (active ? c : 0)) * kSegments + seg) * n_chunks;
  const float w = active ? op.w(c) : 0.f;
  Acc x[Sum::kValues];

  // 1. Sums over this thread's segment.
  Sum left, seg_right;
  left.clear();
  seg_right.clear();
  if (active) {
    int64_t ch = 0;
    for (int64_t tc = t0; tc < t1; tc += CHUNK, ++ch) {
      Sum right;
      right.clear();
      for (int64_t t = tc; t < min(t1, tc + CHUNK); ++t) {
        const float key = op.key(b, t, c);
        op.values(b, t, c, x);
        left.template push<kLeft>(float(t), key, x, w);
        right.template push<kRight>(float(t), key, x, w);
      }
      chunk_right[ch] = right;
    }
    for (--ch; ch >= 0; --ch) {  // chunk_right[ch] := right sum of the segment's tokens after chunk ch
      const Sum own = chunk_right[ch];
      chunk_right[ch] = seg_right;
      seg_right.template merge<kRight>(own, w);
    }
  }
  shared_left[seg][lane] = left;
  shared_right[seg][lane] = seg_right;
  __syncthreads();

  // 2. Sums entering this segment from both sides.
  Sum enter_right;
  enter_right.clear();
  left.clear();
  for (int s = 0; s < seg; ++s) left.template merge<kLeft>(shared_left[s][lane], w);
  for (int s = kSegments - 1; s > seg; --s) enter_right.template merge<kRight>(shared_right[s][lane], w);

  // 3. Outputs, chunk by chunk.
  Acc part[kP];
  for (int j = 0; j < kP; ++j) part[j] = Acc(0);
  if (active) {
    int64_t ch = 0;
    for (int64_t tc = t0; tc < t1; tc += CHUNK, ++ch) {
      Sum right = chunk_right[ch];
      right.template merge<kRight>(enter_right, w);
      Sum right_at[CHUNK];
#pragma unroll
      for (int j = CHUNK - 1; j >= 0; --j) {
        const int64_t t = tc + j;
        if (t < t1) {
          right_at[j] = right;
          op.values(b, t, c, x);
          right.template push<kRight>(float(t), op.key(b, t, c), x, w);
        }
      }
#pragma unroll
      for (int j = 0; j < CHUNK; ++j) {
        const int64_t t = tc + j;
        if (t < t1) {
          op.output(b, t, c, left, right_at[j], part);
          op.values(b, t, c, x);
          left.template push<kLeft>(float(t), op.key(b, t, c), x, w);
        }
      }
    }
  }
  if (Op::kPartials > 0) {  // per-channel reductions (gw, gu): over segments here, over batch later
    for (int j = 0; j < kP; ++j) shared_part[seg][lane][j] = part[j];
    __syncthreads();
    if (seg == 0 && active) {
      for (int j = 0; j < kP; ++j) {
        Acc total = Acc(0);
        for (int s = 0; s < kSegments; ++s) total += shared_part[s][lane][j];
        partials[(b * C + c) * kP + j] = total;
      }
    }
  }
}

// gw[c], gu[c] = sums over the batch of the per-row partials (fixed order: deterministic).
__global__ void reduce_partials_kernel(const float* partials, int64_t B, int64_t C, float* gw, float* gu) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float sw = 0.f, su = 0.f;
  for (int64_t b = 0; b < B; ++b) {
    sw += partials[(b * C + c) * 2 + 0];
    su += partials[(b * C + c) * 2 + 1];
  }
  gw[c] = sw;
  gu[c] = su;
}

dim3 grid_for(int64_t B, int64_t C) { return dim3(unsigned((C + kChannels - 1) / kChannels), unsigned(B)); }

template <class IO>
int forward_typed(const float* w, const float* u, const void* k, const void* v, void* y, float* lse,
                  void* workspace, int64_t B, int64_t T, int64_t C, cudaStream_t stream) {
  using Op = GpuForward<IO>;
  Op op{w, u, static_cast<const IO*>(k), static_cast<const IO*>(v), static_cast<IO*>(y), lse, T, C};
  bidirectional_scan_kernel<Op, kForwardChunk><<<grid_for(B, C), kThreads, 0, stream>>>(
      op, T, C, static_cast<typename Op::Sum*>(workspace), nullptr);
  return int(cudaGetLastError());
}

template <class IO>
int backward_typed(const float* w, const float* u, const void* k, const void* v, const void* y, const float* lse,
                   const void* gy, float* gw, float* gu, void* gk, void* gv, void* workspace, int64_t B, int64_t T,
                   int64_t C, cudaStream_t stream) {
  using Op = GpuBackward<IO>;
  Op op{w, u, static_cast<const IO*>(k), static_cast<const IO*>(v), static_cast<const IO*>(y), lse,
        static_cast<const IO*>(gy), static_cast<IO*>(gk), static_cast<IO*>(gv), T, C};
  auto* boundary = static_cast<typename Op::Sum*>(workspace);
  auto* partials = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                            boundary_bytes<typename Op::Sum>(B, T, C, kBackwardChunk));
  bidirectional_scan_kernel<Op, kBackwardChunk><<<grid_for(B, C), kThreads, 0, stream>>>(op, T, C, boundary,
                                                                                          partials);
  reduce_partials_kernel<<<unsigned((C + 255) / 256), 256, 0, stream>>>(partials, B, C, gw, gu);
  return int(cudaGetLastError());
}

}  // namespace

size_t bi_wkv_forward_workspace_size(int64_t B, int64_t T, int64_t C) {
  return boundary_bytes<GpuForward<float>::Sum>(B, T, C, kForwardChunk);
}

size_t bi_wkv_backward_workspace_size(int64_t B, int64_t T, int64_t C) {
  return boundary_bytes<GpuBackward<float>::Sum>(B, T, C, kBackwardChunk) + align_up(size_t(B) * C * 2 * sizeof(float));
}

int bi_wkv_forward_cuda(DType dtype, const float* w, const float* u, const void* k, const void* v, void* y,
                        float* lse, void* workspace, int64_t B, int64_t T, int64_t C, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: return forward_typed<float>(w, u, k, v, y, lse, workspace, B, T, C, s);
    case DType::kFloat16: return forward_typed<__half>(w, u, k, v, y, lse, workspace, B, T, C, s);
    default: return int(cudaErrorInvalidValue);
  }
}

int bi_wkv_backward_cuda(DType dtype, const float* w, const float* u, const void* k, const void* v, const void* y,
                         const float* lse, const void* gy, float* gw, float* gu, void* gk, void* gv, void* workspace,
                         int64_t B, int64_t T, int64_t C, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case DType::kFloat32: return backward_typed<float>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, workspace, B, T, C, s);
    case DType::kFloat16: return backward_typed<__half>(w, u, k, v, y, lse, gy, gw, gu, gk, gv, workspace, B, T, C, s);
    default: return int(cudaErrorInvalidValue);
  }
}

const char* cuda_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace drwkv
