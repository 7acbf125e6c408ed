"""export.to_onnx: graph contract (one drwkv::BiWKV per block, I/O, dynamic batch, metadata, checker,
shape inference) and numerics of the three variants against the PyTorch checkpoint, through
ONNX Runtime. Each export takes tens of seconds, so each variant is exported once per module."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from conftest import write_random_checkpoint  # noqa: E402
from onnx import TensorProto  # noqa: E402

from drwkv.runtime import load_denoiser  # noqa: E402
from drwkv.samplers import make_sampler, sample  # noqa: E402
from drwkv.schedule import Schedule  # noqa: E402
from export import to_onnx  # noqa: E402

CONFIG = {"model": "DRWKV-T/2", "image_size": 8, "in_channels": 1, "num_classes": 3, "learn_sigma": True,
          "class_names": ["shirt", "bag", "boot"], "dataset": "test",
          "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}}
BLOCKS = 7  # DRWKV-T: depth 7, one SpatialMix (one BiWKV) per block


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def ckpt(workdir):
    """A random DRWKV-T/2 checkpoint whose blocks are not the identity."""
    return write_random_checkpoint(workdir / "ckpt.pt", CONFIG)


@pytest.fixture(scope="module")
def fp32_onnx(ckpt, workdir):
    path = workdir / "model.onnx"
    to_onnx.export_onnx(ckpt, path)
    return path


@pytest.fixture(scope="module")
def torch_denoiser(ckpt):
    # One torch thread: these tiny batches gain nothing from more, and on a busy machine torch's
    # waiting OpenMP threads slow it down many times over.
    return load_denoiser(ckpt=ckpt, threads=1)


def _inputs(B, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, 1, 8, 8)).astype(np.float32), rng.uniform(0, 999, B).astype(np.float32),
            rng.integers(0, 4, B))


def _max_relative_error(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_graph_contract(fp32_onnx):
    model = onnx.load(fp32_onnx)
    graph = model.graph
    nodes = [n for n in graph.node if n.domain == "drwkv"]
    assert len(nodes) == BLOCKS and all(n.op_type == "BiWKV" for n in nodes)
    for node in nodes:
        assert len(node.input) == 4 and len(node.output) == 1
        (attr,) = node.attribute
        assert attr.name == "plugin_version" and attr.type == onnx.AttributeProto.STRING and attr.s == b"1"
    assert [(i.name, i.type.tensor_type.elem_type) for i in graph.input] == [
        ("x", TensorProto.FLOAT), ("t", TensorProto.FLOAT), ("y", TensorProto.INT64)]
    (out,) = graph.output
    assert out.name == "out" and out.type.tensor_type.elem_type == TensorProto.FLOAT
    batch = _dims(graph.input[0])[0]
    assert isinstance(batch, str) and _dims(graph.input[0]) == [batch, 1, 8, 8]
    assert _dims(graph.input[1]) == [batch] and _dims(graph.input[2]) == [batch] and _dims(out) == [batch, 2, 8, 8]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["drwkv.format"] == "drwkv-onnx-denoiser" and json.loads(meta["drwkv.config"]) == CONFIG
    assert {o.domain: o.version for o in model.opset_import}["drwkv"] == 1

    # w, u float32 [C] (folded to initializers: decay / T of constants); k, v, y [B, T, C], declared
    # in value_info so that no schema is needed for them.
    initializers = {t.name: t for t in graph.initializer}
    info = {v.name: v for v in graph.value_info}
    w, u, k, v = nodes[0].input
    for name in (w, u):
        assert list(initializers[name].dims) == [128] and initializers[name].data_type == TensorProto.FLOAT
    for name in (k, v, nodes[0].output[0]):
        assert _dims(info[name]) == [batch, 16, 128] and info[name].type.tensor_type.elem_type == TensorProto.FLOAT


def test_checker_and_shape_inference_without_our_schema(fp32_onnx):
    model = onnx.load(fp32_onnx)
    onnx.checker.check_model(model, full_check=True)
    if onnx.defs.has("BiWKV", "drwkv"):  # registered by the exporter in this process
        onnx.defs.deregister_schema("BiWKV", 1, "drwkv")
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    info = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
    assert _dims(info["out"])[1:] == [2, 8, 8]
    bi_wkv = next(n for n in inferred.graph.node if n.domain == "drwkv")
    assert info[bi_wkv.output[0]].type.tensor_type.elem_type == TensorProto.FLOAT


def test_custom_op_graph_matches_pytorch(fp32_onnx, torch_denoiser):
    denoiser = load_denoiser(onnx=fp32_onnx)
    assert denoiser.custom_ops == BLOCKS
    for B in (1, 4):  # dynamic batch
        x, t, y = _inputs(B, seed=B)
        ref = torch_denoiser(x, t, y)
        assert np.abs(ref).max() > 0.1
        assert _max_relative_error(denoiser(x, t, y), ref) < 1e-4


def test_ddim_images_from_onnx_runtime_and_pytorch_agree(fp32_onnx, torch_denoiser):
    ort_denoiser = load_denoiser(onnx=fp32_onnx)
    sampler = make_sampler("ddim", Schedule.from_config(CONFIG), 20)
    labels = np.array([0, 1, 2, 1])
    images = [sample(d, sampler, labels, seed=5, cfg_scale=1.5)
              for d in (ort_denoiser, torch_denoiser)]
    diff = np.abs((images[0] + 1) / 2 - (images[1] + 1) / 2).mean()
    assert diff < 1 / 255


def test_portable_graph_uses_standard_ops_and_matches_pytorch(ckpt, workdir, torch_denoiser, capsys):
    path = workdir / "portable.onnx"
    to_onnx.main([str(ckpt), "-o", str(path), "--portable"])
    assert "wrote" in capsys.readouterr().err
    model = onnx.load(path)
    assert {n.domain for n in model.graph.node} == {""}
    assert {p.key: p.value for p in model.metadata_props}["drwkv.bi_wkv"] == "portable"
    onnx.checker.check_model(model, full_check=True)
    denoiser = load_denoiser(onnx=path)
    assert denoiser.custom_ops == 0
    x, t, y = _inputs(3)
    assert _max_relative_error(denoiser(x, t, y), torch_denoiser(x, t, y)) < 1e-4


def test_fp16_graph_computes_in_float16_and_matches_pytorch(ckpt, workdir, torch_denoiser):
    path = workdir / "fp16.onnx"
    to_onnx.export_onnx(ckpt, path, dtype="fp16")
    model = onnx.load(path)
    graph = model.graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [TensorProto.FLOAT, TensorProto.FLOAT,
                                                                   TensorProto.INT64]
    assert graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    initializers = {t.name: t for t in graph.initializer}
    info = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    info.update({name: t.data_type for name, t in initializers.items()})
    nodes = [n for n in graph.node if n.domain == "drwkv"]
    assert len(nodes) == BLOCKS
    for node in nodes:
        w, u, k, v = node.input
        assert (info[w], info[u], info[k], info[v], info[node.output[0]]) == (
            TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.FLOAT16, TensorProto.FLOAT16)
    weights = {name: t.data_type for name, t in initializers.items() if name.endswith(".weight")}
    assert {d for name, d in weights.items() if "t_embedder" not in name} == {TensorProto.FLOAT16}
    assert {d for name, d in weights.items() if "t_embedder" in name} == {TensorProto.FLOAT}
    onnx.checker.check_model(model, full_check=True)
    denoiser = load_denoiser(onnx=path)
    x, t, y = _inputs(3)
    assert _max_relative_error(denoiser(x, t, y), torch_denoiser(x, t, y)) < 1e-2


def test_export_cli_rejects_a_bad_checkpoint(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    for ckpt in (tmp_path / "bad.pt", tmp_path / "missing.pt"):
        result = subprocess.run([sys.executable, "-m", "export.to_onnx", str(ckpt), "-o", str(tmp_path / "m.onnx")],
                                capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert ckpt.name in result.stderr


def test_exports_a_checkpoint_written_by_training(tmp_path):
    pytest.importorskip("sklearn")  # the digits dataset
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "training.train", "--dataset", "digits", "--model", "DRWKV-T/4",
                             "--image-size", "8", "--steps", "1", "--batch-size", "4", "--sample-every", "0",
                             "--threads", "1", "--out", str(run)],
                            capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-2000:]
    to_onnx.export_onnx(run / "ckpt.pt", tmp_path / "trained.onnx")
    denoiser = load_denoiser(onnx=tmp_path / "trained.onnx")
    assert denoiser.custom_ops == BLOCKS and denoiser.config["dataset"] == "digits"
    x, t, y = _inputs(2)
    np.testing.assert_allclose(denoiser(x, t, y), load_denoiser(ckpt=run / "ckpt.pt")(x, t, y), atol=1e-5)
