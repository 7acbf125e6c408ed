"""The VAE of latent models: a diffusers ``AutoencoderKL`` folder on disk (torch side).

A latent model's denoiser works on ``scaling_factor * (z - shift_factor)``, where z is the VAE
posterior (SD's VAE: 8x downsampling, 4 channels, scaling_factor 0.18215, no shift). Everything
here speaks in that *denoiser space*: ``encode`` returns the posterior's mean and std in it, and
``decode`` / ``LatentDecoder`` take latents in it, so no caller handles the scale itself.

A folder is diffusers' format: ``config.json`` (``_class_name`` AutoencoderKL) and
``diffusion_pytorch_model.safetensors``. It is loaded with ``local_files_only=True``: only folders,
never hub names, nothing downloaded. ``latent_space`` gives the record a checkpoint keeps in
``config["latent"]``; the weights' sha256 ties every artifact to the VAE it was made with.
"""
import hashlib
import json
import os
import shutil

import torch
from torch import nn

from drwkv.files import atomic_write

WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"


class VAEError(ValueError):
    """A VAE folder that is missing, not a diffusers AutoencoderKL, or unreadable (one-line message)."""


def read_vae_config(folder) -> dict:
    """The folder's config.json, checked to describe an AutoencoderKL whose weights file is present."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VAEError(f"VAE folder not found: {folder}")
    config_path = os.path.join(folder, CONFIG_FILE)
    weights_path = os.path.join(folder, WEIGHTS_FILE)
    if not os.path.isfile(config_path) or not os.path.isfile(weights_path):
        raise VAEError(f"{folder}: not a diffusers VAE folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise VAEError(f"{config_path}: unreadable ({e})") from None
    if not isinstance(config, dict) or config.get("_class_name") != "AutoencoderKL":
        name = config.get("_class_name") if isinstance(config, dict) else None
        raise VAEError(f"{folder}: not an AutoencoderKL (config.json _class_name is {name!r})")
    return config


def weights_sha256(folder) -> str:
    """sha256 of the folder's weights file (hex)."""
    h = hashlib.sha256()
    with open(os.path.join(os.fspath(folder), WEIGHTS_FILE), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def downsample_factor(vae_config) -> int:
    """Pixels per latent pixel: each encoder block but the last halves the resolution."""
    return 2 ** (len(vae_config.get("block_out_channels", (64,))) - 1)


def latent_space(folder, image_size) -> dict:
    """The ``config["latent"]`` record of a model trained through this VAE at ``image_size`` pixels."""
    config = read_vae_config(folder)
    downsample = downsample_factor(config)
    if image_size % downsample:
        raise VAEError(f"image size {image_size} is not divisible by the VAE's downsampling factor {downsample}")
    return {"vae": os.fspath(folder), "vae_sha256": weights_sha256(folder),
            "scaling_factor": float(config.get("scaling_factor", 0.18215)),
            "shift_factor": float(config.get("shift_factor") or 0.0),
            "channels": int(config.get("latent_channels", 4)), "downsample": downsample,
            "image_size": int(image_size), "in_channels": int(config.get("in_channels", 3))}


def copy_vae_folder(folder, out):
    """Put the VAE's two files in ``out`` (hard links where the file system allows, else copies, each
    written atomically), so that a training run's folder holds its VAE: an artifact may only name
    files inside its own folder. Skipped when ``out`` holds the same weights already."""
    if os.path.isdir(out) and os.path.isfile(os.path.join(out, WEIGHTS_FILE)) and \
            weights_sha256(out) == weights_sha256(folder):
        return out
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        with atomic_write(os.path.join(out, name)) as tmp:
            os.remove(tmp)
            try:
                os.link(os.path.join(folder, name), tmp)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(os.path.join(folder, name), tmp)
    return out


def load_vae(folder, device="cpu"):
    """The folder's AutoencoderKL in eval mode without gradients; VAEError if it cannot be loaded."""
    read_vae_config(folder)
    from diffusers import AutoencoderKL
    try:
        # low_cpu_mem_usage=False: the default path wants the accelerate package and warns without it.
        vae = AutoencoderKL.from_pretrained(os.fspath(folder), local_files_only=True, low_cpu_mem_usage=False)
    except Exception as e:  # safetensors / diffusers raise several types for a damaged file
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise VAEError(f"{folder}: the VAE weights cannot be loaded ({reason})") from None
    return vae.to(device).eval().requires_grad_(False)


def _shift_scale(vae):
    return float(vae.config.get("shift_factor") or 0.0), float(vae.config.scaling_factor)


@torch.no_grad()
def encode(vae, images):
    """images [B, C, H, W] in [-1, 1] -> (mean, std) of the posterior in the denoiser's space."""
    shift, scale = _shift_scale(vae)
    posterior = vae.encode(images).latent_dist
    return (posterior.mean - shift) * scale, posterior.std * scale


class LatentDecoder(nn.Module):
    """latents [B, c, h, w] in the denoiser's space -> images [B, C, h*f, w*f] in [-1, 1].

    The one definition of decoding: ``decode`` calls it and the ONNX decoder graph is its export.
    """

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.shift, self.scale = _shift_scale(vae)

    def forward(self, latents):
        z = latents / self.scale + self.shift
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)


@torch.no_grad()
def decode(vae, latents):
    """latents in the denoiser's space -> images in [-1, 1]."""
    return LatentDecoder(vae)(latents)
