"""The fused CPU passes of cpp/include/drwkv/fused_cpu.h against the model code they replace.

ONNX Runtime's CPU path (drwkv.runtime.ort_split) runs these passes instead of the exported graph's
slices, pads, multiplies and adds, so they must compute what drwkv.model computes: the reference is
the model's own q_shift, token_mix, modulate and gated_residual, in float64 from the same float32
inputs. Every kernel call here works on copies placed inside larger buffers, with guard elements
before and after, and checks afterwards that the guards and the inputs are untouched.
"""
import copy
import itertools

import pytest
import torch

from drwkv import _C
from drwkv.model import ChannelMix, SpatialMix, gated_residual, modulate, q_shift, token_mix

NAN, INF = float("nan"), float("inf")

# Guard floats either side of every buffer. An odd count, so that interior addresses are not
# aligned to the kernels' 8-float vectors (they must not rely on alignment).
GUARD = 37
GUARD_VALUE = -31415.0

THREADS = [1, 2]


# ---------------------------------------------------------------------------------------------
# Guarded buffers and the kernel calls.

def bits(t):
    """The float32 bit patterns of t, so that comparisons see NaN payloads and signed zeros."""
    return t.contiguous().view(torch.int32)


class Arena:
    """Tensors placed inside larger buffers whose guard elements must survive the kernel call."""

    def __init__(self):
        self._buffers = []

    def place(self, values):
        values = torch.as_tensor(values, dtype=torch.float32).contiguous()
        buf = torch.full((values.numel() + 2 * GUARD,), GUARD_VALUE, dtype=torch.float32)
        inner = buf[GUARD:GUARD + values.numel()].view(values.shape)
        inner.copy_(values)
        self._buffers.append(buf)
        return inner

    def check_guards(self):
        guard = bits(torch.full((GUARD,), GUARD_VALUE))
        for i, buf in enumerate(self._buffers):
            assert torch.equal(bits(buf[:GUARD]), guard), f"buffer {i}: the guard before it was written"
            assert torch.equal(bits(buf[-GUARD:]), guard), f"buffer {i}: the guard after it was written"


def addr(t):
    return 0 if t is None else t.data_ptr()


def assert_unchanged(tensors, before, what):
    for name, t, b in zip(what, tensors, before):
        assert torch.equal(bits(t), bits(b)), f"{name} was modified"


def run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, threads):
    """_C.shift_mix on guarded copies; the outputs start as NaN, so any value left unwritten shows."""
    arena = Arena()
    B, T, C = x.shape
    xs = arena.place(x)
    sc = None if scale1p is None else arena.place(scale1p)
    sh = None if shift is None else arena.place(shift)
    ms = [arena.place(m) for m in mixes]
    ks = [arena.place(k) for k in keeps]
    outs = [arena.place(torch.full((B, T, C), NAN)) for _ in mixes]
    inputs = [xs] + ms + ks + [t for t in (sc, sh) if t is not None]
    names = ["x"] + [f"mix[{i}]" for i in range(len(ms))] + [f"keep[{i}]" for i in range(len(ks))] + \
        ["scale1p", "shift"]
    before = [t.clone() for t in inputs]
    _C.shift_mix(addr(xs), addr(sc), addr(sh), B, H, W, C, [addr(m) for m in ms], [addr(k) for k in ks],
                 [addr(o) for o in outs], threads)
    arena.check_guards()
    assert_unchanged(inputs, before, names)
    return outs


def run_sigmoid_gate(y, r, threads, chunk=None):
    """y * sigmoid(r) by _C.sigmoid_gate in place on a guarded copy of y. With `chunk`, one call per
    `chunk` values: chunk < 8 runs only the kernel's scalar tail."""
    arena = Arena()
    ys, rs = arena.place(y), arena.place(r)
    r_before = rs.clone()
    n = ys.numel()
    step = chunk or max(n, 1)
    for s in range(0, n, step):
        m = min(step, n - s)
        _C.sigmoid_gate(addr(ys) + 4 * s, addr(rs) + 4 * s, m, threads)
    arena.check_guards()
    assert_unchanged([rs], [r_before], ["r"])
    return ys


