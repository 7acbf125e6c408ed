"""Build a TensorRT engine of an exported denoiser (or of a checkpoint, exported to ONNX first), and
of its VAE decoder when it has one.

    python -m export.to_trt model.onnx -o model.plan
    python -m export.to_trt ckpt.pt -o model.plan --dtype fp16          # writes model.onnx next to the plan
    python -m export.to_trt model.onnx -o model.plan --max-batch 16 --timing-cache trt.cache
    python -m export.to_trt model.onnx -o model.plan --vae-max-tile 96  # decoder tiles up to 96 latent pixels
    python -m export.to_trt ckpt.pt -o model.plan --portable            # no plugin: standard ONNX ops only

Writes the serialized engine (``model.plan``) and its JSON sidecar (``model.plan.json``): the model
config from the ONNX metadata, the TensorRT version, the GPU name and compute capability, the
plugin's name and version, the precision and the batch profile. ``drwkv.runtime.tensorrt`` checks
the sidecar before it loads the plan.

A latent model's ``model.vae_decoder.onnx`` (next to the ONNX model) becomes ``model.vae_decoder.plan``
with its own sidecar (VAE weights' sha256, downsampling, channels, profile). Its profile ranges over
the batch (--vae-min-batch .. --vae-max-batch) and the tile size in latent pixels (--vae-min-tile ..
--vae-max-tile, square or not); the runtimes decode larger latents in tiles of at most the largest.

The BiWKV nodes (domain drwkv) reach our plugin through the ONNX parser's fallback importer, which
looks the op_type up in the plugin registry: the plugin library (--plugin, default: the built
libdrwkv_trt_plugin.so, see drwkv.runtime.tensorrt.find_plugin_library) is loaded first. The
network is strongly typed: layer precision comes from the graph's types, so an fp16 engine is
built from an fp16 export (``--dtype fp16``), and no builder precision flags are set.

--portable builds from the portable export (``python -m export.to_onnx --portable``, drwkv.runtime.portable):
its Bi-WKV is standard ONNX ops that the parser imports itself, so no plugin library is needed or
loaded. A checkpoint source is exported that way; an ONNX source must be such an export. (A graph
without BiWKV nodes never loads the plugin, flag or not.)

Needs TensorRT's Python package, cuda-python and onnx, on a machine with an NVIDIA GPU; without
them the command says what is missing and exits with status 1.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from drwkv import known_warnings
from drwkv.files import write_bytes_atomically
from drwkv.runtime.base import AUTO_TILE, decoder_path, describe_size


class BuildError(RuntimeError):
    """The engine could not be built; the message is one line."""


def _check_bi_wkv_nodes(model, path):
    """Every drwkv BiWKV node must ask for the plugin version we build; returns how many there are."""
    from drwkv.runtime.tensorrt import PLUGIN_VERSION
    from export.to_onnx import BIWKV_DOMAIN, BIWKV_OP

    nodes = [n for n in model.graph.node if n.domain == BIWKV_DOMAIN and n.op_type == BIWKV_OP]
    for node in nodes:
        versions = [a.s.decode() for a in node.attribute if a.name == "plugin_version"]
        if versions and versions[0] != PLUGIN_VERSION:
            raise BuildError(f"{path}: node {node.name} asks for BiWKV plugin_version {versions[0]!r}, "
                             f"the plugin implements {PLUGIN_VERSION!r}")
    return len(nodes)


def build_engine(onnx_path, plan_path, plugin=None, min_batch=1, opt_batch=8, max_batch=32, workspace_mib=4096,
                 timing_cache=None, verbose=False):
    """Build ``plan_path`` (and its sidecar) from a drwkv ONNX denoiser; returns the sidecar dict."""
    import tensorrt as trt

    from drwkv.runtime import tensorrt as backend
    from drwkv.runtime.onnx import DECODER_FILE_KEY, VAE_SHA256_KEY, read_onnx

    _check_range("batch", min_batch, opt_batch, max_batch)
    model, config = read_onnx(onnx_path)
    meta = {p.key: p.value for p in model.metadata_props}
    nodes = _check_bi_wkv_nodes(model, onnx_path)
    del model  # the parser reads the file itself (external weights included)
    library = backend.load_plugin_library(plugin) if nodes else None  # a portable graph needs none

    def profile(tensor):
        rest = list(tensor.shape)[1:]  # only the batch dimension is dynamic in a drwkv export
        if any(d < 0 for d in rest):
            raise BuildError(f"{onnx_path}: input {tensor.name} has dynamic dimensions besides the batch: "
                             f"{list(tensor.shape)}")
        return [min_batch, *rest], [opt_batch, *rest], [max_batch, *rest]

    _build_plan(onnx_path, plan_path, profile, workspace_mib, timing_cache, verbose)
    sidecar = {
        "format": backend.SIDECAR_FORMAT,
        "config": config,
        "tensorrt_version": trt.__version__,
        **backend.gpu_identity(),
        "plugin": {"name": backend.PLUGIN_NAME, "version": backend.PLUGIN_VERSION, "library": str(library)}
        if library else None,
        "bi_wkv_nodes": nodes,
        "precision": meta.get("drwkv.dtype", "fp32"),
        "profile": {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch},
        "onnx": os.path.abspath(onnx_path),
    }
    if config.get("latent"):  # the decoder this model's ties to, as its ONNX export names it
        sidecar["vae_sha256"] = meta.get(VAE_SHA256_KEY, config["latent"].get("vae_sha256"))
        if DECODER_FILE_KEY in meta:
            sidecar["vae_decoder"] = os.path.basename(decoder_path(plan_path))
    write_bytes_atomically(backend.sidecar_path(plan_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def build_decoder_engine(onnx_path, plan_path, min_batch=1, opt_batch=1, max_batch=4, min_tile=2, opt_tile=64,
                         max_tile=64, workspace_mib=4096, timing_cache=None, verbose=False):
    """Build ``plan_path`` (and its sidecar) from a drwkv ONNX VAE decoder; returns the sidecar dict.
    Tiles are in latent pixels: the profile takes [B, c, h, w] with min_tile <= h, w <= max_tile."""
    import tensorrt as trt

    from drwkv.runtime import tensorrt as backend
    from drwkv.runtime.onnx import VAE_SHA256_KEY, read_onnx_decoder

    _check_range("batch", min_batch, opt_batch, max_batch)
    _check_range("tile", min_tile, opt_tile, max_tile)
    _, meta = read_onnx_decoder(onnx_path)
    channels = int(meta["drwkv.vae_channels"])

    def profile(tensor):
        return ([min_batch, channels, min_tile, min_tile], [opt_batch, channels, opt_tile, opt_tile],
                [max_batch, channels, max_tile, max_tile])

    _build_plan(onnx_path, plan_path, profile, workspace_mib, timing_cache, verbose)
    sidecar = {
        "format": backend.DECODER_SIDECAR_FORMAT,
        "vae_sha256": meta[VAE_SHA256_KEY],
        "downsample": int(meta["drwkv.vae_downsample"]),
        "latent_channels": channels,
        "image_channels": int(meta["drwkv.vae_image_channels"]),
        "tensorrt_version": trt.__version__,
        **backend.gpu_identity(),
        "precision": meta.get("drwkv.dtype", "fp32"),
        "profile": {"min_batch": min_batch, "opt_batch": opt_batch, "max_batch": max_batch,
                    "min_tile": min_tile, "opt_tile": opt_tile, "max_tile": max_tile},
        "onnx": os.path.abspath(onnx_path),
    }
    write_bytes_atomically(backend.sidecar_path(plan_path), (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def onnx_model(source, output, dtype=None, portable=False):
    """The ONNX denoiser to build ``output`` from: ``source`` when it is one, else the checkpoint
    ``source`` exported next to ``output`` (model.plan -> model.onnx) in ``dtype`` (default fp32),
    portable: with the Bi-WKV in standard ONNX ops. BuildError for a portable build from an ONNX
    model that holds BiWKV nodes."""
    from drwkv.runtime.onnx import BIWKV_DOMAIN, read_onnx

    source = Path(source)
    if source.suffix != ".onnx":
        from export.to_onnx import export_onnx

        onnx_path = Path(output).with_suffix(".onnx")
        export_onnx(source, onnx_path, dtype=dtype or "fp32", portable=portable)
        print(f"exported {onnx_path}", file=sys.stderr)
        return onnx_path
    if portable:
        nodes = sum(n.domain == BIWKV_DOMAIN for n in read_onnx(source)[0].graph.node)
        if nodes:
            raise BuildError(f"--portable: {source} holds {nodes} BiWKV nodes; export the checkpoint with "
                             f"python -m export.to_onnx CKPT -o MODEL.onnx --portable, or give the checkpoint")
    return source


def _check_range(what, low, opt, high):
    if not 1 <= low <= opt <= high:
        raise ValueError(f"need 1 <= min-{what} <= opt-{what} <= max-{what}, got {low}, {opt}, {high}")


def _build_plan(onnx_path, plan_path, profile, workspace_mib, timing_cache, verbose):
    """Parse ``onnx_path`` and write its serialized engine to ``plan_path``; ``profile(input tensor)``
    gives the (min, opt, max) shapes of each input."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Precision from the graph's types. TensorRT 11 networks are always strongly typed (the flag is
    # deprecated there); TensorRT 10 needs the flag.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(os.fspath(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)).strip().replace("\n", " ") for i in range(parser.num_errors))
        raise BuildError(f"{onnx_path}: the ONNX parser failed: {errors[:500]}")

    builder_config = builder.create_builder_config()
    builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    optimization_profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        optimization_profile.set_shape(tensor.name, *profile(tensor))
    builder_config.add_optimization_profile(optimization_profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    builder_config.set_timing_cache(builder_config.create_timing_cache(cache_bytes), ignore_mismatch=False)

    serialized = builder.build_serialized_network(network, builder_config)
    if serialized is None:
        raise BuildError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    write_bytes_atomically(plan_path, bytes(serialized))
    if timing_cache:
        write_bytes_atomically(timing_cache, bytes(builder_config.get_timing_cache().serialize()))


def main(argv=None):
    known_warnings.silence()
    parser = argparse.ArgumentParser(
        prog="python -m export.to_trt",
        description="Build a TensorRT engine (with the BiWKV plugin) from a drwkv ONNX model or checkpoint.")
    parser.add_argument("source", help="model.onnx from python -m export.to_onnx, or a checkpoint (exported first)")
    parser.add_argument("-o", "--output", required=True, help="the engine to write (model.plan; + model.plan.json)")
    parser.add_argument("--plugin", help="BiWKV plugin library (default: the built libdrwkv_trt_plugin.so)")
    parser.add_argument("--portable", action="store_true",
                        help="build from the portable graph (Bi-WKV in standard ONNX ops, no plugin): a checkpoint "
                             "is exported with --portable, an ONNX source must be such an export")
    parser.add_argument("--dtype", choices=("fp32", "fp16"),
                        help="precision of the ONNX export of a checkpoint (default fp32); an ONNX source keeps its own")
    parser.add_argument("--min-batch", type=int, default=1, help="smallest batch of the profile (default 1)")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch TensorRT tunes for (default 8)")
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch of the profile (default 32)")
    parser.add_argument("--workspace", type=int, default=4096, metavar="MIB",
                        help="builder workspace limit in MiB (default 4096)")
    parser.add_argument("--timing-cache", help="timing cache file: read when it exists, written after the build")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log")
    vae = parser.add_argument_group("VAE decoder (latent models: model.vae_decoder.onnx next to the ONNX model)")
    vae.add_argument("--vae-min-batch", type=int, default=1, help="smallest decoder batch (default 1)")
    vae.add_argument("--vae-opt-batch", type=int, default=1, help="decoder batch TensorRT tunes for (default 1)")
    vae.add_argument("--vae-max-batch", type=int, default=4, help="largest decoder batch (default 4)")
    vae.add_argument("--vae-min-tile", type=int, default=2, help="smallest tile side, latent pixels (default 2)")
    vae.add_argument("--vae-opt-tile", type=int, default=None,
                     help=f"tile side TensorRT tunes for (default: the model's latent size, at most {AUTO_TILE})")
    vae.add_argument("--vae-max-tile", type=int, default=AUTO_TILE,
                     help=f"largest tile side; larger latents decode in tiles of it (default {AUTO_TILE})")
    args = parser.parse_args(argv)

    # Check the toolchain before any work: the import states what is missing in one line.
    try:
        import onnx  # noqa: F401

        import drwkv.runtime.tensorrt  # noqa: F401
    except ImportError as e:
        parser.exit(1, f"{parser.prog}: error: {e}; building an engine needs TensorRT's Python package "
                       f"(pip install tensorrt), cuda-python and onnx on a machine with an NVIDIA GPU\n")

    from drwkv.runtime.base import ArtifactError
    from drwkv.runtime.onnx import read_onnx

    if Path(args.source).suffix == ".onnx" and args.dtype is not None:
        parser.error("--dtype applies to a checkpoint source; an ONNX model keeps the precision it was exported with")
    try:
        onnx_path = onnx_model(args.source, args.output, args.dtype, args.portable)
        _, config = read_onnx(onnx_path)
        decoder_onnx = decoder_path(onnx_path)
        with_decoder = bool(config.get("latent")) and os.path.isfile(decoder_onnx)
        if with_decoder:  # flags checked before the first build
            opt_tile = args.vae_opt_tile or max(args.vae_min_tile, min(int(config["image_size"]), args.vae_max_tile))
            _check_range("batch", args.vae_min_batch, args.vae_opt_batch, args.vae_max_batch)
            _check_range("tile", args.vae_min_tile, opt_tile, args.vae_max_tile)
        sidecar = build_engine(onnx_path, args.output, args.plugin, args.min_batch, args.opt_batch, args.max_batch,
                               args.workspace, args.timing_cache, args.verbose)
        if with_decoder:
            decoder = build_decoder_engine(decoder_onnx, decoder_path(args.output), args.vae_min_batch,
                                           args.vae_opt_batch, args.vae_max_batch, args.vae_min_tile, opt_tile,
                                           args.vae_max_tile, args.workspace, args.timing_cache, args.verbose)
    except (ArtifactError, BuildError, FileNotFoundError, ImportError, RuntimeError, ValueError) as e:
        parser.exit(1, f"{parser.prog}: error: {e}\n")
    config, profile = sidecar["config"], sidecar["profile"]
    print(f"wrote {args.output}: {config['model']} {describe_size(config)}, {sidecar['precision']}, "
          f"batch {profile['min_batch']}..{profile['max_batch']}, TensorRT {sidecar['tensorrt_version']} on "
          f"{sidecar['gpu']} (sm {sidecar['compute_capability']})", file=sys.stderr)
    if with_decoder:
        p = decoder["profile"]
        print(f"wrote {decoder_path(args.output)}: VAE decoder, {decoder['precision']}, batch "
              f"{p['min_batch']}..{p['max_batch']}, tiles {p['min_tile']}..{p['max_tile']} latent pixels",
              file=sys.stderr)
    elif config.get("latent"):
        print(f"no VAE decoder engine built: {decoder_onnx} is missing (export it with python -m export.to_onnx "
              f"CKPT -o {onnx_path} --vae FOLDER)", file=sys.stderr)


if __name__ == "__main__":
    main()
