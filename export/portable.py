"""The Bi-WKV operator in standard ONNX ops (opset 18), linear in tokens: ``export.to_onnx --portable``.

    l(t,i) = k_i - (|t-i| - 1) w   (i != t),    l(t,t) = u + k_t,    y_t = sum_i e^l(t,i) v_i / sum_i e^l(t,i)

per batch row and channel. The sum splits into the terms before t ("left"), the diagonal and the
terms after t ("right"); the right sums are the left sums with positions mirrored (reverse CumSum,
j -> -j, chunk p after n), and the diagonal goes with the left sums.

Left sums in chunks: T is padded to N chunks of L = ceil(sqrt(T)) positions. Within chunk n,
position j (t = nL + j) and a source i = pL + j' (j' its place in chunk p <= n) give

    l(t,i) = (a_i - m_p) + X[n,p] - j w,    a_i = k_i + j' w,    m_p = max of a over chunk p,
    X[n,p] = m_p - ((n-p) L - 1) w,

so the left sum of t is exp(M_n - j w) * (exp(X[n,n] - M_n) * inner_j + sum_{p<n} exp(X[n,p] - M_n) S_p),
with inner_j the exclusive CumSum of exp(a - m) v within the chunk, S_p its chunk totals and M_n the
largest X of row n (the diagonal term: exp(m_n + u - M_n) exp(a_t - m_n) v_t, its log-weight m_n + u
also a candidate for M_n). Every exponential is of a difference to a maximum, so none overflows;
the N x N chunk matrix costs N^2 ~ T per channel, and the whole graph O(B T C) time and memory.
The two sides meet per position, each weighted by exp(its log-scale - the larger of the two).

Exactness. The anchors are maxima over whole chunks, which include positions on the other side of
t: they stand above the largest true term at t by up to 2 L |w| + |u|, and terms that far below it
are lost to float32 underflow only past exp(-87). Rounding grows with the logits' magnitude, up to
|w| T. Against the float64 formula the graph is within 1e-5 relative (typically 1e-6) for
|w| T <= MAX_DECAY and 2 L |w| + |u| <= MAX_SPREAD, whatever the keys (tests/test_portable.py);
outside that range the export refuses (check_range). The model's w = decay / T and u = first / T
make these |decay| and about 2 |decay| / sqrt(T) + |first| / T.

Only standard ops that TensorRT's ONNX parser, OpenVINO and ONNX Runtime (CPU, WebAssembly) run:
OPS lists them. The inputs the model hands the operator are float32 also in fp16 exports (k and v
are cast before it, y after), so it computes in float32.
"""
import numpy as np
from onnx import TensorProto
from onnxscript import opset18 as op

#: The range the graph is float32-exact in: |w| T <= MAX_DECAY and 2 L |w| + |u| <= MAX_SPREAD.
MAX_DECAY = 100.0
MAX_SPREAD = 60.0
#: Log-weight of padding and of absent terms: exp underflows it to 0, and no inf - inf arises.
MASK = -1e30
#: The op types the graph uses (tests check that an export holds no others).
OPS = ("Add", "Cast", "Ceil", "Concat", "Constant", "CumSum", "Div", "Exp", "Greater", "MatMul", "Max", "Mul", "Neg",
       "Pad", "Range", "ReduceMax", "ReduceSum", "Reshape", "Shape", "Slice", "Split", "Sqrt", "Squeeze", "Sub",
       "Transpose", "Unsqueeze", "Where")


def chunk_length(tokens):
    """L = ceil(sqrt(T)) as the graph computes it (in float32)."""
    return int(np.ceil(np.sqrt(np.float32(tokens))))


def check_range(w, u, tokens, where):
    """ValueError in one line when w, u ([C] arrays as the operator takes them) at ``tokens`` tokens
    are outside the range the graph is exact in; ``where`` names them."""
    w, u = np.abs(np.asarray(w, np.float64)), np.abs(np.asarray(u, np.float64))
    L = chunk_length(tokens)
    decay, spread = float(np.max(w) * tokens), float(np.max(2 * L * w + u))
    if not (decay <= MAX_DECAY and spread <= MAX_SPREAD):
        raise ValueError(f"{where}: the portable Bi-WKV is exact for |w| T <= {MAX_DECAY:g} and 2 L |w| + |u| <= "
                         f"{MAX_SPREAD:g} (T = {tokens} tokens, chunks of L = {L}); here they reach {decay:.4g} and "
                         f"{spread:.4g}: export without --portable")


def check_model(model):
    """check_range for every block of a DRWKV model at its own token count (w = decay / T, u = first / T)."""
    from drwkv.model import SpatialMix

    tokens = model.grid ** 2
    blocks = [m for m in model.modules() if isinstance(m, SpatialMix)]
    for i, block in enumerate(blocks):
        w = (block.spatial_decay.detach().float() / tokens).numpy()
        u = (block.spatial_first.detach().float() / tokens).numpy()
        check_range(w, u, tokens, f"block {i}")


def _ints(*values):
    return op.Constant(value_ints=list(values))


def _int(value):
    return op.Constant(value_int=value)


def _float(value):
    return op.Constant(value_float=value)


