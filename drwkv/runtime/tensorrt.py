"""TensorRT backend: runs a ``model.plan`` and its ``model.vae_decoder.plan`` built by
``python -m export.to_trt``, without torch.

Needs TensorRT's Python package (``tensorrt``) and cuda-python (``cuda.bindings.runtime``) on a
machine with an NVIDIA GPU; importing this module without them raises ImportError saying which is
missing. The engine's BiWKV layers are our plugin: its library (libdrwkv_trt_plugin.so, built from
plugins/) is loaded into TensorRT's plugin registry before the plan is deserialized.

Every plan has a JSON sidecar ``<plan>.json`` written by export.to_trt: the model config and the
TensorRT version and GPU the plan was built for. A plan runs only on the TensorRT version and GPU
model that built it, so both are checked before deserializing, with a message saying what to do.

Buffers live on the device for the profile's largest batch; a call copies x, t, y in, runs
``execute_async_v3`` on the backend's stream and copies ``out`` back. With ``cuda_graph=True`` the
engine launch of each batch size is captured once into a CUDA graph and replayed.

A decoder plan (I/O ``latents`` -> ``image``, batch and tile size dynamic within its profile) has
its own sidecar format, naming the VAE weights' sha256, the downsampling, the channels and the
profile's tile range; ``TensorRTDecoder.max_tile`` makes larger latents decode in tiles.
"""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from drwkv.runtime.base import ArtifactError, Decoder, Denoiser, parse_config
from drwkv.runtime.onnx import BIWKV_OP, PLUGIN_VERSION

try:
    import tensorrt as trt
except ImportError as e:
    raise ImportError(f"tensorrt not importable ({e})") from None
try:
    from cuda.bindings import runtime as cudart
except ImportError:
    try:
        from cuda import cudart  # cuda-python before 12.6
    except ImportError as e:
        raise ImportError(f"cuda-python not importable ({e}); pip install cuda-python") from None

PLUGIN_LIBRARY = "libdrwkv_trt_plugin.so"
PLUGIN_NAME, PLUGIN_NAMESPACE = BIWKV_OP, ""  # the ONNX parser maps the node to the plugin by op_type
SIDECAR_FORMAT = "drwkv-tensorrt-engine"
DECODER_SIDECAR_FORMAT = "drwkv-tensorrt-vae-decoder"
IO_TENSORS = ("x", "t", "y", "out")
DECODER_IO_TENSORS = ("latents", "image")
DECODER_KEYS = ("vae_sha256", "downsample", "latent_channels", "image_channels", "profile")

_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_loaded_plugins = {}  # resolved path -> registry handle: a library can be registered once per process


def sidecar_path(plan):
    """The JSON sidecar next to a plan: model.plan -> model.plan.json."""
    return Path(os.fspath(plan) + ".json")


