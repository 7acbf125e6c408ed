"""CPU precisions against PyTorch: ms per denoiser call of each backend, and the images' fidelity.

    OMP_NUM_THREADS=2 python benchmarks/bench_precision.py --threads 2
    python benchmarks/bench_precision.py --fidelity          # the pretrained Fashion-MNIST model

Speed (default): for each --models at each --tokens (square numbers; image size sqrt(tokens) * 2
with patch 2, 3 channels, random weights: the model's init perturbed by 0.02 N(0, 1)) and each
--batch-sizes, ms per denoiser call of:

  PyTorch eager fp32       load_denoiser(ckpt=...): the checkpoint's model under inference_mode.
  torch.compile bf16       the same model through torch.compile (default mode, inductor), called
                           under torch.autocast("cpu", dtype=torch.bfloat16); its first call per
                           batch size (the compilation) is the warm-up, not timed.
  ORT fp32                 load_denoiser(onnx=...): drwkv's ONNX Runtime CPU path (the default).
  ORT int8                 load_denoiser(onnx=..., precision="int8"): the same path with its
                           MatMuls as DynamicQuantizeMatMul (drwkv.runtime.ort_quant).
  OpenVINO bf16            load_denoiser(onnx=..., precision="bf16"): OpenVINO with the matrix
                           products in bf16 (drwkv.runtime.openvino; the BiWKV nodes replaced by
                           the portable Bi-WKV's standard ops when it loads).

Each backend is called as drwkv.Pipeline calls it (numpy in, numpy out) and runs in a process of
its own, loaded once; the parent asks each in turn for one call per round (--repeats rounds, after
one warm-up call each per batch size) and reports each one's best. Interleaving exposes every
backend to the same drift of a shared machine. Columns: ms per call, the speed-up over PyTorch
eager fp32 and over torch.compile bf16, and the max relative error of the output against PyTorch
eager fp32 (max |out - ref| / max |ref|, same inputs); the script exits with status 1 if ORT fp32's
exceeds 1e-5. Checkpoints and exports are cached in --work-dir.

--profile BACKEND (ORT int8 or torch.compile bf16): where one call of that backend spends its time,
in this process, at the first --models, --tokens and --batch-sizes, after two warm-up calls: ORT
int8 as drwkv.runtime.ort_split.SplitSession (what load_denoiser builds) with profiling on, ms per
op type (the native nodes as "native ..."); torch.compile bf16 under torch.profiler, self CPU ms
per op. Profiling slows a call a little. Run it once per backend (each in its own process).

--products: the machine's limit for the matrix products, kernels timed alone: the products of one
block ([M, C] x [C, C] five times, [M, C] x [C, 4C], [M, 4C] x [4C, C]; M = tokens x batch, C the
model's width) in each precision's library, each in a process of its own, best of --repeats after a
warm-up: torch fp32 and torch bf16 (oneDNN; bf16 operands made beforehand, as the compiled model's
fused element-wise code hands them over), ONNX Runtime's fp32 MatMul and its int8
DynamicQuantizeMatMul as precision="int8" rewrites it (activation quantization included).

--fidelity: the committed pretrained/fashion-mnist-drwkv-t4.pt exported to ONNX in a temporary
folder, then drwkv.Pipeline at each precision, DDIM --steps (25), seed 0,
--num-images (64): the PSNR of each precision's uint8 images against fp32's.
"""
import argparse
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

EAGER, COMPILED, ORT, INT8, OPENVINO = "PyTorch eager fp32", "torch.compile bf16", "ORT fp32", "ORT int8", \
    "OpenVINO bf16"
BACKENDS = (EAGER, COMPILED, ORT, INT8, OPENVINO)
TOLERANCE = 1e-5  # ORT fp32 against PyTorch eager fp32 (the script exits with status 1 beyond it)
PRETRAINED = os.path.join(REPO, "pretrained", "fashion-mnist-drwkv-t4.pt")


def psnr(images, reference):
    mse = np.mean((images.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return 10 * math.log10(255.0 ** 2 / mse) if mse else math.inf


def relative_error(out, reference):
    return float(np.abs(out.astype(np.float64) - reference).max() / np.abs(reference).max())


def inputs(batch, size, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, size, size)).astype(np.float32),
            rng.uniform(0, 999, batch).astype(np.float32), rng.integers(0, 10, batch))


