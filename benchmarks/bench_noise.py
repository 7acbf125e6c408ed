"""Cost of the sampling noise (drwkv.noise, numpy; drwkv._C.standard_normal, C++) per sampler step, next to
one denoiser call of the committed pretrained model (PyTorch backend, same batch, no guidance).

    python benchmarks/bench_noise.py
    python benchmarks/bench_noise.py --batch-size 16 --threads 1 --repeats 20

A stochastic sampler draws the noise of every image once per step (x_T once more at the start); the
table gives ms per step for the whole batch, for the pretrained model's shape and for latent shapes.
"""
import argparse
import glob
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.machine import cpu_name  # noqa: E402
from drwkv import _C  # noqa: E402
from drwkv.noise import standard_normal  # noqa: E402


def best_ms(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1000 * best



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="checkpoint for the denoiser row (default: the one in pretrained/)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per cell; the best is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for the denoiser")
    args = parser.parse_args()
    ckpt = args.ckpt or sorted(glob.glob(os.path.join(REPO, "pretrained", "*.pt")))[0]

    from drwkv.runtime import load_denoiser

    denoiser = load_denoiser(ckpt=ckpt, threads=args.threads)
    config = denoiser.config
    B = args.batch_size
    model_shape = (int(config["in_channels"]), int(config["image_size"]), int(config["image_size"]))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((B,) + model_shape).astype(np.float32)
    t = np.full(B, 500, np.float32)
    y = rng.integers(0, int(config["num_classes"]), B)
    call_ms = best_ms(lambda: denoiser(x, t, y), args.repeats)

    print(f"{cpu_name()}, {os.cpu_count()} CPUs, torch threads {args.threads or 'default'}, batch {B}\n")
    print("| image shape | numpy noise (ms/step) | C++ noise (ms/step) | denoiser call (ms) | numpy noise / call |")
    print("|---|---:|---:|---:|---:|")
    images = np.arange(B)
    for shape in (model_shape, (4, 32, 32), (4, 64, 64)):
        numpy_ms = best_ms(lambda: standard_normal(7, images, 1, shape), args.repeats)
        cpp_ms = best_ms(lambda: _C.standard_normal(7, list(range(B)), 1, list(shape)), args.repeats)
        if shape == model_shape:
            call = f"{call_ms:.1f} ({config['model']})"
            share = f"{100 * numpy_ms / call_ms:.1f}%"
        else:
            call, share = "", ""
        print(f"| {'x'.join(map(str, shape))} | {numpy_ms:.2f} | {cpp_ms:.2f} | {call} | {share} |")


if __name__ == "__main__":
    main()