def run_relu_square(y, threads, chunk=None):
    """relu(y)^2 by _C.relu_square in place on a guarded copy of y (`chunk` as for run_sigmoid_gate)."""
    arena = Arena()
    ys = arena.place(y)
    n = ys.numel()
    step = chunk or max(n, 1)
    for s in range(0, n, step):
        _C.relu_square(addr(ys) + 4 * s, min(step, n - s), threads)
    arena.check_guards()
    return ys


def run_gated_residual(x, gate, branch, r, threads, out="new"):
    """_C.gated_residual on guarded copies, into a fresh NaN-filled tensor or (out = "x" or "branch")
    over that input."""
    arena = Arena()
    B, T, C = x.shape
    xs, gs, bs = arena.place(x), arena.place(gate), arena.place(branch)
    rs = None if r is None else arena.place(r)
    target = {"new": None, "x": xs, "branch": bs}[out]
    if target is None:
        target = arena.place(torch.full((B, T, C), NAN))
    inputs = [t for t in (xs, gs, bs, rs) if t is not None and t is not target]
    before = [t.clone() for t in inputs]
    _C.gated_residual(addr(xs), addr(gs), addr(bs), addr(rs), addr(target), B, T, C, threads)
    arena.check_guards()
    assert_unchanged(inputs, before, [f"input {i}" for i in range(len(inputs))])
    return target


# ---------------------------------------------------------------------------------------------
# References and comparison.

def ref_shift_mix(x, scale1p, shift, H, W, mixes, keeps):
    """The model's modulate and q_shift in float64, then h * mix + q_shift(h) * keep."""
    h = x.double()
    if scale1p is not None:
        B, _, C = x.shape
        h = modulate(h, shift.double().reshape(B, C), scale1p.double().reshape(B, C) - 1)
    xx = q_shift(h, H, W)
    return [h * m.double() + xx * k.double() for m, k in zip(mixes, keeps)]


def assert_matches(got, want, rtol=1e-6, per_element=False, what="output"):
    """got (float32) against want: NaN exactly where want has NaN, the same infinities, and finite
    values within rtol of want's largest finite magnitude (float32 rounding, fused multiply-adds)
    or, with per_element, of each value's own magnitude."""
    got, want = got.double(), want.double()
    assert got.shape == want.shape
    nan = torch.isnan(want)
    wrong = torch.isnan(got) != nan
    assert not wrong.any(), f"{what}: NaN mismatch at {wrong.nonzero()[:5].tolist()} " \
        f"(want {want[wrong][:5].tolist()}, got {got[wrong][:5].tolist()})"
    inf = torch.isinf(want)
    wrong = inf & (got != want)
    assert not wrong.any(), f"{what}: infinity mismatch at {wrong.nonzero()[:5].tolist()}: " \
        f"got {got[wrong][:5].tolist()}"
    finite = ~(nan | inf)
    wrong = finite & ~torch.isfinite(got)
    assert not wrong.any(), f"{what}: not finite at {wrong.nonzero()[:5].tolist()}: {got[wrong][:5].tolist()}"
    if not finite.any():
        return
    err = (got - want).abs()
    if per_element:
        bound = rtol * want.abs()
    else:
        bound = torch.full_like(want, rtol * max(want[finite].abs().max().item(), 1e-30))
    wrong = finite & (err > bound)
    assert not wrong.any(), f"{what}: {int(wrong.sum())} values off, first at {wrong.nonzero()[0].tolist()}: " \
        f"want {want[wrong][0].item()!r}, got {got[wrong][0].item()!r}; largest error {err[finite].max().item():.3g}"


def random_inputs(B, H, W, C, n, modulated, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H * W, C, generator=g)
    scale1p = 1 + 0.5 * torch.randn(B, C, generator=g) if modulated else None
    shift = 0.5 * torch.randn(B, C, generator=g) if modulated else None
    # General mixes and keeps (the model's keep is 1 - mix; the pass takes any), some negative.
    mixes = [torch.rand(C, generator=g) * 1.6 - 0.3 for _ in range(n)]
    keeps = [torch.rand(C, generator=g) * 1.6 - 0.3 for _ in range(n)]
    return x, scale1p, shift, mixes, keeps


def shape_id(shape):
    B, H, W, C = shape
    return f"B{B}-{H}x{W}-C{C}"


# ---------------------------------------------------------------------------------------------
# shift_mix: Q-Shift, token mixes, modulation.

