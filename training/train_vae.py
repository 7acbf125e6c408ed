"""Train a small VAE (diffusers' AutoencoderKL) for latent diffusion, and write it as a diffusers folder.

    python -m training.train_vae --dataset emoji --image-size 32 --steps 1500 --out runs/emoji-vae
    python -m training.train_vae ... --resume runs/emoji-vae/train_state.pt     (same arguments)

The loss is the reconstruction MSE (images in [-1, 1]) plus --kl-weight times the KL divergence of
the posterior from N(0, 1), both as means per element; the decoder sees a posterior sample. When
training ends, the latent scale is measured as scaling_factor = 1 / std of the training set's latent
samples (as Stable Diffusion's 0.18215 was) and written into config.json, and the reconstruction
PSNR of the posterior mean on the held-out split is reported.

Output folder: config.json + diffusion_pytorch_model.safetensors (load with
AutoencoderKL.from_pretrained(folder, local_files_only=True) or drwkv.vae.load_vae), train_state.pt
(weights, optimizer, step: for --resume), metrics.jsonl and reconstructions.png (held-out images
above their reconstructions). Everything random in a step is drawn from (seed, step), so resuming
is exact. Every file is written atomically (temp file + rename).
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import torch
from tqdm import tqdm

from drwkv import known_warnings
from drwkv.vae import CONFIG_FILE, WEIGHTS_FILE
from training.data import DATASETS, batch_indices, load_dataset
from training.train import atomic_save, save_grid

parser = argparse.ArgumentParser(description="Train a small AutoencoderKL (diffusers format) for latent diffusion.")
parser.add_argument("--dataset", default="emoji", choices=DATASETS)
parser.add_argument("--data-dir", default=None, help="dataset directory (folder dataset, or a copy of a packaged one)")
parser.add_argument("--image-size", type=int, default=32, help="pixel size the VAE is trained at")
parser.add_argument("--downsample", type=int, default=4, choices=(4, 8), help="pixels per latent pixel")
parser.add_argument("--latent-channels", type=int, default=4)
parser.add_argument("--width", type=int, default=32,
                    help="channels of the first encoder block (the others have twice as many)")
parser.add_argument("--steps", type=int, default=1500, help="total optimizer steps")
parser.add_argument("--batch-size", type=int, default=32)
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--warmup", type=int, default=50, help="linear learning-rate warmup steps")
parser.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the KL term (per-element means)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/vae", help="output folder (diffusers format)")
parser.add_argument("--ckpt-every", type=int, default=250, help="steps between training checkpoints (0 = only at the end)")
parser.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines")
parser.add_argument("--resume", default=None, help="train_state.pt to continue from")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")

STATE_FILE = "train_state.pt"


def vae_config(in_channels, args):
    """A CPU-sized AutoencoderKL: log2(downsample) + 1 blocks of width, 2*width, 2*width, ... channels."""
    blocks = int(math.log2(args.downsample)) + 1
    return dict(in_channels=in_channels, out_channels=in_channels, latent_channels=args.latent_channels,
                down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
                block_out_channels=(args.width,) + (2 * args.width,) * (blocks - 1), layers_per_block=1,
                norm_num_groups=min(16, args.width), sample_size=args.image_size)


def psnr(images, reconstructions):
    """PSNR in dB of images in [-1, 1], over the whole set (mean squared error on the [0, 1] scale)."""
    mse = (((images - reconstructions) / 2) ** 2).mean().item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def reconstruct(vae, images, batch_size=256):
    """Decoded posterior means, images in [-1, 1]."""
    return torch.cat([vae.decode(vae.encode(images[i:i + batch_size]).latent_dist.mean).sample.clamp(-1, 1)
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def latent_std(vae, images, seed, batch_size=256):
    """Std of posterior samples z ~ q(z|x) over all images (unscaled latents)."""
    g = torch.Generator().manual_seed(seed)
    total, total_sq, count = 0.0, 0.0, 0
    for i in range(0, len(images), batch_size):
        z = vae.encode(images[i:i + batch_size]).latent_dist.sample(generator=g).double()
        total, total_sq, count = total + z.sum().item(), total_sq + (z ** 2).sum().item(), count + z.numel()
    mean = total / count
    return math.sqrt(total_sq / count - mean ** 2)


def save_folder(vae, out):
    """config.json and the safetensors weights, written into a temp folder and renamed into out one by one
    (diffusers writes a folder, so drwkv.files.atomic_write, which writes one file, does not apply)."""
    with tempfile.TemporaryDirectory(prefix=".vae.", dir=out) as tmp:
        vae.save_pretrained(tmp, safe_serialization=True)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            os.replace(os.path.join(tmp, name), os.path.join(out, name))


def main():
    known_warnings.silence()
    args = parser.parse_args()
    if args.image_size % args.downsample:
        raise SystemExit(f"--image-size {args.image_size} is not divisible by --downsample {args.downsample}")
    for flag in ("steps", "batch_size", "latent_channels", "width"):
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKL

    try:
        images, _, _ = load_dataset(args.dataset, args.image_size, "train", args.data_dir)
        test_images, _, _ = load_dataset(args.dataset, args.image_size, "test", args.data_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(**vae_config(images.shape[1], args))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step = 0
    if args.resume:
        try:
            state = torch.load(args.resume, weights_only=True)
            vae.load_state_dict(state["vae"])
            optimizer.load_state_dict(state["optimizer"])
        except Exception as e:  # a missing, truncated or foreign file: one line
            reason = " ".join(str(e).split())[:200] or type(e).__name__
            raise SystemExit(f"--resume: {args.resume}: not a train_vae state ({reason})") from None
        if state["vae_config"] != json.loads(json.dumps(vae_config(images.shape[1], args))):
            raise SystemExit(f"--resume: {args.resume} was trained with another VAE configuration")
        step = state["step"]
    os.makedirs(args.out, exist_ok=True)
    print(f"AutoencoderKL {vae_config(images.shape[1], args)['block_out_channels']}, "
          f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f}M params | {args.dataset}: {len(images)} train, "
          f"{len(test_images)} held-out images {tuple(images.shape[1:])} | latents "
          f"{args.latent_channels}x{args.image_size // args.downsample}x{args.image_size // args.downsample}",
          file=sys.stderr)

    def checkpoint():
        atomic_save({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                     "vae_config": json.loads(json.dumps(vae_config(images.shape[1], args))), "args": vars(args)},
                    os.path.join(args.out, STATE_FILE))

    bar = tqdm(total=args.steps, initial=step, dynamic_ncols=True)
    t0 = time.time()
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as metrics:
        while step < args.steps:
            x = images[batch_indices(len(images), args.batch_size, args.seed, step)]
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 1)
            lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup > 0 else args.lr
            for group in optimizer.param_groups:
                group["lr"] = lr
            posterior = vae.encode(x).latent_dist
            reconstruction = vae.decode(posterior.sample(generator=g)).sample
            mse = ((reconstruction - x) ** 2).mean()
            kl = posterior.kl().mean() / (posterior.mean[0].numel())  # diffusers sums the KL over elements
            loss = mse + args.kl_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.2f}")
            bar.update(1)
            if step % args.log_every == 0 or step == args.steps:
                metrics.write(json.dumps({"step": step, "loss": loss.item(), "mse": mse.item(), "kl": kl.item(),
                                          "lr": lr, "time": time.time() - t0}) + "\n")
                metrics.flush()
            if (args.ckpt_every and step % args.ckpt_every == 0) or step == args.steps:
                checkpoint()
    bar.close()

    vae.eval()
    scaling_factor = 1.0 / latent_std(vae, images, args.seed)
    vae.register_to_config(scaling_factor=scaling_factor)
    save_folder(vae, args.out)
    reconstructions = reconstruct(vae, test_images)
    shown = torch.cat([test_images[:16], reconstructions[:16]])
    save_grid(shown, os.path.join(args.out, "reconstructions.png"), 16)
    held_out_psnr = psnr(test_images, reconstructions)
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as metrics:
        metrics.write(json.dumps({"step": step, "scaling_factor": scaling_factor, "held_out_psnr": held_out_psnr,
                                  "held_out_images": len(test_images)}) + "\n")
    print(f"done: {step} steps in {time.time() - t0:.0f}s | scaling_factor {scaling_factor:.5f} | held-out PSNR "
          f"{held_out_psnr:.2f} dB ({len(test_images)} images) | {args.out}")


if __name__ == "__main__":
    main()
