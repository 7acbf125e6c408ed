"""drwkv.runtime.ort_split's executor on graphs made here of native nodes alone: the checks of a node's
inputs, which run again whenever their shapes change, and the buffer pool's bookkeeping. The whole
models' paths are in test_ort_fusion.py and test_precision.py."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from drwkv import _C  # noqa: E402
from drwkv.runtime.ort_split import SplitSession, _BufferPool  # noqa: E402

FLOAT = TensorProto.FLOAT
C = 8


def _model(nodes, inputs, outputs, constants=()):
    graph = helper.make_graph(nodes, "natives", [helper.make_tensor_value_info(n, FLOAT, ["B", "T", "C"]) for n in inputs],
                              [helper.make_tensor_value_info(n, FLOAT, None) for n in outputs],
                              [numpy_helper.from_array(a, n) for n, a in constants])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("drwkv", 1)])


def _random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_gated_bi_wkv_checks_the_shapes_of_every_call():
    w, u = np.full(C, 0.5, np.float32), _random(C, seed=1)
    session = SplitSession(_model([helper.make_node("BiWKV", ["w", "u", "k", "v", "r"], ["y"], domain="drwkv")],
                                  ["k", "v", "r"], ["y"], [("w", w), ("u", u)]), intra_op_threads=1)
    k, v, r = _random(2, 5, C, seed=2), _random(2, 5, C, seed=3), _random(2, 5, C, seed=4)
    want = _C.bi_wkv_forward_numpy(w, u, k, v) / (1 + np.exp(-r))
    np.testing.assert_allclose(session.run(["y"], {"k": k, "v": v, "r": r})[0], want, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="r has shape"):
        session.run(["y"], {"k": k, "v": v, "r": r[:, :4]})
    with pytest.raises(RuntimeError, match="BiWKV takes"):
        session.run(["y"], {"k": k, "v": v[:, :4], "r": r})
    np.testing.assert_allclose(session.run(["y"], {"k": k, "v": v, "r": r})[0], want, rtol=1e-5, atol=1e-6)


def test_shift_mix_and_gated_residual_check_the_shapes_of_every_call():
    mix, keep = np.full(C, 0.25, np.float32), np.full(C, 0.75, np.float32)
    nodes = [helper.make_node("ShiftMix", ["x", "", "", "", "", "mix", "keep"], ["h"], domain="drwkv",
                              grid_h=2, grid_w=3),
             helper.make_node("GatedResidual", ["x", "gate", "h"], ["out"], domain="drwkv")]
    session = SplitSession(_model(nodes, ["x", "gate"], ["out"], [("mix", mix), ("keep", keep)]), intra_op_threads=1)
    x, gate = _random(2, 6, C), _random(2, 1, C, seed=1)
    first = session.run(["out"], {"x": x, "gate": gate})[0]
    with pytest.raises(RuntimeError, match="ShiftMix expects tokens"):
        session.run(["out"], {"x": x[:, :4], "gate": gate})
    with pytest.raises(RuntimeError, match="GatedResidual expects"):
        session.run(["out"], {"x": x, "gate": gate[:1]})
    assert np.array_equal(session.run(["out"], {"x": x, "gate": gate})[0], first)


def test_a_buffer_goes_back_to_the_pool_when_no_value_lies_in_it():
    pool = _BufferPool()
    array, _ = pool.take("a", (4, 8), np.float32)
    values = {"a": pool.owned["a"][1], "view": ort.OrtValue.ortvalue_from_numpy(array[2:]), "other": None}
    values["other"] = ort.OrtValue.ortvalue_from_numpy(np.zeros(3, np.float32))
    pool.note_views(["a"], ["view", "other"], values)   # as a segment reading "a" that made "view" over it
    assert set(pool.owned) == {"a", "view"}
    pool.release("a")
    assert not pool.free[((4, 8), np.dtype(np.float32))]   # "view" still lies in it
    pool.release("view")
    assert pool.free[((4, 8), np.dtype(np.float32))][0][0] is array
    assert pool.take("b", (4, 8), np.float32)[0] is array
