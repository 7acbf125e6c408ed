"""ONNX Runtime's CPU path (drwkv.runtime.ort_fusion + ort_split): the rewritten graph against the
unrewritten one in a single session (BiWKV through the Python op bridge) and against PyTorch, on
odd grids and the imported-model options; a pattern whose constants differ from the model's stays in
ONNX Runtime; the file on disk is untouched."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")

from conftest import write_random_checkpoint  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from drwkv import ort_ops  # noqa: E402
from drwkv.runtime import load_denoiser  # noqa: E402
from drwkv.runtime.onnx import _session, read_onnx, route_bi_wkv_to_extensions  # noqa: E402
from drwkv.runtime.ort_split import SplitSession  # noqa: E402
from export import to_onnx  # noqa: E402

BLOCKS = 7  # DRWKV-T
# Every block: one gated BiWKV, a ShiftMix before each of its two mixers, relu squared, two gated residuals.
FUSED = {"BiWKV": BLOCKS, "BiWKV gated": BLOCKS, "ShiftMix": 2 * BLOCKS, "ReluSquare": BLOCKS,
         "GatedResidual": 2 * BLOCKS}
# image 6 at patch 2: a 3x3 grid (odd sides); image 2: a single token. The second one has the options of
# the paper's released models: unconditional, final LayerNorm.
CASES = {
    "3x3 grid": {"model": "DRWKV-T/2", "image_size": 6, "in_channels": 2, "num_classes": 3, "learn_sigma": True},
    "1 token, unconditional, final_norm": {"model": "DRWKV-T/2", "image_size": 2, "in_channels": 1,
                                           "num_classes": 0, "learn_sigma": False, "final_norm": True},
}
DIFFUSION = {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    """(config, checkpoint, ONNX path) of a random model whose blocks are not the identity."""
    config = dict(CASES[request.param], diffusion=DIFFUSION)
    workdir = tmp_path_factory.mktemp("fusion")
    ckpt = write_random_checkpoint(workdir / "ckpt.pt", config)
    path = workdir / "model.onnx"
    to_onnx.export_onnx(ckpt, path)
    return config, ckpt, path


def _feeds(config, B=3, seed=0):
    rng = np.random.default_rng(seed)
    size = config["image_size"]
    return {"x": rng.standard_normal((B, config["in_channels"], size, size)).astype(np.float32),
            "t": rng.uniform(0, 999, B).astype(np.float32),
            "y": rng.integers(0, max(1, config["num_classes"]), B)}


def _one_session(model, path="model.onnx"):
    """The unrewritten graph in one ONNX Runtime session, BiWKV through the Python op bridge."""
    route_bi_wkv_to_extensions(model, ort_ops.DOMAIN)
    return _session(model, path, ["CPUExecutionProvider"], 1, custom_ops=True)


def _relative(a, b):
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_every_block_is_fused_and_matches_the_unrewritten_graph_and_pytorch(exported):
    config, ckpt, path = exported
    before = onnx.load(path).SerializeToString()
    split = SplitSession(read_onnx(path)[0], intra_op_threads=2)
    if config["image_size"] // 2 > 1:
        assert split.fused == FUSED
    else:  # on one token, DiT's modulations have the shapes of a gated residual too, and are computed as one
        assert {op: n for op, n in split.fused.items() if op != "GatedResidual"} == \
            {op: n for op, n in FUSED.items() if op != "GatedResidual"}
        assert split.fused["GatedResidual"] >= FUSED["GatedResidual"]
    reference = _one_session(read_onnx(path)[0])
    torch_denoiser = load_denoiser(ckpt=ckpt, threads=1)
    calls = [(_feeds(config, B, seed), None) for B, seed in ((3, 0), (1, 1), (3, 2))]
    # Batch sizes change between calls and buffers are reused: every output must survive the later calls.
    calls = [(feeds, split.run(["out"], feeds)[0]) for feeds, _ in calls]
    for feeds, out in calls:
        B = len(feeds["x"])
        assert out.shape == (B, torch_denoiser.out_channels, config["image_size"], config["image_size"])
        assert _relative(out, reference.run(["out"], feeds)[0]) < 1e-5
        assert _relative(out, torch_denoiser(feeds["x"], feeds["t"], feeds["y"])) < 1e-5
    assert onnx.load(path).SerializeToString() == before   # in memory only


def test_only_bi_wkv_native_without_fusion(exported):
    config, _, path = exported
    split = SplitSession(read_onnx(path)[0], intra_op_threads=1, fuse=False)
    assert split.fused == {"BiWKV": BLOCKS}
    feeds = _feeds(config)
    reference = _one_session(read_onnx(path)[0]).run(["out"], feeds)[0]
    np.testing.assert_allclose(split.run(["out"], feeds)[0], reference, rtol=0, atol=1e-6 * np.abs(reference).max())


def test_a_q_shift_with_other_constants_stays_in_onnx_runtime(exported):
    """The first Pad of one Q-Shift pads at the other end (another shift, same shapes): that Q-Shift is
    not the model's, so its ShiftMix is not formed, and both paths compute the changed graph alike."""
    config, _, path = exported
    model, _ = read_onnx(path)
    pad = next(n for n in model.graph.node if n.op_type == "Pad")
    pads = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == pad.input[1])).copy()
    begin, end = np.split(pads, 2)
    model.graph.initializer.append(numpy_helper.from_array(np.concatenate([end, begin]), "changed_pads"))
    pad.input[1] = "changed_pads"
    changed = model.SerializeToString()

    split = SplitSession(onnx.load_from_string(changed), intra_op_threads=1)
    assert split.fused["ShiftMix"] == 2 * BLOCKS - 1
    feeds = _feeds(config)
    reference = _one_session(onnx.load_from_string(changed)).run(["out"], feeds)[0]
    assert _relative(split.run(["out"], feeds)[0], reference) < 1e-5
    original = _one_session(read_onnx(path)[0]).run(["out"], feeds)[0]
    if config["image_size"] // 2 > 1:   # on a single token every shift reads zeros either way
        assert _relative(reference, original) > 1e-4


def test_profile_counts_native_and_onnx_runtime_time(exported):
    config, _, path = exported
    split = SplitSession(read_onnx(path)[0], intra_op_threads=1, profile=True)
    split.run(["out"], _feeds(config))
    times = split.op_times()
    assert {"native BiWKV", "native ShiftMix", "native ReluSquare", "native GatedResidual", "MatMul"} <= set(times)
    assert all(ms >= 0 for ms in times.values()) and times["MatMul"] > 0
