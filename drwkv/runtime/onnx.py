"""ONNX Runtime backend: runs an exported ``model.onnx`` and its ``model.vae_decoder.onnx`` (see
``export.to_onnx``) without torch.

Two kinds of graph:
- with the custom node (domain ``drwkv``, op ``BiWKV``; the default export): the node runs through
  onnxruntime-extensions as a Python op calling the native kernel (``drwkv.ort_ops``). Python ops
  must live in the domain ``ai.onnx.contrib``, so the graph is rewritten in memory before the
  session is created: every BiWKV node moves to that domain (the file on disk is untouched, and
  keeps the domain the TensorRT plugin is registered under). A BiWKV node whose k/v are float16
  (``--dtype fp16`` exports) gets Casts to float32 around it, as the Python op bridge is float32-only.
- portable (``--portable``): standard ONNX ops only; it runs as it is, on any provider.

On the CPU (the default when onnxruntime offers no CUDA provider) the denoiser runs through
``drwkv.runtime.ort_split``: the graph is cut at its BiWKV nodes and at the element-wise patterns
``drwkv.runtime.ort_fusion`` recognises, ONNX Runtime runs the standard ops between the cuts, and
the native kernels run the rest on ONNX Runtime's tensors in place (``fuse=False`` keeps the whole
graph in one session, with the BiWKV Python op). The CUDA execution provider is used when
onnxruntime offers it, with the whole graph in one session (the BiWKV Python op itself runs on the
CPU; ONNX Runtime moves its tensors).
"""
import os

import numpy as np

from drwkv.files import UnsafePathError, file_in_folder
from drwkv.runtime.base import ArtifactError, Decoder, Denoiser, parse_config
from drwkv.runtime.ort_env import session_options
from drwkv.runtime import ort_fusion
from drwkv.runtime.ort_fusion import value_info

