"""drwkv.runtime.portable: the Bi-WKV in standard ONNX ops, linear in tokens.

The operator alone, a BiWKV node expanded once with dynamic B, T and C, runs in plain ONNX Runtime (no custom
op registered) against a float64 reference, with the error measured as tests/test_bi_wkv.py does:
|y - y_ref| / (the reference applied to |v|), NaN failing. Then the range check, portable DRWKV
models at 1024, 4096 and 16384 tokens against PyTorch (ONNX Runtime, and OpenVINO where it is
installed), the fp16 export, export.to_trt --portable, and drwkv.Pipeline / drwkv-infer on a
portable file."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import write_random_checkpoint  # noqa: E402

from drwkv.ops import bi_wkv_reference  # noqa: E402
from drwkv.runtime import portable  # noqa: E402
from export import to_onnx, to_trt  # noqa: E402

#: The ONNX operators TensorRT's ONNX parser supports (onnx-tensorrt docs/operators.md, TensorRT 10.0).
TENSORRT_OPS = set("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu
Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div
Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm
GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HardSigmoid
HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less
LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min
Mish Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal
RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan
Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign
SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where
Xor""".split())


def reference(w, u, k, v):
    """y of the formula in float64, and its error scale (y of |v|). Linear in T: the left sums are
    exp(-(t-1) w) sum_{i<t} exp(k_i + i w) v_i, the right ones mirrored, each exclusive cumulative sum
    anchored at its largest exponent; float64's range holds the rest for |w T| and |k| in the hundreds."""
    w, u, k, v = (np.asarray(x, np.float64) for x in (w, u, k, v))
    T = k.shape[1]
    pos = np.arange(T, dtype=np.float64)[:, None]

    def side(a, values, reverse):  # sum over i before t (after t if reverse) of exp(a_i - top) values_i
        top = a.max(axis=1, keepdims=True)
        terms = np.exp(a - top) * values
        if reverse:
            terms = terms[:, ::-1]
        sums = np.zeros_like(terms)
        np.cumsum(terms[:, :-1], axis=1, out=sums[:, 1:])  # exclusive
        return top, (sums[:, ::-1] if reverse else sums)

    out = []
    for values in (v, np.abs(v)):
        num_den = []
        for x in (values, np.ones_like(values)):
            top_l, left = side(k + pos * w, x, reverse=False)
            top_r, right = side(k - pos * w, x, reverse=True)
            num_den.append(np.exp(top_l - (pos - 1) * w) * left + np.exp(top_r + (pos + 1) * w) * right
                           + np.exp(u + k) * x)
        out.append(num_den[0] / num_den[1])
    return out


def forward_error(y, w, u, k, v):
    ref, scale = reference(w, u, k, v)
    assert y.shape == ref.shape
    assert np.isfinite(y).all(), "the portable graph produced inf or NaN"
    return float((np.abs(y.astype(np.float64) - ref) / scale).max())


def plain_session(path):
    """An ONNX Runtime session of ``path`` with no custom op registered. It runs on the process's
    shared thread pool, as every session must once drwkv's sessions have made it."""
    from drwkv.runtime.ort_env import session_options

    return ort.InferenceSession(str(path), session_options(threads=2), providers=["CPUExecutionProvider"])


def bi_wkv_graph(T="T", elem_type=onnx.TensorProto.FLOAT, w=None, u=None):
    """One drwkv::BiWKV node, w and u graph inputs (or initializers when given), k and v [B, T, C]
    of ``elem_type``, as the export writes it."""
    from onnx import helper, numpy_helper

    tokens = [helper.make_tensor_value_info(name, elem_type, ["B", T, "C"]) for name in ("k", "v")]
    params = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["C"]) for name in ("w", "u")]
    initializers = [numpy_helper.from_array(np.asarray(x, np.float32), name) for name, x in (("w", w), ("u", u))
                    if x is not None]
    node = helper.make_node("BiWKV", ["w", "u", "k", "v"], ["y"], name="bi_wkv_0", domain="drwkv",
                            plugin_version="1")
    graph = helper.make_graph([node], "bi_wkv", ([] if initializers else params) + tokens,
                              [helper.make_tensor_value_info("y", elem_type, ["B", T, "C"])], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", to_onnx.OPSET),
                                                   helper.make_opsetid("drwkv", 1)])


@pytest.fixture(scope="module")
def op_session(tmp_path_factory):
    """The portable graph of the operator alone, B, T and C dynamic, in a plain ONNX Runtime session."""
    path = tmp_path_factory.mktemp("portable_op") / "bi_wkv.onnx"
    model = bi_wkv_graph()
    assert portable.expand_bi_wkv(model) == 1
    assert [o.domain for o in model.opset_import] == [""]
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model, plain_session(path)


