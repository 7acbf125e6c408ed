"""Export a checkpoint's EMA denoiser to ONNX.

    python -m export.to_onnx ckpt.pt -o model.onnx                 # BiWKV custom node, float32
    python -m export.to_onnx ckpt.pt -o model_fp16.onnx --dtype fp16
    python -m export.to_onnx ckpt.pt -o model_portable.onnx --portable

The graph: inputs ``x`` [B,C,H,W] float32, ``t`` [B] float32 (diffusion timestep), ``y`` [B] int64
(class; num_classes = null class); output ``out`` [B, C_out, H, W] float32; B is dynamic. The model
config travels as JSON in the metadata (``drwkv.config``; ``drwkv.format`` identifies the file).

The Bi-WKV operator becomes one node per block: domain ``drwkv``, op ``BiWKV``, attribute
``plugin_version="1"``, inputs (w, u, k, v), output y with k's shape and type (declared in the
graph's value_info so that shape inference runs through it without our schema). The TensorRT
plugin and ``drwkv.runtime.onnx`` (via onnxruntime-extensions) implement it.

--dtype fp16: the network computes in float16 (TensorRT takes layer precision from the graph
types), BiWKV nodes included, while the I/O stays float32 (a Cast after ``x``, before ``out``). Two
parts stay float32: the sinusoidal timestep embedding (t reaches 999, beyond float16's precision
for the phases) and the operator's w/u parameters, which the operator takes as float32.

--portable: the Bi-WKV is written in standard ONNX ops so that any ONNX runtime can run the graph.
It is quadratic in T. Since l(t,i) = k_i - (|t-i|-1) w (u + k_t on the diagonal), exp(l) factors
into a per-channel [T,T] matrix D[c,t,i] = exp(-(|t-i|-1) w_c) (exp(u_c) at i = t) times exp(k_i):

    e = exp(k - max_i k)                          [B,T,C]   (the max cancels in the ratio)
    y = (D @ (e * v)) / (D @ e)                   per channel, one MatMul over [C,T,T] x [C,T,2B]

which costs C*T*T memory rather than the B*C*T*T of explicit logits and softmax. It agrees with
the operator to float32 rounding as long as the spread of k over the positions plus |T w| (the
trained spatial_decay) stays below ~80, where float32's exp would underflow.
"""
import argparse
import json
import os
import sys

from drwkv.runtime.onnx import BIWKV_DOMAIN, BIWKV_OP, CONFIG_KEY, FORMAT, FORMAT_KEY

OPSET = 18
PLUGIN_VERSION = "1"


def _register_bi_wkv_schema():
    """Declare drwkv::BiWKV to onnx (types, attribute, output = k's type and shape), so that
    onnxscript can emit it and the checker and shape inference understand it in this process."""
    from onnx import defs

    if defs.has(BIWKV_OP, BIWKV_DOMAIN):
        return
    param = defs.OpSchema.FormalParameter
    schema = defs.OpSchema(
        BIWKV_OP, BIWKV_DOMAIN, 1,
        "Bidirectional WKV: y[b,t,c] = softmax_i(l(t,i)) v[b,i,c], l(t,i) = k[b,i,c] - (|t-i|-1) w[c], "
        "l(t,t) = u[c] + k[b,t,c].",
        inputs=[param("w", "tensor(float)"), param("u", "tensor(float)"), param("k", "T"), param("v", "T")],
        outputs=[param("y", "T")],
        type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "k, v and y")],
        attributes=[defs.OpSchema.Attribute("plugin_version", defs.OpSchema.AttrType.STRING,
                                            "version of the TensorRT plugin implementing the node")],
    )
    schema.set_type_and_shape_inference_function(lambda ctx: ctx.set_output_type(0, ctx.get_input_type(2)))
    defs.register_schema(schema)


