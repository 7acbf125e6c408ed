"""Inference backends behind one ``Denoiser`` and one ``Decoder`` interface (see ``drwkv.runtime.base``).

    from drwkv.runtime import load_decoder, load_denoiser
    denoiser = load_denoiser(onnx="model.onnx")        # or engine="model.plan", or ckpt="ckpt.pt"
    out = denoiser(x, t, y)                            # numpy in, numpy out
    decoder = load_decoder(denoiser)                   # latent models: model.vae_decoder.onnx next to it
    images = decoder(latents)                          # [-1, 1], tiled when large

Backends: TensorRT engine (``drwkv.runtime.tensorrt``), ONNX Runtime (``drwkv.runtime.onnx``) and
the PyTorch checkpoint with its diffusers VAE (``drwkv.runtime.torch_ckpt``). Each is imported only
when chosen, so importing this package, and the ONNX Runtime and TensorRT paths, never import torch.
"""
import importlib.util
import inspect
import os

from drwkv.files import UnsafePathError, file_in_folder
from drwkv.runtime.base import (ArtifactError, Decoder, Denoiser, check_decoder, decoder_path,
                                 recorded_vae_folder)

__all__ = ["ArtifactError", "Decoder", "Denoiser", "PRECISIONS", "check_threads", "load_decoder", "load_denoiser",
           "max_threads"]

#: The CPU precisions of an ONNX model's matrix products; fp32 is exact (the default).
PRECISIONS = ("fp32", "bf16", "int8")


