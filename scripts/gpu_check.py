"""CUDA Bi-WKV against the CPU kernel and the float64 formula, then its bandwidth. Run through gpu_check.sh."""
import sys

import torch

from drwkv import _C
from drwkv.ops import bi_wkv, bi_wkv_reference

FAILURES = []


def check(name, err, tol):
    ok = err < tol and err == err  # NaN fails
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {err:.2e} (tolerance {tol:.0e})")
    if not ok:
        FAILURES.append(name)


def inputs(B, T, C, dtype, seed, w_scale):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, generator=g) * w_scale
    u = torch.randn(C, generator=g)
    k = (torch.randn(B, T, C, generator=g) * 3).to(dtype)
    v = torch.randn(B, T, C, generator=g).to(dtype)
    gy = torch.randn(B, T, C, generator=g).to(dtype)
    return w, u, k, v, gy


def run(w, u, k, v, gy, device):
    xs = [x.to(device).requires_grad_() for x in (w, u, k, v)]
    y = bi_wkv(*xs)
    y.backward(gy.to(device))
    return [y.detach().cpu().double()] + [x.grad.cpu().double() for x in xs]


def correctness():
    shapes = [(1, 1, 1), (2, 1, 5), (3, 17, 33), (2, 64, 384), (1, 255, 7), (4, 1000, 24), (1, 5000, 3),
              (1, 20000, 40), (8, 256, 1024)]
    for B, T, C in shapes:
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
            w_scale = 1.0 if T < 300 else 1.0 / T
            w, u, k, v, gy = inputs(B, T, C, dtype, seed=T * 7 + C, w_scale=w_scale)
            gpu = run(w, u, k, v, gy, "cuda")
            cpu = run(w, u, k, v, gy, "cpu")
            label = f"B={B} T={T} C={C} {str(dtype)[6:]}"
            for name, a, b in zip(["y", "gw", "gu", "gk", "gv"], gpu, cpu):
                scale = b.abs().max().item() or 1.0
                check(f"{label} {name} vs CPU kernel", (a - b).abs().max().item() / scale, tol * 10)
            if B * T * T * C <= 2e8 and dtype == torch.float32:
                ref = bi_wkv_reference(*(x.double() for x in (w, u, k, v)))
                scale = bi_wkv_reference(*(x.double() for x in (w, u, k, v.abs())))
                check(f"{label} y vs float64 formula", ((gpu[0] - ref).abs() / scale).max().item(), tol)


def bandwidth():
    B, T, C = 8, 4096, 1024
    src = torch.empty(B * T * C * 4, dtype=torch.float32, device="cuda")
    dst = torch.empty_like(src)

    def timed(fn, repeat=20):
        fn()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(repeat):
            fn()
        stop.record()
        torch.cuda.synchronize()
        return start.elapsed_time(stop) / repeat / 1e3

    copy_gbs = 2 * src.numel() * 4 / timed(lambda: dst.copy_(src)) / 1e9
    print(f"\n{torch.cuda.get_device_name()}: copy bandwidth {copy_gbs:.0f} GB/s (read + write)\n")
    print("| B, T, C | dtype | forward (ms) | forward GB/s | % of copy | forward+backward (ms) |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float32, torch.float16):
        w, u, k, v, gy = (x.cuda() for x in inputs(B, T, C, dtype, seed=0, w_scale=1.0 / T))
        y = torch.empty_like(k)
        workspace = torch.empty(_C.bi_wkv_workspace_size(B, T, C, True), dtype=torch.uint8, device="cuda")
        stream = torch.cuda.current_stream().cuda_stream
        code = _C.DTYPE_FLOAT32 if dtype == torch.float32 else _C.DTYPE_FLOAT16

        def forward():  # y only, as the TensorRT plugin runs it (the PyTorch op also writes lse)
            _C.bi_wkv_forward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), 0,
                              workspace.data_ptr(), B, T, C, code, 0, stream)

        fwd = timed(forward)
        xs = [x.requires_grad_() for x in (w, u, k, v)]
        both = timed(lambda: bi_wkv(*xs).backward(gy), repeat=5)
        gbs = 3 * B * T * C * k.element_size() / fwd / 1e9
        print(f"| {B}, {T}, {C} | {str(dtype)[6:]} | {fwd * 1e3:.3f} | {gbs:.0f} | {100 * gbs / copy_gbs:.0f}% | "
              f"{both * 1e3:.2f} |")


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no CUDA device"
    correctness()
    bandwidth()
    if FAILURES:
        print(f"\n{len(FAILURES)} checks failed")
        sys.exit(1)
    print("\nall checks passed")
