"""ONNX Runtime's CPU path at int8: the matrix products with constant weights rewritten, in memory,
into ONNX Runtime's contrib op com.microsoft.DynamicQuantizeMatMul.

The weights are quantized once, at load time, per output column and symmetric (int8, zero point 0,
scale max|W[:, n]| / 127); each call quantizes the activations on the fly (uint8, per tensor,
asymmetric) and runs an int8 GEMM (VNNI where the CPU has it) with float32 output. Nothing is
calibrated, so no file is derived from the model: the float32 ONNX file stays the only artifact.

Run after drwkv.runtime.ort_fusion.fuse, so that the fused patterns still match the graph's
standard ops; only MatMul nodes change (Gemm nodes work on one row per image and stay float32).

Without VNNI, x86's integer products (vpmaddubsw) add pairs of uint8 x int8 products in int16, which
saturates for 255 * 127 * 2; there the weights get 7 bits (+-63), as ONNX Runtime's quantization tool
advises (its reduce_range), at the cost of some precision.
"""
import numpy as np

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


def quantize_matmuls(model, reduce_range=None):
    """Rewrite (in place) every MatMul of a float32 input by a constant float32 2-D weight into a
    DynamicQuantizeMatMul; -> how many. Weights no other node reads are dropped. reduce_range:
    7-bit weights (default: when the CPU lacks VNNI)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    readers = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    levels = 63 if (not has_vnni() if reduce_range is None else reduce_range) else 127
    added, replaced = {}, set()
    count = 0
    for index, node in enumerate(graph.node):
        weight = constants.get(node.input[1]) if node.op_type == "MatMul" and node.domain == "" else None
        if weight is None or weight.data_type != TensorProto.FLOAT or len(weight.dims) != 2:
            continue
        name = weight.name
        if name not in added:
            q, scale = quantize_weight(numpy_helper.to_array(weight), levels)
            added[name] = (numpy_helper.from_array(q, f"{name}__int8"),
                           numpy_helper.from_array(scale, f"{name}__scale"))
        q, scale = added[name]
        graph.node[index].CopyFrom(helper.make_node(
            "DynamicQuantizeMatMul", [node.input[0], q.name, scale.name], list(node.output),
            name=node.name or f"DynamicQuantizeMatMul_{count}", domain=CONTRIB_DOMAIN))
        readers[name] -= 1
        replaced.add(name)
        count += 1
    if count:
        kept = [t for t in graph.initializer if t.name not in replaced or readers[t.name] > 0]
        del graph.initializer[:]
        graph.initializer.extend(kept + [t for pair in added.values() for t in pair])
        if not any(o.domain == CONTRIB_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(CONTRIB_DOMAIN, 1))
    return count
