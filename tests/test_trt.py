"""TensorRT paths: export.to_trt and drwkv.runtime.tensorrt.

Without TensorRT (every development and CI machine): the clear-error paths, and the sidecar and
plugin-lookup logic with stand-in ``tensorrt`` / ``cuda`` modules (those functions do not call
them). With TensorRT, cuda-python, a GPU and the built plugin: an engine is built from a small
exported model and checked against ONNX Runtime.
"""
import importlib
import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from drwkv.runtime import ArtifactError, load_denoiser

ROOT = Path(__file__).resolve().parents[1]
MODULE = "drwkv.runtime.tensorrt"


def _importable(name):
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


HAVE_TRT = _importable("tensorrt")
needs_no_trt = pytest.mark.skipif(HAVE_TRT, reason="tensorrt is importable here: the error path does not apply")


# --- without TensorRT: errors that say what is missing ---------------------------------------------

@needs_no_trt
def test_backend_import_fails_with_the_reason(monkeypatch):
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    with pytest.raises(ImportError, match=r"^tensorrt not importable \(No module named 'tensorrt'\)$"):
        importlib.import_module(MODULE)


@needs_no_trt
def test_load_denoiser_engine_says_tensorrt_is_missing(tmp_path):
    with pytest.raises(RuntimeError, match="TensorRT backend is unavailable .*tensorrt not importable"):
        load_denoiser(engine=tmp_path / "model.plan")


@needs_no_trt
def test_to_trt_without_tensorrt_is_one_line_and_status_1(tmp_path):
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", "export.to_trt", str(onnx), "-o", str(tmp_path / "m.plan")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m export.to_trt: error: tensorrt not importable")
    assert not (tmp_path / "m.plan").exists()


# --- the pure logic, with stand-in modules ----------------------------------------------------------

@pytest.fixture
def backend(monkeypatch):
    """drwkv.runtime.tensorrt imported against stand-ins for tensorrt and cuda-python."""
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = types.ModuleType("cuda.bindings.runtime")
    cuda.bindings = bindings
    stand_ins = {"tensorrt": types.ModuleType("tensorrt"), "cuda": cuda, "cuda.bindings": bindings,
                 "cuda.bindings.runtime": bindings.runtime}
    stand_ins["tensorrt"].__version__ = "10.16.1"
    for name, module in stand_ins.items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    module = importlib.import_module(MODULE)
    yield module
    sys.modules.pop(MODULE, None)  # later imports see the real environment again
    vars(sys.modules["drwkv.runtime"]).pop("tensorrt", None)


