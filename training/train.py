"""Train a class-conditional Diffusion-RWKV (or DiT) denoiser.

Single process:
    python -m training.train --dataset fashion-mnist --model DRWKV-T/2 --image-size 32 --out runs/fm
Data parallel (gloo on CPU, nccl on GPU; --batch-size is the global batch):
    torchrun --nproc_per_node 2 -m training.train ...
Resume exactly where a checkpoint left off (same arguments, --steps may grow):
    python -m training.train ... --resume runs/fm/ckpt.pt
Fine-tune from another checkpoint's EMA weights (e.g. one from training.import_official), from step 0:
    python -m training.train ... --init-from imported.pt
Latent diffusion through a VAE folder (diffusers AutoencoderKL; --image-size stays the pixel size):
    python -m training.train --dataset emoji --vae pretrained/emoji-vae --image-size 32 --model DRWKV-T/2 ...

Everything random in a step (batch order, timesteps, noise, label dropout) is drawn from a
generator seeded by (seed, step) for the whole global batch, and each rank takes its slice.
So resuming is exact, and N processes compute the same update as one process with the same
global batch. Rank 0 writes <out>/metrics.jsonl, <out>/samples/step_XXXXXXX.png and <out>/ckpt.pt.

With --vae the training split is encoded once into an on-disk latent cache (training/latents.py:
the posterior's mean and std, memory-mapped float16); every batch draws mean + std * eps with eps
from the step's generator, and sample grids are decoded to RGB by the VAE. The checkpoint's config
then describes the denoiser's input (latent size and channels) and records the latent space in
config["latent"]. The VAE's files are linked (or copied) into <out>/vae, which the record names: a
run's folder is self-contained, as an artifact may only name files inside its own folder.
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from drwkv import known_warnings
from drwkv.files import atomic_write
from drwkv.diffusion import diffusion_from_config
from drwkv.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, MODEL_CONFIGS, build_model, read_checkpoint
from drwkv.png import make_grid, save_png, to_uint8
from drwkv.vae import VAEError, copy_vae_folder, latent_space, load_vae
from training.data import DATASETS, batch_indices, load_dataset
from training.eval import generate
from training.latents import LatentCache, default_cache_dir

NUM_TIMESTEPS = 1000  # the linear schedule's length (DiT's)

# ----------------------------------------------------------------------------- configuration
#: Where a latent run keeps its VAE (hard links or a copy of --vae's files), beside ckpt.pt.
RUN_VAE_FOLDER = "vae"

parser = argparse.ArgumentParser(description="Train a Diffusion-RWKV image generator.")
parser.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
parser.add_argument("--data-dir", default=None, help="dataset directory (folder dataset, or a fashion-mnist copy)")
parser.add_argument("--model", default="DRWKV-T/2", choices=list(MODEL_CONFIGS))
parser.add_argument("--image-size", type=int, default=32, help="pixel size (with --vae too)")
parser.add_argument("--vae", default=None, metavar="FOLDER",
                    help="train on the latents of this VAE (a diffusers AutoencoderKL folder)")
parser.add_argument("--latent-cache", default=None, metavar="DIR",
                    help="with --vae: where the encoded training split is cached "
                         "(default ~/.cache/drwkv/latents/<dataset>-<size>px-train-<VAE sha256>)")
parser.add_argument("--learn-sigma", type=int, default=1, choices=(0, 1), help="learned-range variance (1) or fixed (0)")
parser.add_argument("--steps", type=int, default=2000, help="total optimizer steps")
parser.add_argument("--batch-size", type=int, default=64, help="global batch per optimizer step")
parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step and rank")
parser.add_argument("--lr", type=float, default=1e-3)
parser.add_argument("--warmup", type=int, default=100, help="linear learning-rate warmup steps")
parser.add_argument("--ema-decay", type=float, default=0.999)
parser.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (0 = off)")
parser.add_argument("--label-dropout", type=float, default=0.1, help="probability of the null class")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--out", default="runs/default")
parser.add_argument("--sample-every", type=int, default=500,
                    help="steps between sample grids, and one at the end (0 = no sample grids)")
parser.add_argument("--sample-steps", type=int, default=25, help="DDIM steps for sample grids (1 to 1000)")
parser.add_argument("--sample-cfg", type=float, default=2.0, help="classifier-free guidance scale for sample grids")
parser.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints (0 = only at the end)")
parser.add_argument("--log-every", type=int, default=1, help="steps between metrics.jsonl lines")
parser.add_argument("--resume", default=None, help="checkpoint to continue from")
parser.add_argument("--init-from", default=None, metavar="CKPT",
                    help="fine-tune: start from this checkpoint's EMA weights (e.g. from training.import_official) "
                         "with a fresh optimizer at step 0")
parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0 = torch default)")


# ----------------------------------------------------------------------------- helpers
def rng_state():
    """All global RNG states as tensors and ints (so the checkpoint loads with weights_only=True)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gauss": torch.tensor(np_state[4], dtype=torch.float64),
        "python_version": py_version, "python_internal": torch.tensor(py_internal, dtype=torch.int64),
        "python_gauss": torch.tensor([] if py_gauss is None else [py_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], float(state["numpy_cached_gauss"])))
    gauss = state["python_gauss"].tolist()
    random.setstate((state["python_version"], tuple(state["python_internal"].tolist()), gauss[0] if gauss else None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path):
    """torch.save through a temp file and a rename (drwkv.files): readers never see a partial file."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def save_grid(images, path, nrow):
    """images [N, C, H, W] in [-1, 1] -> PNG grid with nrow images per row (drwkv.png, written atomically)."""
    save_png(path, make_grid(to_uint8(images.float().cpu().numpy()), nrow))


@torch.no_grad()
def update_ema(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


# ----------------------------------------------------------------------------- main
def validate(args):
    """Refuse bad flags before any work starts (one line, via SystemExit)."""
    at_least = {"steps": 1, "batch_size": 1, "grad_accum": 1, "log_every": 1, "sample_steps": 1,
                "sample_every": 0, "ckpt_every": 0, "warmup": 0, "threads": 0}
    for flag, low in at_least.items():
        if getattr(args, flag) < low:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least {low}, got {getattr(args, flag)}")
    if args.sample_steps > NUM_TIMESTEPS:
        raise SystemExit(f"--sample-steps {args.sample_steps} exceeds the {NUM_TIMESTEPS} diffusion timesteps")
    for flag in ("ema_decay", "label_dropout"):
        if not 0.0 <= getattr(args, flag) <= 1.0:
            raise SystemExit(f"--{flag.replace('_', '-')} must be between 0 and 1, got {getattr(args, flag)}")
    if args.latent_cache and not args.vae:
        raise SystemExit("--latent-cache needs --vae")
    if args.init_from and args.resume:
        raise SystemExit("--init-from starts a new run, --resume continues one: give one of them")


def read_init_checkpoint(path, config):
    """The checkpoint --init-from starts from, checked to fit this run's data (architecture, size,
    classes, pixel or latent space); its model options (final_norm, guidance_channels) go into
    ``config``."""
    try:
        init = read_checkpoint(path)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"--init-from: {e}") from None
    for key in ("model", "image_size", "in_channels", "num_classes", "learn_sigma"):
        if init["config"].get(key) != config[key]:
            raise SystemExit(f"--init-from: checkpoint has {key}={init['config'].get(key)!r}, this run {config[key]!r}")
    theirs, ours = init["config"].get("latent"), config.get("latent")
    if (theirs is None) != (ours is None):
        raise SystemExit(f"--init-from: checkpoint is a {'latent' if theirs else 'pixel'}-space model, this run "
                         f"trains in {'latent' if ours else 'pixel'} space")
    # An official latent model imported without --vae records SD's latent space but no VAE weights.
    if theirs is not None and (theirs.get("vae_sha256") not in (None, ours["vae_sha256"]) or
                               any(theirs.get(k) != ours[k] for k in ("channels", "downsample", "scaling_factor"))):
        raise SystemExit(f"--init-from: checkpoint was trained through another VAE than --vae {ours['vae']}")
    for key in ("final_norm", "guidance_channels"):
        if key in init["config"]:
            config[key] = init["config"][key]
    return init


def main():
    known_warnings.silence()
    args = parser.parse_args()
    validate(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    latent = None
    if args.vae:
        try:
            latent = latent_space(args.vae, args.image_size)
            vae = load_vae(args.vae)
        except VAEError as e:
            raise SystemExit(f"--vae: {e}") from None

    ddp = "RANK" in os.environ
    if ddp:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
    else:
        rank, world, local_rank = 0, 1, 0
    master = rank == 0
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if args.batch_size % (world * args.grad_accum):
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by processes x --grad-accum "
                         f"= {world} x {args.grad_accum}")
    micro = args.batch_size // (world * args.grad_accum)
    # bf16 autocast on GPU only; CPU training stays in float32.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    try:
        if latent is None:
            images, labels, class_names = load_dataset(args.dataset, args.image_size, "train", args.data_dir)
            num_examples, example_shape = len(images), tuple(images.shape[1:])
        else:
            cache_dir = args.latent_cache or default_cache_dir(latent["vae_sha256"], args.dataset, args.image_size)
            latents = LatentCache.open_or_build(cache_dir, vae.to(device), latent["vae_sha256"], args.dataset,
                                                args.image_size, "train", args.data_dir, rank, world)
            vae.cpu()
            labels, class_names = latents.labels, latents.class_names
            num_examples, example_shape = len(latents), latents.shape
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    config = {
        "model": args.model, "image_size": example_shape[-1], "in_channels": example_shape[0],
        "num_classes": len(class_names), "learn_sigma": bool(args.learn_sigma), "class_names": class_names,
        "dataset": args.dataset,
        "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": NUM_TIMESTEPS},
    }
    if latent is not None:  # the VAE is copied into the run's folder (below) and named by its place there
        config["latent"] = {**latent, "vae": RUN_VAE_FOLDER}
    if args.init_from:
        init = read_init_checkpoint(args.init_from, config)
    diffusion = diffusion_from_config(config)

    try:
        model = build_model(config).to(device)
    except ValueError as e:
        raise SystemExit(f"--model {args.model}: {e}") from None
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step = 0
    if args.init_from:
        model.load_state_dict(init["ema"])
        ema.load_state_dict(init["ema"])
    if args.resume:
        try:
            ckpt = read_checkpoint(args.resume)
        except (ValueError, FileNotFoundError) as e:
            raise SystemExit(f"--resume: {e}") from None
        if "model" not in ckpt or "optimizer" not in ckpt:
            raise SystemExit(f"{args.resume}: holds EMA weights only; it cannot be resumed")
        resumed_latent = (ckpt["config"].get("latent") or {}).get("vae_sha256")
        if resumed_latent != (latent or {}).get("vae_sha256"):
            trained = f"through a VAE with weights sha256 {resumed_latent[:12]}..." if resumed_latent else "in pixel space"
            raise SystemExit(f"--resume: checkpoint was trained {trained}, this run "
                             f"{'through ' + args.vae if latent else 'in pixel space'}")
        for key in ("model", "image_size", "in_channels", "num_classes", "learn_sigma", "dataset"):
            if ckpt["config"].get(key) != config[key]:
                raise SystemExit(f"--resume: checkpoint has {key}={ckpt['config'].get(key)!r}, "
                                 f"this run {config[key]!r}")
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        set_rng_state(ckpt["rng"])
    train_model = DDP(model) if ddp else model

    if master:
        os.makedirs(os.path.join(args.out, "samples"), exist_ok=True)
        if latent:  # the run's folder holds its VAE, which the checkpoint names by its place there
            copy_vae_folder(args.vae, os.path.join(args.out, RUN_VAE_FOLDER))
        params = sum(p.numel() for p in model.parameters())
        space = f" -> latents {example_shape} through {args.vae}" if latent else f" {example_shape}"
        print(f"{args.model}: {params / 1e6:.2f}M params | {args.dataset}: {num_examples} images{space}, "
              f"{len(class_names)} classes | {world} process(es), "
              f"global batch {args.batch_size} = {world} x {args.grad_accum} x {micro} | device {device}")

    def checkpoint():
        atomic_save({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config,
                     "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                     "step": step, "rng": rng_state(), "args": vars(args)},
                    os.path.join(args.out, "ckpt.pt"))

    def samples():
        """One row per class (at most 10) of 8 images from the EMA model, decoded to RGB for latent models.
        A failure is reported in one line: a preview never stops training."""
        per_class = 8
        y = torch.arange(min(config["num_classes"], 10)).repeat_interleave(per_class)
        try:
            grid = generate(ema, config, y, args.sample_steps, args.sample_cfg, args.seed, len(y),
                            vae if latent else None, device)
            save_grid(grid, os.path.join(args.out, "samples", f"step_{step:07d}.png"), per_class)
        except Exception as e:  # noqa: BLE001 -- any failure of a preview is reported, not raised
            reason = " ".join(str(e).split())[:300] or type(e).__name__
            tqdm.write(f"step {step}: sample grid failed ({type(e).__name__}: {reason})", file=sys.stderr)

    bar = tqdm(total=args.steps, initial=step, disable=not master, dynamic_ncols=True)
    metrics = open(os.path.join(args.out, "metrics.jsonl"), "a") if master else None
    t0 = time.time()
    while step < args.steps:
        # Everything random in this step, drawn for the whole global batch from (seed, step).
        g = torch.Generator().manual_seed(args.seed * 1_000_003 + step + 1)
        idx = batch_indices(num_examples, args.batch_size, args.seed, step)
        t_all = torch.randint(0, diffusion.num_timesteps, (args.batch_size,), generator=g)
        noise_all = torch.randn((args.batch_size, *example_shape), generator=g)
        drop_all = torch.rand(args.batch_size, generator=g) < args.label_dropout
        # Latent models sample the VAE posterior afresh every batch (drawn last: pixel runs keep their stream).
        posterior_eps_all = torch.randn((args.batch_size, *example_shape), generator=g) if latent else None

        lr = args.lr * min(1.0, (step + 1) / args.warmup) if args.warmup > 0 else args.lr
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros(3, device=device)  # loss, mse, vb summed over this rank's examples
        for m in range(args.grad_accum):
            # Rank r's micro-batch m: slice (m * world + r) of the global batch.
            sl = slice((m * world + rank) * micro, (m * world + rank + 1) * micro)
            x = images[idx[sl]] if latent is None else latents.sample(idx[sl], posterior_eps_all[sl])
            x = x.to(device)
            y = torch.where(drop_all[sl], len(class_names), labels[idx[sl]]).to(device)
            t, noise = t_all[sl].to(device), noise_all[sl].to(device)
            # Gradients are averaged over ranks only on the last micro-step.
            sync = train_model.no_sync() if ddp and m < args.grad_accum - 1 else nullcontext()
            with sync:
                with autocast:
                    losses = diffusion.training_losses(train_model, x, t, y, noise)
                # Mean over the micro-batch / accum steps: summed over micro-steps (and averaged by
                # DDP over ranks) this is the mean over the global batch.
                (losses["loss"].float().mean() / args.grad_accum).backward()
            loss_sum += torch.stack([losses[k].detach().float().sum() for k in ("loss", "mse", "vb")])
        if ddp:
            dist.all_reduce(loss_sum)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad if args.clip_grad > 0 else math.inf)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, model, args.ema_decay)
        step += 1

        if master:
            loss, mse, vb = (loss_sum / args.batch_size).tolist()
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
            if step % args.log_every == 0:
                metrics.write(json.dumps({"step": step, "loss": loss, "mse": mse, "vb": vb, "lr": lr,
                                          "grad_norm": float(grad_norm), "time": time.time() - t0}) + "\n")
                metrics.flush()
            # The checkpoint first: a preview can never cost one.
            if (args.ckpt_every and step % args.ckpt_every == 0) or step == args.steps:
                checkpoint()
            if args.sample_every and (step % args.sample_every == 0 or step == args.steps):
                samples()
    bar.close()
    if master:
        metrics.close()
        print(f"done: {step} steps in {time.time() - t0:.0f}s; checkpoint {os.path.join(args.out, 'ckpt.pt')}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
