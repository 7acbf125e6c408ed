"""TensorRT backend: runs a ``model.plan`` built by ``python -m export.to_trt``, without torch.

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
"""
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from drwkv.runtime.base import ArtifactError, Denoiser, parse_config

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
PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE = "BiWKV", "1", ""
SIDECAR_FORMAT = "drwkv-tensorrt-engine"
IO_TENSORS = ("x", "t", "y", "out")

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


def read_sidecar(plan):
    """The sidecar of a plan, as written by export.to_trt; ArtifactError if missing or not ours."""
    path = sidecar_path(plan)
    if not path.is_file():
        raise ArtifactError(f"{plan}: no sidecar {path.name} next to the engine (build the engine with "
                            f"python -m export.to_trt, which writes both)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable sidecar ({e})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"{path}: not a drwkv engine sidecar (format is not {SIDECAR_FORMAT!r})")
    sidecar["config"] = parse_config(json.dumps(sidecar.get("config")), str(path))
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


class TensorRTDenoiser(Denoiser):
    """A TensorRT engine of a drwkv denoiser.

    plugin: path of the BiWKV plugin library (default: see find_plugin_library). device: CUDA
    device index. cuda_graph: replay each batch size's engine launch from a captured CUDA graph.
    """

    name = "tensorrt"

    def __init__(self, path, plugin=None, device=0, cuda_graph=False):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise ArtifactError(f"TensorRT engine not found: {self.path}")
        sidecar = read_sidecar(self.path)
        _cuda(cudart.cudaSetDevice(device), "cudaSetDevice")
        check_sidecar(sidecar, self.path, trt.__version__, gpu_identity(device))
        self.config = sidecar["config"]
        self.plugin = load_plugin_library(plugin)

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.path, "rb") as f:
            self.engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise ArtifactError(f"{self.path}: TensorRT could not deserialize the engine (see its log above)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != set(IO_TENSORS):
            raise ArtifactError(f"{self.path}: expected I/O tensors {', '.join(IO_TENSORS)}, the engine has "
                                f"{', '.join(sorted(names))}")
        self.context = self.engine.create_execution_context()
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in IO_TENSORS}
        self.min_batch_size, _, self.max_batch_size = (int(s[0]) for s in self.engine.get_tensor_profile_shape("x", 0))

        self._stream = _cuda(cudart.cudaStreamCreate(), "cudaStreamCreate")
        per_image = {"x": self.in_channels * self.image_size ** 2, "t": 1, "y": 1,
                     "out": self.out_channels * self.image_size ** 2}
        self._buffers = {n: _DeviceBuffer(self.max_batch_size * per_image[n] * self._dtypes[n].itemsize)
                         for n in IO_TENSORS}
        for n, buffer in self._buffers.items():
            self.context.set_tensor_address(n, buffer.ptr)
        self.cuda_graph = bool(cuda_graph)
        self._graphs = {}  # batch size -> (cudaGraph_t, cudaGraphExec_t)

    def forward(self, x, t, y):
        batch = len(x)
        if batch < self.min_batch_size:
            raise ValueError(f"{self.path}: the engine's profile starts at batch {self.min_batch_size}, got {batch}")
        stream = self._stream
        # Converted inputs stay referenced until the final synchronize: the copies read them asynchronously.
        inputs = {n: np.ascontiguousarray(a, dtype=self._dtypes[n]) for n, a in (("x", x), ("t", t), ("y", y))}
        for name, array in inputs.items():
            self.context.set_input_shape(name, array.shape)
            _cuda(cudart.cudaMemcpyAsync(self._buffers[name].ptr, array.ctypes.data, array.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream), "copy to device")
        if self.cuda_graph:
            self._launch_graph(batch)
        elif not self.context.execute_async_v3(int(stream)):
            raise RuntimeError(f"{self.path}: TensorRT execution failed (see its log above)")
        out = np.empty(tuple(self.context.get_tensor_shape("out")), dtype=self._dtypes["out"])
        _cuda(cudart.cudaMemcpyAsync(out.ctypes.data, self._buffers["out"].ptr, out.nbytes,
                                     cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream), "copy to host")
        _cuda(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return out.astype(np.float32, copy=False)

    def _launch_graph(self, batch):
        if batch not in self._graphs:
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
            self._graphs[batch] = (graph, _cuda(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        _cuda(cudart.cudaGraphLaunch(self._graphs[batch][1], self._stream), "cudaGraphLaunch")

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
