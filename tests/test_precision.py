"""precision on the CPU: fp32 (exact), int8 (ONNX Runtime, drwkv.runtime.ort_quant) and bf16
(OpenVINO, drwkv.runtime.openvino), end to end through drwkv.Pipeline on a
tiny exported model, judged by the PSNR of their uint8 images against fp32's; and the one-line
errors for a precision the artifact, the backend or the CPU lacks."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from conftest import write_random_checkpoint  # noqa: E402

import drwkv  # noqa: E402
from drwkv.runtime import ArtifactError, load_denoiser  # noqa: E402
from export import to_onnx  # noqa: E402

CONFIG = {"model": "DRWKV-T/2", "image_size": 16, "in_channels": 3, "num_classes": 3, "learn_sigma": False,
          "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}}
RUN = {"num_images": 8, "steps": 10, "seed": 0}
# Bounds on the images against fp32's, with a margin below what this model gives (int8 33 dB, bf16 40 dB).
MIN_PSNR = {"int8": 28.0, "bf16": 34.0}


def psnr(images, reference):
    mse = np.mean((images.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / mse) if mse else np.inf


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(checkpoint, default export with BiWKV nodes, portable export) of one random model."""
    folder = tmp_path_factory.mktemp("precision")
    ckpt = write_random_checkpoint(folder / "ckpt.pt", CONFIG)
    to_onnx.export_onnx(ckpt, folder / "model.onnx")
    to_onnx.export_onnx(ckpt, folder / "portable.onnx", portable=True)
    return ckpt, folder / "model.onnx", folder / "portable.onnx"


@pytest.fixture(scope="module")
def wide_decays(models, tmp_path_factory):
    """The default export of the model with one block's spatial_decay at 150, past the range the
    portable Bi-WKV is exact in (|w| T <= 100)."""
    folder = tmp_path_factory.mktemp("wide")
    ckpt = torch.load(models[0], weights_only=False)
    for state in (ckpt["model"], ckpt["ema"]):
        name = next(n for n in state if n.endswith("spatial_decay"))
        state[name] = torch.full_like(state[name], 150.0)
    torch.save(ckpt, folder / "ckpt.pt")
    to_onnx.export_onnx(folder / "ckpt.pt", folder / "model.onnx")
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def fp32_images(models):
    return drwkv.Pipeline.load(models[1])(**RUN)


def bf16_unavailable():
    try:
        from drwkv.runtime.openvino import bf16_support
        return bf16_support()
    except ImportError:
        return "OpenVINO is not installed"


def test_fp32_is_the_default_and_exact(models):
    ckpt, onnx_path, _ = models
    rng = np.random.default_rng(0)
    x, t, y = rng.standard_normal((2, 3, 16, 16)).astype(np.float32), np.array([10.0, 700.0], np.float32), [0, 2]
    reference = load_denoiser(ckpt=ckpt, threads=1)(x, t, y)
    for denoiser in (load_denoiser(onnx=onnx_path), load_denoiser(onnx=onnx_path, precision="fp32")):
        assert denoiser.name == "onnxruntime" and denoiser.precision == "fp32"
        assert np.abs(denoiser(x, t, y) - reference).max() / np.abs(reference).max() <= 1e-5


def test_int8_through_the_pipeline(models, fp32_images):
    pipe = drwkv.Pipeline.load(models[1], precision="int8", intra_op_threads=1)
    # 7 MatMuls per block, and 3 skip Linears over [x, skip] as 2 products each; the head stays float32.
    assert pipe.denoiser.session.quantized == 7 * 7 + 3 * 2
    images = pipe(**RUN)
    assert images.shape == fp32_images.shape and not np.array_equal(images, fp32_images)
    assert psnr(images, fp32_images) >= MIN_PSNR["int8"]


