"""Inference backends behind one ``Denoiser`` interface (see ``drwkv.runtime.base``).

    from drwkv.runtime import load_denoiser
    denoiser = load_denoiser(onnx="model.onnx")        # or engine="model.plan", or ckpt="ckpt.pt"
    out = denoiser(x, t, y)                            # numpy in, numpy out

Backends: TensorRT engine (``drwkv.runtime.tensorrt``), ONNX Runtime (``drwkv.runtime.onnx``) and
the PyTorch checkpoint (``drwkv.runtime.torch_ckpt``). Each is imported only when chosen, so
importing this package, and the ONNX Runtime and TensorRT paths, never import torch.
"""
import importlib.util

from drwkv.runtime.base import ArtifactError, Denoiser

__all__ = ["ArtifactError", "Denoiser", "load_denoiser"]


def load_denoiser(engine=None, onnx=None, ckpt=None, **options):
    """The denoiser of exactly one artifact: a TensorRT ``engine``, an ``onnx`` model or a ``ckpt``.

    ``options`` go to the backend (ONNX Runtime: providers, intra_op_threads; PyTorch: device,
    threads). Raises ArtifactError for a missing or unusable file, RuntimeError when the backend's
    packages are not installed, ValueError unless exactly one artifact is given.
    """
    given = [name for name, value in (("engine", engine), ("onnx", onnx), ("ckpt", ckpt)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of engine, onnx, ckpt (got {', '.join(given) or 'none'})")
    if engine is not None:
        try:
            from drwkv.runtime.tensorrt import TensorRTDenoiser
        except ImportError as e:
            raise RuntimeError(f"cannot run TensorRT engine {engine}: the TensorRT backend is unavailable ({e}); "
                               f"install TensorRT's Python package (pip install tensorrt) on a machine with "
                               f"an NVIDIA GPU, or use --onnx / --ckpt") from None
        return TensorRTDenoiser(engine, **options)
    if onnx is not None:
        missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
        if missing:
            raise RuntimeError(f"running an ONNX model needs {' and '.join(missing)}; pip install 'drwkv[onnx]'")
        from drwkv.runtime.onnx import OnnxRuntimeDenoiser
        return OnnxRuntimeDenoiser(onnx, **options)
    if importlib.util.find_spec("torch") is None:  # checked without importing it
        raise RuntimeError("loading a checkpoint needs PyTorch (not installed); use an exported --onnx or --engine")
    from drwkv.runtime.torch_ckpt import TorchDenoiser
    return TorchDenoiser(ckpt, **options)
