"""Speed of the CPU backends: PyTorch eager, ONNX Runtime on its native CPU path, ONNX Runtime in one
session with the BiWKV Python op, and ONNX Runtime on the portable graph.

    python benchmarks/bench_sampling.py                          # the committed pretrained/*.pt
    OMP_NUM_THREADS=1 python benchmarks/bench_sampling.py --ckpt runs/fm/ckpt.pt --threads 1
    OMP_NUM_THREADS=2 python benchmarks/bench_sampling.py --threads 2 --skip-sampling --profile

The target it measures: drwkv-infer --onnx / drwkv.Pipeline on ONNX Runtime at least 2x PyTorch
eager (--ckpt) per denoiser call at 1024, 4096 and 16384 tokens, at batch 1 and 16 (16384 at
batch 1 only), with one thread and with two; outputs equal to PyTorch's within 1e-5 relative;
element-wise work at most 15% of an ONNX Runtime call at 1024 tokens; the BiWKV node within 1.3x
of the kernel alone at the same shape.

Backends (what one denoiser call includes; each is called as drwkv-infer calls it, numpy in and
numpy out):

  PyTorch eager            load_denoiser(ckpt=...): torch.from_numpy on the inputs, the model's
                           forward under torch.inference_mode(), the output back to numpy.
  ORT, native CPU path     load_denoiser(onnx=...), the default on the CPU: the graph cut at its
                           BiWKV nodes and fused element-wise patterns (drwkv.runtime.ort_split and
                           ort_fusion); ONNX Runtime sessions run the standard ops in between, the
                           native kernels run the BiWKV nodes (with their sigmoid gate) and the
                           fused patterns on ONNX Runtime's tensors in place.
  ORT, one session + BiWKV Python op
                           load_denoiser(onnx=..., fuse=False): the whole graph in one ONNX Runtime
                           session; every BiWKV node goes through onnxruntime-extensions' Python op
                           bridge, which takes the GIL and copies its inputs and output once.
  ORT portable             the --portable export (standard ops only, the Bi-WKV linear in tokens:
                           drwkv.runtime.portable), loaded as the native path is (no BiWKV nodes in it).

Table 1 (--skip-sampling leaves it out): DDIM sampling with the checkpoint itself (default batch
16, 20 steps, no guidance). Columns: tokens of the model, ms per sampler step, images/s, the
speed-up over PyTorch eager in images/s, and the max relative error of one denoiser call's output
against PyTorch's (max |out - out_torch| / max |out_torch|).

Table 2: ms per denoiser call, for each --tokens (square numbers) and --batch-sizes (token counts
above 4096 at batch 1 only), on a model of the checkpoint's architecture at image size
sqrt(tokens) * patch with random weights (the checkpoint's, perturbed by 0.02 N(0, 1) so that no
block is the identity). Columns: tokens, batch, backend, ms per call, the speed-up over PyTorch
eager, and the max relative error against PyTorch as in table 1. The random checkpoints and all ONNX
exports are cached in --work-dir, keyed by architecture and size.

In both tables the backends of a row are timed interleaved, each called once in turn per repeat
(--repeats), after one warm-up call each; each one's best time is reported. The machine's speed
drifts over a run (other work, clocks, memory), and interleaving exposes every backend to the
same drift. The script exits with status 1 if any error exceeds 1e-5 or is NaN, and says which.

--profile: one profiled call of each ONNX Runtime path (native CPU, one session), at the first
token count and batch size of table 2 (or --profile-tokens / --profile-batch), after two warm-up
calls. It lists ONNX Runtime's time per op type (kernels; the native nodes as "native ...") in ms
and in % of that call's wall time, the 15 largest, then the rest and the time outside them
(Python, IOBinding, session set-up of each run). Profiling slows a call a little, so these calls
are somewhat slower than table 2's. Then two summary lines per path:
  element-wise share       the share of the call spent in the ops listed in ELEMENTWISE below
                           (standard element-wise, slicing and padding ops, and the native fused
                           element-wise nodes); the ops found are named with their ms.
  BiWKV node vs kernel     the BiWKV node's time per node (the op's total over the number of BiWKV
                           nodes) against the kernel alone at the node's shape [B, tokens, hidden]:
                           drwkv._C.bi_wkv_forward on raw addresses into a preallocated y (w, u ~
                           N(0, 1) / T, k, v ~ N(0, 1), float32). The native path's BiWKV node is
                           the gated form, which also applies y * sigmoid(r), so it is compared
                           with the kernel plus drwkv._C.sigmoid_gate timed alone. Kernel times
                           are the best of max(3, --repeats) calls.

--threads N sets torch's threads and ONNX Runtime's intra-op threads (the native CPU path gives
its native kernels the same count). Set OMP_NUM_THREADS=N too: the native kernels, and the BiWKV
Python op called on ONNX Runtime's threads, use OpenMP, which takes its default thread count from
it. The header prints the CPU, the thread settings and OMP_NUM_THREADS.

OpenMP's workers wait passively here (OMP_WAIT_POLICY=PASSIVE unless set), as they do in
drwkv-infer --onnx (see drwkv.runtime.ort_split): spinning OpenMP workers slow ONNX Runtime's
threads, which run in between. torch shares that OpenMP library, so PyTorch eager runs under the
same policy; on 2 threads its calls took as long either way (within the run-to-run spread).
"""
import argparse
import glob
import hashlib
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see the docstring)

