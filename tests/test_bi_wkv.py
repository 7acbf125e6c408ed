"""The Bi-WKV kernels against the float64 formula: values, gradients, awkward shapes, bad input.

Forward error is measured per element against the scale the result can be known to in floating
point: |y - y_ref| / sum_i softmax_i |v_i| (the reference applied to |v|). A plain |y_ref| would
blow up wherever the softmax-weighted average of mixed-sign v happens to cancel to nearly zero.
"""
import numpy as np
import pytest
import torch

from drwkv import _C
from drwkv.ops import bi_wkv, bi_wkv_reference


def make_inputs(B, T, C, k_scale=1.0, w_scale=1.0, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(C, generator=g) * w_scale
    u = torch.randn(C, generator=g)
    k = (torch.randn(B, T, C, generator=g) * k_scale).to(dtype)
    v = torch.randn(B, T, C, generator=g).to(dtype)
    return w, u, k, v


def reference(w, u, k, v, rows=None):
    """Ground truth from exactly the inputs the kernel sees, in float64, and its error scale
    (for all positions, or only `rows`, a range of them)."""
    w, u, k, v = (x.double() for x in (w, u, k, v))
    return bi_wkv_reference(w, u, k, v, targets=rows), bi_wkv_reference(w, u, k, v.abs(), targets=rows)


def forward_error(y, w, u, k, v, rows=None):
    ref, scale = reference(w, u, k, v, rows)
    y = y if rows is None else y[:, rows.start:rows.stop]
    assert torch.isfinite(y).all(), "kernel produced inf or NaN"
    return ((y.double() - ref).abs() / scale).max().item()


SHAPES = [
    (1, 1, 1),      # T = 1: only the token itself
    (3, 1, 5),
    (2, 2, 3),
    (1, 17, 33),    # C odd and not a multiple of 32 or of the CPU channel block
    (2, 64, 384),
    (4, 255, 7),
    (1, 4099, 3),   # T > 4096, few channels: the CPU kernel splits T into segments
    (2, 1500, 20),
]


@pytest.mark.parametrize("B,T,C", SHAPES)
@pytest.mark.parametrize("w_kind", ["model", "random"])
def test_forward_matches_formula(B, T, C, w_kind):
    # "model": w = decay / T as DRWKV passes it; "random": |w| ~ 1, strong decay or growth per token.
    w_scale = 1.0 / T if w_kind == "model" else 1.0
    w, u, k, v = make_inputs(B, T, C, w_scale=w_scale, seed=B * 1000 + T + C)
    assert forward_error(bi_wkv(w, u, k, v), w, u, k, v) < 1e-5


@pytest.mark.parametrize("w_value", [-2.0, -0.05, 0.0, 0.05, 3.0])
def test_forward_extreme_values(w_value):
    # |k| up to 60: exp(k) overflows float32 without the running maximum.
    B, T, C = 2, 700, 6
    w, u, k, v = make_inputs(B, T, C, k_scale=20.0, seed=7)
    k = k.clamp(-60, 60)
    k[0, 5] = 60.0
    k[1, -3] = -60.0
    w = torch.full((C,), w_value)
    u = torch.tensor([60.0, -60.0, 0.0, 5.0, -5.0, 30.0])
    assert forward_error(bi_wkv(w, u, k, v), w, u, k, v) < 1e-5


def test_forward_long_sequence_strong_growth():
    # w < 0 with |w| T in the thousands: absolute logits are huge, only differences are meaningful.
    w, u, k, v = make_inputs(1, 5000, 2, k_scale=3.0, seed=3)
    w = torch.tensor([-1.5, 0.7])
    assert forward_error(bi_wkv(w, u, k, v), w, u, k, v) < 1e-5


# The CPU kernel takes a chunked path for channels with |w| * 64 <= 8 and u <= 30 (the model's w
# and u are divided by T, so it always does) and the anchored path otherwise; these cases sit on
# its edges: the bounds themselves, keys 120 apart inside one chunk, T around the chunk length,
# and both paths side by side in one block of channels.
@pytest.mark.parametrize("T", [1, 63, 64, 65, 129, 5000])
@pytest.mark.parametrize("w_value,u_value", [(0.125, 30.0), (-0.125, 30.0), (0.125, -100.0), (-0.125, -100.0),
                                             (1e-4, 0.0)])
def test_forward_chunked_path_edges(T, w_value, u_value):
    w, u, k, v = make_inputs(1, T, 8, k_scale=20.0, seed=T)
    k = k.clamp(-60, 60)
    k[0, T // 2] = 60.0
    k[0, T - 1] = -60.0
    w = torch.full((8,), w_value)
    u = torch.full((8,), u_value)
    assert forward_error(bi_wkv(w, u, k, v), w, u, k, v) < 1e-5


def test_forward_mixes_chunked_and_anchored_channels():
    # 8-channel lanes: the first and last lanes take the chunked path, the middle one cannot.
    w, u, k, v = make_inputs(3, 300, 21, k_scale=5.0, seed=4)
    w = torch.randn(21, generator=torch.Generator().manual_seed(5)) * 0.01
    w[8:16] = torch.linspace(-2.0, 2.0, 8)
    assert forward_error(bi_wkv(w, u, k, v), w, u, k, v) < 1e-5


@pytest.mark.parametrize("B,T,C", [(2, 4096, 256), (8, 2048, 384)])
def test_forward_large_output(B, T, C):
    # Outputs of 8 MB and more are written around the caches (streaming stores): rows at both ends
    # and in the middle against the formula. On up to a few threads the first shape runs in blocks
    # of channels whose token weights the CPU kernel keeps between its walks; the second in whole
    # rows too long for that, whose weights are computed again.
    w, u, k, v = make_inputs(B, T, C, k_scale=3.0, seed=21)
    w = w / T
    y = bi_wkv(w, u, k, v)
    assert torch.isfinite(y).all()
    for rows in (range(0, 16), range(T // 2 - 8, T // 2 + 8), range(T - 16, T)):
        assert forward_error(y, w, u, k, v, rows) < 1e-5


def test_forward_float16_inputs():
    w, u, k, v = make_inputs(2, 300, 24, w_scale=0.01, seed=5, dtype=torch.float16)
    y = bi_wkv(w, u, k, v)
    assert y.dtype == torch.float16
    # Exact up to rounding of the float16 output (2^-11 relative).
    assert forward_error(y, w, u, k, v) < 1e-3


def test_float64_is_exact():
    w, u, k, v = (x.double() for x in make_inputs(2, 300, 5, k_scale=5.0, seed=11))
    ref, _ = reference(w, u, k, v)
    assert (bi_wkv(w, u, k, v) - ref).abs().max().item() < 1e-12


@pytest.mark.parametrize("B,T,C,w_scale", [(2, 37, 5, 1.0), (1, 1, 4, 1.0), (3, 200, 9, 0.02), (1, 1100, 3, 0.002)])
def test_backward_matches_autograd_of_formula(B, T, C, w_scale):
    w, u, k, v = make_inputs(B, T, C, k_scale=3.0, w_scale=w_scale, seed=T)
    gy = torch.randn(B, T, C, generator=torch.Generator().manual_seed(1))
    ours = [x.clone().requires_grad_() for x in (w, u, k, v)]
    (bi_wkv(*ours) * gy).sum().backward()
    exact = [x.double().requires_grad_() for x in (w, u, k, v)]
    (bi_wkv_reference(*exact) * gy.double()).sum().backward()
    for name, a, b in zip("wukv", ours, exact):
        assert torch.isfinite(a.grad).all(), f"g{name} not finite"
        scale = b.grad.abs().max().item()
        err = (a.grad.double() - b.grad).abs().max().item()
        if scale == 0.0:  # gw with T = 1: no token is at distance >= 2
            assert err == 0.0, f"g{name}: expected exactly zero"
        else:
            assert err / scale < 1e-4, f"g{name}: relative error {err / scale:.2e}"


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(3, generator=g) * 0.3, torch.randn(3, generator=g),
              torch.randn(2, 7, 3, generator=g), torch.randn(2, 7, 3, generator=g)]
    inputs = [x.double().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(bi_wkv, inputs)


def test_numpy_entry_point_matches_torch_op():
    w, u, k, v = make_inputs(2, 50, 12, seed=2)
    y = _C.bi_wkv_forward_numpy(w.numpy(), u.numpy(), k.numpy(), v.numpy())
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, bi_wkv(w, u, k, v).numpy())
    y16 = _C.bi_wkv_forward_numpy(w.numpy(), u.numpy(), k.half().numpy(), v.half().numpy())
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, bi_wkv(w, u, k.half(), v.half()).numpy())


def test_torch_export_traces_the_custom_op():
    class Mix(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(8))
            self.u = torch.nn.Parameter(torch.zeros(8))

        def forward(self, k, v):
            return bi_wkv(self.w, self.u, k, v)

    k, v = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    program = torch.export.export(Mix(), (k, v))
    assert any("bi_wkv_forward" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(program.module()(k, v), Mix()(k, v))
    # With no gradient wanted, the y-only op (no log-sum-exp) is the one traced.
    with torch.no_grad():
        program = torch.export.export(Mix(), (k, v))
    assert any("bi_wkv_inference" in str(n.target) for n in program.graph.nodes)
    torch.testing.assert_close(program.module()(k, v), Mix()(k, v))


def test_inference_op_gives_the_training_op_output():
    w, u, k, v = make_inputs(2, 300, 20, w_scale=0.01, seed=9)
    with torch.no_grad():
        y = bi_wkv(w, u, k, v)
    y_train = bi_wkv(w.requires_grad_(), u, k, v)
    assert y_train.requires_grad and not y.requires_grad
    assert torch.equal(y, y_train.detach())


@pytest.mark.parametrize("make, message", [
    (lambda w, u, k, v: (w, u, k[0], v[0]), "rank 3"),
    (lambda w, u, k, v: (w, u, k, v[:, :-1]), "v must have the shape of k"),
    (lambda w, u, k, v: (w[:-1], u, k, v), "w must have shape"),
    (lambda w, u, k, v: (w, u[None], k, v), "u must have shape"),
    (lambda w, u, k, v: (w, u, k.to(torch.bfloat16), v.to(torch.bfloat16)), "float32, float16 or float64"),
    (lambda w, u, k, v: (w, u, k.int(), v.int()), "float32, float16 or float64"),
    (lambda w, u, k, v: (w, u, k, v.half()), "v must have the dtype of k"),
    (lambda w, u, k, v: (w.double(), u, k, v), "w must be torch.float32"),
    (lambda w, u, k, v: (w.to("meta"), u, k, v), "one device"),
    (lambda w, u, k, v: (w, u, k[:, :0], v[:, :0]), "at least 1"),
])
def test_bad_input_gets_a_clear_error(make, message):
    w, u, k, v = make_inputs(2, 5, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        bi_wkv(*make(w, u, k, v))