CONFIG_KEY = "drwkv.config"
FORMAT_KEY = "drwkv.format"
FORMAT = "drwkv-onnx-denoiser"
DECODER_FORMAT = "drwkv-onnx-vae-decoder"
# Metadata tying a denoiser to its decoder, and describing a decoder.
DECODER_FILE_KEY = "drwkv.vae_decoder"     # denoiser: the decoder's file name, next to it
VAE_SHA256_KEY = "drwkv.vae_sha256"        # both: sha256 of the VAE weights the decoder comes from
DECODER_KEYS = ("drwkv.vae_downsample", "drwkv.vae_channels", "drwkv.vae_image_channels")
BIWKV_DOMAIN = ort_fusion.BIWKV_DOMAIN
BIWKV_OP = ort_fusion.BIWKV_OP
#: The node's plugin_version attribute: the TensorRT plugin version that implements it.
PLUGIN_VERSION = "1"
FLOAT_TYPES = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _load(path, what):
    """onnx.load with one-line ArtifactErrors -> (ModelProto, metadata dict).

    External weights (the ``.data`` file the export writes beside models over about 1.9 GB) are read
    only from regular files inside the model's folder; every float weight must be finite."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    if not os.path.isfile(path):
        raise ArtifactError(f"{what} not found: {path}")
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, OSError, ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArtifactError(f"{path}: not a readable ONNX file (truncated or corrupt?): {reason[:200]}") from None
    if not model.graph.node:
        raise ArtifactError(f"{path}: the ONNX graph is empty (truncated file?)")
    folder = os.path.dirname(path)
    external = [t for t in model.graph.initializer if uses_external_data(t)]
    for location in sorted({e.value for t in external for e in t.external_data if e.key == "location"}):
        try:
            data = file_in_folder(folder, location, f"the external weights file named in {path}")
        except UnsafePathError as e:
            raise ArtifactError(str(e)) from None
        if os.path.islink(data) or not os.path.isfile(data):
            raise ArtifactError(f"{path}: its external weights file {location} is missing or not a regular file")
    if external:
        try:
            load_external_data_for_model(model, folder or ".")
        except Exception as e:  # onnx raises several types for short or unreadable data files
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise ArtifactError(f"{path}: its external weights cannot be read: {reason}") from None
    _check_finite(model, path)
    return model, {p.key: p.value for p in model.metadata_props}


def _check_finite(model, path):
    """ArtifactError naming the first float weight with a NaN or Inf (it would make every image black)."""
    from onnx import numpy_helper

    for tensor in model.graph.initializer:
        if tensor.data_type not in FLOAT_TYPES:
            continue
        finite = np.isfinite(numpy_helper.to_array(tensor))
        if not finite.all():
            bad = int(finite.size - finite.sum())
            raise ArtifactError(f"{path}: the weight {tensor.name} has {bad} non-finite value{'s' * (bad > 1)} "
                                f"(NaN or Inf): the model is damaged")


def read_onnx(path):
    """Load and identify a drwkv ONNX denoiser -> (onnx.ModelProto, config); ArtifactError otherwise."""
    path = os.fspath(path)
    model, meta = _load(path, "ONNX model")
    if meta.get(FORMAT_KEY) == DECODER_FORMAT:
        raise ArtifactError(f"{path} is a VAE decoder, not a denoiser: give the model it belongs to")
    if meta.get(FORMAT_KEY) != FORMAT or CONFIG_KEY not in meta:
        raise ArtifactError(f"{path}: not a drwkv denoiser (no {FORMAT_KEY}={FORMAT!r} metadata; "
                            f"export it with python -m export.to_onnx, or the file is truncated)")
    return model, parse_config(meta[CONFIG_KEY], path)


def read_onnx_decoder(path):
    """Load and identify a drwkv ONNX VAE decoder -> (onnx.ModelProto, metadata); ArtifactError otherwise."""
    path = os.fspath(path)
    model, meta = _load(path, "VAE decoder")
    if meta.get(FORMAT_KEY) != DECODER_FORMAT or any(k not in meta for k in (VAE_SHA256_KEY, *DECODER_KEYS)):
        raise ArtifactError(f"{path}: not a drwkv VAE decoder (no {FORMAT_KEY}={DECODER_FORMAT!r} metadata; "
                            f"python -m export.to_onnx writes it next to a latent model)")
    return model, meta


def _default_providers():
    """CUDA when onnxruntime offers it, else the CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def _session(model, path, providers, intra_op_threads, custom_ops=False, profile=False):
    """An InferenceSession of ``model`` (ModelProto) on the CUDA provider when available, else the CPU;
    profile: with ONNX Runtime's profiling on (for benchmarks)."""
    import onnxruntime as ort

    options = session_options(intra_op_threads)
    options.enable_profiling = profile
    if custom_ops:
        from drwkv import ort_ops
        options.register_custom_ops_library(ort_ops.register())
    try:
        return ort.InferenceSession(model.SerializeToString(), options,
                                    providers=providers if providers is not None else _default_providers())
    except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
        raise ArtifactError(f"{path}: onnxruntime cannot load the graph: "
                            f"{str(e).strip().splitlines()[0][:300]}") from None


def _run(session, path, outputs, feeds):
    try:
        return session.run(outputs, feeds)[0]
    except Exception as e:  # onnxruntime's error types derive from Exception only
        raise RuntimeError(f"{path}: onnxruntime failed: {str(e).strip().splitlines()[0][:300]}") from e