import torch  # noqa: E402

from benchmarks.machine import cpu_name, exit_code  # noqa: E402
from benchmarks.models import write_random_checkpoint  # noqa: E402
from drwkv import _C  # noqa: E402
from drwkv.model import MODEL_CONFIGS, read_checkpoint  # noqa: E402
from drwkv.runtime import load_denoiser  # noqa: E402
from drwkv.samplers import make_sampler, sample  # noqa: E402
from drwkv.schedule import Schedule  # noqa: E402
from export.to_onnx import export_onnx  # noqa: E402

TOLERANCE = 1e-5
BATCH_1_ONLY_ABOVE = 4096    # token counts above this run at batch 1 only
TOP_OPS = 15
ELEMENTWISE = ("Mul", "Add", "Sub", "Div", "Pow", "Relu", "Sigmoid", "Slice", "Pad", "Concat", "Cast", "Where",
               "Expand", "native ShiftMix", "native ReluSquare", "native GatedResidual")
TORCH = "PyTorch eager"
NATIVE = "ORT, native CPU path"
ONE_SESSION = "ORT, one session + BiWKV Python op"
PORTABLE = "ORT portable (standard ops)"



def exported(ckpt, work_dir, portable):
    """The ONNX export of ckpt (reused when newer than the checkpoint)."""
    name = os.path.splitext(os.path.basename(ckpt))[0] + ("_portable" if portable else "") + ".onnx"
    path = os.path.join(work_dir, name)
    if not os.path.exists(path) or os.path.getmtime(path) < os.path.getmtime(ckpt):
        print(f"exporting {path} ...", file=sys.stderr, flush=True)
        export_onnx(ckpt, path, portable=portable)
    return path


def random_checkpoint(ckpt, tokens, work_dir):
    """A checkpoint of ckpt's architecture at `tokens` tokens with random weights -> (path, config)."""
    config = dict(read_checkpoint(ckpt)["config"])
    config.pop("latent", None)  # the denoiser alone: no VAE decoder to export
    patch = MODEL_CONFIGS[config["model"]]["patch_size"]
    config["image_size"] = math.isqrt(tokens) * patch
    # Keyed by the whole config, so that two architectures at one size never share a file.
    key = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:8]
    name = f"random_{config['model'].replace('/', '-')}_{config['image_size']}px_{key}.pt"
    path = os.path.join(work_dir, name)
    if not os.path.exists(path):
        write_random_checkpoint(config, path)
    return path, config


def backends(ckpt, work_dir, threads):
    """[(name, denoiser)] in table order; PyTorch eager first (the reference)."""
    onnx_path = exported(ckpt, work_dir, False)
    return [(TORCH, load_denoiser(ckpt=ckpt, threads=threads)),
            (NATIVE, load_denoiser(onnx=onnx_path, intra_op_threads=threads)),
            (ONE_SESSION, load_denoiser(onnx=onnx_path, intra_op_threads=threads, fuse=False)),
            (PORTABLE, load_denoiser(onnx=exported(ckpt, work_dir, True), intra_op_threads=threads))]


def inputs(config, batch, seed=0):
    rng = np.random.default_rng(seed)
    size, C = int(config["image_size"]), int(config["in_channels"])
    return (rng.standard_normal((batch, C, size, size)).astype(np.float32),
            rng.uniform(0, 999, batch).astype(np.float32), rng.integers(0, int(config["num_classes"]), batch))


