"""The Bi-WKV operator for ONNX Runtime, as an onnxruntime-extensions Python custom op.

ONNX Runtime's Python wheels carry no C headers, so the operator cannot be compiled as a native ORT
kernel here. onnxruntime-extensions instead ships a custom-op library that calls back into Python:
an op declared with ``onnx_op`` in the domain ``ai.onnx.contrib`` runs the decorated function on
numpy arrays. Ours calls the native CPU kernel ``drwkv._C.bi_wkv_forward_numpy`` (no torch).

    library = register()                       # once per process; returns the library path
    options.register_custom_ops_library(library)

The exported graphs carry the node in the domain ``drwkv``; ``drwkv.runtime.onnx`` renames that
domain to ``ai.onnx.contrib`` in memory before creating a session (see there).

Limits of the Python custom-op bridge: its tensors are float32 only (float16 inputs abort the
process inside onnxruntime-extensions), so float16 graphs run the operator between casts; and each
call takes the GIL and copies inputs and output once.

For speed, our op hands its output back through a dispatcher of our own, which relies on internals
of onnxruntime-extensions (tested with the versions pyproject.toml allows; see _install_array_return).
When a release changes them, the op runs through the library's stock dispatcher instead, slower,
with one RuntimeWarning.
"""
import contextlib
import inspect
import sys
import warnings

import numpy as np

from drwkv import _C
from drwkv.runtime.onnx import PLUGIN_VERSION

DOMAIN = "ai.onnx.contrib"
OP_TYPE = "BiWKV"

_library_path = None


@contextlib.contextmanager
def _torch_hidden():
    """Make ``import torch`` fail for the duration (unless torch is already loaded).

    ``import onnxruntime_extensions`` tries to import torch for converters we never use; that costs
    seconds and would pull torch into the torch-free runtime. Hiding it makes that optional import
    take its ImportError branch.
    """
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None
    try:
        yield
    finally:
        if sys.modules.get("torch", False) is None:
            del sys.modules["torch"]


def _bi_wkv(w, u, k, v, plugin_version=PLUGIN_VERSION):
    return _C.bi_wkv_forward_numpy(w, u, k, v)


def register():
    """Register the BiWKV Python op (idempotent) and return the onnxruntime-extensions library path."""
    global _library_path
    if _library_path is not None:
        return _library_path
    try:
        with _torch_hidden():
            import onnxruntime_extensions as ortx
            from onnxruntime_extensions import _ocos
    except ImportError as e:
        raise RuntimeError(f"running the BiWKV custom op needs onnxruntime-extensions ({e}); "
                           f"pip install onnxruntime-extensions, or export with --portable") from None
    f32 = ortx.PyCustomOpDef.dt_float
    opdef = ortx.onnx_op(op_type=OP_TYPE, inputs=[f32] * 4, outputs=[f32],
                         attrs={"plugin_version": ortx.PyCustomOpDef.dt_string})(_bi_wkv)
    _install_array_return(_ocos, {opdef._id}, getattr(ortx, "__version__", "?"))
    _library_path = ortx.get_library_path()
    return _library_path


def _install_array_return(_ocos, op_ids, version):
    """Let our op hand its output back as a numpy array.

    The stock dispatcher of onnxruntime-extensions returns every output as ``tolist()``, which the
    C++ side converts back to an array: for a [B, T, C] float32 output that costs more than the
    kernel itself. The C++ side accepts an array directly, so for our op ids we return the flat
    array (one memcpy into the ORT output); other Python ops keep the stock dispatcher.

    This needs, from ``onnxruntime_extensions._ocos``: the stock dispatcher
    ``_on_pyop_invocation(op_id, feed, attributes)``, the registry ``Opdef._odlist`` of op
    definitions with ``body`` and ``cast_attributes``, and ``PyCustomOpDef.install_hooker``. If one
    is missing or takes other arguments, the stock dispatcher (installed by the library itself)
    stays, and a RuntimeWarning says so.
    """
    try:
        stock = _ocos._on_pyop_invocation
        install_hooker = _ocos.PyCustomOpDef.install_hooker
        opdefs = [_ocos.Opdef._odlist[op_id] for op_id in op_ids]
        parameters = list(inspect.signature(stock).parameters)
        if len(parameters) != 3:
            raise TypeError(f"_on_pyop_invocation takes ({', '.join(parameters)}), not (op_id, feed, attributes)")
        for opdef in opdefs:
            if not (callable(opdef.body) and callable(opdef.cast_attributes)):
                raise TypeError("its op definitions have no callable body and cast_attributes")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        warnings.warn(f"onnxruntime-extensions {version} has other internals than drwkv.ort_ops was written for "
                      f"({type(e).__name__}: {e}); BiWKV runs through its stock dispatcher, which is slower",
                      RuntimeWarning, stacklevel=3)
        return

    def invoke(op_id, feed, attributes):
        if op_id not in op_ids:
            return stock(op_id, feed, attributes)
        opdef = _ocos.Opdef._odlist[op_id]
        y = opdef.body(*feed, **opdef.cast_attributes(attributes))
        return op_id, y.shape, np.ascontiguousarray(y).reshape(-1)

    install_hooker(invoke)
