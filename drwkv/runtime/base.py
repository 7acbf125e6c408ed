"""The ``Denoiser`` interface every inference backend implements (TensorRT, ONNX Runtime, PyTorch).

A denoiser is the trained network as a numpy function:

    out = denoiser(x, t, y)     x float32 [B,C,H,W], t float32 [B] (diffusion timestep), y int64 [B]
                                (class; num_classes = the null class) -> float32 [B, C_out, H, W]

with ``C_out = 2C`` when the model learns its variance (eps, then v in [-1, 1]) and ``C`` otherwise.
``config`` is the model config dict (model, image_size, in_channels, num_classes, learn_sigma,
class_names, diffusion, ...) read from the artifact itself; ``name`` names the backend.

Backends implement ``forward``; ``__call__`` checks and converts the inputs once for all of them
and splits batches larger than ``max_batch_size`` (a TensorRT engine's profile limit, say).
"""
import json
import os

import numpy as np

from drwkv.files import UnsafePathError, file_in_folder
from drwkv.runtime.tiling import decode_tiled

CONFIG_KEYS = ("model", "image_size", "in_channels", "num_classes", "learn_sigma")
#: Bounds a config's numbers must keep (an artifact's metadata is untrusted input).
CONFIG_RANGES = (("image_size", 1, 65536), ("in_channels", 1, 1024), ("num_classes", 0, 10**7))


class ArtifactError(ValueError):
    """A model file that is missing, unreadable, or not a drwkv denoiser; the message is one line."""


def describe_size(config):
    """A model's size in words: "32px" for a pixel model, "8x8 latents (32px images)" for a latent one."""
    size = config["image_size"]
    latent = config.get("latent")
    return f"{size}x{size} latents ({latent['image_size']}px images)" if latent else f"{size}px"


def parse_config(text, source):
    """The model config from its JSON text (ONNX metadata, engine sidecar); ArtifactError if unusable."""
    try:
        config = json.loads(text)
    except (TypeError, ValueError):
        raise ArtifactError(f"{source}: the drwkv model config is not valid JSON") from None
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_KEYS):
        raise ArtifactError(f"{source}: the drwkv model config lacks some of {', '.join(CONFIG_KEYS)}")
    for key, low, high in CONFIG_RANGES:
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ArtifactError(f"{source}: the drwkv model config's {key} must be an integer from {low} to {high}, "
                                f"got {value!r}")
    if not isinstance(config["learn_sigma"], bool) or not isinstance(config["model"], str):
        raise ArtifactError(f"{source}: the drwkv model config's model must be a name and learn_sigma true or false")
    return config


class Denoiser:
    """Base class of the backends: subclasses set ``name`` and ``config`` and implement ``forward``."""

    name = "denoiser"
    config: dict
    #: Largest batch one forward call accepts (None: no limit); __call__ splits larger batches.
    max_batch_size = None

    @property
    def in_channels(self):
        return int(self.config["in_channels"])

    @property
    def out_channels(self):
        return 2 * self.in_channels if self.config["learn_sigma"] else self.in_channels

    @property
    def image_size(self):
        return int(self.config["image_size"])

    @property
    def latent(self):
        """The model's latent space (``config["latent"]``: vae, vae_sha256, scaling_factor, channels,
        downsample, image_size in pixels), or None for a pixel-space model."""
        return self.config.get("latent")

    @property
    def vae_sha256(self):
        """sha256 of the VAE weights this model's decoder must come from: the one its export recorded
        (``export.to_onnx --vae --force`` may pick another VAE), else the training VAE's."""
        return self.exported_vae_sha256 or (self.latent or {}).get("vae_sha256")

    #: The decoder hash an artifact's metadata names (None: not recorded).
    exported_vae_sha256 = None

    def __call__(self, x, t, y):
        x = np.ascontiguousarray(x, dtype=np.float32)
        t = np.ascontiguousarray(t, dtype=np.float32).reshape(-1)
        y = np.ascontiguousarray(y, dtype=np.int64).reshape(-1)
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or x.shape[1:] != expected:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        if len(t) != len(x) or len(y) != len(x):
            raise ValueError(f"t and y must have one entry per image ({len(x)}), got {len(t)} and {len(y)}")
        limit = self.max_batch_size or len(x)
        if len(x) <= limit:
            return self.forward(x, t, y)
        return np.concatenate([self.forward(x[i:i + limit], t[i:i + limit], y[i:i + limit])
                               for i in range(0, len(x), limit)])

    def forward(self, x, t, y):
        """One batch: x float32 [B,C,H,W] (C-contiguous), t float32 [B], y int64 [B] -> float32 out."""
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.config.get('model')} {describe_size(self.config)}>"


#: Tiles of this many latent pixels (and a quarter of that overlap) are used when no tile size is
#: given and the latent is larger: 64 is 512 output pixels for SD's 8x VAE, a size its decoder was
#: trained at, and keeps the decoder's memory at that of a 512x512 image whatever the output size.
AUTO_TILE = 64