def relative_error(out, reference):
    """max |out - reference| / max |reference|; NaN if either holds a NaN."""
    out, reference = np.asarray(out, np.float64), np.asarray(reference, np.float64)
    if out.shape != reference.shape:
        return math.nan
    return float(np.abs(out - reference).max() / np.abs(reference).max())


def interleaved_best(calls, repeats):
    """{name: best seconds} over `repeats` rounds, each round calling every entry of calls once."""
    best = dict.fromkeys(calls, math.inf)
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def best_of(fn, repeats, setup=None):
    """Best seconds of `repeats` calls of fn after one warm-up; setup() runs untimed before each."""
    times = []
    for i in range(repeats + 1):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def fmt_ms(ms):
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def check(errors, where, failures):
    failures += [f"{where}, {name}: {err:.2e}" for name, err in errors.items() if not err <= TOLERANCE]


def sampling_table(ckpt, args, failures):
    config = read_checkpoint(ckpt)["config"]
    sampler = make_sampler("ddim", Schedule.from_config(config), args.steps)
    labels = np.arange(args.batch_size) % int(config["num_classes"])
    tokens = (int(config["image_size"]) // MODEL_CONFIGS[config["model"]]["patch_size"]) ** 2
    found = backends(ckpt, args.work_dir, args.threads)
    x, t, y = inputs(config, args.batch_size)
    outputs = {name: denoiser(x, t, y) for name, denoiser in found}  # warm-up, and the accuracy check
    errors = {name: relative_error(out, outputs[TORCH]) for name, out in outputs.items()}
    check(errors, f"table 1 ({tokens} tokens, batch {args.batch_size})", failures)
    best = interleaved_best({name: (lambda d=denoiser: sample(d, sampler, labels, seed=0, cfg_scale=args.cfg_scale))
                             for name, denoiser in found}, args.repeats)
    rows = [f"| {name} | {tokens} | {fmt_ms(1e3 * best[name] / args.steps)} | {args.batch_size / best[name]:.2f} | "
            f"{best[TORCH] / best[name]:.2f}x | {errors[name]:.1e} |" for name, _ in found]
    return (f"### Table 1: DDIM sampling, {config['model']} {config['image_size']}px (the checkpoint), batch "
            f"{args.batch_size}, {args.steps} steps, cfg {args.cfg_scale}\n\n"
            "| backend | tokens | ms/step | images/s | speed-up vs PyTorch eager | max rel err vs PyTorch |\n"
            "|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows))


def call_table(ckpt, args, failures):
    """ms per denoiser call per token count and batch size, on random models of ckpt's architecture."""
    header = None
    rows = []
    for tokens in args.tokens:
        path, config = random_checkpoint(ckpt, tokens, args.work_dir)
        header = header or (f"### Table 2: ms per denoiser call, {config['model']} (random weights), "
                            f"{args.repeats} interleaved repeats, best of each\n\n"
                            "| tokens | batch | backend | ms/call | speed-up vs PyTorch eager | max rel err vs PyTorch |\n"
                            "|---:|---:|---|---:|---:|---:|")
        found = backends(path, args.work_dir, args.threads)
        for batch in args.batch_sizes:
            if tokens > BATCH_1_ONLY_ABOVE and batch != 1:
                continue
            x, t, y = inputs(config, batch)
            outputs = {name: denoiser(x, t, y) for name, denoiser in found}  # warm-up at this shape
            errors = {name: relative_error(out, outputs[TORCH]) for name, out in outputs.items()}
            check(errors, f"table 2 ({tokens} tokens, batch {batch})", failures)
            best = interleaved_best({name: (lambda d=denoiser: d(x, t, y)) for name, denoiser in found}, args.repeats)
            rows += [f"| {tokens} | {batch} | {name} | {fmt_ms(1e3 * best[name])} | {best[TORCH] / best[name]:.2f}x | "
                     f"{errors[name]:.1e} |" for name, _ in found]
            print(f"  table 2: {tokens} tokens, batch {batch} done", file=sys.stderr, flush=True)
        del found  # frees this size's models before the next
    return header + "\n" + "\n".join(rows)


# --- --profile ------------------------------------------------------------------------------------

def one_session_profiled(onnx_path, threads):
    """The one-session path's InferenceSession as drwkv.runtime.onnx builds it, with profiling on
    -> (session, number of BiWKV nodes)."""
    from drwkv import ort_ops
    from drwkv.runtime.onnx import _session, read_onnx, route_bi_wkv_to_extensions

    model, _ = read_onnx(onnx_path)
    count = route_bi_wkv_to_extensions(model, ort_ops.DOMAIN)
    session = _session(model, onnx_path, ["CPUExecutionProvider"], threads, custom_ops=count > 0, profile=True)
    return session, count


def profiled_call(run, feeds, op_times):
    """Two warm-up calls, then one call -> (its wall ms, {op type: ms} of it)."""
    run(feeds)
    run(feeds)
    start = time.perf_counter()
    run(feeds)
    wall_ms = 1e3 * (time.perf_counter() - start)
    return wall_ms, op_times()


def op_table(title, wall_ms, times):
    ranked = sorted(times.items(), key=lambda item: -item[1])
    lines = [f"#### {title}: {fmt_ms(wall_ms)} ms in the profiled call\n", "| op | ms | % of call |", "|---|---:|---:|"]
    lines += [f"| {op} | {fmt_ms(ms)} | {100 * ms / wall_ms:.1f}% |" for op, ms in ranked[:TOP_OPS]]
    rest = ranked[TOP_OPS:]
    if rest:
        ms = sum(ms for _, ms in rest)
        lines.append(f"| the other {len(rest)} op types | {fmt_ms(ms)} | {100 * ms / wall_ms:.1f}% |")
    outside = wall_ms - sum(times.values())
    lines.append(f"| outside the ops (Python, IOBinding, run set-up) | {fmt_ms(outside)} | {100 * outside / wall_ms:.1f}% |")
    counted = {op: ms for op, ms in ranked if op in ELEMENTWISE}
    share = sum(counted.values())
    lines.append(f"\nelement-wise share: {100 * share / wall_ms:.1f}% of the call ({fmt_ms(share)} ms: "
                 + (", ".join(f"{op} {fmt_ms(ms)}" for op, ms in counted.items()) or "none found") + ")")
    return lines


def kernel_times(B, T, C, threads, repeats):
    """Best ms of the Bi-WKV kernel alone and of the sigmoid gate alone at [B, T, C]."""
    rng = np.random.default_rng(T)
    w = (rng.standard_normal(C) / T).astype(np.float32)
    u = (rng.standard_normal(C) / T).astype(np.float32)
    k, v, r = (rng.standard_normal((B, T, C)).astype(np.float32) for _ in range(3))
    y = np.empty((B, T, C), np.float32)
    repeats = max(3, repeats)

    def kernel():
        _C.bi_wkv_forward(w.ctypes.data, u.ctypes.data, k.ctypes.data, v.ctypes.data, y.ctypes.data, 0, 0,
                          B, T, C, _C.DTYPE_FLOAT32, -1, 0)

    kernel_ms = 1e3 * best_of(kernel, repeats)
    y_kernel = y.copy()
    # The gate scales y in place: restored before every call, so that repeated calls never drive it
    # into denormals. Same thread count as the native node passes.
    gate_ms = 1e3 * best_of(lambda: _C.sigmoid_gate(y.ctypes.data, r.ctypes.data, y.size, int(threads or 0)),
                            repeats, setup=lambda: np.copyto(y, y_kernel))
    return kernel_ms, gate_ms


def profile_report(ckpt, args):
    from drwkv.runtime.onnx import read_onnx
    from drwkv.runtime.ort_split import SplitSession, ort_op_times

    tokens = args.profile_tokens or args.tokens[0]
    batch = args.profile_batch or args.batch_sizes[0]
    path, config = random_checkpoint(ckpt, tokens, args.work_dir)
    onnx_path = exported(path, args.work_dir, False)
    x, t, y = inputs(config, batch)
    feeds = {"x": x, "t": t, "y": y}
    hidden = MODEL_CONFIGS[config["model"]]["hidden_size"]
    lines = [f"### Profile: {config['model']} (random weights), {tokens} tokens, batch {batch}, one profiled call "
             f"after two warm-up calls\n"]

    split = SplitSession(read_onnx(onnx_path)[0], intra_op_threads=args.threads, profile=True)
    wall_ms, times = profiled_call(lambda f: split.run(["out"], f), feeds, split.op_times)
    lines += op_table(NATIVE, wall_ms, times)
    nodes, gated = split.fused.get("BiWKV", 0), split.fused.get("BiWKV gated", 0)
    native_node_ms = times.get("native BiWKV", 0.0) / nodes if nodes else None

    session, count = one_session_profiled(onnx_path, args.threads)
    one_wall_ms, one_times = profiled_call(lambda f: session.run(["out"], f), feeds, lambda: ort_op_times(session))
    one_lines = op_table(ONE_SESSION, one_wall_ms, one_times)
    one_node_ms = one_times.get("BiWKV", 0.0) / count if count else None

    if nodes or count:
        kernel_ms, gate_ms = kernel_times(batch, tokens, hidden, args.threads, args.repeats)
        shape = f"[{batch}, {tokens}, {hidden}]"
        if nodes:
            # Gated nodes also pay the gate pass; a graph may mix gated and plain nodes.
            alone = kernel_ms + gate_ms * gated / nodes
            lines.append(f"BiWKV node vs kernel alone: native BiWKV {fmt_ms(native_node_ms)} ms per node ({nodes} nodes, "
                         f"{gated} gated) vs kernel {fmt_ms(kernel_ms)} ms + gate {fmt_ms(gate_ms)} ms = "
                         f"{fmt_ms(alone)} ms at {shape}: {native_node_ms / alone:.2f}x")
        if count:
            one_lines.append(f"BiWKV node vs kernel alone: BiWKV Python op {fmt_ms(one_node_ms)} ms per node "
                             f"({count} nodes, ungated: the gate is its own Sigmoid and Mul) vs kernel "
                             f"{fmt_ms(kernel_ms)} ms at {shape}: {one_node_ms / kernel_ms:.2f}x")
    lines += [""] + one_lines
    lines.append("\nelement-wise ops counted: " + ", ".join(ELEMENTWISE))
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="checkpoint (default: the first in pretrained/)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch of table 1 (default 16)")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of table 1 (default 20)")
    parser.add_argument("--cfg-scale", type=float, default=1.0,
                        help="guidance scale of table 1; != 1 doubles the batch of every call (default: 1.0)")
    parser.add_argument("--skip-sampling", action="store_true", help="leave out table 1")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096, 16384],
                        help="token counts of table 2, square numbers (default 1024 4096 16384)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16],
                        help=f"batch sizes of table 2 (default 1 16; above {BATCH_1_ONLY_ABOVE} tokens batch 1 only)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds; the best is reported")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ONNX Runtime intra-op threads (set OMP_NUM_THREADS to the same)")
    parser.add_argument("--profile", action="store_true", help="per-op profile of both ONNX Runtime paths")
    parser.add_argument("--profile-tokens", type=int, help="tokens of the profile (default: the first --tokens)")
    parser.add_argument("--profile-batch", type=int, help="batch of the profile (default: the first --batch-sizes)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "drwkv-bench"),
                        help="where random checkpoints and ONNX exports are cached")
    args = parser.parse_args(argv)
    for tokens in args.tokens + ([args.profile_tokens] if args.profile_tokens else []):
        if tokens < 1 or math.isqrt(tokens) ** 2 != tokens:
            parser.error(f"token counts must be square numbers, got {tokens}")
    if min(args.batch_sizes + [args.batch_size, args.repeats]) < 1:
        parser.error("batch sizes and --repeats must be positive")
    if args.ckpt is None:
        found = sorted(glob.glob(os.path.join(REPO, "pretrained", "*.pt")))
        if not found:
            parser.error("no checkpoint in pretrained/; pass --ckpt")
        args.ckpt = found[0]
    return args


def main(argv=None):
    args = parse_args(argv)
    import onnxruntime

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"{cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")
    print(f"threads: torch {torch.get_num_threads()}, ONNX Runtime intra-op {args.threads or 'default'} (the native "
          f"nodes too), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}\n", flush=True)
    failures = []
    if not args.skip_sampling:
        print(sampling_table(args.ckpt, args, failures) + "\n", flush=True)
    print(call_table(args.ckpt, args, failures), flush=True)
    if args.profile:
        print("\n" + profile_report(args.ckpt, args), flush=True)
    return exit_code(failures, TOLERANCE)


if __name__ == "__main__":
    from drwkv import known_warnings

    known_warnings.silence()  # the exporter's known chatter, as python -m export.to_onnx does
    sys.exit(main())
