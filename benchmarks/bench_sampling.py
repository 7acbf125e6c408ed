"""Sampling throughput of the CPU backends: PyTorch eager, ONNX Runtime with the BiWKV custom op, and
ONNX Runtime on the portable graph (Bi-WKV in standard ops, quadratic in tokens).

    python benchmarks/bench_sampling.py                          # the committed pretrained/*.pt
    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py --ckpt runs/fm/ckpt.pt --threads 1

Table 1: images/s for DDIM sampling (default batch 16, 20 steps, no guidance) with the checkpoint.
Table 2: the same architecture at a larger image size (random weights, 1024 tokens by default),
ms per denoiser call at the same batch, where the portable graph's T^2 cost shows. Each row also
gives the max relative error of the output against PyTorch. ONNX exports are cached in --work-dir.
"""
import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from drwkv.model import build_model, read_checkpoint  # noqa: E402
from drwkv.runtime import load_denoiser  # noqa: E402
from drwkv.samplers import make_sampler, sample  # noqa: E402
from drwkv.schedule import Schedule  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402


def exported(ckpt, work_dir, portable):
    """The ONNX export of ckpt (reused when newer than the checkpoint)."""
    name = os.path.splitext(os.path.basename(ckpt))[0] + ("_portable" if portable else "") + ".onnx"
    path = os.path.join(work_dir, name)
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(ckpt):
        print(f"exporting {path} ...", file=sys.stderr)
        export_onnx(ckpt, path, portable=portable)
    return path


def denoisers(ckpt, work_dir, threads):
    yield "PyTorch eager", load_denoiser(ckpt=ckpt, threads=threads)
    yield "ORT + BiWKV custom op", load_denoiser(onnx=exported(ckpt, work_dir, False), intra_op_threads=threads)
    yield "ORT portable (standard ops)", load_denoiser(onnx=exported(ckpt, work_dir, True), intra_op_threads=threads)


def inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    size, C = int(config["image_size"]), int(config["in_channels"])
    return (rng.standard_normal((batch, C, size, size)).astype(np.float32),
            rng.uniform(0, 999, batch).astype(np.float32), rng.integers(0, int(config["num_classes"]), batch))


def sampling_table(ckpt, args):
    config = read_checkpoint(ckpt)["config"]
    sampler = make_sampler("ddim", Schedule.from_config(config), args.steps)
    labels = np.arange(args.batch_size) % int(config["num_classes"])
    tokens = (int(config["image_size"]) // int(config["model"].split("/")[-1])) ** 2
    rows, reference = [], None
    for name, denoiser in denoisers(ckpt, args.work_dir, args.threads):
        x, t, y = inputs(config, args.batch_size)
        out = denoiser(x, t, y)  # warm-up, and the accuracy check
        reference = out if reference is None else reference
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            sample(denoiser, sampler, labels, seed=0, cfg_scale=args.cfg_scale)
            best = min(best, time.perf_counter() - start)
        err = np.abs(out - reference).max() / np.abs(reference).max()
        rows.append(f"| {name} | {tokens} | {1000 * best / args.steps:.1f} | {args.batch_size / best:.2f} | {err:.1e} |")
    return (f"### {config['model']} {config['image_size']}px, batch {args.batch_size}, DDIM {args.steps} steps, "
            f"cfg {args.cfg_scale}\n\n| backend | tokens | ms/step | images/s | max rel err vs PyTorch |\n"
            f"|---|---:|---:|---:|---:|\n" + "\n".join(rows))


def call_table(ckpt, args):
    """ms per denoiser call at a large token count, on a random model of the checkpoint's architecture."""
    config = read_checkpoint(ckpt)["config"]
    patch = int(config["model"].split("/")[-1])
    side = round(args.big_tokens ** 0.5)
    config = dict(config, image_size=side * patch)
    path = os.path.join(args.work_dir, f"random_{side * patch}px.pt")
    if not os.path.exists(path):
        torch.manual_seed(0)
        model = build_model(config)
        with torch.no_grad():  # no zero-initialised (identity) blocks
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        state = model.state_dict()
        torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": state, "ema": state}, path)
    rows, reference = [], None
    for name, denoiser in denoisers(path, args.work_dir, args.threads):
        x, t, y = inputs(config, args.batch_size)
        out = denoiser(x, t, y)
        reference = out if reference is None else reference
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            denoiser(x, t, y)
            best = min(best, time.perf_counter() - start)
        err = np.abs(out - reference).max() / np.abs(reference).max()
        rows.append(f"| {name} | {side * side} | {1000 * best:.0f} | {err:.1e} |")
    return (f"### {config['model']} {side * patch}px (random weights), batch {args.batch_size}, one denoiser "
            f"call\n\n| backend | tokens | ms/call | max rel err vs PyTorch |\n|---|---:|---:|---:|\n" + "\n".join(rows))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", help="checkpoint (default: the one in pretrained/)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="guidance scale; != 1 doubles the batch of every call (default: 1.0)")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per row; the best is reported")
    parser.add_argument("--big-tokens", type=int, default=1024,
                        help="tokens of table 2, a square number (0: skip the table)")
    parser.add_argument("--threads", type=int, default=None, help="torch / ONNX Runtime intra-op threads")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "drwkv-bench"),
                        help="where ONNX exports are cached")
    args = parser.parse_args()
    ckpt = args.ckpt
    if ckpt is None:
        found = sorted(glob.glob(os.path.join(REPO, "pretrained", "*.pt")))
        if not found:
            parser.error("no checkpoint in pretrained/; pass --ckpt")
        ckpt = found[0]
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"torch {torch.__version__}, intra-op threads {args.threads or 'default'}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (the BiWKV kernel), {os.cpu_count()} CPUs\n")
    print(sampling_table(ckpt, args), flush=True)
    if args.big_tokens:
        print()
        print(call_table(ckpt, args))


if __name__ == "__main__":
    main()
