"""ONNX Runtime's CPU path, part 2: a graph with native nodes run as ONNX Runtime sessions of its
standard ops, with the native nodes in between.

ONNX Runtime's wheels carry no C headers, so a native kernel cannot be registered with it; the
Python custom-op bridge (drwkv.ort_ops) copies every input and output once more and takes the GIL.
Here instead the graph is cut at each native node (the BiWKV nodes and the fused nodes of
drwkv.runtime.ort_fusion): each run of standard ops between two cuts is its own InferenceSession,
and the values crossing a cut stay where they are, handed on as OrtValues through IOBinding. A
native node reads ONNX Runtime's tensors in place and writes into buffers from a pool that takes
them back when their values are no longer read (allocations that large would otherwise be mapped
and page-faulted afresh by every call); all the segments share one ONNX Runtime arena. At 4096
tokens and batch 16 the process peaks at 1.1 GiB, against 1.7 GiB for the graph in one session.

    session = SplitSession(model, intra_op_threads=2)     # ModelProto; rewritten in memory
    y, = session.run(["out"], {"x": x, "t": t, "y": labels})

Threads: ``intra_op_threads`` for ONNX Runtime and the native nodes alike (default: ONNX Runtime's
choice, and OpenMP's default for the native nodes). The two thread pools take turns, so neither
should spin while the other works: ONNX Runtime's are told not to, and OpenMP's wait passively
when this module is imported before OpenMP is loaded (``OMP_WAIT_POLICY=PASSIVE`` unless set;
libgomp reads it once, when it loads). With spinning OpenMP workers the matrix products on 2 threads
took 20% longer.
"""
import collections
import json
import os
import tempfile
import threading
import time

import numpy as np


def _openmp_loaded():
    try:
        with open("/proc/self/maps") as maps:
            return "libgomp" in maps.read()
    except OSError:
        return True  # cannot tell: leave the policy alone


if not _openmp_loaded():
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from drwkv import _C  # noqa: E402  (after the wait policy)
from drwkv.runtime import ort_fusion, ort_quant  # noqa: E402
from drwkv.runtime.ort_env import session_options  # noqa: E402

BIWKV_DOMAIN = ort_fusion.BIWKV_DOMAIN  # the BiWKV nodes and the fused passes: drwkv runs them
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


class _Segment:
    """Standard ops between two cuts, as one InferenceSession."""

    def __init__(self, session, inputs, outputs):
        self.session, self.inputs, self.outputs = session, inputs, outputs

    def run(self, values, threads):
        binding = self.session.io_binding()
        for name in self.inputs:
            binding.bind_ortvalue_input(name, values[name])
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values.update(zip(self.outputs, binding.get_outputs()))


class _BufferPool:
    """The native nodes' output buffers, reused from value to value and from call to call: a value's
    buffer goes back to the pool when the run releases the value. Fresh allocations that large would
    be mapped and page-faulted afresh every time; one buffer per node would keep them all at once."""

    def __init__(self):
        self.free = collections.defaultdict(list)   # (shape, dtype) -> [(array, OrtValue)]
        self.owned = {}                              # value name -> (array, OrtValue)

    def take(self, name, shape, dtype):
        key = (tuple(shape), np.dtype(dtype))
        entry = self.free[key].pop() if self.free[key] else None
        if entry is None:
            import onnxruntime as ort

            array = np.empty(shape, dtype)
            entry = (array, ort.OrtValue.ortvalue_from_numpy(array))
        self.owned[name] = entry
        return entry[0]

    def release(self, name, live):
        """Return the buffer of ``name`` unless a live value (OrtValue) points into it."""
        entry = self.owned.pop(name, None)
        if entry is None:
            return
        start = entry[0].ctypes.data
        end = start + entry[0].nbytes
        if any(start <= v.data_ptr() < end for v in live if v is not entry[1]):
            return  # ONNX Runtime made a value over it (a view); let it go with that value
        self.free[(entry[0].shape, entry[0].dtype)].append(entry)

    def release_all(self):
        for name in list(self.owned):
            self.release(name, ())


