"""Import a checkpoint of the paper's code (feizc/Diffusion-RWKV) as a drwkv checkpoint.

    python -m training.import_official official.pt -o ckpt.pt                 # EMA weights, guidance as the paper
    python -m training.import_official official.pt -o ckpt.pt --vae sd-vae    # latent model: its VAE, for images
    python -m training.import_official official.pt -o ckpt.pt --weights model --guidance all

The official train.py saves ``{"model", "ema", "opt", "args"}`` with ``args`` an argparse.Namespace.
The file is read with ``torch.load(weights_only=True)`` allowing argparse.Namespace and nothing
else: a file that needs any other pickled object is refused before anything in it runs.

The whole configuration comes from the tensor shapes: width and input channels from the patch
embedding, patch size from its kernel, depth from the blocks, learned sigma from the head, classes
from the label table (absent: unconditional, num_classes 0), the token grid from the position
embedding. 3 input channels is a pixel model, 4 a latent one in SD's VAE space (8x, scaling
0.18215; the official code knows no other). ``args`` (model, image_size in pixels, num_classes,
latent_space) is checked against the shapes. The result is an ordinary drwkv checkpoint with the
options the official models need: ``final_norm`` (its ``norm_f``), ``num_classes`` 0 for
unconditional models (``drwkv.model``), and ``guidance_channels`` (3: the official sampler guides
the first 3 channels only, also of 4-channel latents; ``--guidance all`` guides every channel).

The one difference left is the Bi-WKV operator: drwkv computes the paper's formula exactly, the
official CUDA kernel approximates it for more than 32 tokens (docs/RESULTS.md measures how much).
"""
import argparse
import hashlib
import math
import os
import pickle
import re
import sys

import torch
from tqdm import tqdm

from drwkv.files import atomic_write
from drwkv.model import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, MODEL_CONFIGS, build_model

# SD's VAE, the only one the official code trains with: 8x downsampling, 4 channels, scaling 0.18215.
SD_LATENT = {"scaling_factor": 0.18215, "shift_factor": 0.0, "channels": 4, "downsample": 8, "in_channels": 3}
# The official sampler guides this many channels (its forward_with_cfg).
OFFICIAL_GUIDANCE_CHANNELS = 3
DIFFUSION = {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}

# Official key prefix -> drwkv key prefix; keys not listed keep their name.
RENAMED_PREFIXES = (("patch_embed.proj.", "x_embedder."), ("time_embed.", "t_embedder."),
                    ("label_emb.embedding_table.", "y_embedder."), ("norm_f.", "final_norm."))
# Official token-mix parameters [1, 1, D] -> drwkv's [D].
RENAMED_MIXES = {"att.spatial_mix_k": "att.mix_k", "att.spatial_mix_v": "att.mix_v", "att.spatial_mix_r": "att.mix_r",
                 "ffn.spatial_mix_k": "ffn.mix_k", "ffn.spatial_mix_r": "ffn.mix_r"}


class OfficialCheckpointError(ValueError):
    """A file that cannot be imported; the message is one line."""


def load_official(path):
    """The official checkpoint's top-level dict, read without running any pickled code but Namespace."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = _safe_load(path)
    except pickle.UnpicklingError as e:
        needed = re.search(r"GLOBAL (\S+)", str(e))
        if needed:
            raise OfficialCheckpointError(f"{path}: refused: it needs the pickled object {needed.group(1)}, and only tensors, "
                               f"plain containers and argparse.Namespace are loaded (nothing in the file was run)") from None
        raise OfficialCheckpointError(f"{path}: not a readable checkpoint ({_first_line(e)})") from None
    except Exception as e:  # zip and pickle errors vary with the damage
        raise OfficialCheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt? {_first_line(e)})") from None
    if not isinstance(ckpt, dict):
        raise OfficialCheckpointError(f"{path}: not an official Diffusion-RWKV checkpoint (a {type(ckpt).__name__}, not a dict)")
    return ckpt


def _safe_load(path):
    """torch.load with weights_only and argparse.Namespace allowed. Memory-mapped (an H/2 file with
    its optimizer state holds the weights 4 times, of which one is read) unless the file predates
    torch's zip format."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


