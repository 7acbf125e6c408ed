"""The VAE decoder of latent models on the CPU: its share of a sampling run, the peak memory of
tiled decoding, and ONNX Runtime against diffusers in PyTorch.

    python benchmarks/bench_decode.py                                   # the committed emoji VAE
    python benchmarks/bench_decode.py --ckpt runs/latent/ckpt.pt --vae pretrained/emoji-vae --threads 2

1. Share: drwkv.Pipeline on the ONNX export of --ckpt (default: a random DRWKV-T/2 on the VAE's
   latents of 64x64 images), DDIM --steps, guidance 1.5, --num-images in one batch: seconds in
   denoiser steps against seconds in decoding.
2. Peak memory of decoding one image of 512x512 and 1024x1024 pixels through ONNX Runtime, whole
   and in tiles (--tile latent pixels, a quarter overlap): the peak resident memory of a fresh
   process that loads the decoder, warms it up on 8x8 latents and decodes the image, next to the
   peak of one that only loads and warms up.
3. Decode time, ONNX Runtime against diffusers (PyTorch eager) on the same VAE: a batch of
   --num-images model-sized latents, and one 512x512 image; median of --repeat runs.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Peak memory as VmHWM (this process image's high-water mark): ru_maxrss would carry the parent's
# peak over the exec.
MEMORY_PROBE = """
import json, sys, numpy as np
from drwkv.runtime.onnx import OnnxRuntimeDecoder
path, side, tile, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
decoder = OnnxRuntimeDecoder(path, intra_op_threads=threads)
decoder(np.zeros((1, decoder.latent_channels, 8, 8), np.float32))          # warm-up: session and arenas
nbytes = 0
if side > 0:
    z = np.random.default_rng(0).standard_normal((1, decoder.latent_channels, side, side)).astype(np.float32)
    nbytes = decoder(z, tile=tile if tile > 0 else side).nbytes
peak_kib = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mib": peak_kib / 1024,
                  "tiles": decoder.tiles_decoded - 1, "output_mib": nbytes / 2**20}))
"""


def median_seconds(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", default=os.path.join(REPO, "pretrained", "emoji-vae"), help="diffusers VAE folder")
    p.add_argument("--ckpt", help="latent checkpoint for the sampling share (default: random DRWKV-T/2)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--tile", type=int, default=64, help="tile side in latent pixels for the memory table")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    import torch

    import drwkv
    from drwkv.model import build_model
    from drwkv.runtime.onnx import OnnxRuntimeDecoder
    from drwkv.runtime.torch_ckpt import TorchDecoder
    from drwkv.vae import latent_space
    from export.to_onnx import export_onnx

    torch.set_num_threads(args.threads)
    work = tempfile.mkdtemp(prefix="bench_decode_")
    ckpt = args.ckpt
    if ckpt is None:
        latent = latent_space(args.vae, 64)
        config = {"model": "DRWKV-T/2", "image_size": 64 // latent["downsample"], "in_channels": latent["channels"],
                  "num_classes": 10, "learn_sigma": True, "latent": latent}
        torch.manual_seed(0)
        model = build_model(config)
        ckpt = os.path.join(work, "ckpt.pt")
        torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "ema": model.state_dict()}, ckpt)
    onnx_path = os.path.join(work, "model.onnx")
    print(f"exporting {ckpt} with its decoder ...", file=sys.stderr)
    export_onnx(ckpt, onnx_path, vae=args.vae, force=args.ckpt is not None)

    # 1. The decoder's share of a sampling run.
    pipe = drwkv.Pipeline.load(onnx_path, intra_op_threads=args.threads)
    pipe(num_images=args.num_images, steps=2, batch_size=args.num_images)          # warm-up
    pipe(num_images=args.num_images, steps=args.steps, batch_size=args.num_images)
    run = pipe.last_run
    total = run["sample_s"] + run["decode_s"]
    config = pipe.config
    side = config["image_size"] * config["latent"]["downsample"]
    print(f"\n1. {config['model']} on {config['image_size']}x{config['image_size']}x{config['in_channels']} latents "
          f"({side}px), ONNX Runtime, DDIM {args.steps} steps, cfg 1.5, {args.num_images} images in one batch")
    print(f"   denoiser steps {run['sample_s']:.2f} s ({100 * run['sample_s'] / total:.1f}%), "
          f"decode {run['decode_s']:.3f} s ({100 * run['decode_s'] / total:.1f}%, {run['tiles']} tiles)")

    # 2. Peak memory of tiled decoding.
    decoder_path = os.path.join(work, "model.vae_decoder.onnx")
    f = config["latent"]["downsample"]
    print(f"\n2. peak resident memory of a process decoding one image, ONNX Runtime, {args.threads} threads")
    print(f"   {'output':>10} {'latent':>8} {'decode':>14} {'tiles':>6} {'peak MiB':>9} {'output MiB':>11}")

    def probe(latent_side, tile):
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, decoder_path, str(latent_side), str(tile),
                              str(args.threads)], capture_output=True, text=True, cwd=REPO, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    floor = probe(0, 0)
    print(f"   {'-':>10} {'-':>8} {'load + warm-up':>14} {0:>6} {floor['peak_mib']:>9.0f} {0:>11}")
    for pixels in (512, 1024):
        for tile in (0, args.tile):
            latent_side = pixels // f
            if tile == 0 and latent_side > 128:
                # The mid-block attention alone holds a (h*w)^2 float32 matrix per image.
                attention = (latent_side ** 2) ** 2 * 4 / 2**30
                print(f"   {pixels:>8}px {latent_side:>6}^2 {'whole':>14} {1:>6}  (not run: the attention matrix "
                      f"alone is {attention:.0f} GiB)")
                continue
            result = probe(latent_side, tile)
            kind = "whole" if tile == 0 else f"tiles of {tile}"
            print(f"   {pixels:>8}px {latent_side:>6}^2 {kind:>14} {result['tiles']:>6} {result['peak_mib']:>9.0f} "
                  f"{result['output_mib']:>11.0f}")

    # 3. ONNX Runtime against diffusers.
    ort_decoder = OnnxRuntimeDecoder(decoder_path, intra_op_threads=args.threads)
    torch_decoder = TorchDecoder(args.vae)
    rng = np.random.default_rng(0)
    print(f"\n3. decode time, median of {args.repeat} (torch {torch.__version__}, {args.threads} threads)")
    for name, shape in ((f"{args.num_images} x {side}px", (args.num_images, config["in_channels"],
                                                              config["image_size"], config["image_size"])),
                        ("1 x 512px", (1, config["in_channels"], 512 // f, 512 // f))):
        z = rng.standard_normal(shape).astype(np.float32)
        ort_s = median_seconds(lambda: ort_decoder(z, tile=shape[2]), args.repeat)
        torch_s = median_seconds(lambda: torch_decoder(z, tile=shape[2]), args.repeat)
        print(f"   {name:>14}: onnxruntime {ort_s:.3f} s, diffusers {torch_s:.3f} s ({torch_s / ort_s:.2f}x)")
    print(f"\npeak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"artifacts in {work}", file=sys.stderr)


if __name__ == "__main__":
    main()