class _Native:
    """One native node: its inputs are values of the run or constants of the graph."""

    def __init__(self, node, constants, in_place, pool):
        self.node, self.op_type = node, node.op_type
        self.pool = pool
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.constants = {name: np.ascontiguousarray(constants[name]) for name in self.inputs if name in constants}
        self.attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        self.epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        self.in_place = in_place  # the inputs this node may overwrite (made by an earlier step, read by no later one)
        self._constant_addresses = {"": (0, None, None)}
        self._constant_addresses.update({name: (a.ctypes.data, a.shape, a.dtype) for name, a in self.constants.items()})

    def _buffer(self, name, shape, dtype):
        """A buffer from the pool for output ``name``."""
        return self.pool.take(name, shape, dtype)

    def _address(self, values, name):
        """(address, shape, dtype) of an input; (0, None, None) for an omitted one."""
        constant = self._constant_addresses.get(name)
        if constant is not None:
            return constant
        value = values[name]
        return value.data_ptr(), tuple(value.shape()), _ORT_TYPES.get(value.data_type())

    def run(self, values, threads):
        ins = [self._address(values, name) for name in self.inputs]
        result = getattr(self, "_" + self.op_type)(values, ins, threads)
        for name, out in zip(self.outputs, result):
            if isinstance(out, np.ndarray):  # a pool buffer: it goes out as the OrtValue made for it
                values[name] = self.pool.owned[name][1]
                continue
            values[name] = out  # an input overwritten in place: a pool buffer changes hands
            for source in self.in_place:
                if values.get(source) is out and source in self.pool.owned:
                    self.pool.owned[name] = self.pool.owned.pop(source)

    def _float32(self, ins, what):
        for address, shape, dtype in ins:
            if address and dtype != np.float32:
                raise RuntimeError(f"{self.node.name}: {what} takes float32 tensors, got {dtype}")

    def _BiWKV(self, values, ins, threads):
        (w, w_shape, w_type), (u, _, u_type), (k, shape, dtype), (v, v_shape, v_type) = ins[:4]
        if len(shape) != 3 or v_shape != shape or w_shape != (shape[2],) or w_type != np.float32 or \
                u_type != np.float32 or v_type != dtype or dtype not in (np.float32, np.float16):
            raise RuntimeError(f"{self.node.name}: BiWKV takes w, u float32 [C] and k, v [B, T, C] of one type, "
                               f"got k {shape} {dtype}, v {v_shape} {v_type}, w {w_shape}")
        y = self._buffer(self.outputs[0], shape, dtype)
        B, T, C = shape
        code = _C.DTYPE_FLOAT16 if dtype == np.float16 else _C.DTYPE_FLOAT32
        _C.bi_wkv_forward_cpu(w, u, k, v, y.ctypes.data, B, T, C, code, threads)
        if len(ins) > 4:  # the receptance gate: y * sigmoid(r)
            self._float32(ins[4:] + ins[2:3], "the gated BiWKV")
            if ins[4][1] != shape:
                raise RuntimeError(f"{self.node.name}: r has shape {ins[4][1]}, k {shape}")
            _C.sigmoid_gate(y.ctypes.data, ins[4][0], y.size, threads)
        return [y]

    def _ShiftMix(self, values, ins, threads):
        self._float32(ins, "ShiftMix")
        (x, shape, _), (weight, weight_shape, _), (bias, bias_shape, _), (scale, scale_shape, _), \
            (shift, shift_shape, _) = ins[:5]
        H, W = self.attrs["grid_h"], self.attrs["grid_w"]
        if len(shape) != 3 or shape[1] != H * W:
            raise RuntimeError(f"{self.node.name}: ShiftMix expects tokens [B, {H * W}, C], got {shape}")
        B, T, C = shape
        if scale and (scale_shape != (B, 1, C) or shift_shape != (B, 1, C)):
            raise RuntimeError(f"{self.node.name}: modulation must be [B, 1, C] = {(B, 1, C)}, "
                               f"got {scale_shape} and {shift_shape}")
        pairs = ins[5:]
        if any(s != (C,) for _, s, _ in pairs) or (weight and weight_shape != (C,)) or (bias and bias_shape != (C,)):
            raise RuntimeError(f"{self.node.name}: LayerNorm parameters and token mixes must have shape [{C}]")
        outs = [self._buffer(name, shape, np.float32) for name in self.outputs]
        _C.shift_mix(x, scale, shift, B, H, W, C, [a for a, _, _ in pairs[0::2]], [a for a, _, _ in pairs[1::2]],
                     [o.ctypes.data for o in outs], threads, weight, bias, self.epsilon)
        return outs

    def _ReluSquare(self, values, ins, threads):
        self._float32(ins, "ReluSquare")
        if self.inputs[0] in self.in_place:
            _C.relu_square(ins[0][0], int(np.prod(ins[0][1])), threads)
            return [values[self.inputs[0]]]
        out = self._buffer(self.outputs[0], ins[0][1], np.float32)
        out[...] = values[self.inputs[0]].numpy()
        _C.relu_square(out.ctypes.data, out.size, threads)
        return [out]

    def _GatedResidual(self, values, ins, threads):
        self._float32(ins, "GatedResidual")
        (x, shape, _), (gate, gate_shape, _), (branch, branch_shape, _) = ins[:3]
        r = ins[3] if len(ins) > 3 else (0, shape, None)
        if len(shape) != 3 or branch_shape != shape or r[1] != shape or gate_shape != (shape[0], 1, shape[2]):
            raise RuntimeError(f"{self.node.name}: GatedResidual expects x, branch, r [B, T, C] and gate [B, 1, C], "
                               f"got {shape}, {branch_shape}, {r[1]}, {gate_shape}")
        overwritten = next((i for i in (2, 0) if self.inputs[i] in self.in_place), None)
        if overwritten is not None:  # into the branch or x, which nothing reads later
            out_value, out = values[self.inputs[overwritten]], ins[overwritten][0]
        else:
            out_value = self._buffer(self.outputs[0], shape, np.float32)
            out = out_value.ctypes.data
        _C.gated_residual(x, gate, branch, r[0], out, *shape, threads)
        return [out_value]