# --- the models --------------------------------------------------------------------------------------

def prepare(model, tokens, work_dir):
    """A random checkpoint of ``model`` at ``tokens`` tokens and its export -> (ckpt, onnx).
    torch is imported only to make them: once it has loaded OpenMP, drwkv's native kernels can no
    longer have it wait passively (drwkv.runtime.ort_split), which --profile ORT int8 would measure."""
    size = math.isqrt(tokens) * 2
    os.makedirs(work_dir, exist_ok=True)
    base = os.path.join(work_dir, f"{model.replace('/', '-')}_{size}px")
    if not os.path.exists(base + ".pt"):
        write_random_checkpoint({"model": model, "image_size": size, "in_channels": 3, "num_classes": 10,
                                 "learn_sigma": False}, base + ".pt")
    if not os.path.exists(base + ".onnx"):
        from export.to_onnx import export_onnx

        print(f"exporting {base}.onnx ...", file=sys.stderr, flush=True)
        export_onnx(base + ".pt", base + ".onnx")
    return base + ".pt", base + ".onnx"


def load(backend, ckpt, onnx_path, threads):
    """The backend's denoiser call: numpy (x, t, y) -> numpy."""
    from drwkv.runtime import load_denoiser

    if backend == ORT:
        return load_denoiser(onnx=onnx_path, intra_op_threads=threads)
    if backend == INT8:
        return load_denoiser(onnx=onnx_path, precision="int8", intra_op_threads=threads)
    if backend == OPENVINO:
        return load_denoiser(onnx=onnx_path, precision="bf16", intra_op_threads=threads)
    denoiser = load_denoiser(ckpt=ckpt, threads=threads)
    if backend == EAGER:
        return denoiser
    import torch

    denoiser.model = torch.compile(denoiser.model)

    def call(x, t, y):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return denoiser(x, t, y)
    return call


# --- one backend, in its own process: reads {"batch": B, "save": path or null} lines, answers ms ---------

