"""The Bi-WKV operator in standard ONNX ops (opset 18), linear in tokens: ``expand_bi_wkv`` replaces a
graph's drwkv::BiWKV nodes by them, for ``export.to_onnx --portable`` and for runtimes that cannot run
the node (OpenVINO, precision bf16).

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
outside that range expand_bi_wkv refuses (check_range). The model's w = decay / T and u = first / T
make these |decay| and about 2 |decay| / sqrt(T) + |first| / T.

Only standard ops that TensorRT's ONNX parser, OpenVINO and ONNX Runtime (CPU, WebAssembly) run:
OPS lists them. It computes in float32, also in fp16 exports (k and v are cast to float32 before it,
y back after).
"""
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from drwkv.runtime.ort_fusion import BIWKV_DOMAIN, BIWKV_OP
#: The range the graph is float32-exact in: |w| T <= MAX_DECAY and 2 L |w| + |u| <= MAX_SPREAD.
MAX_DECAY = 100.0
MAX_SPREAD = 60.0
#: Log-weight of padding and of absent terms: exp underflows it to 0, and no inf - inf arises.
MASK = -1e30
#: The op types the graph uses (tests check that an export holds no others).
OPS = ("Add", "Cast", "Ceil", "Concat", "Constant", "CumSum", "Div", "Exp", "Greater", "MatMul", "Max", "Mul", "Neg",
       "Pad", "Range", "ReduceMax", "ReduceSum", "Reshape", "Shape", "Slice", "Split", "Sqrt", "Squeeze", "Sub",
       "Transpose", "Unsqueeze", "Where")
#: The opset of the ops above (ReduceMax's axes an input, Split's num_outputs).
OPSET = 18


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
                         f"{spread:.4g}")


class _GraphBuilder:
    """Collects ONNX nodes: ``g.Add(a, b)`` appends an Add node and returns its output's name
    (``num_outputs=n``: a list of n names). Names start with ``prefix``, unique in one graph."""

    def __init__(self, prefix):
        self.prefix, self.nodes = prefix, []

    def next_name(self):
        return f"{self.prefix}/{len(self.nodes)}"

    def __getattr__(self, op_type):
        def add(*inputs, **attributes):
            name = self.next_name()
            count = attributes.get("num_outputs", 1)
            outputs = [f"{name}:{i}" for i in range(count)]
            self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attributes))
            return outputs if "num_outputs" in attributes else outputs[0]
        return add

    def ints(self, *values):
        return self.Constant(value_ints=list(values))

    def int(self, value):
        return self.Constant(value_int=value)

    def float(self, value):
        return self.Constant(value_float=float(value))


