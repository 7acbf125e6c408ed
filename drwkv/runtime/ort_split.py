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
import math
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
        self.binding = session.io_binding()  # one per segment: making one costs as much as binding the values

    def run(self, values, threads):
        binding = self.binding
        for name in self.inputs:
            binding.bind_ortvalue_input(name, values[name])
        for name in self.outputs:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        values.update(zip(self.outputs, binding.get_outputs()))
        # Bound values would stay alive until the next call: their memory could not be reused meanwhile.
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()


class _BufferPool:
    """The native nodes' output buffers, reused from value to value and from call to call: a buffer
    goes back to the pool when the run has released every value over it. Fresh allocations that large
    would be mapped and page-faulted afresh every time; one buffer per node would keep them all at once."""

    def __init__(self):
        self.free = collections.defaultdict(list)   # (shape, dtype) -> [(array, OrtValue)]
        self.owned = {}                              # value name -> (array, OrtValue); values may share one

    def take(self, name, shape, dtype):
        """-> (array, OrtValue) of a buffer for value ``name``."""
        key = (tuple(shape), np.dtype(dtype))
        entry = self.free[key].pop() if self.free[key] else None
        if entry is None:
            import onnxruntime as ort

            array = np.empty(shape, dtype)
            entry = (array, ort.OrtValue.ortvalue_from_numpy(array))
        self.owned[name] = entry
        return entry

    def share(self, name, other):
        """Value ``other`` lies in the buffer of ``name`` too (written in place, or a view)."""
        self.owned[other] = self.owned[name]

    def note_views(self, inputs, outputs, values):
        """A segment's outputs that ONNX Runtime made over one of its inputs' buffers keep that buffer
        from the pool while they live (a safeguard: ONNX Runtime 1.32 copied the segment outputs of
        Reshape, Flatten, Squeeze and Identity)."""
        for name in inputs:
            entry = self.owned.get(name)
            if entry is None:
                continue
            start = entry[0].ctypes.data
            end = start + entry[0].nbytes
            for output in outputs:
                if start <= values[output].data_ptr() < end:
                    self.share(name, output)

    def release(self, name):
        entry = self.owned.pop(name, None)
        if entry is not None and not any(e is entry for e in self.owned.values()):
            self.free[(entry[0].shape, entry[0].dtype)].append(entry)

    def release_all(self):
        for name in list(self.owned):
            self.release(name)