def _first_line(e):
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def select_weights(ckpt, which, path):
    """The state dict to import: ckpt[which] (``ema`` or ``model``)."""
    state = ckpt.get(which)
    if state is None:
        present = ", ".join(k for k in ("ema", "model") if isinstance(ckpt.get(k), dict)) or "none"
        hint = " (use --weights model)" if which == "ema" and isinstance(ckpt.get("model"), dict) else ""
        raise OfficialCheckpointError(f"{path}: has no {which!r} weights{hint}; weights present: {present}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialCheckpointError(f"{path}: {which!r} is not a state dict of tensors")
    return state


def _shape(state, key):
    if key not in state:
        raise OfficialCheckpointError(f"no {key!r}: not a Diffusion-RWKV state dict")
    return tuple(state[key].shape)


def infer_config(state):
    """-> (config, facts) from tensor shapes alone; facts: the numbers behind it, for the report."""
    D, in_channels, p, p2 = _shape(state, "patch_embed.proj.weight")
    if p != p2:
        raise OfficialCheckpointError(f"patch embedding kernel {p}x{p2} is not square")
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"in_blocks\.(\d+)\.", k))}
    out_blocks = {int(m.group(1)) for k in state if (m := re.match(r"out_blocks\.(\d+)\.", k))}
    half = len(blocks)
    if blocks != set(range(half)) or out_blocks != set(range(half)) or not any(k.startswith("mid_block.") for k in state):
        raise OfficialCheckpointError(f"blocks {sorted(blocks)} / {sorted(out_blocks)} and a mid block do not form "
                           f"a Diffusion-RWKV body (depth//2 in-blocks, one mid block, depth//2 out-blocks)")
    depth = 2 * half + 1
    hidden = _shape(state, "mid_block.ffn.key.weight")[0]
    if hidden != 4 * D:
        raise OfficialCheckpointError(f"channel-mix hidden size {hidden} is not 4 x width {D}")
    names = [n for n, a in MODEL_CONFIGS.items()
             if a["family"] == "DRWKV" and (a["depth"], a["hidden_size"], a["patch_size"]) == (depth, D, p)]
    if not names:
        known = ", ".join(sorted({f"{a['depth']}x{a['hidden_size']}" for a in MODEL_CONFIGS.values()
                                  if a["family"] == "DRWKV"}))
        raise OfficialCheckpointError(f"depth {depth}, width {D}, patch {p} is no DRWKV configuration (depth x width: {known})")
    out_features = _shape(state, "final_layer.linear.weight")[0]
    if out_features not in (p * p * in_channels, 2 * p * p * in_channels):
        raise OfficialCheckpointError(f"head outputs {out_features} features, neither {p * p * in_channels} nor "
                           f"{2 * p * p * in_channels} ({p}x{p} patches of {in_channels} channels, or twice that)")
    learn_sigma = out_features == 2 * p * p * in_channels
    if "label_emb.embedding_table.weight" in state:
        rows = _shape(state, "label_emb.embedding_table.weight")[0]
        if rows < 2:
            raise OfficialCheckpointError(f"label table has {rows} row(s); a class-conditional model needs its classes and a null row")
        num_classes = rows - 1  # the official LabelEmbedder adds the null (dropped-label) row
    else:
        num_classes = 0
    tokens = _shape(state, "pos_embed")[1]
    grid = math.isqrt(tokens)
    if grid * grid != tokens:
        raise OfficialCheckpointError(f"position embedding has {tokens} tokens, not a square grid")
    if in_channels not in (3, 4):
        raise OfficialCheckpointError(f"{in_channels} input channels: the official code makes 3-channel pixel or "
                           f"4-channel latent models")
    config = {"model": names[0], "image_size": grid * p, "in_channels": in_channels, "num_classes": num_classes,
              "learn_sigma": learn_sigma, "final_norm": "norm_f.weight" in state, "diffusion": dict(DIFFUSION)}
    facts = {"depth": depth, "width": D, "patch": p, "grid": grid}
    return config, facts


def check_args(config, args, vae_downsample):
    """Contradictions between the train.py flags saved in the file and the shapes -> OfficialCheckpointError."""
    def contradiction(flag, value, shapes):
        raise OfficialCheckpointError(f"the checkpoint's args say {flag}={value!r} but its tensors say {shapes}")

    model = getattr(args, "model", None)
    if model is not None and model != config["model"]:
        contradiction("model", model, config["model"])
    num_classes = getattr(args, "num_classes", None)
    if num_classes is not None and max(int(num_classes), 0) != config["num_classes"]:
        contradiction("num_classes", num_classes, f"{config['num_classes']} classes" if config["num_classes"]
                      else "unconditional (no label table)")
    latent = getattr(args, "latent_space", None)
    is_latent = config["in_channels"] == 4
    if latent is not None and bool(latent) != is_latent:
        contradiction("latent_space", latent, f"{config['in_channels']} input channels")
    image_size = getattr(args, "image_size", None)
    if image_size is not None:
        pixels = config["image_size"] * (vae_downsample if is_latent else 1)
        if int(image_size) != pixels:
            how = f"{config['image_size']}x{config['image_size']} latents x {vae_downsample}" if is_latent \
                else f"{config['image_size']}x{config['image_size']} pixels"
            contradiction("image_size", image_size, how)