CONFIG = {"model": "DRWKV-T/4", "image_size": 16, "in_channels": 1, "num_classes": 10, "learn_sigma": True}
H100 = {"gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def _write_sidecar(backend, plan, **fields):
    sidecar = {"format": backend.SIDECAR_FORMAT, "config": CONFIG, "tensorrt_version": "10.16.1", **H100, **fields}
    backend.sidecar_path(plan).write_text(json.dumps(sidecar))


def test_sidecar_sits_next_to_the_plan(backend, tmp_path):
    assert backend.sidecar_path(tmp_path / "model.plan") == tmp_path / "model.plan.json"


def test_sidecar_is_read_and_checked(backend, tmp_path):
    plan = tmp_path / "model.plan"
    _write_sidecar(backend, plan)
    sidecar = backend.read_sidecar(plan)
    assert sidecar["config"] == CONFIG
    backend.check_sidecar(sidecar, plan, "10.16.1", H100)  # same TensorRT, same GPU: accepted


def test_plan_from_another_tensorrt_version_is_refused(backend, tmp_path):
    plan = tmp_path / "model.plan"
    _write_sidecar(backend, plan, tensorrt_version="10.15.1")
    with pytest.raises(ArtifactError, match=r"built with TensorRT 10\.15\.1, this is TensorRT 10\.16\.1: rebuild"):
        backend.check_sidecar(backend.read_sidecar(plan), plan, "10.16.1", H100)


@pytest.mark.parametrize("gpu", [{"gpu": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"},
                                 {"gpu": "NVIDIA H200", "compute_capability": "9.0"}])
def test_plan_from_another_gpu_is_refused(backend, tmp_path, gpu):
    plan = tmp_path / "model.plan"
    _write_sidecar(backend, plan)
    with pytest.raises(ArtifactError, match=r"was built for NVIDIA H100 80GB HBM3 \(compute capability 9\.0\)"):
        backend.check_sidecar(backend.read_sidecar(plan), plan, "10.16.1", gpu)


def test_missing_or_foreign_sidecar_is_an_artifact_error(backend, tmp_path):
    plan = tmp_path / "model.plan"
    with pytest.raises(ArtifactError, match="no sidecar model.plan.json"):
        backend.read_sidecar(plan)
    backend.sidecar_path(plan).write_text('{"format": "something else"}')
    with pytest.raises(ArtifactError, match="not a drwkv engine sidecar"):
        backend.read_sidecar(plan)
    backend.sidecar_path(plan).write_text("{truncated")
    with pytest.raises(ArtifactError, match="unreadable sidecar"):
        backend.read_sidecar(plan)
    _write_sidecar(backend, plan, config={"model": "DRWKV-T/4"})
    with pytest.raises(ArtifactError, match="lacks some of"):
        backend.read_sidecar(plan)


def test_plugin_library_lookup(backend, tmp_path, monkeypatch):
    library = tmp_path / backend.PLUGIN_LIBRARY
    library.write_bytes(b"")
    assert backend.find_plugin_library(library) == library
    monkeypatch.setenv("DRWKV_TRT_PLUGIN", str(library))
    assert backend.find_plugin_library() == library
    monkeypatch.setenv("DRWKV_TRT_PLUGIN", str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="BiWKV plugin library not found: .*missing.so"):
        backend.find_plugin_library()


def test_plugin_library_is_found_in_a_build_tree(backend, tmp_path, monkeypatch):
    if (Path(importlib.util.find_spec("drwkv._C").origin).parent / backend.PLUGIN_LIBRARY).exists():
        pytest.skip("a plugin library is installed next to drwkv._C here; it takes precedence")
    monkeypatch.delenv("DRWKV_TRT_PLUGIN", raising=False)
    monkeypatch.setattr(backend, "_PACKAGE_DIR", tmp_path / "drwkv")
    with pytest.raises(FileNotFoundError, match=r"not found \(looked in .*build/\*\*/plugins\); build it with"):
        backend.find_plugin_library()
    built = tmp_path / "build" / "trt" / "plugins" / backend.PLUGIN_LIBRARY
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    assert backend.find_plugin_library() == built


# --- with TensorRT: build and run an engine --------------------------------------------------------

def _real_backend_or_skip():
    if not HAVE_TRT:
        pytest.skip("tensorrt not importable")
    try:
        backend = importlib.import_module(MODULE)
    except ImportError as e:
        pytest.skip(str(e))
    try:
        backend.find_plugin_library()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    return backend


def test_engine_matches_onnx_runtime(tmp_path):
    backend = _real_backend_or_skip()
    import torch

    from drwkv.model import build_model
    from export.to_onnx import export_onnx
    from export.to_trt import build_engine

    torch.manual_seed(0)
    model = build_model(CONFIG)
    with torch.no_grad():  # a fresh model outputs zeros (adaLN-Zero): give every weight a value
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": CONFIG, "ema": model.state_dict()}, ckpt)
    onnx_path, plan = tmp_path / "model.onnx", tmp_path / "model.plan"
    export_onnx(ckpt, onnx_path)
    sidecar = build_engine(onnx_path, plan, min_batch=1, opt_batch=2, max_batch=4)
    assert sidecar["bi_wkv_nodes"] == 7 and sidecar["plugin"]["version"] == "1"

    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 1, 16, 16), dtype=np.float32)  # 6 > max batch 4: split in two calls
    t = np.array([999, 500, 10, 0, 250, 750], dtype=np.float32)
    y = np.array([0, 3, 10, 9, 1, 2], dtype=np.int64)
    expected = load_denoiser(onnx=onnx_path)(x, t, y)
    engine = backend.TensorRTDenoiser(plan)
    got = engine(x, t, y)
    assert got.shape == expected.shape == (6, 2, 16, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-3)  # TF32 matmuls in the engine
    graphed = backend.TensorRTDenoiser(plan, cuda_graph=True)
    np.testing.assert_array_equal(graphed(x, t, y), got)
    np.testing.assert_array_equal(graphed(x, t, y), got)  # replayed graphs
