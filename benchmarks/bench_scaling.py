"""Forward latency and peak memory of DRWKV against DiT at equal depth and width, as tokens grow.

    python benchmarks/bench_scaling.py                 # CPU, T in {256, 1024, 4096, 16384}
    python benchmarks/bench_scaling.py --device cuda   # the same on a GPU (scripts/gpu_check.sh)

Batch 1, patch 2, 4 latent channels, inference (no grad). Both models share everything but the
token mixer: DRWKV's Bi-WKV block (linear in T) against DiT's attention block (quadratic in T,
through scaled_dot_product_attention). On the CPU each measurement runs in a fresh process so that
its peak resident memory is its own. Prints a markdown table and writes a PNG plot.

CPU processes of both models run with glibc malloc told to keep freed memory (MALLOC_ENV below, see
mallopt(3)), as a serving process would with this setting or with jemalloc/tcmalloc. By default glibc
hands blocks over its mmap threshold (at most 32 MB) and free heap tops over its trim threshold back
to the kernel, so a forward page-faults part of its large activations back in: about 2 us per
4 KiB page on the 2-core CI VM, from 0.1 to 1 s of a forward at 16384 tokens depending on how the
heap happens to be trimmed. ``--glibc-defaults`` measures with glibc's default policy instead.
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

from drwkv.model import DiT, DRWKV

# Never serve allocations by mmap (so frees never unmap) and never trim the heap: freed memory stays
# in the process for the next forward.
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**40)}


def build(family, tokens, depth, width, heads):
    side = math.isqrt(tokens)
    assert side * side == tokens, "tokens must be a square number"
    common = dict(image_size=2 * side, patch_size=2, in_channels=4, hidden_size=width, depth=depth,
                  num_classes=1000, learn_sigma=True)
    return DRWKV(**common) if family == "DRWKV" else DiT(num_heads=heads, **common)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure(family, tokens, depth, width, heads, device, repeat):
    """-> (median forward ms, peak memory MB beyond the weights and inputs)."""
    model = build(family, tokens, depth, width, heads).to(device).eval()
    side = math.isqrt(tokens)
    x = torch.randn(1, 4, 2 * side, 2 * side, device=device)
    t = torch.tensor([500.0], device=device)
    y = torch.tensor([1], device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.no_grad():
        base = torch.cuda.memory_allocated() / 2**20 if device == "cuda" else rss_mb()
        model(x, t, y)  # warm-up
        sync()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(x, t, y)
            sync()
            times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return 1e3 * statistics.median(times), peak - base


def measure_in_subprocess(args, family, tokens):
    cmd = [sys.executable, __file__, "--one", family, str(tokens), "--depth", str(args.depth), "--width",
           str(args.width), "--heads", str(args.heads), "--threads", str(args.threads), "--repeat",
           str(args.repeat)]
    env = dict(os.environ) if args.glibc_defaults else {**os.environ, **MALLOC_ENV}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return result["ms"], result["peak_mb"]


def plot(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for family, marker in (("DRWKV", "o"), ("DiT", "s")):
        pts = [(r["tokens"], r[f"{family}_ms"], r[f"{family}_mb"]) for r in rows]
        ax_t.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=family)
        ax_m.plot([p[0] for p in pts], [max(p[2], 1e-3) for p in pts], marker=marker, label=family)
    for ax, label in ((ax_t, "forward latency (ms)"), (ax_m, "peak extra memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("tokens")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096, 16384])
    parser.add_argument("--depth", type=int, default=13, help="blocks in both models (default 13, DRWKV-S)")
    parser.add_argument("--width", type=int, default=384, help="hidden size of both models (default 384, S)")
    parser.add_argument("--heads", type=int, default=6, help="DiT attention heads (default 6, DiT-S)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="timed forwards per point; the median is kept")
    parser.add_argument("--plot", default="docs/scaling_cpu.png", help="PNG plot to write ('' for none)")
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="CPU: run the measuring processes with glibc malloc's default policy, not MALLOC_ENV")
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "TOKENS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.one:  # child process: one measurement, printed as JSON
        ms, mb = measure(args.one[0], int(args.one[1]), args.depth, args.width, args.heads, "cpu", args.repeat)
        print(json.dumps({"ms": ms, "peak_mb": mb}))
        return

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    malloc = ""
    if args.device == "cpu":
        malloc = ", glibc malloc defaults" if args.glibc_defaults else ", " + " ".join(f"{k}={v}" for k, v in MALLOC_ENV.items())
    print(f"depth {args.depth}, width {args.width}, batch 1, patch 2, {device_name}{malloc}\n")
    print("| tokens | DRWKV ms | DiT ms | DiT / DRWKV | DRWKV growth | DiT growth | DRWKV peak MB | DiT peak MB |")
    print("|---|---|---|---|---|---|---|---|")
    rows = []
    for tokens in args.tokens:
        row = {"tokens": tokens}
        for family in ("DRWKV", "DiT"):
            if args.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                ms, mb = measure(family, tokens, args.depth, args.width, args.heads, "cuda", args.repeat)
            else:
                ms, mb = measure_in_subprocess(args, family, tokens)
            row[f"{family}_ms"], row[f"{family}_mb"] = ms, mb
        prev = rows[-1] if rows else None
        growth = {f: (f"{row[f + '_ms'] / prev[f + '_ms']:.2f}x" if prev else "") for f in ("DRWKV", "DiT")}
        rows.append(row)
        print(f"| {tokens} | {row['DRWKV_ms']:.1f} | {row['DiT_ms']:.1f} | {row['DiT_ms'] / row['DRWKV_ms']:.2f} | "
              f"{growth['DRWKV']} | {growth['DiT']} | {row['DRWKV_mb']:.0f} | {row['DiT_mb']:.0f} |", flush=True)
    if args.plot:
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        plot(rows, args.plot, f"DRWKV vs DiT, depth {args.depth}, width {args.width} ({device_name})")
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