class SplitSession:
    """``model`` (a ModelProto, rewritten in place) run as ONNX Runtime sessions and native nodes.

    fuse: also fuse the element-wise patterns of drwkv.runtime.ort_fusion (False: only the BiWKV
    nodes run natively). profile: record ONNX Runtime's and the native nodes' time per op type for
    ``op_times()``. int8: the matrix products with constant weights in int8 (drwkv.runtime.ort_quant).
    """

    def __init__(self, model, intra_op_threads=None, fuse=True, profile=False, int8=False):
        import onnxruntime as ort
        from onnx import helper, numpy_helper

        self.threads = int(intra_op_threads or 0)
        info = ort_fusion.value_info(model)
        self.fused = ort_fusion.fuse(model, info) if fuse else _natives_only(model)
        #: How many MatMuls run in int8 (after the fusion, whose patterns match float32 graphs).
        self.quantized = ort_quant.quantize_matmuls(model, info) if int8 else 0
        graph = model.graph
        constants = {t.name: t for t in graph.initializer}
        self.inputs = [i.name for i in graph.input if i.name not in constants]
        self.output_names = [o.name for o in graph.output]

        # Cut the node list at every native node.
        groups, current = [], []
        for node in graph.node:
            if node.domain == BIWKV_DOMAIN:
                if current:
                    groups.append(current)
                groups.append(node)
                current = []
            else:
                current.append(node)
        if current:
            groups.append(current)
        # The step after which each value is read for the last time.
        last_read = {}
        for index, group in enumerate(groups):
            for node in group if isinstance(group, list) else [group]:
                for name in node.input:
                    last_read[name] = index
        for name in self.output_names:
            last_read[name] = len(groups)

        options = session_options(self.threads, env_allocators=True)
        self.steps, self.release = [], []
        self._pool = _BufferPool()
        produced = set()  # values made by the steps (graph inputs are the caller's: never overwritten)
        for index, group in enumerate(groups):
            if isinstance(group, list):
                made = {o for n in group for o in n.output}
                used = [i for n in group for i in n.input if i and i not in made and i not in constants]
                inputs = list(dict.fromkeys(used))
                outputs = [o for n in group for o in n.output if o and last_read.get(o, -1) > index]
                inits = list(dict.fromkeys(i for n in group for i in n.input if i in constants))
                sub = helper.make_graph(group, f"segment_{index}", [_declare(name, info) for name in inputs],
                                        [_declare(name, info) for name in outputs],
                                        [constants[name] for name in inits])
                sub_model = helper.make_model(sub, opset_imports=[o for o in model.opset_import
                                                                   if o.domain != BIWKV_DOMAIN],
                                              ir_version=model.ir_version)
                if profile:  # one profile file per segment
                    options.enable_profiling = True
                    options.profile_file_prefix = os.path.join(tempfile.gettempdir(),
                                                               f"drwkv_profile_{os.getpid()}_{id(self)}_{index}")
                session = ort.InferenceSession(sub_model.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
                self.steps.append(_Segment(session, inputs, outputs))
            else:
                in_place = {name for name in group.input if name in produced and last_read.get(name) == index
                            and name not in self.output_names and list(group.input).count(name) == 1}
                arrays = {name: numpy_helper.to_array(constants[name]) for name in group.input if name in constants}
                self.steps.append(_Native(group, arrays, in_place, self._pool))
                made = set(group.output)
            produced.update(made)
            self.release.append([name for name, last in last_read.items() if last == index])
        self.profile = profile
        self._native_ms = collections.Counter()
        self._lock = threading.Lock()

    def run(self, output_names, feeds):
        """-> [numpy array per name in output_names] (graph outputs)."""
        import onnxruntime as ort

        with self._lock:
            values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(feeds[name])) for name in self.inputs}
            native_ms = collections.Counter()
            for step, release in zip(self.steps, self.release):
                start = time.perf_counter() if self.profile else 0.0
                step.run(values, self.threads)
                if self.profile and isinstance(step, _Native):
                    native_ms[step.op_type] += 1e3 * (time.perf_counter() - start)
                for name in release:
                    values.pop(name, None)
                    self._pool.release(name, values.values())
            self._native_ms = native_ms
            try:  # OrtValue.numpy() may be a view of memory the next call reuses: copy (outputs are small)
                return [np.array(values[name].numpy(), copy=True) for name in output_names]
            finally:
                self._pool.release_all()

    def op_times(self):
        """{op type: ms} of the last run (profile=True): ONNX Runtime's kernels and the native nodes
        (prefixed "native ")."""
        if not self.profile:
            raise RuntimeError("op_times needs SplitSession(..., profile=True)")
        times = collections.Counter({f"native {op}": ms for op, ms in self._native_ms.items()})
        for step in self.steps:
            if isinstance(step, _Segment):
                times.update(ort_op_times(step.session))
        return dict(times)


def ort_op_times(session):
    """{op type: ms} of the last run of an InferenceSession created with enable_profiling; ends its profiling."""
    path = session.end_profiling()
    try:
        with open(path) as f:
            events = json.load(f)
    finally:
        os.remove(path)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    if not runs:
        return {}
    start, end = runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    times = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and start <= e["ts"] <= end:
            times[e["args"]["op_name"]] += e["dur"] / 1e3
    return dict(times)


def _declare(name, info):
    from onnx import helper

    elem_type, dims = info.get(name, (ort_fusion.FLOAT, None))
    return helper.make_tensor_value_info(name, elem_type, None if dims is None else
                                         [d if d is not None else f"{name}_dim{i}" for i, d in enumerate(dims)])


def _natives_only(model):
    """No fusion: the BiWKV nodes alone run natively; -> {"BiWKV": count}."""
    return {"BiWKV": sum(node.domain == BIWKV_DOMAIN and node.op_type == "BiWKV" for node in model.graph.node)}