def route_bi_wkv_to_extensions(model, domain):
    """Rewrite (in place) every drwkv BiWKV node into ``domain`` for the Python custom op; returns
    how many there were. float16 nodes get float32 Casts around them."""
    from onnx import TensorProto, helper

    graph = model.graph
    if not any(n.domain == BIWKV_DOMAIN and n.op_type == BIWKV_OP for n in graph.node):
        return 0
    types = {name: elem_type for name, (elem_type, _) in value_info(model).items()}
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
    """A drwkv ONNX denoiser in ONNX Runtime.

    intra_op_threads: ONNX Runtime's thread count, and the native kernels' on the CPU path (default:
    ORT's own choice, and OpenMP's). ORT's worker threads do not spin while idle here, since the
    native kernels run their own OpenMP threads in between.
    fuse: on the CPU, run through drwkv.runtime.ort_split with the element-wise patterns fused
    (default True); False runs the whole graph in one session with the BiWKV Python op.
    precision: "fp32", or "int8" for the matrix products with constant weights in int8, quantized
    when loaded (drwkv.runtime.ort_quant; the CPU provider only, a float32 export only).
    """

    name = "onnxruntime"

    def __init__(self, path, providers=None, intra_op_threads=None, fuse=True, precision="fp32"):
        model, self.config = read_onnx(path)
        self.path = os.fspath(path)
        meta = {p.key: p.value for p in model.metadata_props}
        self.precision = precision
        int8 = precision == "int8"
        if int8 and meta.get("drwkv.dtype", "fp32") != "fp32":
            raise ArtifactError(f"{self.path} is a {meta['drwkv.dtype']} export: precision int8 takes a float32 one")
        if int8 and providers is not None and list(providers) != ["CPUExecutionProvider"]:
            raise ValueError(f"precision int8 runs on ONNX Runtime's CPU provider only, "
                             f"got providers {list(providers)}")
        self.exported_vae_sha256 = meta.get(VAE_SHA256_KEY)
        #: The decoder file the export wrote next to this model (None: none was written).
        self.decoder_file = meta.get(DECODER_FILE_KEY)
        inputs = {i.name: i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}}
        if set(inputs) != {"x", "t", "y"}:
            raise ArtifactError(f"{self.path}: expected inputs x, t, y; the graph has {sorted(inputs)}")
        self._x_dtype = np.float16 if inputs["x"].type.tensor_type.elem_type == 10 else np.float32
        providers = providers if providers is not None else ["CPUExecutionProvider"] if int8 else _default_providers()
        #: The fused patterns ({op: count}) on the CPU path; None when the graph runs in one session.
        #: custom_ops: how many BiWKV nodes drwkv's kernel runs, on either path.
        self.fused = None
        if fuse and list(providers) == ["CPUExecutionProvider"]:
            from drwkv.runtime.ort_split import SplitSession
            try:
                self.session = SplitSession(model, intra_op_threads=intra_op_threads, int8=int8)
            except Exception as e:  # onnxruntime raises its own exception types for invalid graphs
                raise ArtifactError(f"{self.path}: onnxruntime cannot load the graph: "
                                    f"{str(e).strip().splitlines()[0][:300]}") from None
            self.fused = self.session.fused
            self.custom_ops = self.fused.get("BiWKV", 0)
            self.providers = list(providers)
            return
        from drwkv import ort_ops
        if int8:
            from drwkv.runtime.ort_quant import quantize_matmuls
            quantize_matmuls(model)
        self.custom_ops = route_bi_wkv_to_extensions(model, ort_ops.DOMAIN)
        self.session = _session(model, self.path, providers, intra_op_threads, custom_ops=self.custom_ops > 0)
        self.providers = self.session.get_providers()

    def forward(self, x, t, y):
        out = _run(self.session, self.path, ["out"], {"x": x.astype(self._x_dtype, copy=False), "t": t, "y": y})
        return out.astype(np.float32, copy=False)


class OnnxRuntimeDecoder(Decoder):
    """A drwkv ONNX VAE decoder (``model.vae_decoder.onnx``) in an onnxruntime InferenceSession."""

    name = "onnxruntime"

    def __init__(self, path, providers=None, intra_op_threads=None):
        self.path = os.fspath(path)
        model, meta = read_onnx_decoder(self.path)
        self.vae_sha256 = meta[VAE_SHA256_KEY]
        self.downsample = int(meta["drwkv.vae_downsample"])
        self.latent_channels = int(meta["drwkv.vae_channels"])
        self.image_channels = int(meta.get("drwkv.vae_image_channels", 3))
        self.dtype = meta.get("drwkv.dtype", "fp32")
        self.session = _session(model, self.path, providers, intra_op_threads)
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs != ["latents"]:
            raise ArtifactError(f"{self.path}: expected the input latents; the graph has {inputs}")

    def forward(self, latents):
        return _run(self.session, self.path, ["image"], {"latents": latents}).astype(np.float32, copy=False)
