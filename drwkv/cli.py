"""drwkv-infer: sample images from a TensorRT engine, an ONNX model or a checkpoint.

    drwkv-infer --onnx model.onnx --class sneaker,bag --num-images 16 --out grid.png
    drwkv-infer --engine model.plan --sampler dpm++2m --steps 20 --out samples/
    drwkv-infer --ckpt runs/fm/ckpt.pt --sampler ddpm --steps 250 --cfg-scale 1.0 --out ddpm.png
    drwkv-infer --onnx latent.onnx --vae-tile 32 --out rgb.png     # latent model: latent.vae_decoder.onnx decodes
    drwkv-infer --info grid.png          # the settings stored in an image, and the command that remakes it

A thin shell over drwkv.Pipeline (flags, PNG files and their text, the summary line). The samplers are numpy and identical for every backend, and the noise is a function of the seed and
the image's number in the run (drwkv.noise, the same in the C++ runtime): the same seed and
arguments give the same images (and the same PNG bytes) on one machine.
"""
import argparse
import math
import os
import shlex
import sys
import time

from drwkv.files import check_writable, check_writable_folder
from drwkv.pipeline import check_settings, parse_classes  # noqa: F401  (parse_classes: part of the CLI's interface)
from drwkv.png import check_nrow
from drwkv.runtime import PRECISIONS, check_threads
from drwkv.samplers import SAMPLERS
from drwkv.settings import RunSettings, printable, regenerate_command