SHAPES = [  # B, H, W, C
    (1, 4, 4, 8),      # quarters of 2: scalar tails only
    (2, 3, 7, 13),     # C % 4 == 1, wider than tall
    (3, 7, 3, 14),     # C % 4 == 2, taller than wide
    (1, 5, 5, 15),     # C % 4 == 3
    (2, 4, 4, 1),      # C < 4: no quarters, every channel passes through
    (1, 3, 5, 2),
    (2, 5, 3, 3),
    (2, 6, 1, 12),     # one token wide: left and right neighbours are all border
    (3, 1, 6, 12),     # one token tall: upper and lower neighbours are all border
    (2, 1, 1, 9),      # one token
    (1, 1, 1, 3),      # one token, no quarters
    (1, 2, 9, 37),     # quarters of 9: one 8-wide vector and a scalar tail each, 1 pass-through
    (2, 4, 5, 35),     # quarters of 8: exactly one vector each, 3 pass-through
    (1, 3, 3, 64),     # quarters of 16: vectors only
    (3, 9, 11, 45),    # enough values (with 3 mixes) for the rows to be shared among threads
]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
def test_shift_mix_matches_q_shift_and_mixes(shape, modulated, threads):
    """Each output is h * mix + q_shift(h) * keep with the model's q_shift, on shapes that hit the
    borders, the channels past the quarters and the kernel's vector/scalar split."""
    B, H, W, C = shape
    x, scale1p, shift, mixes, keeps = random_inputs(B, H, W, C, 3, modulated)
    outs = run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, threads)
    for i, (got, want) in enumerate(zip(outs, ref_shift_mix(x, scale1p, shift, H, W, mixes, keeps))):
        assert_matches(got, want, what=f"out[{i}]")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
@pytest.mark.parametrize("n", range(1, 7))
@pytest.mark.parametrize("shape", [(2, 16, 17, 39), (3, 1, 4, 6)], ids=shape_id)
def test_shift_mix_any_number_of_mixes(shape, n, modulated, threads):
    """More than four mixes take further passes of up to four: every output must still be its own
    mix (an offset slip would hand one output another's mix or leave it unwritten)."""
    B, H, W, C = shape
    x, scale1p, shift, mixes, keeps = random_inputs(B, H, W, C, n, modulated, seed=n)
    outs = run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, threads)
    assert len(outs) == n
    for i, (got, want) in enumerate(zip(outs, ref_shift_mix(x, scale1p, shift, H, W, mixes, keeps))):
        assert_matches(got, want, what=f"out[{i}] of {n}")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("modulated", [False, True], ids=["plain", "modulated"])
def test_shift_mix_model_sized_spatial_mix(modulated, threads):
    """A model-sized SpatialMix input (B=16, 32x32 tokens, C=128): the three mixes against
    SpatialMix.forward's token_mix(x, q_shift(x), mix_*) with keep = 1 - mix, as the export uses."""
    B, H, W, C = 16, 32, 32, 128
    att = SpatialMix(C, layer_id=2, num_layers=6)
    mixes = [att.mix_k.detach(), att.mix_v.detach(), att.mix_r.detach()]
    keeps = [1 - m for m in mixes]
    x, scale1p, shift, _, _ = random_inputs(B, H, W, C, 0, modulated, seed=7)
    outs = run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, threads)
    h = x.double()
    if modulated:
        h = modulate(h, shift.double(), scale1p.double() - 1)
    xx = q_shift(h, H, W)
    for name, got, m in zip("kvr", outs, mixes):
        assert_matches(got, token_mix(h, xx, m.double()), what=f"x{name}")


