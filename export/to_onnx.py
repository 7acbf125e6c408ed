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

--portable: the Bi-WKV is written in standard ONNX ops so that any ONNX runtime can run the graph
(drwkv.runtime.portable): sums over chunks of sqrt(T) tokens with CumSum and an N x N matrix of chunk
carries, every exponential anchored at a maximum; O(B*T*C) time and memory, in float32 (also under
--dtype fp16: the model casts k and v to float32 for the operator). Against the float64 formula it
is within 1e-5 relative (typically 1e-6) for |spatial_decay| <= 100 and 2 L |w| + |u| <= 60 (w, u:
spatial_decay and spatial_first over T; L = ceil(sqrt(T)), the chunk length); the export refuses a
model outside that range, in one line.

A latent model (``config["latent"]``, see drwkv.vae) also gets its VAE decoder, ``NAME.vae_decoder.onnx``
next to ``NAME.onnx``: input ``latents`` [B, c, h, w] float32 in the denoiser's space (the graph
divides by the VAE's scaling_factor, ``drwkv.vae.LatentDecoder``), output ``image`` [B, C, h*f, w*f]
in [-1, 1]; B, h and w are dynamic, so tiles of any size run on one graph. Its metadata carries the
format tag, the VAE weights' sha256, the downsampling, the latent and image channels and the scale;
the denoiser's names the decoder file and that sha256. The VAE is the folder the checkpoint records,
or ``--vae FOLDER`` (same latent space; another weights file needs ``--force``). Without a VAE
folder at hand the denoiser is written alone and the command says how to add the decoder.
The decoder stays float32 under ``--dtype fp16`` unless ``--vae-dtype fp16``: SD's VAE overflows
float16 (the black-image failure), so an fp16 decoder is run on test latents first and refused when
its output is not finite.
"""
import argparse
import json
import os
import sys

from drwkv import known_warnings
from drwkv.files import atomic_write, check_writable
from drwkv.runtime.base import decoder_path, describe_size
from drwkv.runtime.portable import check_range, expand_bi_wkv
from drwkv.runtime.onnx import (BIWKV_DOMAIN, BIWKV_OP, CONFIG_KEY, DECODER_FILE_KEY, DECODER_FORMAT, FORMAT,
                                FORMAT_KEY, PLUGIN_VERSION, VAE_SHA256_KEY)

OPSET = 18


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


def _translation():
    """{torch op: onnxscript function} replacing drwkv::bi_wkv_inference by the BiWKV node, and
    drwkv::bi_wkv_forward should a graph be traced with gradients on (it returns (y, lse); lse is a
    training by-product that inference never reads, so y stands in for it)."""
    import onnxscript
    import torch

    import drwkv.ops  # noqa: F401  (registers torch.ops.drwkv.bi_wkv_*)

    custom = onnxscript.values.Opset(BIWKV_DOMAIN, 1)

    def bi_wkv(w, u, k, v):
        return custom.BiWKV(w, u, k, v, plugin_version=PLUGIN_VERSION)

    def bi_wkv_with_lse(w, u, k, v):
        y = bi_wkv(w, u, k, v)
        return y, y

    return {torch.ops.drwkv.bi_wkv_inference.default: bi_wkv, torch.ops.drwkv.bi_wkv_forward.default: bi_wkv_with_lse}


def _float32_io(model):
    """A float16 module behind float32 I/O: x is cast to float16, the output to float32; a denoiser's
    t and y pass as they are. Named parameters, not *args: torch.export matches dynamic_shapes to them."""
    from torch import nn

    class Float32IO(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t=None, y=None):
            out = self.inner(x.half()) if t is None else self.inner(x.half(), t, y)
            return out.float()

    return Float32IO(model).eval()


def _float16_module(model):
    """The model in float16 with float32 I/O; the timestep embedding and WKV w/u stay float32."""
    from torch import nn

    from drwkv.model import SpatialMix

    class Float16Output(nn.Module):
        """Runs a float32 submodule and hands its output on in float16."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            return self.inner(*args).half()

    model = model.half()
    model.t_embedder = Float16Output(model.t_embedder.float())
    for module in model.modules():
        if isinstance(module, SpatialMix):
            module.spatial_decay.data = module.spatial_decay.data.float()
            module.spatial_first.data = module.spatial_first.data.float()
    return _float32_io(model)


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


