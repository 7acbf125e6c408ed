"""Bi-WKV on the CPU: the kernel alone beside the entry points a user's call goes through, against
the O(T^2) formula and against this machine's memory bandwidth.

    python benchmarks/bench_bi_wkv.py [--threads 2] [--repeat 5]
    python benchmarks/bench_bi_wkv.py --tokens --shape 16,1024,128 --shape 1,4096,384

One row per shape [B, T, C]: by default B=8, C=384 (--batch, --channels) for T in 256, 1024 and
4096 (--tokens; `--tokens` with no value drops these rows), then 16,1024,128, the DRWKV-T/4
model's node at 1024 tokens and batch 16 (--shape B,T,C, repeatable, replaces it). Inputs are
float32 and contiguous. Every time is the best of --repeat calls after one warm-up call.

  kernel alone, y preallocated      `drwkv._C.bi_wkv_forward` on raw addresses, writing y into a
                                    tensor allocated once before timing: no allocation, no copy,
                                    no argument checks, no log-sum-exp. The floor for every row.
  drwkv.ops.bi_wkv, no grad         `drwkv.ops.bi_wkv(w, u, k, v)` under torch.inference_mode():
                                    the PyTorch inference path. Checks its arguments, dispatches
                                    through the torch custom op and allocates a fresh y each call
                                    (no copy of contiguous inputs).
  PyTorch training op, y + lse      `torch.ops.drwkv.bi_wkv_forward`: allocates a fresh y and a
                                    fresh log-sum-exp each call, and the kernel writes both.
  ORT node via onnxruntime-extensions
                                    a one-node ONNX graph (drwkv::BiWKV) in an ONNX Runtime CPU
                                    session built as drwkv.runtime.onnx builds it; times
                                    session.run(["y"], feeds) with numpy feeds. The
                                    onnxruntime-extensions bridge takes the GIL and copies w, u,
                                    k and v into numpy arrays, the kernel writes a fresh y
                                    (`_C.bi_wkv_forward_numpy`), and y is copied once into ONNX
                                    Runtime's output, which run() returns without a further copy.
  ORT node, native path             the same graph through drwkv.runtime.ort_split.SplitSession,
                                    the runtime's path without the Python bridge (what it
                                    allocates and copies: see that module); "n/a" where the module
                                    is not there.

The figure in parentheses is the entry point's time over the kernel alone's. Then: the quadratic
reference formula in float32 (`drwkv.ops.bi_wkv_reference`; past a million (row, target) pairs
timed on one batch row and the first 512 targets and scaled, as its cost is the same for each),
its time over the kernel's, the kernel's achieved bandwidth counting k and v read once and y
written once, and the machine's copy bandwidth (a 256 MiB tensor copy, bytes read plus bytes
written), measured again next to every kernel measurement since on a shared machine the bandwidth
drifts over a run. The last column is the worst difference between an entry point's y and the
kernel's, max |y - y_kernel| / max |y_kernel|; the script exits with status 1 if one is above
1e-5 or NaN.

--threads sets torch's threads, the kernel's OpenMP threads and ONNX Runtime's intra-op threads.
The kernel takes OpenMP's thread count on the thread that calls it: torch.set_num_threads sets it
on the main thread (torch and drwkv._C share one libgomp), and OMP_NUM_THREADS, which the script
sets when run as a program, before torch and drwkv._C are loaded, sets it on any other thread an
ORT session might run the node on.
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.machine import cpu_name  # noqa: E402

TOLERANCE = 1e-5
NATIVE_NA = "n/a (drwkv.runtime.ort_split not available)"
COLUMNS = ["B, T, C", "kernel alone, y preallocated (ms)", "drwkv.ops.bi_wkv, no grad (ms)",
           "PyTorch training op, y + lse (ms)", "ORT node via onnxruntime-extensions (ms)",
           "ORT node, native path (ms)", "reference O(T^2) (ms)", "speed-up", "kernel GB/s", "copy GB/s",
           "% of copy", "worst rel. diff"]


def shape_arg(text):
    try:
        B, T, C = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,T,C (three integers), got {text!r}") from None
    if min(B, T, C) < 1:
        raise argparse.ArgumentTypeError(f"B, T and C must be positive, got {text!r}")
    return B, T, C


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2,
                        help="CPU threads for torch, the kernel and ONNX Runtime (default 2)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement; the best is kept")
    parser.add_argument("--batch", type=int, default=8, help="B of the --tokens rows (default 8)")
    parser.add_argument("--channels", type=int, default=384, help="C of the --tokens rows (default 384)")
    parser.add_argument("--tokens", type=int, nargs="*", default=[256, 1024, 4096],
                        help="T of the B x T x C rows (default 256 1024 4096; none: no such rows)")
    parser.add_argument("--shape", type=shape_arg, action="append", metavar="B,T,C",
                        help="an explicit shape, repeatable (default 16,1024,128)")
    args = parser.parse_args(argv)
    if args.shape is None:
        args.shape = [(16, 1024, 128)]
    return args



def best_time(fn, repeat):
    fn()  # warm up: page faults, thread pools
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(repeat):
    import torch

    src = torch.randn(64 << 20)  # 256 MiB: far beyond the caches
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), repeat)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def one_node_model(B, T, C):
    """The exported graphs' BiWKV node alone: inputs w, u [C], k, v [B, T, C], output y like k."""
    from onnx import TensorProto, helper

    from drwkv.runtime.onnx import BIWKV_DOMAIN, BIWKV_OP, PLUGIN_VERSION

    f32 = TensorProto.FLOAT
    node = helper.make_node(BIWKV_OP, ["w", "u", "k", "v"], ["y"], domain=BIWKV_DOMAIN, plugin_version=PLUGIN_VERSION)
    graph = helper.make_graph(
        [node], "bi_wkv",
        [helper.make_tensor_value_info("w", f32, [C]), helper.make_tensor_value_info("u", f32, [C]),
         helper.make_tensor_value_info("k", f32, [B, T, C]), helper.make_tensor_value_info("v", f32, [B, T, C])],
        [helper.make_tensor_value_info("y", f32, [B, T, C])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("drwkv", 1)])
    model.ir_version = 10  # what every onnxruntime pyproject.toml allows can load
    return model