def run_op(op_session, w, u, k, v):
    feeds = {"w": w, "u": u, "k": k, "v": v}
    return op_session[1].run(["y"], {n: np.asarray(x, np.float32) for n, x in feeds.items()})[0]


def inputs(B, T, C, seed, decay=20.0, k_max=20.0):
    """w T spread over [-decay, decay] across the channels (0 included); keys of three kinds, all
    within +-k_max: Gaussian, +-k_max at random, and a ramp from one bound to the other."""
    rng = np.random.default_rng(seed)
    w = (np.linspace(-decay, decay, C) / T).astype(np.float32)
    u = rng.standard_normal(C).astype(np.float32)
    k = np.clip(rng.standard_normal((B, T, C)) * k_max, -k_max, k_max)
    k[:, :, 1::3] = np.where(rng.random((B, T, len(range(1, C, 3)))) < 0.5, k_max, -k_max)
    k[:, :, 2::3] = np.linspace(-k_max, k_max, T)[None, :, None]
    v = rng.standard_normal((B, T, C))
    return w, u, k.astype(np.float32), v.astype(np.float32)


def test_reference_is_the_formula():
    for T, decay, u_scale in ((1, 20.0, 1.0), (2, 20.0, 60.0), (7, 100.0, 1.0), (100, 20.0, 60.0), (300, 100.0, 1.0)):
        w, u, k, v = inputs(2, T, 7, seed=T, decay=decay)
        u = u * u_scale
        direct = bi_wkv_reference(*(torch.from_numpy(x).double() for x in (w, u, k, v))).numpy()
        ref, scale = reference(w, u, k, v)
        assert (np.abs(ref - direct) / scale).max() < 1e-9  # a million times below the tolerances tested


def test_graph_is_standard_ops_that_tensorrt_parses(op_session):
    model, _ = op_session
    used = {n.op_type for n in model.graph.node}
    assert {n.domain for n in model.graph.node} == {""}
    assert used <= set(portable.OPS) <= TENSORRT_OPS
    assert not {"Loop", "Scan", "If"} & used


@pytest.mark.parametrize("T", [1, 2, 3, 7, 33, 100, 1024, 4096])
def test_matches_float64_within_1e5(op_session, T):
    for seed in range(2):
        w, u, k, v = inputs(2, T, 9, seed=seed)
        assert forward_error(run_op(op_session, w, u, k, v), w, u, k, v) < 1e-5


def test_matches_float64_at_16384_tokens(op_session):
    w, u, k, v = inputs(1, 16384, 6, seed=3)
    assert forward_error(run_op(op_session, w, u, k, v), w, u, k, v) < 1e-4


@pytest.mark.parametrize("T", [2, 7, 64, 1000])
def test_exact_at_the_edges_of_the_checked_range(op_session, T):
    # |w| T at MAX_DECAY where 2 L |w| allows it, and 2 L |w| + |u| at MAX_SPREAD.
    L = portable.chunk_length(T)
    w_max = 0.999 * min(portable.MAX_DECAY / T, portable.MAX_SPREAD / (2 * L))
    w, _, k, v = inputs(2, T, 8, seed=T)
    w = np.float32(w_max) * np.array([1, -1, 1, -1, 0.5, -0.5, 0.25, 0], np.float32)
    u = np.float32(0.999) * (portable.MAX_SPREAD - 2 * L * np.abs(w)) * np.array([0, 0, 1, -1, 1, -1, 1, -1])
    for wi, ui in zip(w, u):
        portable.check_range([wi], [ui], T, "test")  # inside
    assert forward_error(run_op(op_session, w, u, k, v), w, u, k, v) < 1e-5


def test_padding_and_batch_rows_do_not_mix(op_session):
    # T = 5 pads to 2 chunks of 3; each batch row alone gives the same as in the batch.
    w, u, k, v = inputs(3, 5, 4, seed=9)
    together = run_op(op_session, w, u, k, v)
    for b in range(3):
        np.testing.assert_array_equal(run_op(op_session, w, u, k[b:b + 1], v[b:b + 1])[0], together[b])


def test_range_check_is_one_line():
    portable.check_range([0.0, 100.0 / 4096], [1.0, -1.0], 4096, "block 0")
    with pytest.raises(ValueError, match=r"^block 2: the portable Bi-WKV is exact for \|w\| T <= 100 and "
                                         r"2 L \|w\| \+ \|u\| <= 60 .*here they reach 200 and"):
        portable.check_range([0.0, 200.0 / 4096], [0.0, 0.0], 4096, "block 2")
    with pytest.raises(ValueError, match="here they reach 0 and 61$"):
        portable.check_range([0.0], [61.0], 1, "block 0")
    with pytest.raises(ValueError, match="here they reach nan"):
        portable.check_range([np.nan], [0.0], 16, "block 0")


