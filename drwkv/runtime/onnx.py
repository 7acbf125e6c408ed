"""ONNX Runtime backend: runs an exported ``model.onnx`` (see ``export.to_onnx``) without torch.

Two kinds of graph:
- with the custom node (domain ``drwkv``, op ``BiWKV``; the default export): the node runs through
  onnxruntime-extensions as a Python op calling the native kernel (``drwkv.ort_ops``). Python ops
  must live in the domain ``ai.onnx.contrib``, so the graph is rewritten in memory before the
  session is created: every BiWKV node moves to that domain (the file on disk is untouched, and
  keeps the domain the TensorRT plugin is registered under). A BiWKV node whose k/v are float16
  (``--dtype fp16`` exports) gets Casts to float32 around it, as the Python op bridge is float32-only.
- portable (``--portable``): standard ONNX ops only; it runs as it is, on any provider.

The CUDA execution provider is used when onnxruntime offers it (the BiWKV Python op itself runs on
the CPU; ONNX Runtime moves its tensors).
"""
import os

import numpy as np

from drwkv.runtime.base import ArtifactError, Denoiser, parse_config

CONFIG_KEY = "drwkv.config"
FORMAT_KEY = "drwkv.format"
FORMAT = "drwkv-onnx-denoiser"
BIWKV_DOMAIN = "drwkv"
BIWKV_OP = "BiWKV"


def read_onnx(path):
    """Load and identify a drwkv ONNX denoiser -> (onnx.ModelProto, config); ArtifactError otherwise."""
    import onnx
    from google.protobuf.message import DecodeError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ArtifactError(f"ONNX model not found: {path}")
    try:
        model = onnx.load(path)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: not a readable ONNX file (truncated or corrupt?): {reason[:200]}") from None
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get(FORMAT_KEY) != FORMAT or CONFIG_KEY not in meta:
        raise ArtifactError(f"{path}: not a drwkv denoiser (no {FORMAT_KEY}={FORMAT!r} metadata; "
                            f"export it with python -m export.to_onnx, or the file is truncated)")
    if not model.graph.node:
        raise ArtifactError(f"{path}: the ONNX graph is empty (truncated file?)")
    return model, parse_config(meta[CONFIG_KEY], path)


def _value_types(model):
    """Element type of every named value the graph declares (inputs, initializers, value_info)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        types[info.name] = info.type.tensor_type.elem_type
    return types


def route_bi_wkv_to_extensions(model, domain):
    """Rewrite (in place) every drwkv BiWKV node into ``domain`` for the Python custom op; returns
    how many there were. float16 nodes get float32 Casts around them."""
    from onnx import TensorProto, helper

    graph = model.graph
    if not any(n.domain == BIWKV_DOMAIN and n.op_type == BIWKV_OP for n in graph.node):
        return 0
    types = _value_types(model)
    nodes, count = [], 0
    for node in graph.node:
        if node.domain != BIWKV_DOMAIN or node.op_type != BIWKV_OP:
            nodes.append(node)
            continue
        count += 1
        node.domain = domain
        if types.get(node.input[2]) == TensorProto.FLOAT16:
            w, u, k, v = node.input
            y = node.output[0]
            k32, v32, y32 = f"{y}__k_f32", f"{y}__v_f32", f"{y}__f32"  # named after the unique output
            nodes.append(helper.make_node("Cast", [k], [k32], to=TensorProto.FLOAT))
            nodes.append(helper.make_node("Cast", [v], [v32], to=TensorProto.FLOAT))
            node.input[2], node.input[3], node.output[0] = k32, v32, y32
            nodes.append(node)
            nodes.append(helper.make_node("Cast", [y32], [y], to=TensorProto.FLOAT16))
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    imports = [o for o in model.opset_import if o.domain not in (BIWKV_DOMAIN, domain)]
    del model.opset_import[:]
    model.opset_import.extend(imports + [helper.make_opsetid(domain, 1)])
    return count


class OnnxRuntimeDenoiser(Denoiser):
    """A drwkv ONNX denoiser in an onnxruntime InferenceSession.

    intra_op_threads: ONNX Runtime's thread count (default: ORT's own choice). ORT's worker threads
    do not spin while idle here, since the BiWKV kernel runs its own OpenMP threads in between.
    """

    name = "onnxruntime"

    def __init__(self, path, providers=None, intra_op_threads=None):
        import onnxruntime as ort

        model, self.config = read_onnx(path)
        self.path = os.fspath(path)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if intra_op_threads:
            options.intra_op_num_threads = int(intra_op_threads)
        from drwkv import ort_ops
        self.custom_ops = route_bi_wkv_to_extensions(model, ort_ops.DOMAIN)
        if self.custom_ops:
            options.register_custom_ops_library(ort_ops.register())
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
            raise ArtifactError(f"{self.path}: onnxruntime cannot load the graph: "
                                f"{str(e).strip().splitlines()[0][:300]}") from None
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"x", "t", "y"}:
            raise ArtifactError(f"{self.path}: expected inputs x, t, y; the graph has {sorted(inputs)}")
        self._x_dtype = np.float16 if inputs["x"].type == "tensor(float16)" else np.float32
        self.providers = self.session.get_providers()

    def forward(self, x, t, y):
        try:
            out = self.session.run(["out"], {"x": x.astype(self._x_dtype, copy=False), "t": t, "y": y})[0]
        except Exception as e:  # onnxruntime's error types derive from Exception only
            raise RuntimeError(f"{self.path}: onnxruntime failed: {str(e).strip().splitlines()[0][:300]}") from e
        return out.astype(np.float32, copy=False)
