"""drwkv.runtime: the Denoiser interface, the ONNX Runtime backend with the BiWKV custom op, the
PyTorch backend, the load_denoiser factory and its errors, and the torch-free import guarantee.

The ONNX Runtime tests use a small hand-built graph with BiWKV nodes (no export needed); exported
models are compared against PyTorch in test_export_onnx.py.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from onnx import TensorProto, helper  # noqa: E402

from drwkv import _C  # noqa: E402
from drwkv.runtime import ArtifactError, Denoiser, load_denoiser  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = {"model": "toy", "image_size": 4, "in_channels": 3, "num_classes": 2, "learn_sigma": False,
              "class_names": ["cat", "dog"], "diffusion": {"schedule": "linear", "beta_start": 1e-4,
                                                           "beta_end": 0.02, "num_timesteps": 1000}}
TOY_W = np.linspace(-0.5, 0.8, 3).astype(np.float32)
TOY_U = np.array([0.3, -0.2, 0.1], np.float32)


def write_toy_onnx(path, dtype="fp32", with_metadata=True):
    """A toy denoiser with the exported models' interface and two drwkv::BiWKV nodes:

        k = tokens(x) (+ y/10 in fp32), v = tokens(x) * 0.5 + t/1000;  h = BiWKV(w, u, k, v)
        out = image(BiWKV(w, u, h, h))         (tokens: [B,C,H,W] -> [B,H*W,C] and back)
    With dtype "fp16" both BiWKV nodes run on float16 tensors (I/O stays float32).
    """
    C, H = TOY_CONFIG["in_channels"], TOY_CONFIG["image_size"]
    half = dtype == "fp16"
    ft = TensorProto.FLOAT16 if half else TensorProto.FLOAT
    init = [helper.make_tensor("w", TensorProto.FLOAT, [C], TOY_W),
            helper.make_tensor("u", TensorProto.FLOAT, [C], TOY_U),
            helper.make_tensor("tok_shape", TensorProto.INT64, [3], [0, -1, C]),
            helper.make_tensor("img_shape", TensorProto.INT64, [4], [0, H, H, C]),
            helper.make_tensor("vshape", TensorProto.INT64, [3], [-1, 1, 1]),
            helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
            helper.make_tensor("thousandth", TensorProto.FLOAT, [], [1e-3])]
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_hwc"], perm=[0, 2, 3, 1]),
        helper.make_node("Reshape", ["x_hwc", "tok_shape"], ["tok"]),
        helper.make_node("Mul", ["t", "thousandth"], ["t_s"]),
        helper.make_node("Reshape", ["t_s", "vshape"], ["t_b"]),
        helper.make_node("Mul", ["tok", "half"], ["tok_half"]),
        helper.make_node("Add", ["tok_half", "t_b"], ["v32"]),
        helper.make_node("Cast", ["tok"], ["k"], to=ft),
        helper.make_node("Cast", ["v32"], ["v"], to=ft),
        helper.make_node("BiWKV", ["w", "u", "k", "v"], ["h"], domain="drwkv", plugin_version="1"),
        helper.make_node("BiWKV", ["w", "u", "h", "h"], ["h2"], domain="drwkv", plugin_version="1"),
        helper.make_node("Cast", ["h2"], ["h32"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["h32", "img_shape"], ["img"]),
        helper.make_node("Transpose", ["img"], ["out"], perm=[0, 3, 1, 2]),
    ]
    onnx.save(toy_denoiser(nodes, init, {"h": ft, "h2": ft}, with_metadata), path)
    return path


def toy_denoiser(nodes, init, bi_wkv_outputs, with_metadata=True):
    """A ModelProto with the exported denoisers' I/O (x, t, y -> out) for TOY_CONFIG, made of ``nodes``
    and the initializers ``init``; bi_wkv_outputs: {name: element type} of the BiWKV outputs, declared
    as [batch, tokens, C] (the node has no schema for shape inference)."""
    C, H = TOY_CONFIG["in_channels"], TOY_CONFIG["image_size"]
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", C, H, H]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch"]),
         helper.make_tensor_value_info("y", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", C, H, H])], init,
        value_info=[helper.make_tensor_value_info(n, ft, ["batch", H * H, C]) for n, ft in bi_wkv_outputs.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("drwkv", 1)])
    if with_metadata:
        for key, value in (("drwkv.format", "drwkv-onnx-denoiser"), ("drwkv.config", json.dumps(TOY_CONFIG))):
            model.metadata_props.add(key=key, value=value)
    return model


def toy_reference(x, t, dtype="fp32"):
    """What the toy graph computes, with the kernel called directly."""
    B, C, H, _ = x.shape
    tok = x.transpose(0, 2, 3, 1).reshape(B, H * H, C)
    v = tok * np.float32(0.5) + (t * np.float32(1e-3)).reshape(-1, 1, 1)
    cast = np.float16 if dtype == "fp16" else np.float32
    h = _C.bi_wkv_forward_numpy(TOY_W, TOY_U, tok.astype(cast), v.astype(cast)).astype(np.float32)
    h2 = _C.bi_wkv_forward_numpy(TOY_W, TOY_U, h.astype(cast), h.astype(cast)).astype(np.float32)
    return h2.astype(cast).astype(np.float32).reshape(B, H, H, C).transpose(0, 3, 1, 2)


def _inputs(B=5, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, 3, 4, 4)).astype(np.float32), rng.uniform(0, 999, B).astype(np.float32),
            rng.integers(0, 3, B))


def test_ort_custom_op_runs_the_native_kernel(tmp_path):
    denoiser = load_denoiser(onnx=write_toy_onnx(tmp_path / "toy.onnx"))
    assert denoiser.name == "onnxruntime" and denoiser.custom_ops == 2
    assert denoiser.config == TOY_CONFIG and denoiser.out_channels == 3
    x, t, y = _inputs()
    np.testing.assert_array_equal(denoiser(x, t, y), toy_reference(x, t))
    x1, t1, y1 = _inputs(B=1, seed=1)                              # another batch size, same session
    np.testing.assert_array_equal(denoiser(x1, t1, y1), toy_reference(x1, t1))
    # The domain is rewritten in memory only; the file keeps drwkv::BiWKV.
    assert {n.domain for n in onnx.load(tmp_path / "toy.onnx").graph.node if n.op_type == "BiWKV"} == {"drwkv"}


def test_ort_float16_bi_wkv_nodes_run_between_casts(tmp_path):
    denoiser = load_denoiser(onnx=write_toy_onnx(tmp_path / "toy16.onnx", dtype="fp16"))
    x, t, y = _inputs()
    out = denoiser(x, t, y)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, toy_reference(x, t, "fp16"), atol=2e-3)


def test_factory_and_artifact_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        load_denoiser()
    with pytest.raises(ValueError, match="exactly one"):
        load_denoiser(onnx="a.onnx", ckpt="b.pt")
    with pytest.raises(ArtifactError, match="not found"):
        load_denoiser(onnx=tmp_path / "missing.onnx")
    good = write_toy_onnx(tmp_path / "toy.onnx").read_bytes()
    (tmp_path / "truncated.onnx").write_bytes(good[: len(good) // 3])
    with pytest.raises(ArtifactError):
        load_denoiser(onnx=tmp_path / "truncated.onnx")
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(ArtifactError):
        load_denoiser(onnx=tmp_path / "text.onnx")
    with pytest.raises(ArtifactError, match="not a drwkv denoiser"):
        load_denoiser(onnx=write_toy_onnx(tmp_path / "plain.onnx", with_metadata=False))
    with pytest.raises(ArtifactError, match="not found"):
        load_denoiser(ckpt=tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(ArtifactError, match="junk.pt"):
        load_denoiser(ckpt=tmp_path / "junk.pt")


def test_engine_without_tensorrt_is_a_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("tensorrt is installed")
    except ImportError:
        pass
    with pytest.raises(RuntimeError, match="TensorRT"):
        load_denoiser(engine=tmp_path / "model.plan")


def test_base_class_checks_inputs_and_splits_large_batches():
    class Echo(Denoiser):
        name = "echo"
        config = dict(TOY_CONFIG)
        max_batch_size = 2

        def __init__(self):
            self.batches = []

        def forward(self, x, t, y):
            assert x.dtype == np.float32 and t.dtype == np.float32 and y.dtype == np.int64
            self.batches.append(len(x))
            return x * 2 + t.reshape(-1, 1, 1, 1) + y.reshape(-1, 1, 1, 1)

    echo = Echo()
    x, t, y = _inputs(B=5)
    np.testing.assert_allclose(echo(x.astype(np.float64), t, y.astype(np.int32)),
                               x * 2 + t.reshape(-1, 1, 1, 1) + y.reshape(-1, 1, 1, 1), rtol=1e-6)
    assert echo.batches == [2, 2, 1]
    with pytest.raises(ValueError, match="shape"):
        echo(np.zeros((1, 1, 4, 4), np.float32), t[:1], y[:1])
    with pytest.raises(ValueError, match="one entry per image"):
        echo(x, t[:2], y)


def test_torch_backend_is_the_checkpoint_ema_model(tmp_path):
    torch = pytest.importorskip("torch")
    from drwkv.model import build_model

    config = {"model": "DRWKV-T/2", "image_size": 8, "in_channels": 1, "num_classes": 3, "learn_sigma": True,
              "class_names": ["a", "b", "c"]}
    torch.manual_seed(0)
    model, ema = build_model(config), build_model(config)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": model.state_dict(),
                "ema": ema.state_dict()}, tmp_path / "ckpt.pt")
    denoiser = load_denoiser(ckpt=tmp_path / "ckpt.pt")
    assert denoiser.name == "torch" and denoiser.config == config
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((2, 1, 8, 8)).astype(np.float32), np.array([3.0, 900.0], np.float32), np.array([0, 3])
    with torch.no_grad():
        expected = ema.eval()(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).numpy()
    out = denoiser(x, t, y)
    assert out.shape == (2, 2, 8, 8) and np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


# A torch that cannot be imported: any `import torch` raises, as on a machine without it.
BLOCK_TORCH = textwrap.dedent("""
    import sys
    class _NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked in this test")
    sys.meta_path.insert(0, _NoTorch())
""")


def test_runtime_and_ort_sampling_never_import_torch(tmp_path):
    path = write_toy_onnx(tmp_path / "toy.onnx")
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import numpy as np
        import importlib.util
        import drwkv.runtime, drwkv.runtime.portable, drwkv.samplers, drwkv.schedule, drwkv.noise, drwkv.png
        if importlib.util.find_spec("openvino"):
            import drwkv.runtime.openvino
        from drwkv.runtime import load_denoiser
        d = load_denoiser(onnx={str(path)!r})
        sampler = drwkv.samplers.make_sampler("ddim", drwkv.schedule.Schedule.from_config(d.config), 3)
        x = drwkv.samplers.sample(d, sampler, np.array([0, 1]), seed=0, cfg_scale=2.0)
        assert x.shape == (2, 3, 4, 4) and np.isfinite(x).all()
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_torch_is_not_imported_even_when_installed(tmp_path):
    pytest.importorskip("torch")
    path = write_toy_onnx(tmp_path / "toy.onnx")
    script = (f"import sys, numpy as np\nfrom drwkv.runtime import load_denoiser\n"
              f"d = load_denoiser(onnx={str(path)!r})\n"
              f"d(np.zeros((1, 3, 4, 4), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64))\n"
              f"print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