def export_onnx(ckpt_path, out_path, dtype="fp32", portable=False, vae=None, vae_dtype="fp32", force=False):
    """Write the ONNX denoiser of a checkpoint and, for a latent model with its VAE at hand, its
    decoder next to it (``decoder_path(out_path)``); returns the denoiser's onnx.ModelProto.

    vae: a VAE folder overriding the one the checkpoint records; force: accept one whose weights
    differ from the training VAE's. ValueError (drwkv.vae.VAEError included) for bad input, before
    anything is written."""
    import torch

    from drwkv.model import load_checkpoint

    for name, value in (("dtype", dtype), ("vae_dtype", vae_dtype)):
        if value not in ("fp32", "fp16"):
            raise ValueError(f"{name} must be fp32 or fp16, got {value!r}")
    check_writable(out_path, "the ONNX file")  # before the export's minutes, not after
    config, model = load_checkpoint(ckpt_path)  # the EMA weights
    if portable:
        _check_portable_range(model)  # before the export's minutes; expand_bi_wkv checks the graph again
    vae_folder, _ = find_vae(config, ckpt_path, vae, force)
    if vae_folder is None and vae_dtype != "fp32":
        raise ValueError(f"--vae-dtype applies to the VAE decoder, and {ckpt_path} has none at hand"
                         + ("" if config.get("latent") else " (a pixel-space model)"))
    decoder = None
    if vae_folder is not None:
        decoder = export_decoder(vae_folder, int(config["latent"]["image_size"]), vae_dtype)
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
            custom_translation_table=_translation(), optimize=True, verbose=False)
    proto = program.model_proto

    graph = proto.graph
    for node in graph.node:  # the exporter's per-node stack traces and module paths
        del node.metadata_props[:]
    if dtype == "fp16" and not portable:
        _bypass_float32_casts(graph)
    _declare_bi_wkv_outputs(graph)
    count = sum(n.domain == BIWKV_DOMAIN for n in proto.graph.node)
    if count != _num_blocks(model):
        raise RuntimeError(f"expected one BiWKV node per block ({_num_blocks(model)}), the graph has {count}")
    if portable:
        expand_bi_wkv(proto)  # in float32: the model casts k and v to float32 for the operator
    meta = {FORMAT_KEY: FORMAT, CONFIG_KEY: json.dumps(config, sort_keys=True),
            "drwkv.dtype": dtype, "drwkv.bi_wkv": "portable" if portable else f"{BIWKV_DOMAIN}::{BIWKV_OP}"}
    if decoder is not None:
        meta[DECODER_FILE_KEY] = os.path.basename(decoder_path(out_path))
        meta[VAE_SHA256_KEY] = _metadata(decoder)[VAE_SHA256_KEY]
    _set_metadata(proto, meta)
    import onnx
    onnx.checker.check_model(proto, full_check=True)

    _save(proto, out_path)
    if decoder is not None:
        _save(decoder, decoder_path(out_path))
    return proto


def find_vae(config, ckpt_path, vae=None, force=False):
    """The VAE folder to export a checkpoint's decoder from -> (folder, None), or (None, why not)
    when no folder is at hand. ValueError for a VAE that does not fit the model."""
    from drwkv.runtime.base import recorded_vae_folder
    from drwkv.vae import latent_space

    latent = config.get("latent")
    if not latent:
        if vae is not None:
            raise ValueError(f"--vae applies to latent models; {ckpt_path} is a pixel-space model")
        return None, "a pixel-space model"
    if vae is None:
        vae, why_not = recorded_vae_folder(latent, ckpt_path)
        if vae is None:
            return None, why_not
    space = latent_space(vae, int(latent["image_size"]))  # VAEError (a ValueError) for a bad folder
    for key, what in (("channels", "latent channels"), ("downsample", "downsampling"),
                      ("scaling_factor", "scaling_factor"), ("shift_factor", "shift_factor")):
        if float(space.get(key) or 0) != float(latent.get(key) or 0):
            raise ValueError(f"VAE {vae} has {what} {space.get(key)}, the model's latent space has {latent.get(key)}")
    if space["vae_sha256"] != latent.get("vae_sha256") and not force:
        raise ValueError(f"VAE {vae} has other weights than the one {ckpt_path} was trained with (sha256 "
                         f"{space['vae_sha256'][:12]}... vs {str(latent.get('vae_sha256'))[:12]}...); "
                         f"--force exports its decoder anyway")
    return os.fspath(vae), None


#: Test latents an fp16 decoder must decode to finite values: [B, c, h, w] drawn N(0, 1) in the
#: denoiser's space, where the scaled latents of a trained model have about unit variance.
FP16_CHECK_SHAPE = (2, 32, 32)


def export_decoder(vae_folder, image_size, dtype="fp32"):
    """The ONNX graph of a VAE folder's decoder (drwkv.vae.LatentDecoder) -> onnx.ModelProto;
    image_size: the model's pixel size (checked against the downsampling)."""
    import onnx
    import torch

    from drwkv.vae import LatentDecoder, latent_space, load_vae

    vae = load_vae(vae_folder)
    space = latent_space(vae_folder, image_size)
    module = LatentDecoder(vae).eval()
    c = space["channels"]
    if dtype == "fp16":
        module = _float32_io(module.half())
        batch, h, w = FP16_CHECK_SHAPE
        with torch.no_grad():
            test = module(torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0)))
        if not torch.isfinite(test).all():
            raise ValueError(f"the fp16 decoder of {vae_folder} gives non-finite pixels on test latents "
                             f"(float16 overflow, the black-image failure): export it with --vae-dtype fp32")
    batch = torch.export.Dim("batch", min=1, max=65536)
    height, width = torch.export.Dim("h", min=2, max=16384), torch.export.Dim("w", min=2, max=16384)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (torch.randn(2, c, 6, 10),), dynamo=True, opset_version=OPSET, input_names=["latents"],
            output_names=["image"], dynamic_shapes=({0: batch, 2: height, 3: width},), optimize=True,
            verbose=False)
    proto = program.model_proto
    for node in proto.graph.node:
        del node.metadata_props[:]
    _set_metadata(proto, {FORMAT_KEY: DECODER_FORMAT, VAE_SHA256_KEY: space["vae_sha256"],
                          "drwkv.vae_downsample": str(space["downsample"]), "drwkv.vae_channels": str(c),
                          "drwkv.vae_image_channels": str(space["in_channels"]),
                          "drwkv.vae_scaling_factor": repr(space["scaling_factor"]),
                          "drwkv.vae_shift_factor": repr(space["shift_factor"]), "drwkv.dtype": dtype})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _metadata(proto):
    return {p.key: p.value for p in proto.metadata_props}