def test_int8_in_one_session(models):
    """fuse=False: the whole graph in one ONNX Runtime session, its MatMuls quantized the same way."""
    rng = np.random.default_rng(1)
    x, t, y = rng.standard_normal((2, 3, 16, 16)).astype(np.float32), np.array([10.0, 700.0], np.float32), [0, 2]
    split = load_denoiser(onnx=models[1], precision="int8")(x, t, y)
    whole = load_denoiser(onnx=models[1], precision="int8", fuse=False)(x, t, y)
    assert np.abs(split - whole).max() / np.abs(whole).max() <= 1e-5


def test_bf16_through_the_pipeline_from_either_export(models, fp32_images):
    """The default export's BiWKV nodes are expanded to the portable ops in memory: the same images
    as the portable export's, and the file left as it was."""
    why_not = bf16_unavailable()
    if why_not:
        pytest.skip(why_not)
    default_bytes = models[1].read_bytes()
    images = {}
    for path in models[1:]:
        pipe = drwkv.Pipeline.load(path, precision="bf16", intra_op_threads=1)
        # The token MatMuls: 7 per block, 3 skip Linears, the head; the per-image Gemms stay float32.
        assert pipe.denoiser.name == "openvino" and pipe.denoiser.bf16_products == 7 * 7 + 3 + 1
        images[path] = pipe(**RUN)
    assert models[1].read_bytes() == default_bytes
    np.testing.assert_array_equal(images[models[1]], images[models[2]])
    assert not np.array_equal(images[models[1]], fp32_images)
    assert psnr(images[models[1]], fp32_images) >= MIN_PSNR["bf16"]


def test_bf16_refuses_decays_outside_the_portable_range(wide_decays):
    if bf16_unavailable():
        pytest.skip(bf16_unavailable())
    with pytest.raises(ArtifactError, match=r"BiWKV node .*: the portable Bi-WKV is exact for .*; precision bf16 "
                                            r"needs it, use fp32 or int8$") as e:
        load_denoiser(onnx=wide_decays, precision="bf16")
    assert "\n" not in str(e.value)
    load_denoiser(onnx=wide_decays, precision="int8")  # the native kernel takes any decay


def test_bf16_without_openvino_says_what_to_install(models, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "openvino" else find_spec(name, *a))
    with pytest.raises(RuntimeError, match=r"pip install 'drwkv\[onnx,openvino\]'"):
        load_denoiser(onnx=models[2], precision="bf16")


@pytest.mark.parametrize("artifact, precision, message", [
    ("onnx", "fp16", "precision must be one of fp32, bf16, int8, got 'fp16'"),
    ("ckpt", "int8", "precision int8 is for ONNX models on the CPU (--onnx); a PyTorch checkpoint runs in fp32"),
])
def test_unsupported_precisions_are_one_line_value_errors(models, artifact, precision, message):
    path = models[0] if artifact == "ckpt" else models[1]
    with pytest.raises(ValueError) as e:
        load_denoiser(**{artifact: path}, precision=precision)
    assert str(e.value) == message


def test_int8_refuses_other_providers(models):
    with pytest.raises(ValueError, match="CPU provider only"):
        load_denoiser(onnx=models[1], precision="int8", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])