def test_expansion_checks_constant_decays_at_the_declared_tokens():
    C = 4
    inside = bi_wkv_graph(T=1024, w=np.full(C, 90.0 / 1024), u=np.zeros(C))
    assert portable.expand_bi_wkv(inside) == 1
    outside = bi_wkv_graph(T=1024, w=np.full(C, 120.0 / 1024), u=np.zeros(C))
    with pytest.raises(ValueError, match=r"^BiWKV node bi_wkv_0: the portable Bi-WKV is exact .*T = 1024 tokens"):
        portable.expand_bi_wkv(outside)
    assert [n.op_type for n in outside.graph.node] == ["BiWKV"]  # left as it was
    undeclared = bi_wkv_graph(T="T", w=np.zeros(C), u=np.zeros(C))
    with pytest.raises(ValueError, match="its token count is not declared"):
        portable.expand_bi_wkv(undeclared)


def test_expansion_of_float16_tokens_computes_in_float32(op_session, tmp_path):
    model = bi_wkv_graph(elem_type=onnx.TensorProto.FLOAT16)
    portable.expand_bi_wkv(model)
    onnx.checker.check_model(model, full_check=True)
    cumsums = [n for n in model.graph.node if n.op_type == "CumSum"]
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    assert casts["y"].attribute[0].i == onnx.TensorProto.FLOAT16
    onnx.save(model, tmp_path / "half.onnx")
    w, u, k, v = inputs(2, 50, 6, seed=4, k_max=5.0)
    k, v = k.astype(np.float16), v.astype(np.float16)
    y = plain_session(tmp_path / "half.onnx").run(["y"], {"w": w, "u": u, "k": k, "v": v})[0]
    assert y.dtype == np.float16 and len(cumsums) == 4
    np.testing.assert_allclose(y.astype(np.float32), run_op(op_session, w, u, k, v), rtol=0, atol=2e-3)


# --- whole models ----------------------------------------------------------------------------------

