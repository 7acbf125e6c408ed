// drwkv._C: the native kernels for Python. Takes raw addresses (from torch's data_ptr or numpy) so
// that the module links against neither torch nor a CUDA runtime shared library.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "drwkv/bi_wkv.h"
#include "drwkv/fused_cpu.h"

namespace py = pybind11;
using drwkv::DType;

namespace {

void* ptr(uintptr_t address) { return reinterpret_cast<void*>(address); }

#ifdef DRWKV_WITH_CUDA
void check_cuda(int code, const char* what) {
  if (code != 0) throw std::runtime_error(std::string(what) + ": " + drwkv::cuda_error_string(code));
}
#define DRWKV_CUDA_CALL(what, call) check_cuda(call, what)
#define DRWKV_CUDA_SIZE(expr) (expr)
#else
#define DRWKV_CUDA_CALL(what, call) throw std::runtime_error(what ": drwkv._C was built without CUDA")
#define DRWKV_CUDA_SIZE(expr) size_t(0)
#endif

void forward(uintptr_t w, uintptr_t u, uintptr_t k, uintptr_t v, uintptr_t y, uintptr_t lse, uintptr_t workspace,
             int64_t B, int64_t T, int64_t C, int dtype, int device, uintptr_t stream) {
  if (device < 0) {
    py::gil_scoped_release release;
    drwkv::bi_wkv_forward_cpu(DType(dtype), ptr(w), ptr(u), ptr(k), ptr(v), ptr(y), ptr(lse), B, T, C);
    return;
  }
  DRWKV_CUDA_CALL("bi_wkv_forward_cuda",
                  drwkv::bi_wkv_forward_cuda(DType(dtype), static_cast<const float*>(ptr(w)),
                                             static_cast<const float*>(ptr(u)), ptr(k), ptr(v), ptr(y),
                                             static_cast<float*>(ptr(lse)), ptr(workspace), B, T, C, ptr(stream)));
}

void backward(uintptr_t w, uintptr_t u, uintptr_t k, uintptr_t v, uintptr_t y, uintptr_t lse, uintptr_t gy,
              uintptr_t gw, uintptr_t gu, uintptr_t gk, uintptr_t gv, uintptr_t workspace, int64_t B, int64_t T,
              int64_t C, int dtype, int device, uintptr_t stream) {
  if (device < 0) {
    py::gil_scoped_release release;
    drwkv::bi_wkv_backward_cpu(DType(dtype), ptr(w), ptr(u), ptr(k), ptr(v), ptr(y), ptr(lse), ptr(gy), ptr(gw),
                               ptr(gu), ptr(gk), ptr(gv), B, T, C);
    return;
  }
  DRWKV_CUDA_CALL("bi_wkv_backward_cuda",
                  drwkv::bi_wkv_backward_cuda(DType(dtype), static_cast<const float*>(ptr(w)),
                                              static_cast<const float*>(ptr(u)), ptr(k), ptr(v), ptr(y),
                                              static_cast<const float*>(ptr(lse)), ptr(gy), static_cast<float*>(ptr(gw)),
                                              static_cast<float*>(ptr(gu)), ptr(gk), ptr(gv), ptr(workspace), B, T, C,
                                              ptr(stream)));
}

// numpy entry point used by the ONNX Runtime custom op: y = bi_wkv(w, u, k, v) on the CPU.
py::array forward_numpy(py::array_t<float, py::array::c_style | py::array::forcecast> w,
                        py::array_t<float, py::array::c_style | py::array::forcecast> u, py::array k, py::array v) {
  if (k.ndim() != 3) throw std::invalid_argument("bi_wkv: k must have rank 3 [B, T, C]");
  const int64_t B = k.shape(0), T = k.shape(1), C = k.shape(2);
  if (v.ndim() != 3 || v.shape(0) != B || v.shape(1) != T || v.shape(2) != C)
    throw std::invalid_argument("bi_wkv: v must have the shape of k");
  if (w.ndim() != 1 || w.shape(0) != C || u.ndim() != 1 || u.shape(0) != C)
    throw std::invalid_argument("bi_wkv: w and u must have shape [C]");
  const bool half = k.dtype().is(py::dtype("float16"));
  if (!half && !k.dtype().is(py::dtype::of<float>()))
    throw std::invalid_argument("bi_wkv: k must be float32 or float16");
  if (!v.dtype().is(k.dtype())) throw std::invalid_argument("bi_wkv: v must have the dtype of k");
  py::array kc = py::array::ensure(k, py::array::c_style), vc = py::array::ensure(v, py::array::c_style);
  py::array y(k.dtype(), {B, T, C});
  {
    py::gil_scoped_release release;
    drwkv::bi_wkv_forward_cpu(half ? DType::kFloat16 : DType::kFloat32, w.data(), u.data(), kc.data(), vc.data(),
                              y.mutable_data(), nullptr, B, T, C);
  }
  return y;
}

// The fused CPU passes (fused_cpu.h) on raw addresses, for drwkv.runtime.ort_split, which holds
// ONNX Runtime's tensors and numpy buffers; the caller checks shapes and types.
void shift_mix(uintptr_t x, uintptr_t scale1p, uintptr_t shift, int64_t B, int64_t H, int64_t W, int64_t C,
               const std::vector<uintptr_t>& mix, const std::vector<uintptr_t>& keep, const std::vector<uintptr_t>& out,
               int threads, uintptr_t norm_weight, uintptr_t norm_bias, float norm_eps) {
  if (mix.size() != keep.size() || mix.size() != out.size())
    throw std::invalid_argument("shift_mix: mix, keep and out must have one address per mix");
  std::vector<const float*> m, k;
  std::vector<float*> o;
  for (size_t i = 0; i < mix.size(); ++i) {
    m.push_back(static_cast<const float*>(ptr(mix[i])));
    k.push_back(static_cast<const float*>(ptr(keep[i])));
    o.push_back(static_cast<float*>(ptr(out[i])));
  }
  const drwkv::LayerNormParams norm{static_cast<const float*>(ptr(norm_weight)),
                                   static_cast<const float*>(ptr(norm_bias)), norm_eps};
  py::gil_scoped_release release;
  drwkv::shift_mix_cpu(static_cast<const float*>(ptr(x)), static_cast<const float*>(ptr(scale1p)),
                       static_cast<const float*>(ptr(shift)), B, H, W, C, int(m.size()), m.data(), k.data(), o.data(),
                       threads, norm_weight ? &norm : nullptr);
}

}  // namespace

