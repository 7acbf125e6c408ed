"""The portable graph (python -m export.to_onnx --portable) against drwkv's native CPU path: ms per
denoiser call and peak memory, each backend in a Python process of its own.

    OMP_NUM_THREADS=2 python benchmarks/bench_portable.py --threads 2             # DRWKV-S/2, 4096 tokens, batch 1
    OMP_NUM_THREADS=2 python benchmarks/bench_portable.py --threads 2 --model DRWKV-T/2 --tokens 1024 16384

The target it measures: at 4096 tokens, DRWKV-S/2 at batch 1 on the portable graph in ONNX Runtime
peaks under 1.5 GiB and takes at most 2x the native CPU path.

Backends (a random model of --model at each --tokens, in --in-channels, its weights N(0, 0.02)
perturbed so that no block is the identity; exports cached in --work-dir):

  PyTorch eager    load_denoiser(ckpt=...): the reference of the error column
  ORT native       load_denoiser(onnx=...) on the default export: drwkv's CPU path (graph cut at the
                   BiWKV nodes, which the native kernels run; element-wise patterns fused)
  ORT portable     the --portable export in one plain onnxruntime.InferenceSession, no custom op
  OpenVINO f32     the --portable export compiled by OpenVINO for the CPU, inference precision f32
  OpenVINO bf16    the same in bf16, where the CPU computes bf16 natively (AVX512-BF16 or AMX; the
                   row says when it does not)

Each backend's process loads its model, makes one warm-up call and then --repeats timed calls; the
best is reported, with the process's peak resident memory (VmHWM: Python, the runtime, the
weights and the call's buffers; the ONNX Runtime and OpenVINO processes never import torch) and the
max relative error against PyTorch eager (max |out - out_torch| / max |out_torch|). Backends run one
after the other, not interleaved, so compare rows of one run. OpenVINO rows are left out when it is
not installed. The script exits with status 1 if an f32 backend's error exceeds 1e-4 or is NaN.
"""
import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from benchmarks.machine import cpu_name, exit_code  # noqa: E402
from benchmarks.models import write_random_checkpoint  # noqa: E402

TOLERANCE = 1e-4
BACKENDS = ("PyTorch eager", "ORT native", "ORT portable", "OpenVINO f32", "OpenVINO bf16")


def checkpoint(model, tokens, in_channels, work_dir):
    """A random checkpoint of ``model`` at ``tokens`` tokens (cached) -> (path, config)."""
    from drwkv.model import MODEL_CONFIGS

    config = {"model": model, "image_size": math.isqrt(tokens) * MODEL_CONFIGS[model]["patch_size"],
              "in_channels": in_channels, "num_classes": 10, "learn_sigma": True, "dataset": "random",
              "class_names": [str(i) for i in range(10)],
              "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}}
    key = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    path = os.path.join(work_dir, f"random_{model.replace('/', '-')}_{tokens}_{key}.pt")
    if not os.path.exists(path):
        write_random_checkpoint(config, path)
    return path, config


def exported(ckpt, portable):
    from export.to_onnx import export_onnx

    path = ckpt[:-3] + ("_portable" if portable else "") + ".onnx"
    if not os.path.exists(path):
        print(f"exporting {path} ...", file=sys.stderr, flush=True)
        export_onnx(ckpt, path, portable=portable)
    return path


# --- one backend, in its own process ----------------------------------------------------------------

def worker(backend, model_path, inputs_dir, out_path, repeats, threads):
    """Load, warm up, time; save the output; -> {"ms": best, "peak_mib": ru_maxrss}."""
    x, t, y = (np.load(os.path.join(inputs_dir, f"{n}.npy")) for n in ("x", "t", "y"))
    if backend == "PyTorch eager":
        from drwkv.runtime import load_denoiser
        call = load_denoiser(ckpt=model_path, threads=threads)
    elif backend == "ORT native":
        from drwkv.runtime import load_denoiser
        call = load_denoiser(onnx=model_path, intra_op_threads=threads)
    elif backend == "ORT portable":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])

        def call(x, t, y):
            return session.run(["out"], {"x": x, "t": t, "y": y})[0]
    else:
        import openvino

        precision = "bf16" if backend.endswith("bf16") else "f32"
        compiled = openvino.Core().compile_model(model_path, "CPU", {"INFERENCE_PRECISION_HINT": precision,
                                                                     "INFERENCE_NUM_THREADS": threads})
        request = compiled.create_infer_request()

        def call(x, t, y):
            return request.infer({"x": x, "t": t, "y": y})[compiled.output("out")].copy()
    out = call(x, t, y)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        call(x, t, y)
        best = min(best, time.perf_counter() - start)
    np.save(out_path, np.asarray(out, np.float32))
    return {"ms": 1e3 * best, "peak_mib": peak_rss_mib()}