class _Native:
    """One native node: its inputs are values of the run or constants of the graph. The checks of
    the inputs' shapes and types run when they differ from the previous call's."""

    def __init__(self, node, constants, in_place, pool):
        self.node, self.op_type = node, node.op_type
        self.pool = pool
        self.inputs = list(node.input)
        self.outputs = list(node.output)
        self.constants = {name: np.ascontiguousarray(constants[name]) for name in self.inputs if name in constants}
        self.attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        self.epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        self.in_place = in_place  # the inputs this node may overwrite (made by an earlier step, read by no later one)
        # Per input: its (address, shape, dtype) when a constant or omitted (""), else None: a value of the run.
        fixed = {"": (0, None, None)}
        fixed.update({name: (a.ctypes.data, a.shape, a.dtype) for name, a in self.constants.items()})
        self._fixed = [fixed.get(name) for name in self.inputs]
        self._check, self._compute = getattr(self, "_check_" + self.op_type), getattr(self, "_" + self.op_type)
        self._checked = None  # the inputs' shapes and types last checked

    def run(self, values, threads):
        ins = []
        for name, fixed in zip(self.inputs, self._fixed):
            if fixed is None:
                value = values[name]
                fixed = (value.data_ptr(), tuple(value.shape()), _ORT_TYPES.get(value.data_type()))
            ins.append(fixed)
        signature = [(shape, dtype) for _, shape, dtype in ins]
        if signature != self._checked:
            self._check(ins)
            self._checked = signature
        self._compute(values, ins, threads)

    def _output(self, values, name, shape, dtype=np.float32):
        """-> a buffer from the pool for output ``name``, which becomes its value."""
        array, values[name] = self.pool.take(name, shape, dtype)
        return array

    def _overwrite(self, values, source, name):
        """Output ``name`` is input ``source`` overwritten in place."""
        values[name] = values[source]
        if source in self.pool.owned:
            self.pool.share(source, name)

    def _float32(self, ins, what):
        for address, shape, dtype in ins:
            if address and dtype != np.float32:
                raise RuntimeError(f"{self.node.name}: {what} takes float32 tensors, got {dtype}")

    def _check_BiWKV(self, ins):
        (_, w_shape, w_type), (_, _, u_type), (_, shape, dtype), (_, v_shape, v_type) = ins[:4]
        if len(shape) != 3 or v_shape != shape or w_shape != (shape[2],) or w_type != np.float32 or \
                u_type != np.float32 or v_type != dtype or dtype not in (np.float32, np.float16):
            raise RuntimeError(f"{self.node.name}: BiWKV takes w, u float32 [C] and k, v [B, T, C] of one type, "
                               f"got k {shape} {dtype}, v {v_shape} {v_type}, w {w_shape}")
        if len(ins) > 4:  # the receptance gate: y * sigmoid(r)
            self._float32(ins[4:] + ins[2:3], "the gated BiWKV")
            if ins[4][1] != shape:
                raise RuntimeError(f"{self.node.name}: r has shape {ins[4][1]}, k {shape}")

    def _BiWKV(self, values, ins, threads):
        (w, _, _), (u, _, _), (k, shape, dtype), (v, _, _) = ins[:4]
        y = self._output(values, self.outputs[0], shape, dtype)
        B, T, C = shape
        code = _C.DTYPE_FLOAT16 if dtype == np.float16 else _C.DTYPE_FLOAT32
        _C.bi_wkv_forward_cpu(w, u, k, v, y.ctypes.data, B, T, C, code, threads)
        if len(ins) > 4:
            _C.sigmoid_gate(y.ctypes.data, ins[4][0], y.size, threads)

    def _check_ShiftMix(self, ins):
        self._float32(ins, "ShiftMix")
        (_, shape, _), (weight, weight_shape, _), (bias, bias_shape, _), (scale, scale_shape, _), \
            (_, shift_shape, _) = ins[:5]
        H, W = self.attrs["grid_h"], self.attrs["grid_w"]
        if len(shape) != 3 or shape[1] != H * W:
            raise RuntimeError(f"{self.node.name}: ShiftMix expects tokens [B, {H * W}, C], got {shape}")
        B, T, C = shape
        if scale and (scale_shape != (B, 1, C) or shift_shape != (B, 1, C)):
            raise RuntimeError(f"{self.node.name}: modulation must be [B, 1, C] = {(B, 1, C)}, "
                               f"got {scale_shape} and {shift_shape}")
        if any(s != (C,) for _, s, _ in ins[5:]) or (weight and weight_shape != (C,)) or (bias and bias_shape != (C,)):
            raise RuntimeError(f"{self.node.name}: LayerNorm parameters and token mixes must have shape [{C}]")

    def _ShiftMix(self, values, ins, threads):
        (x, shape, _), (weight, _, _), (bias, _, _), (scale, _, _), (shift, _, _) = ins[:5]
        B, T, C = shape
        outs = [self._output(values, name, shape).ctypes.data for name in self.outputs]
        pairs = ins[5:]
        _C.shift_mix(x, scale, shift, B, self.attrs["grid_h"], self.attrs["grid_w"], C,
                     [a for a, _, _ in pairs[0::2]], [a for a, _, _ in pairs[1::2]], outs, threads, weight, bias,
                     self.epsilon)

    def _check_ReluSquare(self, ins):
        self._float32(ins, "ReluSquare")

    def _ReluSquare(self, values, ins, threads):
        (x, shape, _), = ins
        if self.inputs[0] in self.in_place:
            self._overwrite(values, self.inputs[0], self.outputs[0])
        else:
            out = self._output(values, self.outputs[0], shape)
            out[...] = values[self.inputs[0]].numpy()
            x = out.ctypes.data
        _C.relu_square(x, math.prod(shape), threads)

    def _check_GatedResidual(self, ins):
        self._float32(ins, "GatedResidual")
        (_, shape, _), (_, gate_shape, _), (_, branch_shape, _) = ins[:3]
        r_shape = ins[3][1] if len(ins) > 3 else shape
        if len(shape) != 3 or branch_shape != shape or r_shape != shape or gate_shape != (shape[0], 1, shape[2]):
            raise RuntimeError(f"{self.node.name}: GatedResidual expects x, branch, r [B, T, C] and gate [B, 1, C], "
                               f"got {shape}, {branch_shape}, {r_shape}, {gate_shape}")

    def _GatedResidual(self, values, ins, threads):
        (x, shape, _), (gate, _, _), (branch, _, _) = ins[:3]
        r = ins[3][0] if len(ins) > 3 else 0
        overwritten = next((i for i in (2, 0) if self.inputs[i] in self.in_place), None)
        if overwritten is not None:  # into the branch or x, which nothing reads later
            self._overwrite(values, self.inputs[overwritten], self.outputs[0])
            out = ins[overwritten][0]
        else:
            out = self._output(values, self.outputs[0], shape).ctypes.data
        _C.gated_residual(x, gate, branch, r, out, *shape, threads)


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
        handed_on = set(self.inputs)  # values that go from step to step: those a run holds
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
                handed_on.update(outputs)
            else:
                in_place = {name for name in group.input if name in produced and last_read.get(name) == index
                            and name not in self.output_names and list(group.input).count(name) == 1}
                arrays = {name: numpy_helper.to_array(constants[name]) for name in group.input if name in constants}
                self.steps.append(_Native(group, arrays, in_place, self._pool))
                made = set(group.output)
                handed_on.update(made)
            produced.update(made)
            self.release.append([name for name, last in last_read.items() if last == index and name in handed_on])
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
                if isinstance(step, _Native):
                    if self.profile:
                        native_ms[step.op_type] += 1e3 * (time.perf_counter() - start)
                else:
                    self._pool.note_views(step.inputs, step.outputs, values)
                for name in release:
                    del values[name]
                    self._pool.release(name)
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