# Where NaNs and infinities go: corner, edge and interior tokens, each channel quarter and a
# pass-through channel, on B=2, 5x6 tokens, C=19 (quarters of 4, channels 16..18 pass through).
B_X, H_X, W_X, C_X = 2, 5, 6, 19
SPECIALS = [  # (b, row, column, channel, value)
    (0, 0, 0, 1, NAN),    # quarter 0 (from the left), corner: reaches (0, 1)
    (0, 2, 3, 5, NAN),    # quarter 1 (from the right), interior: reaches (2, 2)
    (1, 4, 5, 9, NAN),    # quarter 2 (from above), bottom row: no token below takes it
    (1, 0, 2, 13, NAN),   # quarter 3 (from below), top row: no token above takes it
    (1, 2, 4, 14, NAN),   # quarter 3, interior: reaches (1, 4)
    (0, 3, 1, 17, NAN),   # pass-through channel
    (1, 2, 2, 3, INF),    # infinities: inf * mix, and inf * 0 = NaN where a mix is zero
    (0, 1, 4, 10, -INF),
]


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("where", ["x", "x modulated", "scale1p", "shift", "mix", "keep"])
def test_shift_mix_nan_never_passes(where, threads):
    """A NaN (or infinity) in any input gives NaN exactly where the float64 reference has NaN, the
    shifted neighbours included, and nowhere else."""
    B, H, W, C = B_X, H_X, W_X, C_X
    x, scale1p, shift, mixes, keeps = random_inputs(B, H, W, C, 3, where != "x", seed=3)
    mixes[1][3] = 0.0  # inf * 0 in one output
    keeps[2][10] = 0.0
    if where.startswith("x"):
        x = x.view(B, H, W, C)
        for b, i, j, c, v in SPECIALS:
            x[b, i, j, c] = v
        x = x.view(B, H * W, C)
    elif where == "scale1p":
        scale1p[1, 6] = NAN
        scale1p[0, 17] = INF
    elif where == "shift":
        shift[0, 2] = NAN
        shift[1, 12] = -INF
    elif where == "mix":
        mixes[0][4] = NAN
        mixes[2][18] = INF
    else:
        keeps[1][11] = NAN
        keeps[0][0] = -INF
    outs = run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, threads)
    wants = ref_shift_mix(x, scale1p, shift, H, W, mixes, keeps)
    nan_tokens = set()
    for i, (got, want) in enumerate(zip(outs, wants)):
        assert torch.isfinite(want).any()
        nan_tokens |= {tuple(t) for t in torch.isnan(want).any(-1).nonzero().tolist()}
        assert_matches(got, want, what=f"out[{i}]")
    # The reference is not trivially NaN-free: NaN reaches more tokens than those holding it.
    assert len(nan_tokens) > (2 if where.startswith("x") else 0)
    if where.startswith("x"):
        # Left neighbour's quarter 0: token (0, 1) of batch 0, channel 1, NaN from (0, 0).
        assert all(torch.isnan(w.view(B, H, W, C)[0, 0, 1, 1]) for w in wants)
        assert all(torch.isnan(o.view(B, H, W, C)[0, 0, 1, 1]) for o in outs)


@pytest.mark.parametrize("shape", [(2, 3, 7, 13), (1, 1, 1, 3), (3, 9, 11, 45)], ids=shape_id)
def test_shift_mix_writes_only_its_outputs(shape):
    """Every output value is written (outputs start as NaN, the reference is finite), the guards
    around every buffer survive and x, scale1p, shift, mix and keep are left as they were."""
    B, H, W, C = shape
    x, scale1p, shift, mixes, keeps = random_inputs(B, H, W, C, 5, True, seed=11)
    outs = run_shift_mix(x, scale1p, shift, H, W, mixes, keeps, 2)  # checks guards and inputs
    for got in outs:
        assert torch.isfinite(got).all()
    for got, want in zip(outs, ref_shift_mix(x, scale1p, shift, H, W, mixes, keeps)):
        assert_matches(got, want)


# ---------------------------------------------------------------------------------------------
# sigmoid_gate and relu_square.

N_SIZES = [1, 7, 8, 9, 4097, 100003]  # tails only, one vector, vector + tail, several blocks, threads


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", N_SIZES)
def test_sigmoid_gate_matches_torch(n, threads):
    """y *= sigmoid(r) in place: SpatialMix's torch.sigmoid_(r) * y, in float64."""
    g = torch.Generator().manual_seed(n)
    y = torch.randn(n, generator=g) * 3
    r = torch.randn(n, generator=g) * 6
    got = run_sigmoid_gate(y, r, threads)
    assert_matches(got, torch.sigmoid_(r.double()) * y.double())