def map_state_dict(state):
    """Official keys and shapes -> drwkv's."""
    out = {}
    for key, value in state.items():
        new = key
        for old, ours in RENAMED_PREFIXES:
            if key.startswith(old):
                new = ours + key[len(old):]
        for old, ours in RENAMED_MIXES.items():
            if key.endswith("." + old):
                new = key[: -len(old)] + ours
                if value.dim() != 3 or value.shape[:2] != (1, 1):
                    raise OfficialCheckpointError(f"{key} has shape {list(value.shape)}, expected [1, 1, width]")
                value = value.reshape(-1)
        out[new] = value
    return out


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=os.path.getsize(path), unit="B", unit_scale=True, desc="sha256",
                                     file=sys.stderr, disable=None, leave=False) as bar:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def import_official(path, weights="ema", vae=None, guidance="first3"):
    """-> (drwkv checkpoint dict, report lines). OfficialCheckpointError (or drwkv.vae.VAEError) for bad input."""
    ckpt = load_official(path)
    state = select_weights(ckpt, weights, path)
    config, facts = infer_config(state)
    args = ckpt.get("args")
    if args is not None and not isinstance(args, argparse.Namespace):
        raise OfficialCheckpointError(f"{path}: 'args' is a {type(args).__name__}, not train.py's argparse.Namespace")
    latent = config["in_channels"] == 4
    if vae is not None and not latent:
        raise OfficialCheckpointError(f"--vae given, but this is a pixel model ({config['in_channels']} input channels)")
    if latent:
        if vae is not None:
            from drwkv.vae import downsample_factor, latent_space, read_vae_config
            downsample = downsample_factor(read_vae_config(vae))
            config["latent"] = latent_space(vae, config["image_size"] * downsample)
            if config["latent"]["channels"] != config["in_channels"]:
                raise OfficialCheckpointError(f"--vae {vae} has {config['latent']['channels']} latent channels, the model "
                                   f"takes {config['in_channels']}")
        else:
            config["latent"] = {"vae": None, "vae_sha256": None, **SD_LATENT,
                                "image_size": config["image_size"] * SD_LATENT["downsample"]}
    check_args(config, args or argparse.Namespace(), config["latent"]["downsample"] if latent else 1)
    config["guidance_channels"] = min(OFFICIAL_GUIDANCE_CHANNELS, config["in_channels"]) if guidance == "first3" \
        else config["in_channels"]
    config["imported"] = {"from": "feizc/Diffusion-RWKV", "file": os.path.basename(path), "sha256": sha256(path),
                          "weights": weights, "args": {k: v for k, v in vars(args).items()
                                                       if isinstance(v, (str, int, float, bool, type(None)))}
                          if args is not None else None}

    mapped = map_state_dict(state)
    with torch.device("meta"):  # shapes only; the checked weights are assigned, not copied
        model = build_model(config)
    try:
        model.load_state_dict(mapped, assign=True)
    except RuntimeError as e:
        lines = [line.strip() for line in str(e).splitlines()[1:] if line.strip()]
        raise OfficialCheckpointError(f"{path}: the weights do not fit {config['model']}: {' '.join(lines)[:300]}") from None
    weights_out = model.state_dict()

    space = (f"latent {config['image_size']}x{config['image_size']}x4 = {config['latent']['image_size']} px through "
             f"{'the VAE ' + vae if vae else 'SD VAE (8x, 0.18215; give --vae FOLDER to decode)'}") if latent \
        else f"pixel {config['image_size']}x{config['image_size']}x3"
    report = [
        f"{path}: {config['model']} (depth {facts['depth']}, width {facts['width']}, patch {facts['patch']}, "
        f"{facts['grid']}x{facts['grid']} tokens), {space}, "
        f"{config['num_classes'] or 'no'} classes{'' if config['num_classes'] else ' (unconditional)'}, "
        f"{'learned' if config['learn_sigma'] else 'fixed'} variance, "
        f"{'final LayerNorm' if config['final_norm'] else 'no final LayerNorm'}",
        f"weights: {weights!r}; guidance on {config['guidance_channels']} of {config['in_channels']} channels; "
        + ("args agree with the shapes" if args is not None else "no args in the file (shapes only)"),
    ]
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "config": config,
            "model": dict(weights_out), "ema": weights_out, "step": 0}, report


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m training.import_official",
        description="Import a checkpoint of the paper's code (feizc/Diffusion-RWKV train.py) as a drwkv checkpoint "
                    "for export.to_onnx, export.to_trt, drwkv-infer --ckpt and training.train --init-from.")
    parser.add_argument("checkpoint", help="official checkpoint (torch.save of model, ema, opt, args)")
    parser.add_argument("-o", "--output", required=True, help="drwkv checkpoint to write")
    parser.add_argument("--weights", choices=("ema", "model"), default="ema",
                        help="which weights to import (default: ema, as the official sampler uses)")
    parser.add_argument("--vae", metavar="FOLDER", default=None,
                        help="latent models: the diffusers AutoencoderKL folder they were trained with (SD's VAE), "
                             "recorded so that the exported artifacts decode to images")
    parser.add_argument("--guidance", choices=("first3", "all"), default="first3",
                        help="classifier-free guidance on the first 3 channels as the official sampler "
                             "(default), or on all channels")
    args = parser.parse_args(argv)
    from drwkv.vae import VAEError

    if os.path.abspath(args.output) == os.path.abspath(args.checkpoint):
        parser.exit(2, f"{parser.prog}: error: -o {args.output} would overwrite the official checkpoint\n")
    try:
        ckpt, report = import_official(args.checkpoint, args.weights, args.vae, args.guidance)
    except (OfficialCheckpointError, VAEError) as e:
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(e).split())}\n")
    for line in report:
        print(line, file=sys.stderr)
    with atomic_write(args.output) as tmp:
        torch.save(ckpt, tmp)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