def _set_metadata(proto, meta):
    del proto.metadata_props[:]
    for key, value in meta.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "drwkv.export.to_onnx"


def _save(proto, out_path):
    """Write ``proto`` atomically; protobuf files stop at 2 GiB, so larger ones keep their weights
    in a side file."""
    import onnx

    external = proto.ByteSize() > 2**31 - 2**26
    with atomic_write(out_path) as tmp:
        onnx.save_model(proto, tmp, save_as_external_data=external, all_tensors_to_one_file=True,
                        location=os.path.basename(out_path) + ".data")


def _num_blocks(model):
    from drwkv.model import SpatialMix
    return sum(isinstance(m, SpatialMix) for m in model.modules())


def _check_portable_range(model):
    """check_range for every block of a DRWKV model at its own token count (w = decay / T, u = first / T)."""
    from drwkv.model import SpatialMix

    tokens = model.grid ** 2
    blocks = [m for m in model.modules() if isinstance(m, SpatialMix)]
    for i, block in enumerate(blocks):
        w = (block.spatial_decay.detach().float() / tokens).numpy()
        u = (block.spatial_first.detach().float() / tokens).numpy()
        try:
            check_range(w, u, tokens, f"block {i}")
        except ValueError as e:
            raise ValueError(f"{e}: export without --portable") from None


def main(argv=None):
    known_warnings.silence()
    parser = argparse.ArgumentParser(
        prog="python -m export.to_onnx",
        description="Export a drwkv checkpoint's EMA denoiser to ONNX (one drwkv::BiWKV node per block), and "
                    "for a latent model its VAE decoder next to it (NAME.vae_decoder.onnx).")
    parser.add_argument("ckpt", help="checkpoint written by python -m training.train")
    parser.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    parser.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the denoiser; fp16 keeps float32 I/O (default: fp32)")
    parser.add_argument("--portable", action="store_true",
                        help="write the Bi-WKV in standard ONNX ops (linear in tokens) instead of the custom node")
    parser.add_argument("--vae", metavar="FOLDER",
                        help="latent models: the diffusers VAE folder to export the decoder from (default: the "
                             "folder the checkpoint records); its latent space must be the model's")
    parser.add_argument("--force", action="store_true",
                        help="with --vae: accept a VAE whose weights differ from the training VAE's")
    parser.add_argument("--vae-dtype", choices=("fp32", "fp16"), default="fp32",
                        help="precision of the decoder (default: fp32, also under --dtype fp16: SD's VAE "
                             "overflows float16); fp16 is refused when it decodes test latents to non-finite values")
    args = parser.parse_args(argv)
    if args.force and args.vae is None:
        parser.exit(2, f"{parser.prog}: error: --force applies to --vae\n")
    try:
        proto = export_onnx(args.ckpt, args.output, args.dtype, args.portable, args.vae, args.vae_dtype, args.force)
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
    meta = _metadata(proto)
    config = json.loads(meta[CONFIG_KEY])
    kind = "portable" if args.portable else f"{sum(n.domain == BIWKV_DOMAIN for n in proto.graph.node)} BiWKV nodes"
    print(f"wrote {args.output}: {config['model']} {describe_size(config)}, {args.dtype}, {kind}, "
          f"{len(proto.graph.node)} nodes, {os.path.getsize(args.output) / 2**20:.1f} MiB", file=sys.stderr)
    decoder = decoder_path(args.output)
    if DECODER_FILE_KEY in meta:
        latent = config["latent"]
        print(f"wrote {decoder}: VAE decoder ({latent['channels']}-channel latents, {latent['downsample']}x), "
              f"{args.vae_dtype}, {os.path.getsize(decoder) / 2**20:.1f} MiB", file=sys.stderr)
    elif config.get("latent"):
        _, why = find_vae(config, args.ckpt)
        print(f"no VAE decoder written ({why}); add it with: python -m export.to_onnx {args.ckpt} -o {args.output} "
              f"--vae FOLDER", file=sys.stderr)


if __name__ == "__main__":
    main()