def _tiled(values, n):
    """values repeated to n entries. With a period prime to 8, each value lands in every vector lane."""
    reps = -(-n // len(values))
    return torch.tensor(values * reps, dtype=torch.float32)[:n]


SIGMOID_R = [INF, -INF, 100.0, -100.0, NAN, 0.0, 20.0, -20.0, 3.0]  # 9 values
SIGMOID_Y = [1.5, -2.0, 0.0, INF, -INF, NAN, 3e38]  # 7 values


@pytest.mark.parametrize("path", ["vector", "scalar"])
def test_sigmoid_gate_extreme_values(path):
    """r = +inf gates by 1, -inf by 0, +-100 saturate, NaN gives NaN; y * 0 of an infinite y is
    NaN. Against torch's own float32 sigmoid, in the vector lanes and in the scalar tail."""
    n = len(SIGMOID_R) * len(SIGMOID_Y) * 8  # every (y, r) pair, in every lane
    r = _tiled(SIGMOID_R, n)
    y = _tiled(SIGMOID_Y, n)
    got = run_sigmoid_gate(y, r, 1, chunk=1 if path == "scalar" else None)
    want = torch.sigmoid(r) * y
    assert torch.isnan(want).any() and torch.isinf(want).any()
    assert_matches(got, want, per_element=True)
    finite_y = torch.isfinite(y)
    assert torch.equal(got[(r == INF) & finite_y], y[(r == INF) & finite_y])   # gate exactly 1
    assert (got[(r == -INF) & finite_y] == 0).all()                            # gate exactly 0
    assert torch.isnan(got[torch.isnan(r)]).all()


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("n", N_SIZES)
def test_relu_square_matches_torch(n, threads):
    """y = relu(y)^2 in place: ChannelMix's relu_ then square_, bit for bit (one rounding each)."""
    g = torch.Generator().manual_seed(n)
    y = torch.randn(n, generator=g) * 4
    got = run_relu_square(y, threads)
    assert_matches(got, torch.relu(y.double()) ** 2)
    assert torch.equal(bits(got), bits(torch.relu(y) ** 2))


RELU_VALUES = [NAN, -INF, INF, -0.0, 0.0, 1e20, -1e20, 1.8e19, 1.9e19, 3.4e38, 1e-30, 1e-20, 1e-45, -1e-45,
               2.0, -3.0, -NAN]  # 17 values


@pytest.mark.parametrize("path", ["vector", "scalar"])
def test_relu_square_extreme_values(path):
    """NaN stays NaN, -inf and -0.0 give +0, +inf stays inf, squares past float32's range overflow
    to inf and tiny ones underflow, exactly as torch.relu(y) ** 2 in float32."""
    y = _tiled(RELU_VALUES, len(RELU_VALUES) * 8)
    got = run_relu_square(y, 1, chunk=1 if path == "scalar" else None)
    want = torch.relu(y) ** 2
    assert_matches(got, want, per_element=True)
    same = torch.isnan(want) | (bits(got) == bits(want))  # signed zeros and subnormals too
    assert same.all(), f"differs at {y[~same].tolist()}: got {got[~same].tolist()}, want {want[~same].tolist()}"
    assert torch.isnan(got[torch.isnan(y)]).all()
    assert (got[y == -INF] == 0).all() and (got[y == INF] == INF).all() and (got[y == 1e20] == INF).all()


# ---------------------------------------------------------------------------------------------
# gated_residual.

GR_SHAPES = [  # B, T, C
    (1, 1, 1), (2, 5, 3), (3, 7, 7), (1, 4, 8), (2, 3, 9), (3, 11, 17), (2, 1, 130),
    (3, 129, 130),  # enough values for the rows to be shared among threads
]


def ref_gated_residual(x, gate, branch, r):
    """The block's gated_residual in float64, the ChannelMix's sigmoid(r) applied to its output."""
    x, gate, branch = x.double(), gate.double(), branch.double()
    if r is not None:
        branch = torch.sigmoid(r.double()) * branch
    return gated_residual(x, gate, branch)


def gr_inputs(B, T, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, T, C, generator=g), torch.randn(B, C, generator=g),
            torch.randn(B, T, C, generator=g), 4 * torch.randn(B, T, C, generator=g))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("with_r", [False, True], ids=["no-r", "r"])
