"""The Bi-WKV operator for PyTorch: ``bi_wkv(w, u, k, v)``.

A registered custom op (``drwkv::bi_wkv``) with CPU and CUDA kernels from ``drwkv._C``,
autograd, and a fake implementation so that ``torch.export`` and ``torch.compile`` can trace
models that use it. The maths lives in ``cpp/include/drwkv/bi_wkv_math.h``; this file only checks
inputs and hands raw pointers to the native code.
"""
import torch

from drwkv import _C
from drwkv.ops.reference import bi_wkv_reference

__all__ = ["bi_wkv", "bi_wkv_reference", "check_inputs", "MAX_TOKENS"]

MAX_TOKENS = 1 << 24

_DTYPE_CODES = {torch.float32: _C.DTYPE_FLOAT32, torch.float16: _C.DTYPE_FLOAT16, torch.float64: _C.DTYPE_FLOAT64}


def check_inputs(w, u, k, v):
    """Raise ValueError/TypeError naming the problem when the inputs break the operator's contract."""
    for name, x in (("w", w), ("u", u), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"bi_wkv: {name} must be a torch.Tensor, got {type(x).__name__}")
    if k.dim() != 3:
        raise ValueError(f"bi_wkv: k must have rank 3 [B, T, C], got shape {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"bi_wkv: v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    B, T, C = k.shape
    if T < 1 or C < 1:
        raise ValueError(f"bi_wkv: T and C must be at least 1, got shape {tuple(k.shape)}")
    if T > MAX_TOKENS:
        raise ValueError(f"bi_wkv: T = {T} is over {MAX_TOKENS} (token positions are exact float32 integers)")
    if k.dtype not in _DTYPE_CODES:
        raise TypeError(f"bi_wkv: k must be float32, float16 or float64, got {k.dtype}")
    param_dtype = torch.float64 if k.dtype == torch.float64 else torch.float32
    for name, x in (("w", w), ("u", u)):
        if x.dim() != 1 or x.shape[0] != C:
            raise ValueError(f"bi_wkv: {name} must have shape [C] = [{C}], got {tuple(x.shape)}")
        if x.dtype != param_dtype:
            raise TypeError(f"bi_wkv: {name} must be {param_dtype} when k is {k.dtype}, got {x.dtype}")
    if v.dtype != k.dtype:
        raise TypeError(f"bi_wkv: v must have the dtype of k ({k.dtype}), got {v.dtype}")
    devices = {x.device for x in (w, u, k, v)}
    if len(devices) != 1:
        raise ValueError(f"bi_wkv: all inputs must be on one device, got {sorted(map(str, devices))}")
    device = k.device
    if device.type not in ("cpu", "cuda", "meta"):  # meta: shapes only, through the fake kernel
        raise ValueError(f"bi_wkv: unsupported device {device}")
    if device.type == "cuda" and k.dtype == torch.float64:
        raise TypeError("bi_wkv: float64 runs on the CPU only (the CUDA kernels take float32 and float16)")
    if device.type == "cuda" and not _C.WITH_CUDA:
        raise RuntimeError("bi_wkv: drwkv._C was built without CUDA; rebuild with nvcc on PATH")


def _device_args(x):
    if x.device.type == "cuda":
        return x.device.index, torch.cuda.current_stream(x.device).cuda_stream
    return -1, 0


def _run_forward(w, u, k, v, with_lse):
    w, u, k, v = (x.contiguous() for x in (w, u, k, v))
    B, T, C = k.shape
    y = torch.empty_like(k)
    lse = torch.empty(k.shape, dtype=w.dtype, device=k.device) if with_lse else None
    device, stream = _device_args(k)
    workspace = torch.empty(_C.bi_wkv_workspace_size(B, T, C, device >= 0), dtype=torch.uint8, device=k.device)
    _C.bi_wkv_forward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(),
                      lse.data_ptr() if with_lse else 0, workspace.data_ptr(), B, T, C, _DTYPE_CODES[k.dtype],
                      device, stream)
    return y, lse


# Training: y and the log-sum-exp of each softmax, which the backward reads.
@torch.library.custom_op("drwkv::bi_wkv_forward", mutates_args=())
def _forward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _run_forward(w, u, k, v, with_lse=True)


@_forward.register_fake
def _(w, u, k, v):
    return torch.empty_like(k), torch.empty(k.shape, dtype=w.dtype, device=k.device)


# Inference: y alone, with neither the log-sum-exp's memory nor its time.
@torch.library.custom_op("drwkv::bi_wkv_inference", mutates_args=())
def _inference(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _run_forward(w, u, k, v, with_lse=False)[0]


@_inference.register_fake
def _(w, u, k, v):
    return torch.empty_like(k)


@torch.library.custom_op("drwkv::bi_wkv_backward", mutates_args=())
def _backward(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor, y: torch.Tensor,
              lse: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    w, u, k, v, y, lse = (x.contiguous() for x in (w, u, k, v, y, lse))
    gy = gy.to(k.dtype).contiguous()
    B, T, C = k.shape
    gw, gu = torch.empty_like(w), torch.empty_like(u)
    gk, gv = torch.empty_like(k), torch.empty_like(v)
    device, stream = _device_args(k)
    workspace = torch.empty(_C.bi_wkv_backward_workspace_size(B, T, C, device >= 0), dtype=torch.uint8,
                            device=k.device)
    _C.bi_wkv_backward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), lse.data_ptr(),
                       gy.data_ptr(), gw.data_ptr(), gu.data_ptr(), gk.data_ptr(), gv.data_ptr(),
                       workspace.data_ptr(), B, T, C, _DTYPE_CODES[k.dtype], device, stream)
    return gw, gu, gk, gv


@_backward.register_fake
def _(w, u, k, v, y, lse, gy):
    return torch.empty_like(w), torch.empty_like(u), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    w, u, k, v = inputs
    y, lse = output
    ctx.save_for_backward(w, u, k, v, y, lse)


def _grad(ctx, gy, _glse):
    w, u, k, v, y, lse = ctx.saved_tensors
    return _backward(w, u, k, v, y, lse, gy)


_forward.register_autograd(_grad, setup_context=_setup_context)


def bi_wkv(w: torch.Tensor, u: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional WKV: y[b,t,c] = softmax_i(l(t,i)) @ v[b,i,c], linear in T.

    w, u: float32 [C]; k, v: float32 or float16 [B, T, C] on one device; returns y like k.
    float64 (w, u, k, v all float64) runs on the CPU, for gradcheck and exact comparisons.
    """
    check_inputs(w, u, k, v)
    if torch.is_grad_enabled() and any(x.requires_grad for x in (w, u, k, v)):
        return _forward(w, u, k, v)[0]
    return _inference(w, u, k, v)