def _translation(portable):
    """{torch op: onnxscript function} replacing drwkv::bi_wkv_inference, and drwkv::bi_wkv_forward
    should a graph be traced with gradients on (it returns (y, lse); lse is a training by-product
    that inference never reads, so y stands in for it)."""
    import onnxscript
    import torch
    from onnx import TensorProto
    from onnxscript import opset18 as op

    import drwkv.ops  # noqa: F401  (registers torch.ops.drwkv.bi_wkv_*)

    custom = onnxscript.values.Opset(BIWKV_DOMAIN, 1)

    def bi_wkv_node(w, u, k, v):
        return custom.BiWKV(w, u, k, v, plugin_version=PLUGIN_VERSION)

    def bi_wkv_portable(w, u, k, v):
        e = op.Exp(op.Sub(k, op.ReduceMax(k, op.Constant(value_ints=[1]), keepdims=1)))   # [B,T,C]
        T = op.Squeeze(op.Shape(k, start=1, end=2))
        pos = op.Cast(op.Range(op.Constant(value_int=0), T, op.Constant(value_int=1)), to=TensorProto.FLOAT)
        dist = op.Abs(op.Sub(op.Unsqueeze(pos, op.Constant(value_ints=[1])),
                             op.Unsqueeze(pos, op.Constant(value_ints=[0]))))             # [T,T]
        channel = op.Constant(value_ints=[1, 2])
        log_d = op.Mul(op.Sub(op.Constant(value_float=1.0), dist), op.Unsqueeze(w, channel))  # [C,T,T]
        log_d = op.Where(op.Equal(dist, op.Constant(value_float=0.0)), op.Unsqueeze(u, channel), log_d)
        both = op.Transpose(op.Concat(op.Mul(e, v), e, axis=0), perm=[2, 1, 0])            # [C,T,2B]
        num_den = op.MatMul(op.Exp(log_d), both)                                          # [C,T,2B]
        num, den = op.Split(num_den, num_outputs=2, axis=2)
        return op.Transpose(op.Div(num, den), perm=[2, 1, 0])                             # [B,T,C]

    bi_wkv = bi_wkv_portable if portable else bi_wkv_node

    def bi_wkv_with_lse(w, u, k, v):
        y = bi_wkv(w, u, k, v)
        return y, y

    return {torch.ops.drwkv.bi_wkv_inference.default: bi_wkv, torch.ops.drwkv.bi_wkv_forward.default: bi_wkv_with_lse}


def _float16_module(model):
    """The model in float16 with float32 I/O; the timestep embedding and WKV w/u stay float32."""
    import torch
    from torch import nn

    from drwkv.model import SpatialMix

    class Float16Output(nn.Module):
        """Runs a float32 submodule and hands its output on in float16."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args).half()

    class Float32IO(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t, y):
            return self.inner(x.half(), t, y).float()

    model = model.half()
    model.t_embedder = Float16Output(model.t_embedder.float())
    for module in model.modules():
        if isinstance(module, SpatialMix):
            module.spatial_decay.data = module.spatial_decay.data.float()
            module.spatial_first.data = module.spatial_first.data.float()
    return Float32IO(model).eval()


def _bypass_float32_casts(graph):
    """In a float16 graph, run each BiWKV on the float16 tensors the model casts to float32 for it:
    Cast(fp16 -> fp32) -> BiWKV -> Cast(fp32 -> fp16) becomes BiWKV in float16."""
    from onnx import TensorProto

    producer = {out: n for n in graph.node for out in n.output}
    consumers = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def is_cast(node, to):
        return node is not None and node.op_type == "Cast" and node.domain == "" and \
            any(a.name == "to" and a.i == to for a in node.attribute)

    for node in graph.node:
        if node.op_type != BIWKV_OP or node.domain != BIWKV_DOMAIN:
            continue
        k_cast, v_cast = producer.get(node.input[2]), producer.get(node.input[3])
        users = consumers.get(node.output[0], [])
        graph_outputs = {o.name for o in graph.output}
        if not (is_cast(k_cast, TensorProto.FLOAT) and is_cast(v_cast, TensorProto.FLOAT) and users
                and all(is_cast(u, TensorProto.FLOAT16) and u.output[0] not in graph_outputs for u in users)):
            continue
        node.input[2], node.input[3] = k_cast.input[0], v_cast.input[0]
        # The float16 Casts after the node become identities: their consumers read y directly.
        for user in users:
            for n in graph.node:
                for i, name in enumerate(n.input):
                    if name == user.output[0]:
                        n.input[i] = node.output[0]
    _remove_dead_nodes(graph)


def _remove_dead_nodes(graph):
    """Drop nodes none of whose outputs is used (walking back from the graph outputs)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(node.input)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    kept_init = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(kept_init)