@pytest.mark.parametrize("shape", GR_SHAPES, ids=lambda s: "B{}-T{}-C{}".format(*s))
def test_gated_residual_matches_model(shape, with_r, threads):
    """out = x + gate[b] * branch (times sigmoid(r)): the model's gated_residual, each batch with
    its own gate row."""
    x, gate, branch, r = gr_inputs(*shape)
    r = r if with_r else None
    got = run_gated_residual(x, gate, branch, r, threads)
    assert_matches(got, ref_gated_residual(x, gate, branch, r))


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("with_r", [False, True], ids=["no-r", "r"])
@pytest.mark.parametrize("out", ["x", "branch"])
@pytest.mark.parametrize("shape", [(2, 3, 9), (3, 129, 130)], ids=lambda s: "B{}-T{}-C{}".format(*s))
def test_gated_residual_in_place(shape, out, with_r, threads):
    """Writing over x or over branch (as ort_split does when nothing reads them later) gives bit
    for bit the result of a separate output."""
    x, gate, branch, r = gr_inputs(*shape, seed=5)
    r = r if with_r else None
    separate = run_gated_residual(x, gate, branch, r, threads)
    in_place = run_gated_residual(x, gate, branch, r, threads, out=out)
    assert torch.equal(bits(in_place), bits(separate))
    assert_matches(in_place, ref_gated_residual(x, gate, branch, r))


GR_VALUES = [0.0, 1.0, -1.0, 2.5, -2.5, 1e30, -1e30]
GR_R = [0.0, 100.0, -100.0, INF, -INF, NAN]  # gates exact in float32: 0.5, 1, 0, 1, 0, NaN


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("with_r", [False, True], ids=["no-r", "r"])
def test_gated_residual_extreme_values(with_r, threads):
    """Magnitudes of 1e30 whose products overflow: inf (and NaN from a NaN r) exactly where torch's
    float32 addcmul gives them, finite values as torch's. addcmul fuses the multiply-add, so an
    infinite x plus an overflowing product of the other sign stays infinite there, not NaN."""
    # Every (x, gate, branch) triple: gate varies along C, (x, branch) along T; C = 7 * 3 with the
    # x values too, so the vector lanes and the 5-wide scalar tail both see each gate value.
    C = len(GR_VALUES) * 3
    gate_row = torch.tensor(GR_VALUES * 3)
    pairs = list(itertools.product(GR_VALUES + [INF, -INF], GR_VALUES))
    T = len(pairs)
    x = torch.tensor([p[0] for p in pairs]).view(1, T, 1).expand(2, T, C).contiguous()
    branch = torch.tensor([p[1] for p in pairs]).view(1, T, 1).expand(2, T, C).contiguous()
    gate = torch.stack([gate_row, gate_row.flip(0)])  # a second batch row, so gate[b] must be per batch
    r = _tiled(GR_R, 2 * T * C).view(2, T, C) if with_r else None
    got = run_gated_residual(x, gate, branch, r, threads)
    torch_branch = branch if r is None else torch.sigmoid(r) * branch
    want = gated_residual(x, gate, torch_branch)  # torch's float32
    assert torch.isinf(want).any() and (r is None or torch.isnan(want).any())
    assert_matches(got, want, per_element=True)


# ---------------------------------------------------------------------------------------------
# The passes together: a ChannelMix branch as ort_split runs it.

@pytest.mark.parametrize("threads", THREADS)
def test_channel_mix_block_from_fused_passes(threads):
    """shift_mix (modulation and ChannelMix's two mixes), relu_square on the key and gated_residual
    with the receptance give the block's x + gate * ChannelMix(modulate(x_ln, shift, scale))."""
    B, H, W, C = 2, 5, 7, 21
    torch.manual_seed(0)
    ffn = ChannelMix(C, layer_id=1, num_layers=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, H * W, C, generator=g)
    x_ln = torch.randn(B, H * W, C, generator=g)
    shift, scale, gate = (0.5 * torch.randn(B, C, generator=g) for _ in range(3))
    with torch.no_grad():
        ffn64 = copy.deepcopy(ffn).double()
        want = gated_residual(x.double(), gate.double(),
                              ffn64(modulate(x_ln.double(), shift.double(), scale.double()), H, W))
        mixes = [ffn.mix_k, ffn.mix_r]
        xk, xr = run_shift_mix(x_ln, 1 + scale, shift, H, W, mixes, [1 - m for m in mixes], threads)
        k = run_relu_square(ffn.key(xk), threads)
        got = run_gated_residual(x, gate, ffn.value(k), ffn.receptance(xr), threads)
    # Three float32 matmuls lie between input and output: a looser bound than one pass's.
    assert_matches(got, want, rtol=1e-5)
    assert (got - x).abs().max() > 1e-3  # the branch contributes: the comparison is not of x alone