def decay_checkpoint(path, image_size, decay=20.0, in_channels=1):
    """A random DRWKV-T/2 checkpoint whose every block's spatial_decay spans [-decay, decay] (w T, as
    the model passes decay / T), in a shuffled channel order."""
    config = {"model": "DRWKV-T/2", "image_size": image_size, "in_channels": in_channels, "num_classes": 3,
              "learn_sigma": True, "class_names": ["a", "b", "c"], "dataset": "test",
              "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}}
    write_random_checkpoint(path, config)
    ckpt = torch.load(path, weights_only=False)
    g = torch.Generator().manual_seed(0)
    for state in (ckpt["model"], ckpt["ema"]):
        for name, value in state.items():
            if name.endswith("spatial_decay"):
                state[name] = torch.linspace(-decay, decay, value.numel())[torch.randperm(value.numel(), generator=g)]
    torch.save(ckpt, path)
    return path


def model_inputs(size, B=1, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((B, 1, size, size)).astype(np.float32), rng.uniform(0, 999, B).astype(np.float32),
            rng.integers(0, 4, B))


def max_relative_error(out, ref):
    assert np.isfinite(out).all()
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module", params=[64, 128, 256], ids=["1024-tokens", "4096-tokens", "16384-tokens"])
def portable_model(request, tmp_path_factory):
    """(onnx path, PyTorch output, inputs) of a portable DRWKV-T/2 at (size / 2)^2 tokens."""
    from drwkv.runtime import load_denoiser

    size = request.param
    folder = tmp_path_factory.mktemp(f"portable_{size}")
    ckpt = decay_checkpoint(folder / "ckpt.pt", size)
    path = folder / "model.onnx"
    to_onnx.export_onnx(ckpt, path, portable=True)
    x, t, y = model_inputs(size)
    return path, load_denoiser(ckpt=ckpt, threads=2)(x, t, y), (x, t, y)


def test_portable_model_in_onnx_runtime_matches_pytorch(portable_model):
    path, ref, (x, t, y) = portable_model
    model = onnx.load(path)
    assert {n.domain for n in model.graph.node} == {""}
    assert {n.op_type for n in model.graph.node} <= TENSORRT_OPS
    session = plain_session(path)
    assert np.abs(ref).max() > 0.1
    assert max_relative_error(session.run(["out"], {"x": x, "t": t, "y": y})[0], ref) < 1e-4


def test_portable_model_in_openvino_matches_pytorch(portable_model):
    ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    path, ref, (x, t, y) = portable_model
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({"x": x, "t": t, "y": y})[compiled.output("out")]
    assert max_relative_error(out, ref) < 1e-4


def test_export_refuses_decays_outside_the_range(tmp_path, capsys):
    ckpt = decay_checkpoint(tmp_path / "ckpt.pt", 16, decay=150.0)
    with pytest.raises(SystemExit) as exit_info:
        to_onnx.main([str(ckpt), "-o", str(tmp_path / "m.onnx"), "--portable"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "block 0: the portable Bi-WKV is exact for |w| T <= 100" in err and "export without --portable" in err
    assert not (tmp_path / "m.onnx").exists()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small portable-range checkpoint (8x8, 16 tokens) and its portable export."""
    folder = tmp_path_factory.mktemp("portable_small")
    ckpt = decay_checkpoint(folder / "ckpt.pt", 8)
    path = folder / "model.onnx"
    to_onnx.export_onnx(ckpt, path, portable=True)
    return ckpt, path


def test_fp16_export_runs_the_bi_wkv_in_float32(small, tmp_path):
    from drwkv.runtime import load_denoiser

    ckpt, _ = small
    path = tmp_path / "fp16.onnx"
    to_onnx.export_onnx(ckpt, path, dtype="fp16", portable=True)
    model = onnx.shape_inference.infer_shapes(onnx.load(path))
    types = {v.name: v.type.tensor_type.elem_type for v in model.graph.value_info}
    cumsums = [n for n in model.graph.node if n.op_type == "CumSum"]
    assert len(cumsums) == 4 * 7  # left and right, numerator and denominator, per block
    assert {types[n.input[0]] for n in cumsums} == {onnx.TensorProto.FLOAT}
    assert onnx.TensorProto.FLOAT16 in types.values()  # the rest of the network is float16
    x, t, y = model_inputs(8, B=3)
    out = load_denoiser(onnx=path)(x, t, y)
    assert max_relative_error(out, load_denoiser(ckpt=ckpt, threads=1)(x, t, y)) < 1e-2


def test_to_trt_portable_exports_the_portable_graph(small, tmp_path):
    ckpt, _ = small
    onnx_path = to_trt.onnx_model(ckpt, tmp_path / "model.plan", portable=True)
    assert onnx_path == tmp_path / "model.onnx"
    model = onnx.load(onnx_path)
    assert {p.key: p.value for p in model.metadata_props}["drwkv.bi_wkv"] == "portable"
    assert {n.domain for n in model.graph.node} == {""}
    assert {n.op_type for n in model.graph.node} <= TENSORRT_OPS
    assert to_trt.onnx_model(onnx_path, tmp_path / "again.plan", portable=True) == onnx_path


def test_to_trt_portable_refuses_a_graph_with_bi_wkv_nodes(small, tmp_path):
    ckpt, _ = small
    custom = tmp_path / "custom.onnx"
    to_onnx.export_onnx(ckpt, custom)
    with pytest.raises(to_trt.BuildError, match=r"^--portable: .*custom.onnx holds 7 BiWKV nodes; export"):
        to_trt.onnx_model(custom, tmp_path / "model.plan", portable=True)


def test_to_trt_takes_the_portable_flag(small, tmp_path, capsys):
    _, path = small
    with pytest.raises(SystemExit) as exit_info:  # parsed; without TensorRT it stops at the toolchain check
        to_trt.main([str(path), "-o", str(tmp_path / "m.plan"), "--portable"])
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err
    if exit_info.value.code == 1 and "tensorrt not importable" in err:
        assert len(err.strip().splitlines()) == 1
    else:
        pytest.skip("TensorRT is importable here: the engine build is tested in test_trt.py")


def test_pipeline_and_drwkv_infer_run_a_portable_file(small, tmp_path):
    import drwkv
    from drwkv.cli import main

    ckpt, path = small
    from_onnx = drwkv.Pipeline.load(path)
    assert from_onnx.denoiser.custom_ops == 0
    images = from_onnx(num_images=3, steps=4, seed=1)
    reference = drwkv.Pipeline.load(ckpt, threads=1)(num_images=3, steps=4, seed=1)
    assert images.shape == reference.shape == (3, 8, 8, 1)
    assert np.abs(images.astype(int) - reference.astype(int)).max() <= 1
    assert main(["--onnx", str(path), "--steps", "3", "--num-images", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").read_bytes().startswith(b"\x89PNG")