def bi_wkv(g, w, u, k, v):
    """Add to the graph builder ``g`` the nodes computing y [B,T,C] float32 from w, u [C] and k, v
    [B,T,C] float32 (value names); -> the name of y."""
    one = g.ints(1)
    T = g.Shape(k, start=1, end=2)                                                    # [1] int64
    C = g.Shape(k, start=2, end=3)
    L = g.Cast(g.Ceil(g.Sqrt(g.Cast(T, to=TensorProto.FLOAT))), to=TensorProto.INT64)
    N = g.Div(g.Sub(g.Add(T, L), one), L)
    pads = g.Concat(g.ints(0, 0, 0, 0), g.Sub(g.Mul(N, L), T), g.ints(0), axis=0)

    def chunks(x, fill):  # [B,T,C] -> [B,N,L,C], padded at the end
        return g.Reshape(g.Pad(x, pads, g.float(fill)), g.Concat(g.ints(-1), N, L, C, axis=0))

    k, v = chunks(k, MASK), chunks(v, 0.0)
    j = g.Cast(g.Range(g.int(0), g.Squeeze(L), g.int(1)), to=TensorProto.FLOAT)
    jw = g.Mul(g.Unsqueeze(j, one), w)                                              # [L,C]
    n = g.Cast(g.Range(g.int(0), g.Squeeze(N), g.int(1)), to=TensorProto.FLOAT)
    apart = g.Sub(g.Unsqueeze(n, one), g.Unsqueeze(n, g.ints(0)))                 # [N,N]: n - p
    w_col, w_3d = g.Unsqueeze(w, one), g.Unsqueeze(w, g.ints(1, 2))                  # [C,1], [C,1,1]
    L_w = g.Mul(g.Cast(L, to=TensorProto.FLOAT), w_3d)

    def per_chunk(z):  # [B,C,N] -> [B,N,1,C]
        return g.Unsqueeze(g.Transpose(z, perm=[0, 2, 1]), g.ints(2))

    sides = []
    for side in (1, -1):  # left sums, then right sums (the same with positions mirrored)
        side_jw = jw if side == 1 else g.Neg(jw)
        a = g.Add(k, side_jw)                                                        # [B,N,L,C]
        m = g.ReduceMax(a, g.ints(2), keepdims=1)                                     # [B,N,1,C]
        e = g.Exp(g.Sub(a, m))
        ev = g.Mul(e, v)
        inner = [g.CumSum(x, g.int(2), exclusive=1, reverse=int(side == -1)) for x in (ev, e)]
        totals = g.Concat(*(g.ReduceSum(x, g.ints(2), keepdims=1) for x in (ev, e)), axis=2)  # [B,N,2,C]

        # X[b,c,n,p] for the chunks p on this side of n; the others get MASK (a +1e30 decay).
        mc = g.Transpose(g.Squeeze(m, g.ints(2)), perm=[0, 2, 1])                    # [B,C,N]
        towards = apart if side == 1 else g.Neg(apart)
        decay = g.Where(g.Greater(towards, g.float(0.0)), g.Sub(g.Mul(towards, L_w), w_3d), g.float(-MASK))  # [C,N,N]
        x = g.Sub(g.Unsqueeze(mc, g.ints(2)), decay)                                 # [B,C,N,N]
        # Row anchor: the largest of the other chunks' X and the chunk's own X[n,n] = m_n + w (and,
        # left side only, m_n + u for the diagonal term, which goes with the left sums).
        own = g.Add(mc, w_col)
        candidates = [g.ReduceMax(x, g.ints(3), keepdims=0), own]
        if side == 1:
            diagonal = g.Add(mc, g.Unsqueeze(u, one))
            candidates.append(diagonal)
        anchor = g.Max(*candidates)
        carried = g.MatMul(g.Exp(g.Sub(x, g.Unsqueeze(anchor, g.ints(3)))),
                            g.Transpose(totals, perm=[0, 3, 1, 2]))                # [B,C,N,2]
        carried = g.Split(g.Transpose(carried, perm=[0, 2, 3, 1]), num_outputs=2, axis=2)  # [B,N,1,C] each
        own = per_chunk(g.Exp(g.Sub(own, anchor)))                                  # [B,N,1,C]
        brackets = [g.Add(g.Mul(own, s), c) for s, c in zip(inner, carried)]      # num, den: [B,N,L,C]
        if side == 1:
            diagonal = per_chunk(g.Exp(g.Sub(diagonal, anchor)))
            brackets = [g.Add(b, g.Mul(diagonal, z)) for b, z in zip(brackets, (ev, e))]
        sides.append((g.Sub(per_chunk(anchor), side_jw), brackets))              # log scale [B,N,L,C]

    (scale_l, (num_l, den_l)), (scale_r, (num_r, den_r)) = sides
    top = g.Max(scale_l, scale_r)
    weight_l, weight_r = g.Exp(g.Sub(scale_l, top)), g.Exp(g.Sub(scale_r, top))
    y = g.Div(g.Add(g.Mul(weight_l, num_l), g.Mul(weight_r, num_r)),
               g.Add(g.Mul(weight_l, den_l), g.Mul(weight_r, den_r)))              # [B,N,L,C]
    y = g.Reshape(y, g.Concat(g.ints(-1), g.Mul(N, L), C, axis=0))
    return g.Slice(y, g.ints(0), T, one)


def expand_bi_wkv(model):
    """Replace, in place, every drwkv::BiWKV node of ``model`` (an onnx.ModelProto) by the standard
    ops of bi_wkv (float16 k, v cast to float32 and y back); -> how many. ValueError in one line when
    a node's w or u (initializers) are outside the range the graph is exact in at its token count."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    info = {v.name: v.type.tensor_type for v in (*graph.input, *graph.value_info, *graph.output)}
    nodes, count = [], 0
    for node in graph.node:
        if (node.domain, node.op_type) != (BIWKV_DOMAIN, BIWKV_OP):
            nodes.append(node)
            continue
        w, u, k, v = node.input
        g = _GraphBuilder(f"{node.name or node.output[0]}/portable")
        if w in constants and u in constants:
            dims = info[k].shape.dim if k in info else ()
            if len(dims) != 3 or not dims[1].HasField("dim_value"):
                raise ValueError(f"BiWKV node {node.name}: its token count is not declared (k: {k})")
            check_range(numpy_helper.to_array(constants[w]), numpy_helper.to_array(constants[u]),
                        dims[1].dim_value, f"BiWKV node {node.name}")
        half = k in info and info[k].elem_type == TensorProto.FLOAT16
        if half:
            k, v = (g.Cast(x, to=TensorProto.FLOAT) for x in (k, v))
        y = bi_wkv(g, w, u, k, v)
        if half:
            g.nodes.append(helper.make_node("Cast", [y], [node.output[0]], name=g.next_name(), to=TensorProto.FLOAT16))
        else:  # y is the last node's output: it takes the BiWKV node's name for it
            g.nodes[-1].output[0] = node.output[0]
        nodes.extend(g.nodes)
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(n.domain == BIWKV_DOMAIN for n in graph.node):
        imports = [o for o in model.opset_import if o.domain != BIWKV_DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(imports)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version < OPSET:
            raise ValueError(f"the graph imports ONNX opset {opset.version}; the portable Bi-WKV needs {OPSET}")
    return count