def decoder_path(artifact):
    """Where an artifact's VAE decoder sits: model.onnx -> model.vae_decoder.onnx, model.plan ->
    model.vae_decoder.plan."""
    root, ext = os.path.splitext(os.fspath(artifact))
    return f"{root}.vae_decoder{ext}"


def recorded_vae_folder(latent, artifact):
    """The VAE folder a latent model's config records -> (folder, None), or (None, why not).

    The record is the folder as it was given to training ("pretrained/emoji-vae"). An artifact may
    only name files inside its own folder (drwkv.files), so the record is looked for there: as a
    path relative to the artifact's folder, then by its last name beside the artifact. A checkpoint
    moved together with its VAE folder keeps working from any directory; a VAE elsewhere is given
    by the user (--vae-decoder, --vae).
    """
    recorded = latent.get("vae")
    if not recorded:
        return None, "the checkpoint records no VAE folder"
    folder = os.path.dirname(os.fspath(artifact))
    for name in (recorded, os.path.basename(os.path.normpath(recorded))):
        try:
            candidate = file_in_folder(folder, name, "the VAE folder")
            if os.path.isdir(candidate):  # its files, too, must not lead out (a symbolic link inside)
                for file in os.listdir(candidate):
                    file_in_folder(folder, os.path.join(name, file), "the VAE folder")
                return candidate, None
        except UnsafePathError:
            continue
    return None, (f"its VAE folder {recorded} is not inside {folder or '.'} (an artifact may only name files inside "
                  f"its own folder)")


def check_decoder(decoder, denoiser):
    """Refuse a decoder that does not decode this denoiser's latents (ArtifactError, one line)."""
    latent = denoiser.latent
    if not latent:
        raise ArtifactError(f"{denoiser.path} is a pixel-space model: it takes no VAE decoder")
    if decoder.latent_channels != denoiser.in_channels or decoder.downsample != int(latent["downsample"]):
        raise ArtifactError(f"{decoder.path} decodes {decoder.latent_channels}-channel latents at {decoder.downsample}x, "
                            f"the model's are {denoiser.in_channels}-channel at {latent['downsample']}x")
    if decoder.vae_sha256 != denoiser.vae_sha256:
        raise ArtifactError(f"{decoder.path} is the decoder of another VAE (weights sha256 {decoder.vae_sha256[:12]}..., "
                            f"the model's is {str(denoiser.vae_sha256)[:12]}...); export the model's with "
                            f"python -m export.to_onnx --vae FOLDER")


class Decoder:
    """Base class of the VAE decoder backends: subclasses set ``name``, ``path``, ``latent_channels``,
    ``image_channels``, ``downsample`` and ``vae_sha256`` and implement ``forward``.

        images = decoder(latents, tile=None, overlap=None)

    latents float32 [B, c, h, w] in the denoiser's space (the decoder divides by the VAE's scaling
    factor) -> images float32 [B, C, h*f, w*f] in [-1, 1] (C = 3 for an RGB VAE). Latents larger
    than ``tile`` latent pixels (default: AUTO_TILE, or the backend's ``max_tile``) are decoded in
    overlapping tiles blended linearly (``drwkv.runtime.tiling``); a tile larger than the latent
    decodes it whole. ``tiles_decoded`` counts the tiles of every call so far.
    """

    name = "decoder"
    path: str
    latent_channels: int
    image_channels: int
    downsample: int
    vae_sha256: str
    #: Largest batch and tile one forward call accepts (None: no limit), e.g. a TensorRT profile's.
    max_batch_size = None
    max_tile = None
    tiles_decoded = 0

    def __call__(self, latents, tile=None, overlap=None):
        latents = np.ascontiguousarray(latents, dtype=np.float32)
        if latents.ndim != 4 or latents.shape[1] != self.latent_channels:
            raise ValueError(f"latents must have shape [B, {self.latent_channels}, h, w], got {list(latents.shape)}")
        if tile is None:
            tile = min(AUTO_TILE, self.max_tile or AUTO_TILE)
        elif self.max_tile is not None and tile > self.max_tile:
            raise ValueError(f"{self.path}: VAE tile {tile} exceeds the decoder's largest tile {self.max_tile}")
        if overlap is None:
            overlap = tile // 4
        limit = self.max_batch_size or len(latents)
        parts = []
        for i in range(0, len(latents), limit):
            images, tiles = decode_tiled(self._checked_forward, latents[i:i + limit], tile, overlap, self.downsample)
            parts.append(images)
            self.tiles_decoded += tiles
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _checked_forward(self, latents):
        B, _, h, w = latents.shape
        images = self.forward(latents)
        expected = (B, self.image_channels, h * self.downsample, w * self.downsample)
        if images.shape != expected:
            raise RuntimeError(f"{self.path}: the decoder returned {list(images.shape)} for latents "
                               f"{list(latents.shape)}, expected {list(expected)}")
        return images

    def forward(self, latents):
        """One tile: latents float32 [B, c, h, w] (C-contiguous) -> images float32 [B, 3, h*f, w*f]."""
        raise NotImplementedError

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} {self.latent_channels}ch x{self.downsample} {self.path}>"