def load_denoiser(engine=None, onnx=None, ckpt=None, precision="fp32", **options):
    """The denoiser of exactly one artifact: a TensorRT ``engine``, an ``onnx`` model or a ``ckpt``.

    precision (ONNX models on the CPU): "fp32" (exact), "bf16" (OpenVINO, CPUs with AVX512-BF16 or
    AMX: drwkv.runtime.openvino) or "int8" (ONNX Runtime, weights quantized when
    loaded: drwkv.runtime.ort_quant). ``options`` go to the backend (ONNX Runtime: providers,
    intra_op_threads; OpenVINO: intra_op_threads; PyTorch: device, threads). Raises ArtifactError
    for a missing or unusable file, RuntimeError when the backend's packages are not installed,
    ValueError unless exactly one artifact is given, or for a precision this artifact or CPU lacks.
    """
    given = [name for name, value in (("engine", engine), ("onnx", onnx), ("ckpt", ckpt)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of engine, onnx, ckpt (got {', '.join(given) or 'none'})")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "fp32" and onnx is None:
        what = "TensorRT engine" if engine is not None else "PyTorch checkpoint"
        raise ValueError(f"precision {precision} is for ONNX models on the CPU (--onnx); a {what} runs in fp32")
    for name in ("intra_op_threads", "threads"):
        if options.get(name) is not None:
            check_threads(options[name])
    if precision == "bf16":
        return _construct(_openvino_backend().OpenVINODenoiser, onnx, options)
    if engine is not None:
        return _construct(_tensorrt_backend(engine).TensorRTDenoiser, engine, options)
    if onnx is not None:  # fp32 or int8
        return _construct(_onnx_backend().OnnxRuntimeDenoiser, onnx, {**options, "precision": precision})
    return _construct(_torch_backend().TorchDenoiser, ckpt, options)


def _construct(backend, path, options):
    """backend(path, **options), refusing (ValueError, one line) options the backend does not take
    (a TypeError naming a parameter otherwise, e.g. a plugin given to an ONNX model)."""
    taken = [name for name in inspect.signature(backend.__init__).parameters if name not in ("self", "path")]
    unknown = sorted(set(options) - set(taken))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an option of the {backend.name} backend (it takes "
                         f"{', '.join(taken)})")
    return backend(path, **options)


def max_threads():
    """The most CPU threads a model may be given: 4 per CPU this process may run on. More only
    multiplies idle threads (each of ONNX Runtime's, OpenMP's and torch's pools has that many)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return 4 * cpus


def check_threads(threads):
    """Refuse (ValueError, one line) a thread count that is not an integer in [1, max_threads()]."""
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= max_threads():
        raise ValueError(f"threads must be an integer from 1 to {max_threads()} (4 per CPU this process may use), "
                         f"got {threads!r}")


def load_decoder(denoiser, path=None, **options):
    """The VAE decoder of a latent ``denoiser``, checked to decode its latents (channels,
    downsampling, VAE weights' sha256); ArtifactError (one line) when it is missing or another's.

    path: the decoder to use, of the denoiser's kind: a ``.plan`` for an engine, a ``.onnx`` for an
    ONNX model, a diffusers VAE folder for a checkpoint. Default: the one next to the artifact
    (``model.vae_decoder.onnx`` / ``.plan``), or the VAE folder a checkpoint records.
    options go to the backend (as for load_denoiser).
    """
    if not denoiser.latent:
        raise ArtifactError(f"{denoiser.path} is a pixel-space model: it takes no VAE decoder")
    kinds = {"tensorrt": (".plan", "a TensorRT decoder plan (.plan, from python -m export.to_trt)"),
             "onnxruntime": (".onnx", "an ONNX decoder (.onnx, from python -m export.to_onnx)"),
             "torch": ("", "a diffusers VAE folder")}
    backend = "onnxruntime" if denoiser.name == "openvino" else denoiser.name  # its decoder runs in ONNX Runtime
    suffix, what = kinds[backend]
    if path is None:
        path = _default_decoder(denoiser)
    elif (os.fspath(path).endswith((".onnx", ".plan")) if backend == "torch"
          else not os.fspath(path).endswith(suffix)):
        raise ArtifactError(f"--vae-decoder {path}: the decoder of a {denoiser.name} model is {what}")
    if backend == "tensorrt":
        decoder = _tensorrt_backend(path).TensorRTDecoder(path, **options)
    elif backend == "onnxruntime":
        decoder = _onnx_backend().OnnxRuntimeDecoder(path, **options)
    else:
        decoder = _torch_backend().TorchDecoder(path, **options)
    check_decoder(decoder, denoiser)
    return decoder


def _default_decoder(denoiser):
    """The decoder an artifact finds on its own; ArtifactError saying how to provide one."""
    if denoiser.name == "torch":
        folder, why_not = recorded_vae_folder(denoiser.latent, denoiser.path)
        if folder is None:
            raise ArtifactError(f"{denoiser.path} is a latent model and {why_not}: "
                                f"give the VAE folder with --vae-decoder FOLDER")
        return folder
    named = getattr(denoiser, "decoder_file", None)
    try:
        path = (file_in_folder(os.path.dirname(denoiser.path), named, f"the VAE decoder named in {denoiser.path}")
                if named else decoder_path(denoiser.path))
    except UnsafePathError as e:
        raise ArtifactError(str(e)) from None
    if not os.path.isfile(path):
        how = ("build it with python -m export.to_trt from the model's ONNX export" if denoiser.name == "tensorrt"
               else "export it with python -m export.to_onnx CKPT -o MODEL.onnx --vae FOLDER")
        raise ArtifactError(f"{denoiser.path} is a latent model and its VAE decoder {path} is missing: "
                            f"{how}, or give one with --vae-decoder")
    return path


def _tensorrt_backend(artifact):
    try:
        from drwkv.runtime import tensorrt
    except ImportError as e:
        raise RuntimeError(f"cannot run TensorRT engine {artifact}: the TensorRT backend is unavailable ({e}); "
                           f"install TensorRT's Python package (pip install tensorrt) on a machine with "
                           f"an NVIDIA GPU, or use --onnx / --ckpt") from None
    return tensorrt


def _onnx_backend():
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(f"running an ONNX model needs {' and '.join(missing)}; pip install 'drwkv[onnx]'")
    from drwkv.runtime import onnx
    return onnx


def _openvino_backend():
    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("onnx") is None:
        raise RuntimeError("precision bf16 runs in OpenVINO (not installed); pip install 'drwkv[onnx,openvino]', "
                           "or use --precision int8 or fp32")
    from drwkv.runtime import openvino
    return openvino


def _torch_backend():
    if importlib.util.find_spec("torch") is None:  # checked without importing it
        raise RuntimeError("loading a checkpoint needs PyTorch (not installed); use an exported --onnx or --engine")
    from drwkv.runtime import torch_ckpt
    return torch_ckpt
