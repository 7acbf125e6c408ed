"""ONNX Runtime's CPU path, part 1: the element-wise work of each DRWKV block, recognised in the
exported graph and replaced by fused nodes that run natively (``cpp/src/fused_cpu.cpp``).

The rewrite happens in memory, when the runtime loads a graph; the file on disk keeps standard ops
plus drwkv::BiWKV, which TensorRT's parser and every ONNX runtime take. ``fuse(model)`` rewrites a
ModelProto in place and counts what it replaced:

- ``ShiftMix``: the block's LayerNorm, DiT's modulation (Mul, Add), Q-Shift (Reshape, 8 Slices,
  4 Pads, Concat, Reshape) and the token mixes fed by it (per mix two Muls and an Add), in one pass;
- ``BiWKV`` with a fifth input r: the operator followed by the receptance gate sigmoid(r) * y;
- ``ReluSquare``: relu(k)^2 (Relu, then Mul by itself or Pow 2);
- ``GatedResidual``: x + gate * branch, with the ChannelMix's sigmoid(r) * branch folded in.

Fused nodes take the BiWKV node's own domain, ``drwkv``: every node there is drwkv's to run. The
executor, drwkv.runtime.ort_split, runs them between ONNX Runtime sessions of the remaining standard ops. A
pattern is replaced only when its constants are those of the model's definition (drwkv.model's
q_shift, token_mix, ChannelMix), its values are float32, and nothing outside it reads a value it
removes; anything else stays as it is and runs in ONNX Runtime: correct, only slower.
"""
import collections

import numpy as np

BIWKV_DOMAIN = "drwkv"  # the exported BiWKV node's; the fused nodes join it in memory
BIWKV_OP = "BiWKV"
FLOAT = 1  # onnx.TensorProto.FLOAT


