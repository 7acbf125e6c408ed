// Element-wise work of a DRWKV block in single passes on the CPU. ONNX Runtime's CPU path
// (drwkv.runtime.ort_split) runs these in place of the many full-size passes the exported graph
// spends on the same work (slices, pads, concats, multiplies and adds); PyTorch and TensorRT do
// not use them. Layout: tokens [B, T, C] with T = H * W, row-major; all float32, contiguous.
#pragma once

#include <cstdint>

namespace drwkv {

// A LayerNorm over the channels of each token: (x - mean) / sqrt(var + eps) * weight + bias.
struct LayerNormParams {
  const float* weight;  // [C]
  const float* bias;    // [C], or null for none
  float eps;
};

// Q-Shift and RWKV token mixes, after a LayerNorm (when `norm` is given) and DiT's modulation (when
// `scale1p` and `shift`, [B, C], are given):
//   z      = norm ? LayerNorm(x) : x
//   h      = z * scale1p[b] + shift[b]                     (h = z when both are null)
//   out[i] = h * mix[i] + qshift(h) * keep[i]              for i < n; mix[i], keep[i]: [C]
// qshift(h) on the H x W grid: channel quarter 0 takes the left neighbour's value, 1 the right's,
// 2 the upper's, 3 the lower's (zero past the border); channels from 4 * (C / 4) on take h itself.
void shift_mix_cpu(const float* x, const float* scale1p, const float* shift, int64_t B, int64_t H, int64_t W,
                   int64_t C, int n, const float* const* mix, const float* const* keep, float* const* out,
                   int threads = 0, const LayerNormParams* norm = nullptr);

// y = y * sigmoid(r) over n values, in place.
void sigmoid_gate_cpu(float* y, const float* r, int64_t n, int threads = 0);

// y = max(y, 0)^2 over n values, in place.
void relu_square_cpu(float* y, int64_t n, int threads = 0);

// out = x + gate[b] * branch (* sigmoid(r) when r is given): DiT's gated residual, with the
// ChannelMix's receptance gate. x, branch, r, out: [B, T, C]; gate: [B, C]; out may be x.
void gated_residual_cpu(const float* x, const float* gate, const float* branch, const float* r, float* out,
                        int64_t B, int64_t T, int64_t C, int threads = 0);

}  // namespace drwkv