def peak_rss_mib():
    """This process's peak resident memory: VmHWM (ru_maxrss would count the parent's peak, which
    a child inherits on Linux across fork and exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def run_backend(backend, model_path, work_dir, args):
    out = os.path.join(work_dir, "out_" + backend.replace(" ", "_") + ".npy")
    command = [sys.executable, os.path.abspath(__file__), "--worker", backend, "--model-path", model_path,
               "--work-dir", work_dir, "--repeats", str(args.repeats), "--threads", str(args.threads), "--out", out]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{backend} failed: {result.stderr.strip()[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1]), np.load(out)


def table(args, failures):
    try:
        import openvino  # noqa: F401
        have_openvino = True
    except ImportError:
        have_openvino = False
    rows = []
    for tokens in args.tokens:
        ckpt, config = checkpoint(args.model, tokens, args.in_channels, args.work_dir)
        paths = {"PyTorch eager": ckpt, "ORT native": exported(ckpt, False)}
        paths.update(dict.fromkeys(BACKENDS[2:], exported(ckpt, True)))
        inputs_dir = os.path.join(args.work_dir, f"inputs_{tokens}_{args.batch}")
        os.makedirs(inputs_dir, exist_ok=True)
        rng = np.random.default_rng(0)
        size, B = int(config["image_size"]), args.batch
        np.save(os.path.join(inputs_dir, "x.npy"), rng.standard_normal((B, args.in_channels, size, size), np.float32))
        np.save(os.path.join(inputs_dir, "t.npy"), rng.uniform(0, 999, B).astype(np.float32))
        np.save(os.path.join(inputs_dir, "y.npy"), rng.integers(0, 10, B))
        results = {}
        for backend in BACKENDS:
            if backend.startswith("OpenVINO") and not have_openvino:
                continue
            if backend == "OpenVINO bf16":
                from drwkv.runtime.openvino import bf16_support  # what precision="bf16" asks of the CPU

                if bf16_support():
                    rows.append(f"| {tokens} | {B} | {backend} | not run: {bf16_support()} | | | |")
                    continue
            results[backend] = run_backend(backend, paths[backend], inputs_dir, args)
            print(f"  {tokens} tokens: {backend} done", file=sys.stderr, flush=True)
        reference = results["PyTorch eager"][1]
        native_ms = results["ORT native"][0]["ms"]
        for backend, (stats, out) in results.items():
            err = float(np.abs(out.astype(np.float64) - reference).max() / np.abs(reference).max())
            if not backend.endswith("bf16") and not err <= TOLERANCE:
                failures.append(f"{tokens} tokens, {backend}: {err:.2e}")
            rows.append(f"| {tokens} | {B} | {backend} | {stats['ms']:.1f} | {stats['ms'] / native_ms:.2f}x | "
                        f"{stats['peak_mib']:.0f} | {err:.1e} |")
    return (f"### {args.model}, batch {args.batch}, {args.threads} threads, best of {args.repeats} calls per backend\n\n"
            "| tokens | batch | backend | ms/call | vs ORT native | peak RSS MiB | max rel err vs PyTorch |\n"
            "|---:|---:|---|---:|---:|---:|---:|\n" + "\n".join(rows))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="DRWKV-S/2", help="architecture (default DRWKV-S/2)")
    parser.add_argument("--tokens", type=int, nargs="+", default=[4096], help="square token counts (default 4096)")
    parser.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    parser.add_argument("--in-channels", type=int, default=4, help="image channels (default 4, a latent model's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per backend; the best is reported")
    parser.add_argument("--threads", type=int, default=2, help="threads of every backend (set OMP_NUM_THREADS too)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "drwkv-bench-portable"),
                        help="where the random checkpoints and exports are cached")
    parser.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--model-path", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.model_path, args.work_dir, args.out, args.repeats, args.threads)))
        return 0
    for tokens in args.tokens:
        if tokens < 1 or math.isqrt(tokens) ** 2 != tokens:
            parser.error(f"token counts must be square numbers, got {tokens}")
    os.makedirs(args.work_dir, exist_ok=True)
    import onnxruntime

    print(f"{cpu_name()}, {os.cpu_count()} CPUs; onnxruntime {onnxruntime.__version__}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}\n", flush=True)
    failures = []
    print(table(args, failures), flush=True)
    return exit_code(failures, TOLERANCE)


if __name__ == "__main__":
    from drwkv import known_warnings

    known_warnings.silence()
    sys.exit(main())