def value_info(model):
    """{name: (element type, dims)} of every value the graph declares or ONNX infers; dims are ints,
    or None where dynamic."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    info = {}
    for t in graph.initializer:
        info[t.name] = (t.data_type, list(t.dims))
    for v in (*graph.input, *graph.value_info, *graph.output):
        tensor = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim] \
            if tensor.HasField("shape") else None
        info[v.name] = (tensor.elem_type, dims)
    return info


class _Graph:
    """Lookups over a graph: producers, consumers, constants, inferred types and shapes."""

    def __init__(self, model, value_info):
        from onnx import numpy_helper

        self.graph = model.graph
        self.value_info = value_info
        self.constants = {t.name: t for t in self.graph.initializer}
        self.constant_nodes = {n.output[0]: n for n in self.graph.node if n.op_type == "Constant"}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers = collections.defaultdict(list)
        for n in self.graph.node:
            for i in n.input:
                self.consumers[i].append(n)
        self.graph_outputs = {o.name for o in self.graph.output}
        self._to_array = numpy_helper.to_array
        self.removed = set()  # id() of nodes taken into fused nodes

    def const(self, name):
        """The value of an initializer or Constant node output, else None."""
        if name in self.constants:
            return self._to_array(self.constants[name])
        node = self.constant_nodes.get(name)
        if node is not None and len(node.attribute) == 1 and node.attribute[0].name == "value":
            return self._to_array(node.attribute[0].t)
        return None

    def made_by(self, value, op_type):
        node = self.producer.get(value)
        return node if node is not None and node.op_type == op_type and node.domain == "" and \
            id(node) not in self.removed else None

    def read_only_by(self, value, nodes):
        """True when value is no graph output and every node reading it is one of ``nodes``."""
        ids = {id(n) for n in nodes}
        return value not in self.graph_outputs and all(id(n) in ids for n in self.consumers[value])

    def is_float(self, value):
        return self.value_info.get(value, (None, None))[0] == FLOAT

    def dims(self, value):
        return self.value_info.get(value, (None, None))[1]


def _other(node, value):
    """The other input of a two-input node, given one (None if value is not an input)."""
    a, b = node.input
    return b if a == value else a if b == value else None


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# --- ShiftMix ------------------------------------------------------------------------------------

def _window_chain(g, value, until):
    """Follow Slices back from ``value`` to the value ``until`` -> ({axis: (start, end)}, nodes) or None.
    Ends are clamped to the axis sizes (the tensor [B, H, W, C] behind ``until``)."""
    windows, nodes = {}, []
    while value != until:
        node = g.made_by(value, "Slice")
        if node is None or len(node.input) < 4:
            return None
        starts, ends, axes = (g.const(node.input[i]) for i in (1, 2, 3))
        steps = g.const(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(1, np.int64)
        if starts is None or ends is None or axes is None or steps is None or np.any(steps != 1):
            return None
        for axis, start, end in zip(axes.tolist(), starts.tolist(), ends.tolist()):
            if axis % 4 in windows:  # two slices of one axis: not how Q-Shift is written
                return None
            windows[axis % 4] = (start, end)
        nodes.append(node)
        value = node.input[0]
    return windows, nodes


def _qshift_spec(H, W, C):
    """What each input of Q-Shift's Concat is, as drwkv.model's _q_shift_traceable writes it:
    (windows over axes of [B, H, W, C], pads or None)."""
    q = C // 4
    spec = [({2: (0, W - 1), 3: (0, q)}, [0, 0, 1, 0, 0, 0, 0, 0]),      # from the left
            ({2: (1, W), 3: (q, 2 * q)}, [0, 0, 0, 0, 0, 0, 1, 0]),      # from the right
            ({1: (0, H - 1), 3: (2 * q, 3 * q)}, [0, 1, 0, 0, 0, 0, 0, 0]),  # from above
            ({1: (1, H), 3: (3 * q, 4 * q)}, [0, 0, 0, 0, 0, 1, 0, 0])]  # from below
    if C % 4:
        spec.append(({3: (4 * q, C)}, None))                            # passed through
    return spec


def _normalised(windows, sizes):
    """Windows as Slice reads them (negative indices from the end, clamped to the axis), whole-axis ones
    dropped."""
    out = {}
    for axis, (start, end) in windows.items():
        size = sizes.get(axis)
        if size is None:  # a slice of the batch axis
            return None
        start, end = (i + size if i < 0 else i for i in (start, end))
        start, end = max(0, min(start, size)), max(0, min(end, size))
        if (start, end) != (0, size):
            out[axis] = (start, end)
    return out


def _match_qshift(g, concat):
    """Concat of Q-Shift -> (h, H, W, C, xx, nodes) or None; xx is the shifted tokens [B, T, C]."""
    if _attr(concat, "axis") not in (-1, 3):
        return None
    front = g.made_by(concat.input[0], "Pad") if concat.input else None
    if front is None:
        return None
    # The tokens as a grid: the Reshape at the root of the first chain.
    root = front.input[0]
    while g.made_by(root, "Slice") is not None:
        root = g.producer[root].input[0]
    grid = g.made_by(root, "Reshape")
    shape = g.const(grid.input[1]) if grid is not None else None
    if shape is None or shape.shape != (4,) or np.any(shape[1:] <= 0):
        return None
    H, W, C = (int(d) for d in shape[1:])
    sizes = {1: H, 2: W, 3: C}
    spec = _qshift_spec(H, W, C)
    if len(concat.input) != len(spec):
        return None
    nodes = [concat, grid]
    for value, (windows, pads) in zip(concat.input, spec):
        if pads is not None:
            pad = g.made_by(value, "Pad")
            if pad is None or _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
                return None
            pad_widths = g.const(pad.input[1])
            if pad_widths is None or pad_widths.tolist() != pads:
                return None
            fill = g.const(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(1)
            if fill is None or np.any(fill != 0) or (len(pad.input) > 3 and pad.input[3]):
                return None
            if not g.read_only_by(value, [concat]):
                return None
            nodes.append(pad)
            value = pad.input[0]
        chain = _window_chain(g, value, root)
        if chain is None or _normalised(chain[0], sizes) != _normalised(windows, sizes):
            return None
        nodes.extend(chain[1])
    # The chains' values feed nothing but the pattern, and the grid nothing but the chains.
    chain_nodes = {id(n) for n in nodes}
    for node in nodes[2:]:
        for out in node.output:
            if any(id(c) not in chain_nodes for c in g.consumers[out]) or out in g.graph_outputs:
                return None
    if not g.read_only_by(root, [n for n in nodes if root in n.input]):
        return None
    back = [n for n in g.consumers[concat.output[0]]]
    if len(back) != 1 or back[0].op_type != "Reshape" or concat.output[0] in g.graph_outputs:
        return None
    tokens = g.const(back[0].input[1])
    if tokens is None or tokens.shape != (3,) or list(tokens[1:]) != [H * W, C]:
        return None
    nodes.append(back[0])
    return grid.input[0], H, W, C, back[0].output[0], nodes


def _match_mixes(g, h, xx, C):
    """The token mixes h * mix + xx * keep that read xx -> [(mix, keep, out, nodes)] or None when xx
    feeds anything else."""
    mixes = []
    for shifted in g.consumers[xx]:
        keep = _other(shifted, xx) if shifted.op_type == "Mul" and len(shifted.input) == 2 else None
        keep_value = g.const(keep) if keep is not None else None
        adds = g.consumers[shifted.output[0]]
        if keep_value is None or keep_value.size != C or len(adds) != 1 or adds[0].op_type != "Add":
            return None
        add = adds[0]
        direct = g.made_by(_other(add, shifted.output[0]), "Mul")
        mix = _other(direct, h) if direct is not None else None
        mix_value = g.const(mix) if mix is not None else None
        if mix_value is None or mix_value.size != C or not g.read_only_by(direct.output[0], [add]) or \
                shifted.output[0] in g.graph_outputs:
            return None
        mixes.append((mix, keep, add.output[0], [shifted, direct, add]))
    return mixes or None


def _match_modulation(g, h, T, C, readers):
    """h = x * scale1p + shift with scale1p, shift [B, 1, C], read only by ``readers`` ->
    (x, scale1p, shift, nodes) or None."""
    add = g.made_by(h, "Add")
    if add is None or not g.read_only_by(h, readers):
        return None
    for product, shift in (add.input, reversed(add.input)):
        mul = g.made_by(product, "Mul")
        if mul is None or not g.read_only_by(product, [add]):
            continue
        for x, scale in (mul.input, reversed(mul.input)):
            if _is_per_image(g, scale, C) and _is_per_image(g, shift, C) and g.is_float(x) and \
                    (g.dims(x) or [None])[1:] == [T, C]:
                return x, scale, shift, [add, mul]
    return None


def _match_layer_norm(g, z, C, readers):
    """z = LayerNormalization(x, weight[, bias]) over the last axis, read only by ``readers`` ->
    (x, weight, bias or "", epsilon, node) or None."""
    node = g.made_by(z, "LayerNormalization")
    if node is None or not readers or not g.read_only_by(z, readers) or len(node.output) != 1 and any(node.output[1:]):
        return None
    if _attr(node, "axis", -1) not in (-1, 2) or not g.is_float(node.input[0]):
        return None
    weight = g.const(node.input[1])
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else ""
    if weight is None or weight.size != C or (bias and (g.const(bias) is None or g.const(bias).size != C)):
        return None
    return node.input[0], node.input[1], bias, _attr(node, "epsilon", 1e-5), node


def _is_per_image(g, value, C):
    """A float32 [B, 1, C] value computed in the graph (a modulation's shift, scale or gate)."""
    dims = g.dims(value)
    return g.is_float(value) and dims is not None and len(dims) == 3 and dims[1:] == [1, C] and \
        g.const(value) is None


def _fuse_shift_mix(g, make_node):
    fused = []
    for concat in [n for n in g.graph.node if n.op_type == "Concat" and n.domain == ""]:
        found = _match_qshift(g, concat)
        if found is None or not g.is_float(found[0]):
            continue
        h, H, W, C, xx, nodes = found
        mixes = _match_mixes(g, h, xx, C)
        if mixes is None:
            continue
        readers = [nodes[1]] + [m[3][1] for m in mixes]   # the grid Reshape and the mixes' h * mix
        modulation = _match_modulation(g, h, H * W, C, readers)
        x, scale, shift, removed = modulation if modulation else (h, "", "", [])
        norm = _match_layer_norm(g, x, C, removed[1:])
        weight, bias, eps = ("", "", 1e-5)
        if norm is not None:
            x, weight, bias, eps, node = norm
            removed = removed + [node]
        inputs = [x, weight, bias, scale, shift] + [name for mix, keep, _, _ in mixes for name in (mix, keep)]
        fused.append((make_node("ShiftMix", inputs, [m[2] for m in mixes], grid_h=H, grid_w=W, epsilon=float(eps)),
                      nodes + [n for m in mixes for n in m[3]] + removed))
        g.removed.update(id(n) for n in fused[-1][1])
    return fused


# --- BiWKV with its gate, ReluSquare, GatedResidual -----------------------------------------------

def _fuse_bi_wkv(g, make_node):
    fused = []
    for node in [n for n in g.graph.node if n.domain == BIWKV_DOMAIN and n.op_type == "BiWKV"]:
        y = node.output[0]
        readers = g.consumers[y]
        gate = readers[0] if len(readers) == 1 and readers[0].op_type == "Mul" and y not in g.graph_outputs else None
        sigmoid = g.made_by(_other(gate, y), "Sigmoid") if gate is not None else None
        if sigmoid is not None and g.read_only_by(sigmoid.output[0], [gate]) and g.is_float(node.input[2]):
            fused.append((make_node("BiWKV", list(node.input) + [sigmoid.input[0]], [gate.output[0]]),
                          [node, gate, sigmoid]))
        else:
            fused.append((make_node("BiWKV", list(node.input), [y]), [node]))
        g.removed.update(id(n) for n in fused[-1][1])
    return fused


def _fuse_relu_square(g, make_node):
    fused = []
    for relu in [n for n in g.graph.node if n.op_type == "Relu" and n.domain == "" and id(n) not in g.removed]:
        y = relu.output[0]
        readers = list({id(n): n for n in g.consumers[y]}.values())  # Mul(y, y) reads y twice
        if len(readers) != 1 or y in g.graph_outputs or not g.is_float(y) or id(readers[0]) in g.removed:
            continue
        square = readers[0]
        exponent = g.const(square.input[1]) if square.op_type == "Pow" and square.input[0] == y else None
        if not ((square.op_type == "Mul" and list(square.input) == [y, y]) or
                (exponent is not None and exponent.size == 1 and float(exponent.reshape(-1)[0]) == 2.0)):
            continue
        fused.append((make_node("ReluSquare", [relu.input[0]], [square.output[0]]), [relu, square]))
        g.removed.update(id(n) for n in fused[-1][1])
    return fused


def _fuse_gated_residual(g, make_node):
    fused = []
    for add in [n for n in g.graph.node if n.op_type == "Add" and n.domain == "" and id(n) not in g.removed]:
        if len(add.input) != 2 or not g.is_float(add.output[0]):
            continue
        for x, product in (add.input, reversed(add.input)):
            mul = g.made_by(product, "Mul")
            dims = g.dims(x)
            if mul is None or dims is None or len(dims) != 3 or not g.read_only_by(product, [add]):
                continue
            C = dims[2]
            gate = next((v for v in mul.input if _is_per_image(g, v, C)), None)
            branch = _other(mul, gate) if gate is not None else None
            if branch is None or g.dims(branch) != dims or g.dims(add.output[0]) != dims:
                continue
            inputs, nodes = [x, gate, branch], [add, mul]
            receptance = g.made_by(branch, "Mul")
            if receptance is not None and g.read_only_by(branch, [mul]):
                for sig_value, value in (receptance.input, reversed(receptance.input)):
                    sigmoid = g.made_by(sig_value, "Sigmoid")
                    if sigmoid is not None and g.read_only_by(sig_value, [receptance]) and \
                            g.dims(value) == dims and g.dims(sigmoid.input[0]) == dims:
                        inputs, nodes = [x, gate, value, sigmoid.input[0]], nodes + [receptance, sigmoid]
                        break
            fused.append((make_node("GatedResidual", inputs, [add.output[0]]), nodes))
            g.removed.update(id(n) for n in nodes)
            break
    return fused


def fuse(model, value_info):
    """Rewrite ``model`` (ModelProto) in place; returns {fused op: count}.

    value_info: value_info(model) of the unrewritten graph.
    """
    from onnx import helper

    g = _Graph(model, value_info)
    names = collections.Counter()

    def make_node(op_type, inputs, outputs, **attrs):
        names[op_type] += 1
        return helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{names[op_type]}",
                                domain=BIWKV_DOMAIN, **attrs)

    fused = []
    for step in (_fuse_bi_wkv, _fuse_shift_mix, _fuse_relu_square, _fuse_gated_residual):
        fused.extend(step(g, make_node))
    kept = [n for n in g.graph.node if id(n) not in g.removed]
    nodes = _topological(kept + [node for node, _ in fused], set(i.name for i in g.graph.input) |
                         set(g.constants))
    del g.graph.node[:]
    g.graph.node.extend(nodes)
    imports = [o for o in model.opset_import if o.domain != BIWKV_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(imports + [helper.make_opsetid(BIWKV_DOMAIN, 1)])
    counts = collections.Counter(node.op_type for node, _ in fused)
    if any(node.op_type == "BiWKV" and len(node.input) == 5 for node, _ in fused):
        counts["BiWKV gated"] = sum(node.op_type == "BiWKV" and len(node.input) == 5 for node, _ in fused)
    return dict(counts)


def _topological(nodes, available):
    """Nodes in an order where each comes after the producers of its inputs; stable otherwise."""
    available = set(available) | {""}
    order, waiting = [], list(nodes)
    while waiting:
        ready = [n for n in waiting if all(i in available for i in n.input)]
        if not ready:
            raise ValueError("the fused graph has a cycle or an undefined input")
        ready_ids = {id(n) for n in ready}
        waiting = [n for n in waiting if id(n) not in ready_ids]
        for n in ready:
            available.update(n.output)
        order.extend(ready)
    return order
