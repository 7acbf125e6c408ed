"""Bi-WKV CPU kernel against the O(T^2) formula and against this machine's memory bandwidth.

    python benchmarks/bench_bi_wkv.py [--threads 2] [--repeat 5]

For B=8, C=384 and T in {256, 1024, 4096} it prints the kernel time (y only: the inference path
used by ONNX Runtime, the engines and `bi_wkv` without gradients; and the PyTorch training op,
which also writes the log-sum-exp that its backward needs), the time of the quadratic reference
formula in float32, the kernel's achieved bandwidth counting k and v read once and y written
once, and the machine's copy bandwidth (a large tensor copy, bytes read plus bytes written). The
copy is measured again next to every kernel measurement, since on a shared machine the bandwidth
available drifts over a run.
"""
import argparse
import time

import torch

from drwkv import _C
import drwkv.ops  # noqa: F401  (registers torch.ops.drwkv.bi_wkv_forward)
from drwkv.ops import bi_wkv_reference


def best_time(fn, repeat):
    fn()  # warm up: page faults, thread pool
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(repeat):
    src = torch.randn(64 << 20)  # 256 MiB: far beyond the caches
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), repeat)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch and the kernel (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement; the best is kept")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=384)
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    B, C = args.batch, args.channels

    print(f"{args.threads} threads\n")
    print("| T | kernel, y only (ms) | PyTorch training op, y + lse (ms) | reference O(T^2) (ms) | speed-up | kernel GB/s | copy GB/s | % of copy |")
    print("|---|---|---|---|---|---|---|---|")
    for T in args.tokens:
        g = torch.Generator().manual_seed(T)
        w = torch.randn(C, generator=g) / T
        u = torch.randn(C, generator=g)
        k = torch.randn(B, T, C, generator=g)
        v = torch.randn(B, T, C, generator=g)
        y = torch.empty_like(k)

        def kernel():
            _C.bi_wkv_forward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), 0, 0,
                              B, T, C, _C.DTYPE_FLOAT32, -1, 0)

        copy_gbs = copy_bandwidth(args.repeat)
        kernel_s = best_time(kernel, args.repeat)
        op_s = best_time(lambda: torch.ops.drwkv.bi_wkv_forward(w, u, k, v), args.repeat)
        # The reference costs the same for every (batch row, target position): past a million of
        # them it is timed on one batch row and the first rows of targets, then scaled.
        ref_batch, ref_targets = (B, T) if B * T <= 1 << 13 else (1, min(T, 512))
        ref_s = best_time(lambda: bi_wkv_reference(w, u, k[:ref_batch], v[:ref_batch], targets=range(ref_targets)), 1)
        ref_s *= (B * T) / (ref_batch * ref_targets)
        gbs = 12 * B * T * C / kernel_s / 1e9
        note = "" if ref_batch == B else f" (scaled from B=1, {ref_targets} targets)"
        print(f"| {T} | {kernel_s * 1e3:.1f} | {op_s * 1e3:.1f} | {ref_s * 1e3:.0f}{note} | "
              f"{ref_s / kernel_s:.0f}x | {gbs:.2f} | {copy_gbs:.2f} | {100 * gbs / copy_gbs:.0f}% |")


if __name__ == "__main__":
    main()