def worker(backend, ckpt, onnx_path, threads, size):
    # Answers go through a copy of stdout; anything the libraries print goes to stderr.
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    call = load(backend, ckpt, onnx_path, threads)
    print(json.dumps({"ready": True}), file=channel, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        x, t, y = inputs(request["batch"], size)
        start = time.perf_counter()
        out = call(x, t, y)
        ms = 1e3 * (time.perf_counter() - start)
        if request.get("save"):
            np.save(request["save"], out)
        print(json.dumps({"ms": ms}), file=channel, flush=True)


class Worker:
    def __init__(self, backend, paths, threads, size):
        argv = [sys.executable, os.path.abspath(__file__), "--worker", backend, *paths, "--threads", str(threads),
                "--size", str(size)]
        self.backend = backend
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._read()

    def _read(self):
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.backend}: the worker process ended (exit code {self.process.wait()})")
        return json.loads(line)

    def call(self, batch, save=None):
        self.process.stdin.write(json.dumps({"batch": batch, "save": save}) + "\n")
        self.process.stdin.flush()
        return self._read()["ms"]

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def speed(args):
    print(f"# Precision benchmark: {cpu_name()}, {args.threads} threads (OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}), {args.repeats} interleaved rounds, best of each")
    print("\n| model | tokens | batch | backend | ms/call | vs eager fp32 | vs compile bf16 | max rel err vs fp32 |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    failures = []  # ORT fp32 must stay exact
    for model in args.models:
        for tokens in args.tokens:
            paths = prepare(model, tokens, args.work_dir)
            size = math.isqrt(tokens) * 2
            workers = [Worker(b, paths, args.threads, size) for b in args.backends]
            try:
                for batch in args.batch_sizes:
                    outs = {w.backend: os.path.join(args.work_dir, f"out_{i}.npy") for i, w in enumerate(workers)}
                    for w in workers:  # warm-up (torch.compile compiles here), saving the output
                        w.call(batch, outs[w.backend])
                    best = {w.backend: math.inf for w in workers}
                    for _ in range(args.repeats):
                        for w in workers:
                            best[w.backend] = min(best[w.backend], w.call(batch))
                    reference = np.load(outs[EAGER]).astype(np.float64) if EAGER in outs else None
                    for w in workers:
                        ms = best[w.backend]
                        ratio = lambda b: f"{best[b] / ms:.2f}x" if b in best else "-"  # noqa: E731
                        err = relative_error(np.load(outs[w.backend]), reference) if reference is not None else math.nan
                        print(f"| {model} | {tokens} | {batch} | {w.backend} | {ms:.0f} | {ratio(EAGER)} | "
                              f"{ratio(COMPILED)} | {err:.1e} |", flush=True)
                        if w.backend == ORT and not err <= TOLERANCE:
                            failures.append(f"{model}, {tokens} tokens, batch {batch}, {ORT}: {err:.2e}")
            finally:
                for w in workers:
                    w.close()
    return exit_code(failures, TOLERANCE)


def profile(args):
    """The op table of one call of args.profile (see the module doc)."""
    model, tokens, batch = args.models[0], args.tokens[0], args.batch_sizes[0]
    ckpt, onnx_path = prepare(model, tokens, args.work_dir)
    x, t, y = inputs(batch, math.isqrt(tokens) * 2)
    if args.profile == INT8:
        import onnx

        from drwkv.runtime.ort_split import SplitSession

        session = SplitSession(onnx.load(onnx_path), intra_op_threads=args.threads, int8=True, profile=True)

        def call():
            session.run(["out"], {"x": x, "t": t, "y": y})
    else:
        import torch

        compiled = load(COMPILED, ckpt, onnx_path, args.threads)

        def call():
            compiled(x, t, y)
    call()
    call()
    if args.profile == INT8:
        start = time.perf_counter()
        call()
        wall_ms = 1e3 * (time.perf_counter() - start)
        times = session.op_times()
    else:
        with torch.profiler.profile() as prof:
            start = time.perf_counter()
            call()
            wall_ms = 1e3 * (time.perf_counter() - start)
        times = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    ranked = sorted(times.items(), key=lambda item: -item[1])
    print(f"# {args.profile}: {model}, {tokens} tokens, batch {batch}, {args.threads} threads, {cpu_name()}: "
          f"{wall_ms:.0f} ms in the profiled call\n\n| op | ms | % of call |\n|---|---:|---:|")
    for op, ms in ranked[:12]:
        print(f"| {op} | {ms:.1f} | {100 * ms / wall_ms:.1f}% |")
    rest = sum(ms for _, ms in ranked[12:])
    print(f"| the other {len(ranked[12:])} ops | {rest:.1f} | {100 * rest / wall_ms:.1f}% |")
    outside = wall_ms - sum(times.values())
    print(f"| outside the ops | {outside:.1f} | {100 * outside / wall_ms:.1f}% |")
    return 0


def fidelity(args):
    """PSNR of each precision's images against fp32's, on the pretrained Fashion-MNIST model."""
    from drwkv import Pipeline
    from export.to_onnx import export_onnx

    print(f"# Fidelity: {os.path.basename(PRETRAINED)}, DDIM {args.steps} steps, {args.num_images} images, seed 0, "
          f"{cpu_name()}\n\n| precision | backend | PSNR vs fp32 (dB) | max abs pixel diff |\n|---|---|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        onnx_path = os.path.join(folder, "model.onnx")
        export_onnx(PRETRAINED, onnx_path)
        run = {"num_images": args.num_images, "steps": args.steps, "seed": 0, "sampler": "ddim"}
        reference = Pipeline.load(onnx_path, intra_op_threads=args.threads)(**run)
        for precision in ("int8", "bf16"):
            pipe = Pipeline.load(onnx_path, precision=precision, intra_op_threads=args.threads)
            images = pipe(**run)
            diff = int(np.abs(images.astype(np.int16) - reference).max())
            print(f"| {precision} | {pipe.denoiser.name} | {psnr(images, reference):.1f} | {diff} |", flush=True)
    return 0


PRODUCT_BACKENDS = ("torch fp32", "torch bf16", "ORT fp32 MatMul", "ORT int8 DynamicQuantizeMatMul")


def block_products(width):
    """(K, N, how many per block) of the matrix products of one DRWKV block of ``width`` channels."""
    return ((width, width, 5), (width, 4 * width, 1), (4 * width, width, 1))


def product_worker(backend, rows, width, threads, repeats):
    """ms of one block's products in ``backend``, best of ``repeats`` after a warm-up; printed as JSON."""
    rng = np.random.default_rng(0)
    calls = []
    for K, N, count in block_products(width):
        a = rng.standard_normal((rows, K)).astype(np.float32)
        w = (rng.standard_normal((K, N)) / math.sqrt(K)).astype(np.float32)
        if backend.startswith("torch"):
            import torch

            torch.set_num_threads(threads)
            dtype = torch.bfloat16 if backend == "torch bf16" else torch.float32
            a_t, w_t = torch.from_numpy(a).to(dtype), torch.from_numpy(w).to(dtype)
            calls.append((lambda a_t=a_t, w_t=w_t: torch.matmul(a_t, w_t), count))
            continue
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        from drwkv.runtime.ort_env import session_options
        from drwkv.runtime.ort_quant import CONTRIB_DOMAIN, quantize_weight

        if "int8" in backend:  # the node and weights precision="int8" makes of such a product
            q, scale = quantize_weight(w)
            product = helper.make_node("DynamicQuantizeMatMul", ["a", "q", "scale"], ["out"], domain=CONTRIB_DOMAIN)
            weights = [numpy_helper.from_array(q, "q"), numpy_helper.from_array(scale, "scale")]
        else:
            product, weights = helper.make_node("MatMul", ["a", "w"], ["out"]), [numpy_helper.from_array(w, "w")]
        graph = helper.make_graph([product], "product",
                                  [helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows, K])],
                                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [rows, N])], weights)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid(CONTRIB_DOMAIN, 1)])
        session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                       providers=["CPUExecutionProvider"])
        calls.append((lambda session=session, a=a: session.run(["out"], {"a": a}), count))
    total = 0.0
    for call, count in calls:
        call()
        best = math.inf
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - start)
        total += count * best
    print(json.dumps({"ms": 1e3 * total}), flush=True)