void bind_samplers(py::module_& m);  // samplers_binding.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "drwkv native kernels (Bi-WKV on CPU and CUDA)";
  m.attr("DTYPE_FLOAT32") = int(DType::kFloat32);
  m.attr("DTYPE_FLOAT16") = int(DType::kFloat16);
  m.attr("DTYPE_FLOAT64") = int(DType::kFloat64);
#ifdef DRWKV_WITH_CUDA
  m.attr("WITH_CUDA") = true;
#else
  m.attr("WITH_CUDA") = false;
#endif
  m.def("bi_wkv_forward", &forward, "Bi-WKV forward on raw addresses (device -1 = CPU)");
  m.def("bi_wkv_backward", &backward, "Bi-WKV backward on raw addresses (device -1 = CPU)");
  m.def("bi_wkv_forward_numpy", &forward_numpy, py::arg("w"), py::arg("u"), py::arg("k"), py::arg("v"),
        "Bi-WKV forward on numpy arrays (CPU)");
  m.def("bi_wkv_workspace_size", [](int64_t B, int64_t T, int64_t C, bool cuda) {
    return cuda ? DRWKV_CUDA_SIZE(drwkv::bi_wkv_forward_workspace_size(B, T, C)) : size_t(0);
  });
  m.def("bi_wkv_backward_workspace_size", [](int64_t B, int64_t T, int64_t C, bool cuda) {
    return cuda ? DRWKV_CUDA_SIZE(drwkv::bi_wkv_backward_workspace_size(B, T, C)) : size_t(0);
  });
  m.def("bi_wkv_forward_cpu", [](uintptr_t w, uintptr_t u, uintptr_t k, uintptr_t v, uintptr_t y, int64_t B, int64_t T,
                                 int64_t C, int dtype, int threads) {
    py::gil_scoped_release release;
    drwkv::bi_wkv_forward_cpu(DType(dtype), ptr(w), ptr(u), ptr(k), ptr(v), ptr(y), nullptr, B, T, C, threads);
  }, "Bi-WKV forward, y only, on raw CPU addresses with a thread count (0 = OpenMP's default)");
  m.def("shift_mix", &shift_mix, py::arg("x"), py::arg("scale1p"), py::arg("shift"), py::arg("B"), py::arg("H"),
        py::arg("W"), py::arg("C"), py::arg("mix"), py::arg("keep"), py::arg("out"), py::arg("threads") = 0,
        py::arg("norm_weight") = 0, py::arg("norm_bias") = 0, py::arg("norm_eps") = 1e-5f,
        "Q-Shift and token mixes after a LayerNorm (norm_weight != 0) and modulation (fused_cpu.h), raw addresses");
  m.def("sigmoid_gate", [](uintptr_t y, uintptr_t r, int64_t n, int threads) {
    py::gil_scoped_release release;
    drwkv::sigmoid_gate_cpu(static_cast<float*>(ptr(y)), static_cast<const float*>(ptr(r)), n, threads);
  }, "y *= sigmoid(r) in place (fused_cpu.h), raw addresses");
  m.def("relu_square", [](uintptr_t y, int64_t n, int threads) {
    py::gil_scoped_release release;
    drwkv::relu_square_cpu(static_cast<float*>(ptr(y)), n, threads);
  }, "y = max(y, 0)^2 in place (fused_cpu.h), raw addresses");
  m.def("gated_residual", [](uintptr_t x, uintptr_t gate, uintptr_t branch, uintptr_t r, uintptr_t out, int64_t B,
                             int64_t T, int64_t C, int threads) {
    py::gil_scoped_release release;
    drwkv::gated_residual_cpu(static_cast<const float*>(ptr(x)), static_cast<const float*>(ptr(gate)),
                              static_cast<const float*>(ptr(branch)), static_cast<const float*>(ptr(r)),
                              static_cast<float*>(ptr(out)), B, T, C, threads);
  }, "out = x + gate * branch (* sigmoid(r)) (fused_cpu.h), raw addresses");
  bind_samplers(m);
}
