// Bi-WKV kernels: raw pointers, sizes and (for CUDA) a stream, so that the PyTorch op, the ONNX
// Runtime op and the TensorRT plugin all call the same code. Layout: w, u [C]; k, v, y, lse and
// gradients [B, T, C], contiguous. lse (log of the softmax denominator at each position) is an
// output of the forward pass and an input of the backward pass; pass nullptr when not needed.
#pragma once

#include <cstddef>
#include <cstdint>

namespace drwkv {

// The ONNX node's TensorRT plugin: the ONNX parser maps op_type BiWKV (attribute plugin_version) to
// the plugin of that name and version in the empty namespace.
constexpr char const* kBiWKVPluginName = "BiWKV";
constexpr char const* kBiWKVPluginVersion = "1";
constexpr char const* kBiWKVPluginNamespace = "";

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kFloat64 = 2 };

// --- CPU (threads: 0 = all available) -----------------------------------------------------------
// float32 and float16 I/O take float32 w, u, lse and gradients gw, gu; float64 I/O takes float64 for all.
void bi_wkv_forward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v, void* y,
                        void* lse, int64_t B, int64_t T, int64_t C, int threads = 0);
void bi_wkv_backward_cpu(DType dtype, const void* w, const void* u, const void* k, const void* v,
                         const void* y, const void* lse, const void* gy, void* gw, void* gu, void* gk,
                         void* gv, int64_t B, int64_t T, int64_t C, int threads = 0);

// --- CUDA (float32 and float16 I/O; w, u, lse, gw, gu float32) ----------------------------------
// Device pointers; `workspace` must hold bi_wkv_*_workspace_size bytes of device memory.
// Returns 0 on success, or a cudaError_t value.
size_t bi_wkv_forward_workspace_size(int64_t B, int64_t T, int64_t C);
size_t bi_wkv_backward_workspace_size(int64_t B, int64_t T, int64_t C);
int bi_wkv_forward_cuda(DType dtype, const float* w, const float* u, const void* k, const void* v, void* y,
                        float* lse, void* workspace, int64_t B, int64_t T, int64_t C, void* stream);
int bi_wkv_backward_cuda(DType dtype, const float* w, const float* u, const void* k, const void* v,
                         const void* y, const float* lse, const void* gy, float* gw, float* gu, void* gk,
                         void* gv, void* workspace, int64_t B, int64_t T, int64_t C, void* stream);
const char* cuda_error_string(int code);

}  // namespace drwkv