def bi_wkv(w, u, k, v):
    """onnxscript ops computing y [B,T,C] float32 from w, u [C] and k, v [B,T,C] float32."""
    one = _ints(1)
    T = op.Shape(k, start=1, end=2)                                                    # [1] int64
    C = op.Shape(k, start=2, end=3)
    L = op.Cast(op.Ceil(op.Sqrt(op.Cast(T, to=TensorProto.FLOAT))), to=TensorProto.INT64)
    N = op.Div(op.Sub(op.Add(T, L), one), L)
    pads = op.Concat(_ints(0, 0, 0, 0), op.Sub(op.Mul(N, L), T), _ints(0), axis=0)

    def chunks(x, fill):  # [B,T,C] -> [B,N,L,C], padded at the end
        return op.Reshape(op.Pad(x, pads, _float(fill)), op.Concat(_ints(-1), N, L, C, axis=0))

    k, v = chunks(k, MASK), chunks(v, 0.0)
    j = op.Cast(op.Range(_int(0), op.Squeeze(L), _int(1)), to=TensorProto.FLOAT)
    jw = op.Mul(op.Unsqueeze(j, one), w)                                              # [L,C]
    n = op.Cast(op.Range(_int(0), op.Squeeze(N), _int(1)), to=TensorProto.FLOAT)
    apart = op.Sub(op.Unsqueeze(n, one), op.Unsqueeze(n, _ints(0)))                 # [N,N]: n - p
    w_col, w_3d = op.Unsqueeze(w, one), op.Unsqueeze(w, _ints(1, 2))                  # [C,1], [C,1,1]
    L_w = op.Mul(op.Cast(L, to=TensorProto.FLOAT), w_3d)

    def per_chunk(z):  # [B,C,N] -> [B,N,1,C]
        return op.Unsqueeze(op.Transpose(z, perm=[0, 2, 1]), _ints(2))

    sides = []
    for side in (1, -1):  # left sums, then right sums (the same with positions mirrored)
        side_jw = jw if side == 1 else op.Neg(jw)
        a = op.Add(k, side_jw)                                                        # [B,N,L,C]
        m = op.ReduceMax(a, _ints(2), keepdims=1)                                     # [B,N,1,C]
        e = op.Exp(op.Sub(a, m))
        ev = op.Mul(e, v)
        inner = [op.CumSum(x, _int(2), exclusive=1, reverse=int(side == -1)) for x in (ev, e)]
        totals = op.Concat(*(op.ReduceSum(x, _ints(2), keepdims=1) for x in (ev, e)), axis=2)  # [B,N,2,C]

        # X[b,c,n,p] for the chunks p on this side of n; the others get MASK (a +1e30 decay).
        mc = op.Transpose(op.Squeeze(m, _ints(2)), perm=[0, 2, 1])                    # [B,C,N]
        towards = apart if side == 1 else op.Neg(apart)
        decay = op.Where(op.Greater(towards, _float(0.0)), op.Sub(op.Mul(towards, L_w), w_3d), _float(-MASK))  # [C,N,N]
        x = op.Sub(op.Unsqueeze(mc, _ints(2)), decay)                                 # [B,C,N,N]
        # Row anchor: the largest of the other chunks' X and the chunk's own X[n,n] = m_n + w (and,
        # left side only, m_n + u for the diagonal term, which goes with the left sums).
        own = op.Add(mc, w_col)
        candidates = [op.ReduceMax(x, _ints(3), keepdims=0), own]
        if side == 1:
            diagonal = op.Add(mc, op.Unsqueeze(u, one))
            candidates.append(diagonal)
        anchor = op.Max(*candidates)
        carried = op.MatMul(op.Exp(op.Sub(x, op.Unsqueeze(anchor, _ints(3)))),
                            op.Transpose(totals, perm=[0, 3, 1, 2]))                # [B,C,N,2]
        carried = op.Split(op.Transpose(carried, perm=[0, 2, 3, 1]), num_outputs=2, axis=2)  # [B,N,1,C] each
        own = per_chunk(op.Exp(op.Sub(own, anchor)))                                  # [B,N,1,C]
        brackets = [op.Add(op.Mul(own, s), c) for s, c in zip(inner, carried)]      # num, den: [B,N,L,C]
        if side == 1:
            diagonal = per_chunk(op.Exp(op.Sub(diagonal, anchor)))
            brackets = [op.Add(b, op.Mul(diagonal, z)) for b, z in zip(brackets, (ev, e))]
        sides.append((op.Sub(per_chunk(anchor), side_jw), brackets))              # log scale [B,N,L,C]

    (scale_l, (num_l, den_l)), (scale_r, (num_r, den_r)) = sides
    top = op.Max(scale_l, scale_r)
    weight_l, weight_r = op.Exp(op.Sub(scale_l, top)), op.Exp(op.Sub(scale_r, top))
    y = op.Div(op.Add(op.Mul(weight_l, num_l), op.Mul(weight_r, num_r)),
               op.Add(op.Mul(weight_l, den_l), op.Mul(weight_r, den_r)))              # [B,N,L,C]
    y = op.Reshape(y, op.Concat(_ints(-1), op.Mul(N, L), C, axis=0))
    return op.Slice(y, _ints(0), T, one)