def _declare_bi_wkv_outputs(graph):
    """value_info of every BiWKV output = k's type and shape, so that shape inference runs through the
    node even where our schema is not registered; value_info of values no longer produced is dropped."""
    import onnx

    produced = {out for n in graph.node for out in n.output}
    info = {v.name: v for v in graph.value_info if v.name in produced}
    for node in graph.node:
        if node.domain == BIWKV_DOMAIN and node.op_type == BIWKV_OP:
            y = onnx.ValueInfoProto()
            y.CopyFrom(info[node.input[2]])
            y.name = node.output[0]
            info[y.name] = y
    del graph.value_info[:]
    graph.value_info.extend(info.values())


def export_onnx(ckpt_path, out_path, dtype="fp32", portable=False):
    """Write the ONNX denoiser of a checkpoint; returns the onnx.ModelProto written."""
    import onnx
    import torch

    from drwkv.model import load_checkpoint

    if dtype not in ("fp32", "fp16"):
        raise ValueError(f"dtype must be fp32 or fp16, got {dtype!r}")
    config, model = load_checkpoint(ckpt_path)  # the EMA weights
    if dtype == "fp16":
        model = _float16_module(model)
    _register_bi_wkv_schema()

    size, C = int(config["image_size"]), int(config["in_channels"])
    example = (torch.randn(2, C, size, size), torch.tensor([10.0, 500.0]),
               torch.tensor([0, int(config["num_classes"])], dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        program = torch.onnx.export(
            model, example, dynamo=True, opset_version=OPSET, input_names=["x", "t", "y"], output_names=["out"],
            dynamic_shapes={"x": {0: batch}, "t": {0: batch}, "y": {0: batch}},
            custom_translation_table=_translation(portable), optimize=True, verbose=False)
    proto = program.model_proto

    graph = proto.graph
    for node in graph.node:  # the exporter's per-node stack traces and module paths
        del node.metadata_props[:]
    if dtype == "fp16" and not portable:
        _bypass_float32_casts(graph)
    _declare_bi_wkv_outputs(graph)
    count = sum(n.domain == BIWKV_DOMAIN for n in proto.graph.node)
    meta = {FORMAT_KEY: FORMAT, CONFIG_KEY: json.dumps(config, sort_keys=True),
            "drwkv.dtype": dtype, "drwkv.bi_wkv": "portable" if portable else f"{BIWKV_DOMAIN}::{BIWKV_OP}"}
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "drwkv.export.to_onnx"
    onnx.checker.check_model(proto, full_check=True)
    if not portable and count != _num_blocks(model):
        raise RuntimeError(f"expected one BiWKV node per block ({_num_blocks(model)}), the graph has {count}")

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    # Protobuf files stop at 2 GiB: larger models keep their weights in a side file.
    external = proto.ByteSize() > 2**31 - 2**26
    tmp = f"{out_path}.tmp"
    onnx.save_model(proto, tmp, save_as_external_data=external, all_tensors_to_one_file=True,
                    location=os.path.basename(out_path) + ".data")
    os.replace(tmp, out_path)
    return proto


def _num_blocks(model):
    from drwkv.model import SpatialMix
    return sum(isinstance(m, SpatialMix) for m in model.modules())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx",
        description="Export a drwkv checkpoint's EMA denoiser to ONNX (one drwkv::BiWKV node per block).")
    parser.add_argument("ckpt", help="checkpoint written by python -m training.train")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the graph; fp16 keeps float32 I/O (default: fp32)")
    parser.add_argument("--portable", action="store_true",
                        help="write the Bi-WKV in standard ONNX ops (quadratic in tokens) instead of the custom node")
    args = parser.parse_args(argv)
    try:
        proto = export_onnx(args.ckpt, args.output, args.dtype, args.portable)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    config = json.loads({p.key: p.value for p in proto.metadata_props}[CONFIG_KEY])
    kind = "portable" if args.portable else f"{sum(n.domain == BIWKV_DOMAIN for n in proto.graph.node)} BiWKV nodes"
    print(f"wrote {args.output}: {config['model']} {config['image_size']}px, {args.dtype}, {kind}, "
          f"{len(proto.graph.node)} nodes, {os.path.getsize(args.output) / 2**20:.1f} MiB", file=sys.stderr)


if __name__ == "__main__":
    main()
