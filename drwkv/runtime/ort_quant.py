"""ONNX Runtime's CPU path at int8: the matrix products with constant weights rewritten, in memory,
into ONNX Runtime's contrib op com.microsoft.DynamicQuantizeMatMul.

The weights are quantized once, at load time, per output column and symmetric (int8, zero point 0,
scale max|W[:, n]| / 127); each call quantizes the activations on the fly (uint8, per tensor,
asymmetric) and runs an int8 GEMM (VNNI where the CPU has it) with float32 output. Nothing is
calibrated, so no file is derived from the model: the float32 ONNX file stays the only artifact.

Run after drwkv.runtime.ort_fusion.fuse, so that the fused patterns still match the graph's
standard ops; only MatMul nodes change (Gemm nodes work on one row per image and stay float32).

Two kinds of product keep more precision, at no loss of speed (measured on the Fashion-MNIST model:
together they made 92% of the squared int8 error of a call):
- a product of a concatenation (the out-blocks' long-skip Linear over [x, skip]) becomes one product
  per part, summed, so that each part is quantized on its own range: one scale for both let the
  larger stream's range swamp the other's;
- the last product of the graph, the final layer, stays float32: its error goes straight to the
  output, and its few output columns (patch^2 x channels) make it a small share of the work.

Without VNNI, x86's integer products (vpmaddubsw) add pairs of uint8 x int8 products in int16, which
saturates for 255 * 127 * 2; there the weights get 7 bits (+-63), as ONNX Runtime's quantization tool
advises (its reduce_range), at the cost of some precision.
"""
import numpy as np

from drwkv.runtime.ort_fusion import value_info

CONTRIB_DOMAIN = "com.microsoft"


def has_vnni():
    """Whether the CPU has VNNI (AVX512-VNNI or AVX-VNNI), read from /proc/cpuinfo; False when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def quantize_weight(w, levels=127):
    """float32 [K, N] -> (int8 [K, N] in [-levels, levels], float32 scale [N]): per output column, symmetric."""
    scale = np.abs(w).max(axis=0) / levels
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)  # an all-zero column: any scale
    return np.clip(np.rint(w / scale), -levels, levels).astype(np.int8), scale


def quantize_matmuls(model, info=None, reduce_range=None):
    """Rewrite (in place) the MatMuls of a float32 input by a constant float32 2-D weight into
    DynamicQuantizeMatMuls (a concatenation's product into one per part, summed; the graph's last
    product left as it is); -> how many DynamicQuantizeMatMuls. Weights no other node reads are
    dropped. info: drwkv.runtime.ort_fusion.value_info of the graph (default: inferred here), for
    the widths of concatenated parts. reduce_range: 7-bit weights (default: when the CPU lacks VNNI)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    info = value_info(model) if info is None else info
    constants = {t.name: t for t in graph.initializer}
    producers = {o: node for node in graph.node for o in node.output}
    position = {o: i for i, node in enumerate(graph.node) for o in node.output}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    levels = 63 if (not has_vnni() if reduce_range is None else reduce_range) else 127
    products = [i for i, node in enumerate(graph.node) if node.op_type == "MatMul" and node.domain == ""
                and node.input[1] in constants and constants[node.input[1]].data_type == TensorProto.FLOAT
                and len(constants[node.input[1]].dims) == 2]
    new_initializers, dropped = [], set()
    nodes, count = list(graph.node), 0

    made_weights = {}  # weight name -> the names of its int8 weight and scale, made once

    def quantized_product(a, w, w_name, output, name):
        if w_name not in made_weights:
            q, scale = quantize_weight(w, levels)
            new_initializers.extend([numpy_helper.from_array(q, f"{w_name}__int8"),
                                     numpy_helper.from_array(scale, f"{w_name}__scale")])
            made_weights[w_name] = [f"{w_name}__int8", f"{w_name}__scale"]
        return helper.make_node("DynamicQuantizeMatMul", [a, *made_weights[w_name]], [output], name=name,
                                domain=CONTRIB_DOMAIN)

    for index in products[:-1]:
        node = graph.node[index]
        name = node.name or f"DynamicQuantizeMatMul_{count}"
        weight_name = node.input[1]
        weight = numpy_helper.to_array(constants[weight_name])
        parts = _concatenated_parts(producers.get(node.input[0]), info, weight.shape[0])
        if parts and readers[node.input[0]] == 1:
            made, rows = [], 0
            for i, (part, width) in enumerate(parts):
                made.append(quantized_product(part, weight[rows:rows + width], f"{weight_name}__part{i}",
                                              f"{node.output[0]}__part{i}", f"{name}__part{i}"))
                rows += width
            sums = [o for n in made for o in n.output]
            while len(sums) > 1:  # the parts' products added up; the last Add writes the MatMul's output
                out = node.output[0] if len(sums) == 2 else f"{node.output[0]}__sum{len(sums)}"
                made.append(helper.make_node("Add", sums[:2], [out], name=f"{name}__sum{len(sums)}"))
                sums = [out] + sums[2:]
            nodes[position[node.input[0]]] = None  # the Concat: its only reader is gone
            nodes[index] = made
            count += len(parts)
        else:
            nodes[index] = quantized_product(node.input[0], weight, weight_name, node.output[0], name)
            count += 1
        readers[weight_name] -= 1
        dropped.add(weight_name)
    if count:
        flat = []
        for entry in nodes:
            if entry is not None:
                flat.extend(entry if isinstance(entry, list) else [entry])
        del graph.node[:]
        graph.node.extend(flat)
        kept = [t for t in graph.initializer if t.name not in dropped or readers[t.name] > 0]
        del graph.initializer[:]
        graph.initializer.extend(kept + new_initializers)
        if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return count


def _concatenated_parts(node, info, rows):
    """[(input, width)] of a Concat along the last axis whose parts' widths are known and add up to
    ``rows``; None for any other producer."""
    if node is None or node.op_type != "Concat" or node.domain != "" or len(node.input) < 2:
        return None
    parts = []
    for name in node.input:
        dims = (info.get(name) or (None, None))[1]
        if not dims or dims[-1] is None:
            return None
        parts.append((name, dims[-1]))
    axis = next(a.i for a in node.attribute if a.name == "axis")
    if axis not in (-1, len(dims) - 1) or sum(width for _, width in parts) != rows:
        return None
    return parts