def find_plugin_library(path=None):
    """The BiWKV plugin library: ``path``, else $DRWKV_TRT_PLUGIN, else next to drwkv._C (a pip
    install built with TensorRT headers puts it there), else the newest CMake build under the
    source tree's build/. FileNotFoundError if none."""
    if path is None:
        path = os.environ.get("DRWKV_TRT_PLUGIN")
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"BiWKV plugin library not found: {path}")
        return Path(path)
    candidates = []
    extension = importlib.util.find_spec("drwkv._C")  # where pip put the extension, and the plugin with it
    if extension is not None and extension.origin:
        candidates.append(Path(extension.origin).parent / PLUGIN_LIBRARY)
    candidates.append(_PACKAGE_DIR / PLUGIN_LIBRARY)
    builds = _PACKAGE_DIR.parent / "build"
    candidates += sorted(builds.glob(f"**/plugins/{PLUGIN_LIBRARY}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    searched = dict.fromkeys([str(c.parent) for c in candidates] + [f"{builds}/**/plugins"])  # in search order
    raise FileNotFoundError(
        f"BiWKV plugin library {PLUGIN_LIBRARY} not found (looked in {', '.join(searched)}); build it with: "
        f"cmake -S . -B build/trt -DTensorRT_ROOT=<TensorRT> "
        f"&& cmake --build build/trt --target drwkv_trt_plugin, or pass its path (--plugin, $DRWKV_TRT_PLUGIN)")


def load_plugin_library(path=None):
    """Register the BiWKV plugin with TensorRT (once per process); returns the library's path."""
    library = find_plugin_library(path).resolve()
    if library not in _loaded_plugins:
        registry = trt.get_plugin_registry()
        handle = registry.load_library(str(library))
        if handle is None:
            raise RuntimeError(f"TensorRT could not load the plugin library {library} (built for another "
                               f"TensorRT or CUDA version, or BiWKV is already registered from another library?)")
        _loaded_plugins[library] = handle
        if registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
            raise RuntimeError(f"{library} loaded but registered no {PLUGIN_NAME} version {PLUGIN_VERSION} plugin")
    return library


def _cuda(result, what):
    """Unpack a cuda-python call's (error, value...) tuple; RuntimeError on failure."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"{what} failed: {cudart.cudaGetErrorString(error)[1].decode()}")
    return values[0] if len(values) == 1 else tuple(values)


def gpu_identity(device=0):
    """The GPU a plan is built for or run on: {"gpu": name, "compute_capability": "major.minor"}."""
    props = _cuda(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return {"gpu": name.rstrip("\0").strip(), "compute_capability": f"{props.major}.{props.minor}"}


def read_sidecar(plan, kind=SIDECAR_FORMAT):
    """The sidecar of a plan, as written by export.to_trt (``kind``: a denoiser's or, with
    DECODER_SIDECAR_FORMAT, a VAE decoder's); ArtifactError if missing or not ours."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise ArtifactError(f"{plan}: no sidecar {path.name} next to the engine (build the engine with "
                            f"python -m export.to_trt, which writes both)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable sidecar ({e})") from None
    found = sidecar.get("format") if isinstance(sidecar, dict) else None
    if found == DECODER_SIDECAR_FORMAT and kind == SIDECAR_FORMAT:
        raise ArtifactError(f"{plan} is a VAE decoder engine, not a denoiser: give the model it belongs to")
    if found != kind:
        raise ArtifactError(f"{path}: not a drwkv {'engine' if kind == SIDECAR_FORMAT else 'VAE decoder'} sidecar "
                            f"(format is not {kind!r})")
    if kind == SIDECAR_FORMAT:
        sidecar["config"] = parse_config(json.dumps(sidecar.get("config")), str(path))
    elif any(k not in sidecar for k in DECODER_KEYS):
        raise ArtifactError(f"{path}: the VAE decoder sidecar lacks some of {', '.join(DECODER_KEYS)}")
    return sidecar


def check_sidecar(sidecar, plan, tensorrt_version, gpu):
    """Refuse a plan built by another TensorRT version or for another GPU (ArtifactError)."""
    built_version = sidecar.get("tensorrt_version")
    if built_version != tensorrt_version:
        raise ArtifactError(f"{plan} was built with TensorRT {built_version}, this is TensorRT {tensorrt_version}: "
                            f"rebuild it here with python -m export.to_trt (plans are tied to the TensorRT version)")
    built_gpu = (sidecar.get("gpu"), sidecar.get("compute_capability"))
    if built_gpu != (gpu["gpu"], gpu["compute_capability"]):
        raise ArtifactError(f"{plan} was built for {built_gpu[0]} (compute capability {built_gpu[1]}), this GPU is "
                            f"{gpu['gpu']} ({gpu['compute_capability']}): rebuild it here with python -m export.to_trt")


class _DeviceBuffer:
    """One device allocation of a fixed size."""

    def __init__(self, nbytes):
        self.nbytes = max(int(nbytes), 1)
        self.ptr = int(_cuda(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self):
        if self.ptr:
            cudart.cudaFree(self.ptr)
            self.ptr = 0


class _EngineRunner:
    """A deserialized plan, its execution context, device buffers for the profile's largest shapes,
    and a stream; the common part of the denoiser and decoder backends."""

    def _open(self, path, kind, io_tensors, device):
        """Check the sidecar and deserialize the plan; returns the sidecar."""
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ArtifactError(f"TensorRT {'engine' if kind == SIDECAR_FORMAT else 'VAE decoder'} not found: "
                                f"{self.path}")
        sidecar = read_sidecar(self.path, kind)
        _cuda(cudart.cudaSetDevice(device), "cudaSetDevice")
        check_sidecar(sidecar, self.path, trt.__version__, gpu_identity(device))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.path, "rb") as f:
            self.engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialize the engine (see its log above)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(io_tensors):
            raise ArtifactError(f"{self.path}: expected I/O tensors {', '.join(io_tensors)}, the engine has "
                                f"{', '.join(sorted(names))}")
        self.context = self.engine.create_execution_context()
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in io_tensors}
        self._stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self._graphs = {}  # input shapes -> (cudaGraph_t, cudaGraphExec_t)
        return sidecar

    def _allocate(self, elements):
        """Device buffers of ``elements[name]`` elements each, bound to the context."""
        self._buffers = {n: _DeviceBuffer(count * self._dtypes[n].itemsize) for n, count in elements.items()}
        for n, buffer in self._buffers.items():
            self.context.set_tensor_address(n, buffer.ptr)

    def _execute(self, inputs, output, cuda_graph=False):
        """Copy ``inputs`` {name: array} in, run the engine, copy ``output`` back -> float32 array."""
        stream = self._stream
        # Converted inputs stay referenced until the final synchronize: the copies read them asynchronously.
        inputs = {n: np.ascontiguousarray(a, dtype=self._dtypes[n]) for n, a in inputs.items()}
        for name, array in inputs.items():
            self.context.set_input_shape(name, array.shape)
            _cuda(cudart.cudaMemcpyAsync(self._buffers[name].ptr, array.ctypes.data, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "copy to device")
        if cuda_graph:
            self._launch_graph(tuple(a.shape for a in inputs.values()))
        elif not self.context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")
        out = np.empty(tuple(self.context.get_tensor_shape(output)), dtype=self._dtypes[output])
        _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers[output].ptr, out.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "copy to host")
        _cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def _launch_graph(self, shapes):
        if shapes not in self._graphs:
            # One plain launch first: TensorRT finishes shape-dependent setup outside the capture.
            if not self.context.execute_async_v3(int(self._stream)):
                raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")
            _cuda(cudart.cudaStreamBeginCapture(self._stream,
                                                cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                  "cudaStreamBeginCapture")
            launched = self.context.execute_async_v3(int(self._stream))
            graph = _cuda(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            if not launched:
                cudart.cudaGraphDestroy(graph)
                raise RuntimeError(f"{self.path}: TensorRT execution failed while capturing a CUDA graph")
            self._graphs[shapes] = (graph, _cuda(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        _cuda(cudart.cudaGraphLaunch(self._graphs[shapes][1], self._stream), "cudaGraphLaunch")

    def close(self):
        """Free the device buffers, graphs and stream (also done when the object is collected)."""
        for graph, graph_exec in getattr(self, "_graphs", {}).values():
            cudart.cudaGraphExecDestroy(graph_exec)
            cudart.cudaGraphDestroy(graph)
        self._graphs = {}
        for buffer in getattr(self, "_buffers", {}).values():
            buffer.free()
        if getattr(self, "_stream", None) is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self):
        self.close()


class TensorRTDenoiser(_EngineRunner, Denoiser):
    """A TensorRT engine of a drwkv denoiser.

    plugin: path of the BiWKV plugin library (default: see find_plugin_library). device: CUDA
    device index. cuda_graph: replay each batch size's engine launch from a captured CUDA graph.
    """

    name = "tensorrt"

    def __init__(self, path, plugin=None, device=0, cuda_graph=False):
        if not os.path.isfile(os.fspath(path)):
            raise ArtifactError(f"TensorRT engine not found: {os.fspath(path)}")
        # The plugin is registered before the plan that uses it is deserialized; a plan built from a
        # portable graph (sidecar "plugin": null) has no BiWKV layer and needs none.
        needs_plugin = read_sidecar(path).get("plugin") is not None
        self.plugin = load_plugin_library(plugin) if needs_plugin else None
        sidecar = self._open(path, SIDECAR_FORMAT, IO_TENSORS, device)
        self.config = sidecar["config"]
        self.exported_vae_sha256 = sidecar.get("vae_sha256")
        self.decoder_file = sidecar.get("vae_decoder")
        self.min_batch_size, _, self.max_batch_size = (int(s[0]) for s in self.engine.get_tensor_profile_shape("x", 0))
        per_image = {"x": self.in_channels * self.image_size ** 2, "t": 1, "y": 1,
                     "out": self.out_channels * self.image_size ** 2}
        self._allocate({n: self.max_batch_size * count for n, count in per_image.items()})
        self.cuda_graph = bool(cuda_graph)

    def forward(self, x, t, y):
        if len(x) < self.min_batch_size:
            raise ValueError(f"{self.path}: the engine's profile starts at batch {self.min_batch_size}, got {len(x)}")
        return self._execute({"x": x, "t": t, "y": y}, "out", self.cuda_graph)


class TensorRTDecoder(_EngineRunner, Decoder):
    """A TensorRT engine of a VAE decoder (``model.vae_decoder.plan``); tiles up to the profile's
    largest tile. device: CUDA device index."""

    name = "tensorrt"

    def __init__(self, path, device=0):
        sidecar = self._open(path, DECODER_SIDECAR_FORMAT, DECODER_IO_TENSORS, device)
        self.vae_sha256 = sidecar["vae_sha256"]
        self.downsample = int(sidecar["downsample"])
        self.latent_channels = int(sidecar["latent_channels"])
        self.image_channels = int(sidecar["image_channels"])
        low, _, high = (tuple(int(d) for d in s) for s in self.engine.get_tensor_profile_shape("latents", 0))
        self.min_batch_size, self.max_batch_size = low[0], high[0]
        self.min_tile, self.max_tile = min(low[2:]), min(high[2:])
        f = self.downsample
        self._allocate({"latents": self.max_batch_size * self.latent_channels * high[2] * high[3],
                        "image": self.max_batch_size * self.image_channels * high[2] * high[3] * f * f})

    def forward(self, latents):
        B, _, h, w = latents.shape
        if B < self.min_batch_size or min(h, w) < self.min_tile:
            raise ValueError(f"{self.path}: latents {list(latents.shape)} are below the engine's profile (batch from "
                             f"{self.min_batch_size}, tiles from {self.min_tile})")
        return self._execute({"latents": latents}, "image")