def extensions_runner(B, T, C, threads):
    from drwkv import ort_ops
    from drwkv.runtime.onnx import _session, route_bi_wkv_to_extensions

    model = one_node_model(B, T, C)
    route_bi_wkv_to_extensions(model, ort_ops.DOMAIN)
    session = _session(model, "<bench>", ["CPUExecutionProvider"], threads, custom_ops=True)
    return lambda feeds: session.run(["y"], feeds)[0]


def split_session_class():
    """drwkv.runtime.ort_split.SplitSession, or None (said once on stderr) where it cannot be imported."""
    global _split_session
    if _split_session is None:
        try:
            from drwkv.runtime.ort_split import SplitSession
            _split_session = SplitSession
        except Exception as e:  # absent, or broken: the column says n/a rather than losing the others
            print(f"native path: import drwkv.runtime.ort_split failed ({type(e).__name__}: {e})", file=sys.stderr)
            _split_session = False
    return _split_session or None


_split_session = None


def native_runner(B, T, C, threads):
    """SplitSession's run, or None where drwkv.runtime.ort_split is not there."""
    SplitSession = split_session_class()
    if SplitSession is None:
        return None
    session = SplitSession(one_node_model(B, T, C), intra_op_threads=threads)
    return lambda feeds: session.run(["y"], feeds)[0]


def relative_diff(y, reference):
    """max |y - reference| / max |reference| in float64; NaN if either holds a NaN."""
    import numpy as np

    y, reference = np.asarray(y, np.float64), np.asarray(reference, np.float64)
    if y.shape != reference.shape:
        return math.nan
    scale = np.abs(reference).max()
    diff = np.abs(y - reference).max()
    return float(diff / scale) if scale > 0 else float(diff)


def ms(seconds):
    value = seconds * 1e3
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}" if value < 1 else f"{value:.1f}"


def with_ratio(seconds, kernel_s):
    return f"{ms(seconds)} ({seconds / kernel_s:.1f}x)"