@pytest.mark.parametrize("flags, code, message", [
    (["--onnx", "{onnx}", "--precision", "fp16"], 2, "argument --precision: invalid choice: 'fp16'"),
    (["--ckpt", "{ckpt}", "--precision", "int8"], 2, "--precision int8 applies to --onnx"),
    (["--onnx", "{wide}", "--precision", "bf16"], 1, "the portable Bi-WKV is exact for"),
])
def test_cli_errors_are_one_line_and_write_nothing(models, wide_decays, tmp_path, flags, code, message):
    if "bf16" in flags and bf16_unavailable():
        pytest.skip(bf16_unavailable())
    ckpt, onnx_path, _ = models
    out = tmp_path / "samples.png"
    argv = [f.format(onnx=onnx_path, ckpt=ckpt, wide=wide_decays) for f in flags]
    argv += ["--num-images", "2", "--steps", "2", "--out", str(out)]
    result = subprocess.run([sys.executable, "-m", "drwkv.cli", *argv], capture_output=True, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def products_graph(nodes, inputs, weights):
    """A float32 graph of ``nodes`` with token inputs {name: width} [B, T, width], initializers
    {name: array}, and the last node's output "head" [B, T, 8] as its output."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", "T", width])
                                           for n, width in inputs.items()],
                              [helper.make_tensor_value_info("head", TensorProto.FLOAT, ["B", "T", 8])],
                              [numpy_helper.from_array(w, name) for name, w in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run_graph(model, feeds):
    import onnxruntime as ort

    from drwkv.runtime.ort_env import session_options

    session = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=["CPUExecutionProvider"])
    return session.run(["head"], feeds)[0]


@pytest.mark.parametrize("reduce_range", [False, True])
def test_quantized_matmul_in_onnx_runtime(reduce_range):
    """A MatMul rewritten: int8 weights in [-127, 127] (7-bit, [-63, 63], for CPUs without VNNI), a
    scale per output column, and ONNX Runtime's result near the float product; the graph's last
    product (the head) stays float32."""
    from onnx import helper, numpy_helper

    from drwkv.runtime.ort_quant import quantize_matmuls

    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 32)) * np.linspace(0.1, 3, 32)).astype(np.float32)  # columns of unlike scales
    head = rng.standard_normal((32, 8)).astype(np.float32)
    model = products_graph([helper.make_node("MatMul", ["a", "w"], ["out"]),
                            helper.make_node("MatMul", ["out", "head_w"], ["head"])], {"a": 64},
                           {"w": w, "head_w": head})
    assert quantize_matmuls(model, reduce_range=reduce_range) == 1
    assert [n.op_type for n in model.graph.node] == ["DynamicQuantizeMatMul", "MatMul"]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(weights) == {"head_w", "w__int8", "w__scale"}
    q, scale = weights["w__int8"], weights["w__scale"]
    levels = 63 if reduce_range else 127
    assert q.dtype == np.int8 and np.abs(q).max() == levels and scale.shape == (32,)
    assert np.abs(q * scale - w).max() <= scale.max() / 2 + 1e-6
    a = rng.standard_normal((2, 8, 64)).astype(np.float32)
    expected = a @ w @ head
    out = run_graph(model, {"a": a})
    assert np.abs(out - expected).max() / np.abs(expected).max() < (0.04 if reduce_range else 0.02)


def test_product_of_a_concatenation_is_quantized_per_part():
    """Concat([a, b]) x W, a 100x larger than b: one product per part, each on its own range, summed.
    a's rows of W are zero, so the product is b's alone: one scale for both would quantize b in steps
    of a's range."""
    from onnx import helper

    from drwkv.runtime.ort_quant import quantize_matmuls

    rng = np.random.default_rng(1)
    w = rng.standard_normal((48, 16)).astype(np.float32)
    w[:32] = 0
    weights = {"w": w, "head_w": np.eye(16, 8, dtype=np.float32)}

    def graph():
        return products_graph([helper.make_node("Concat", ["a", "b"], ["ab"], axis=-1),
                               helper.make_node("MatMul", ["ab", "w"], ["out"]),
                               helper.make_node("MatMul", ["out", "head_w"], ["head"])], {"a": 32, "b": 16}, weights)

    feeds = {"a": 100 * rng.standard_normal((2, 8, 32)).astype(np.float32),
             "b": rng.standard_normal((2, 8, 16)).astype(np.float32)}
    expected = (np.concatenate([feeds["a"], feeds["b"]], -1) @ w)[..., :8]
    per_part = graph()
    assert quantize_matmuls(per_part) == 2
    assert [n.op_type for n in per_part.graph.node] == ["DynamicQuantizeMatMul", "DynamicQuantizeMatMul", "Add",
                                                         "MatMul"]
    one_scale = graph()
    assert quantize_matmuls(one_scale, info={}) == 1  # the parts' widths unknown: one product
    errors = [np.abs(run_graph(m, feeds) - expected).max() / np.abs(expected).max() for m in (per_part, one_scale)]
    assert errors[0] < 0.02 < 0.2 < errors[1]