PROG = "drwkv-infer"


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        """One line on stderr, then exit 2 (argparse would print the usage block first)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = _Parser(prog=PROG, description="Sample images from a Diffusion-RWKV denoiser (TensorRT, ONNX Runtime "
                                       "or PyTorch) with numpy DDPM / DDIM / DPM-Solver++ samplers.",
                epilog="Output: a .png path writes one grid; any other path is a directory that gets one "
                       "PNG per image. The generation parameters are stored in the PNG text chunks (drwkv.* "
                       "and a one-line 'parameters' chunk that image viewers show); --info prints them back.")
    src = p.add_argument_group("model (exactly one)")
    src.add_argument("--engine", metavar="PLAN", help="TensorRT engine (needs tensorrt and a GPU)")
    src.add_argument("--onnx", metavar="ONNX", help="ONNX model from python -m export.to_onnx (ONNX Runtime)")
    src.add_argument("--ckpt", metavar="CKPT", help="training checkpoint (PyTorch, EMA weights)")
    src.add_argument("--plugin", metavar="SO", help="with --engine: the BiWKV plugin library (default: "
                                                     "$DRWKV_TRT_PLUGIN, next to drwkv._C, or the newest build/)")
    src.add_argument("--cuda-graph", action="store_true", help="with --engine: replay each batch shape as a CUDA graph")
    src.add_argument("--threads", type=int, metavar="N",
                     help="with --onnx or --ckpt: CPU threads (ONNX Runtime's intra-op threads and drwkv's native "
                          "kernels, or torch's; default: the runtime's own choice, all cores)")
    src.add_argument("--precision", choices=PRECISIONS, default="fp32",
                     help="with --onnx: the CPU matrix products' precision: fp32 (exact; default), bf16 (OpenVINO, "
                          "CPUs with AVX512-BF16 or AMX) or int8 (ONNX Runtime, weights "
                          "quantized when the model loads)")
    v = p.add_argument_group("VAE decoder (latent models)")
    v.add_argument("--vae-decoder", metavar="PATH",
                   help="the decoder, of the model's kind: a .plan for --engine, a .onnx for --onnx, a diffusers VAE "
                        "folder for --ckpt (default: NAME.vae_decoder.plan/.onnx next to the model, or the VAE "
                        "folder the checkpoint records)")
    v.add_argument("--vae-tile", type=int, metavar="N",
                   help="decode in tiles of N x N latent pixels (default: tiles of 64 above that size, or of the "
                        "engine's largest; a tile larger than the latent decodes it whole)")
    v.add_argument("--vae-tile-overlap", type=int, metavar="N",
                   help="latent pixels neighbouring tiles share, blended linearly (default: a quarter of the tile)")
    s = p.add_argument_group("sampling")
    s.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="sampler (default: ddim)")
    s.add_argument("--steps", type=int, default=50, help="model evaluations per image (default: 50)")
    s.add_argument("--eta", type=float, default=0.0,
                   help="DDIM stochasticity in [0, 1]; 0 is deterministic, 1 is DDPM-like (default: 0)")
    s.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance scale; 1.0 disables guidance and its doubled batch (default: 1.5; "
                        "unconditional models take no guidance)")
    s.add_argument("--no-clip", dest="clip_x0", action="store_false", default=None,
                   help="do not clip the predicted x0 to [-1, 1] (clipping suits pixel-space models; latent models "
                        "never clip)")
    s.add_argument("--class", dest="classes", action="append", metavar="NAME|INDEX",
                   help="class label(s), by name from the model config or by index; repeat or comma-separate. "
                        "Images cycle through them (default: all classes in order)")
    s.add_argument("--num-images", type=int, default=16, help="how many images (default: 16)")
    s.add_argument("--batch-size", type=int, default=16, help="images per denoiser call (default: 16)")
    s.add_argument("--seed", type=int, default=0,
                   help="random seed in [0, 2^64); image i of a run gets the same noise whatever the batch size, "
                        "in Python and in C++ (default: 0)")
    o = p.add_argument_group("output")
    o.add_argument("--out", default="samples.png", help="grid .png file, or a directory (default: samples.png)")
    o.add_argument("--nrow", type=int, default=None, help="images per grid row (default: about square)")
    o.add_argument("--first-image", type=int, default=0, metavar="N",
                   help="number the images N, N+1, ... (default: 0): image N alone comes out as it did in a "
                        "larger run with the same seed and classes")
    i = p.add_argument_group("inspect")
    i.add_argument("--info", metavar="IMAGE.png", help="print the settings stored in an image written by "
                                                      "drwkv-infer and the command that makes it again, then exit")
    return p


def _check_args(args, parser):
    given = [f"--{n}" for n in ("engine", "onnx", "ckpt") if getattr(args, n) is not None]
    if args.info is not None:
        if given:
            parser.error(f"--info reads an image and takes no model ({', '.join(given)})")
        return
    if len(given) != 1:
        parser.error(f"give exactly one of --engine, --onnx, --ckpt (got {', '.join(given) or 'none'})")
    if (args.plugin or args.cuda_graph) and not args.engine:
        parser.error("--plugin and --cuda-graph apply to --engine only")
    if args.threads is not None and args.engine:
        parser.error("--threads applies to --onnx and --ckpt")
    if args.precision != "fp32" and not args.onnx:
        parser.error(f"--precision {args.precision} applies to --onnx (engines and checkpoints run in fp32)")
    try:  # the library's own checks, before anything is loaded (tiles: when the decoder is, by drwkv.Pipeline)
        check_settings(args.num_images, args.sampler, args.steps, args.cfg_scale, args.seed, args.eta, args.batch_size,
                       args.first_image)
        check_nrow(args.nrow, args.num_images)
        if args.threads is not None:
            check_threads(args.threads)
        if args.out.lower().endswith(".png"):
            check_writable(args.out, "--out")
        else:
            check_writable_folder(args.out, "--out")
    except (ValueError, OSError) as e:
        parser.error(str(e))


def run(args):
    from tqdm import tqdm

    from drwkv.pipeline import Pipeline
    from drwkv.png import make_grid, save_png

    t0 = time.perf_counter()
    artifact = args.engine or args.onnx or args.ckpt
    options = {"plugin": args.plugin, "cuda_graph": args.cuda_graph} if args.engine else {}
    if args.threads:
        options["intra_op_threads" if args.onnx else "threads"] = args.threads
    if args.onnx:
        options["precision"] = args.precision
    kind = "engine" if args.engine else "onnx" if args.onnx else "ckpt"
    pipe = Pipeline.load(artifact, kind=kind, vae_decoder=args.vae_decoder, vae_tile=args.vae_tile,
                         vae_tile_overlap=args.vae_tile_overlap, **options)
    denoiser = pipe.denoiser
    load_s = time.perf_counter() - t0
    config = denoiser.config
    numbers = range(args.first_image, args.first_image + args.num_images)

    with tqdm(total=None, unit="step", desc=PROG, file=sys.stderr, disable=None) as bar:
        def progress(done, total):
            bar.total = total
            bar.update(1)
        images = pipe(classes=args.classes, num_images=args.num_images, sampler=args.sampler, steps=args.steps,
                      cfg_scale=args.cfg_scale, seed=args.seed, eta=args.eta, clip_x0=args.clip_x0,
                      batch_size=args.batch_size, first_image=args.first_image, progress=progress)
    run_stats = pipe.last_run
    labels = run_stats["labels"]
    grid = args.out.lower().endswith(".png")
    if not grid:
        os.makedirs(args.out, exist_ok=True)
    args.cfg_scale, args.clip_x0 = run_stats["cfg_scale"], run_stats["clip_x0"]  # as used, as the PNG text records

    settings = RunSettings(PROG, config["model"], os.path.basename(artifact), denoiser.name, args.sampler, args.steps,
                           args.eta, args.cfg_scale, args.clip_x0, args.seed, args.batch_size,
                           (images.shape[2], images.shape[1]), config.get("class_names") or (),
                           int(config["num_classes"]) > 0, args.vae_decoder, args.vae_tile, args.vae_tile_overlap,
                           args.precision)
    if grid:
        nrow = args.nrow or math.ceil(math.sqrt(len(images)))
        save_png(args.out, make_grid(images, nrow), settings.grid_text(labels, args.first_image, nrow))
        written = args.out
    else:
        for i, image, label in zip(numbers, images, labels):
            save_png(os.path.join(args.out, settings.image_file_name(i, label)), image, settings.image_text(i, label))
        written = f"{len(images)} PNGs in {args.out}"

    sample_s, total_steps = run_stats["sample_s"], run_stats["batches"] * run_stats["steps"]
    tiles = run_stats["tiles"]
    decoded = (f"; {tiles} VAE tile{'s' * (tiles != 1)} decoded in {run_stats['decode_s']:.2f} s ({pipe.decoder.name})"
               if pipe.decoder is not None else "")
    print(f"{PROG}: {denoiser.name} ({config['model']}), {args.sampler} {run_stats['steps']} steps, cfg {args.cfg_scale}: "
          f"{len(images)} images in {sample_s:.2f} s = {1000 * sample_s / total_steps:.1f} ms/step "
          f"(batch {min(args.batch_size, args.num_images)}{' x2 for guidance' if args.cfg_scale != 1.0 else ''}), "
          f"{len(images) / sample_s:.2f} images/s{decoded}; model load {load_s:.2f} s -> {written}", file=sys.stderr)


def info(path):
    """--info: the image's settings (its parameters line, then the command that makes it again) on stdout."""
    from drwkv.png import read_text

    text = read_text(path)
    if "drwkv.sampler" not in text:
        raise ValueError(f"{path} has no drwkv-infer settings")
    command = regenerate_command(text)
    print(printable(text.get("parameters", "")))
    print(" ".join(shlex.quote(a) for a in [PROG] + command))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(args, parser)
    try:
        if args.info is not None:
            info(args.info)
        else:
            run(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, RuntimeError, OSError) as e:  # drwkv.runtime.ArtifactError is a ValueError
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