def bench_shape(B, T, C, threads, repeat):
    """One table row (a list of cells) and {entry point: relative difference from the kernel}."""
    import torch

    from drwkv import _C
    import drwkv.ops  # registers torch.ops.drwkv.bi_wkv_forward
    from drwkv.ops import bi_wkv_reference

    g = torch.Generator().manual_seed(T)
    w = torch.randn(C, generator=g) / T
    u = torch.randn(C, generator=g)
    k = torch.randn(B, T, C, generator=g)
    v = torch.randn(B, T, C, generator=g)
    y = torch.empty_like(k)
    feeds = {"w": w.numpy(), "u": u.numpy(), "k": k.numpy(), "v": v.numpy()}

    def kernel():
        _C.bi_wkv_forward(w.data_ptr(), u.data_ptr(), k.data_ptr(), v.data_ptr(), y.data_ptr(), 0, 0,
                          B, T, C, _C.DTYPE_FLOAT32, -1, 0)

    def inference():
        with torch.inference_mode():
            return drwkv.ops.bi_wkv(w, u, k, v)

    def training():
        return torch.ops.drwkv.bi_wkv_forward(w, u, k, v)

    extensions = extensions_runner(B, T, C, threads)
    native = native_runner(B, T, C, threads)

    copy_gbs = copy_bandwidth(repeat)
    kernel_s = best_time(kernel, repeat)
    y_kernel = y.numpy().copy()
    inference_s = best_time(inference, repeat)
    training_s = best_time(training, repeat)
    extensions_s = best_time(lambda: extensions(feeds), repeat)
    native_s = best_time(lambda: native(feeds), repeat) if native else None

    # Outputs of calls of their own, after the timed ones: what a user's next call would get.
    diffs = {"drwkv.ops.bi_wkv": relative_diff(inference().numpy(), y_kernel),
             "training op": relative_diff(training()[0].detach().numpy(), y_kernel),
             "onnxruntime-extensions": relative_diff(extensions(feeds), y_kernel)}
    if native:
        diffs["native path"] = relative_diff(native(feeds), y_kernel)

    # The reference costs the same for every (batch row, target position): past a million of
    # them it is timed on one batch row and the first rows of targets, then scaled.
    ref_batch, ref_targets = (B, T) if B * T <= 1 << 13 else (1, min(T, 512))
    ref_s = best_time(lambda: bi_wkv_reference(w, u, k[:ref_batch], v[:ref_batch], targets=range(ref_targets)), 1)
    ref_s *= (B * T) / (ref_batch * ref_targets)
    note = "" if ref_batch == B and ref_targets == T else " (scaled)"
    gbs = 12 * B * T * C / kernel_s / 1e9
    worst = max(diffs.values(), key=lambda d: math.inf if math.isnan(d) else d)
    row = [f"{B},{T},{C}", ms(kernel_s), with_ratio(inference_s, kernel_s), ms(training_s),
           with_ratio(extensions_s, kernel_s), with_ratio(native_s, kernel_s) if native else NATIVE_NA,
           f"{ref_s * 1e3:.0f}{note}" if ref_s >= 0.1 else ms(ref_s) + note, f"{ref_s / kernel_s:.0f}x", f"{gbs:.2f}", f"{copy_gbs:.2f}",
           f"{100 * gbs / copy_gbs:.0f}%", f"{worst:.1e}"]
    return row, diffs


def main(argv=None):
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    shapes = [(args.batch, T, args.channels) for T in args.tokens] + list(args.shape)

    print(f"{cpu_name()}, {args.threads} threads\n")
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    failures = []
    for B, T, C in shapes:
        row, diffs = bench_shape(B, T, C, args.threads, args.repeat)
        print("| " + " | ".join(row) + " |", flush=True)
        failures += [f"{B},{T},{C} {name}: {d:.2e}" for name, d in diffs.items() if not d <= TOLERANCE]
    if failures:
        print(f"\noutput differs from the kernel's by more than {TOLERANCE:g} (relative): " + "; ".join(failures),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Before torch and drwkv._C load OpenMP: an ORT session may run the node on one of its own
    # threads, which torch.set_num_threads does not reach (see the docstring).
    os.environ["OMP_NUM_THREADS"] = str(parse_args().threads)
    sys.exit(main())