def products(args):
    """The products table (see the module doc)."""
    from drwkv.model import MODEL_CONFIGS

    print(f"# Matrix products of one block, kernels timed alone: {cpu_name()}, {args.threads} threads, best of "
          f"{args.repeats}\n\n| width | M (tokens x batch) | library | ms per block | GMAC/s | vs torch fp32 |\n"
          f"|---:|---:|---|---:|---:|---:|")
    widths = sorted({MODEL_CONFIGS[m]["hidden_size"] for m in args.models})
    for width in widths:
        macs = sum(K * N * count for K, N, count in block_products(width))
        for rows in sorted({t * b for t in args.tokens for b in args.batch_sizes}):
            ms = {}
            for backend in PRODUCT_BACKENDS:
                result = subprocess.run([sys.executable, os.path.abspath(__file__), "--product-worker", backend,
                                         str(rows), str(width), "--threads", str(args.threads),
                                         "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
                ms[backend] = json.loads(result.stdout.strip().splitlines()[-1])["ms"]
                print(f"| {width} | {rows} | {backend} | {ms[backend]:.2f} | {rows * macs / ms[backend] / 1e6:.0f} | "
                      f"{ms['torch fp32'] / ms[backend]:.2f}x |", flush=True)
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["DRWKV-S/2", "DRWKV-B/2"])
    p.add_argument("--tokens", nargs="+", type=int, default=[1024, 4096])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "bench_precision"))
    p.add_argument("--fidelity", action="store_true", help="the PSNR table instead of the speed table")
    p.add_argument("--profile", choices=(INT8, COMPILED), help="the op table of one call of this backend")
    p.add_argument("--products", action="store_true",
                   help="the matrix products alone per precision's library (the machine's limit), not the models")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--num-images", type=int, default=64)
    p.add_argument("--worker", nargs=3, metavar=("BACKEND", "CKPT", "ONNX"), help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--product-worker", nargs=3, metavar=("BACKEND", "ROWS", "WIDTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if any(math.isqrt(t) ** 2 != t for t in args.tokens):
        p.error("--tokens must be square numbers")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker(*args.worker, args.threads, args.size)
        return 0
    if args.product_worker:
        backend, rows, width = args.product_worker
        product_worker(backend, int(rows), int(width), args.threads, args.repeats)
        return 0
    if args.products:
        return products(args)
    if args.profile:
        return profile(args)
    return fidelity(args) if args.fidelity else speed(args)


if __name__ == "__main__":
    sys.exit(main())
