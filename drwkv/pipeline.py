"""One Python API for applications: an artifact in, uint8 images out.

    import drwkv
    pipe = drwkv.Pipeline.load("model.onnx")          # or model.plan (TensorRT), ckpt.pt (PyTorch)
    images = pipe(classes=["sneaker", 3], num_images=16, sampler="ddim", steps=50, cfg_scale=1.5, seed=0)
    images.shape                                       # (16, H, W, 3) uint8 (1 channel for grey models)

The pipeline composes a denoiser backend (``drwkv.runtime``), a numpy sampler (``drwkv.samplers``),
the counter-based noise (``drwkv.noise``: a seed gives the same images in every runtime and batch
size) and, for a latent model, its VAE decoder: ``model.vae_decoder.onnx`` / ``.plan`` next to the
model, the VAE folder a checkpoint records, or ``vae_decoder=PATH``. Large latents decode in
overlapping tiles (``vae_tile``, ``vae_tile_overlap``; automatic above ``drwkv.runtime.base.AUTO_TILE``).
No torch is imported on the ONNX Runtime and TensorRT paths.
"""
import math
import os
import time

import numpy as np

from drwkv.png import to_uint8
from drwkv.runtime import load_decoder, load_denoiser
from drwkv.runtime.base import AUTO_TILE, check_decoder
from drwkv.runtime.tiling import tile_plan
from drwkv.samplers import SAMPLERS, make_sampler, sample
from drwkv.schedule import Schedule

#: The backend an artifact's file name selects, as load_denoiser's keyword.
ARTIFACT_KINDS = {".plan": "engine", ".onnx": "onnx", ".pt": "ckpt"}
#: The backend options a decoder takes from the denoiser's.
DECODER_OPTIONS = {"engine": ("device",), "onnx": ("providers", "intra_op_threads"), "ckpt": ("device", "threads")}


#: Image numbers index the noise as unsigned 64-bit integers (drwkv.noise).
MAX_IMAGE_NUMBER = 2**64


def check_settings(num_images=16, sampler="ddim", steps=50, cfg_scale=None, seed=0, eta=0.0, batch_size=16,
                   first_image=0):
    """Refuse (ValueError, one line) run settings that no model accepts; Pipeline.__call__ checks
    them first, and drwkv-infer before it loads anything. What depends on the model (classes, steps
    beyond its schedule, memory) is checked in __call__."""
    for name, value in (("num_images", num_images), ("steps", steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed!r}")
    if isinstance(first_image, bool) or not isinstance(first_image, (int, np.integer)) or first_image < 0:
        raise ValueError(f"first_image must be an integer >= 0, got {first_image!r}")
    if first_image + num_images > MAX_IMAGE_NUMBER:
        raise ValueError(f"first_image {first_image} + num_images {num_images} passes the last image number 2^64 - 1")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta applies to the ddim sampler only (the sampler is {sampler})")
    if not 0.0 <= eta <= 1.0:  # also refuses NaN
        raise ValueError(f"eta must be between 0 and 1, got {eta!r}")
    if cfg_scale is not None and not (isinstance(cfg_scale, (int, float, np.floating)) and 0 <= cfg_scale < math.inf):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")


def available_memory():
    """Bytes of memory this process can still take: /proc/meminfo's MemAvailable (Linux), else the
    physical memory."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(needed, what):
    """Refuse (ValueError, one line naming the limit) ``needed`` bytes beyond the memory available."""
    available = available_memory()
    if needed > available:
        raise ValueError(f"{what} need about {needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of "
                         f"memory available")


def parse_classes(specs, config):
    """Class names or indices (strings may be comma lists) -> class indices; ValueError naming a bad one.

    An unconditional model (num_classes 0) takes no classes; its images all get label 0, the null
    label its graph ignores."""
    names = list(config.get("class_names") or [])
    num_classes = int(config["num_classes"])
    if num_classes == 0:
        if specs:
            raise ValueError("an unconditional model (num_classes 0) takes no --class")
        return [0]
    if not specs:
        return list(range(num_classes))
    lookup = {name.lower(): i for i, name in enumerate(names)}
    out = []
    for token in (t.strip() for spec in specs for t in str(spec).split(",")):
        if not token:
            continue
        if token.lower() in lookup:
            out.append(lookup[token.lower()])
        elif token.lstrip("-").isdigit():
            index = int(token)
            if not 0 <= index < num_classes:
                raise ValueError(f"class index {index} out of range 0..{num_classes - 1}")
            out.append(index)
        else:
            known = ", ".join(names) if names else f"indices 0..{num_classes - 1} (the model has no class names)"
            raise ValueError(f"unknown class {token!r}; known: {known}")
    if not out:
        raise ValueError("--class names no class")
    return out


def guidance_scale(cfg_scale, config):
    """The guidance scale to sample with: ``cfg_scale``, by default 1.5, and 1 (none) for an
    unconditional model, which refuses any other; ValueError then."""
    if int(config["num_classes"]) == 0:
        if cfg_scale not in (None, 1.0):
            raise ValueError(f"an unconditional model (num_classes 0) takes no guidance; drop --cfg-scale {cfg_scale}")
        return 1.0
    return 1.5 if cfg_scale is None else cfg_scale


class Pipeline:
    """denoiser (+ decoder for a latent model) -> images; see the module doc.

    ``last_run`` after a call: {"labels", "clip_x0", "cfg_scale", "steps", "batches", "sample_s",
    "decode_s", "tiles"} (tiles: VAE tiles decoded, 0 for a pixel model).
    """

    def __init__(self, denoiser, decoder=None, vae_tile=None, vae_tile_overlap=None):
        if denoiser.latent and decoder is None:
            decoder = load_decoder(denoiser)
        elif denoiser.latent:
            check_decoder(decoder, denoiser)
        if not denoiser.latent and (decoder is not None or vae_tile is not None or vae_tile_overlap is not None):
            raise ValueError(f"{denoiser.path} is a pixel-space model: it takes no VAE decoder or tiles")
        if decoder is not None:  # tile sizes checked before any sampling, as decoding will use them
            tile = vae_tile if vae_tile is not None else min(AUTO_TILE, decoder.max_tile or AUTO_TILE)
            tile_plan(1, 1, tile, tile // 4 if vae_tile_overlap is None else vae_tile_overlap)
            if decoder.max_tile is not None and tile > decoder.max_tile:
                raise ValueError(f"{decoder.path}: VAE tile {tile} exceeds the decoder's largest tile {decoder.max_tile}")
        self.denoiser, self.decoder = denoiser, decoder
        self.vae_tile, self.vae_tile_overlap = vae_tile, vae_tile_overlap
        self.last_run = None

    @classmethod
    def load(cls, path, vae_decoder=None, vae_tile=None, vae_tile_overlap=None, kind=None, **options):
        """The pipeline of an artifact: a TensorRT ``.plan``, an ONNX ``.onnx`` or a checkpoint ``.pt``
        (``kind``: "engine", "onnx" or "ckpt" whatever the file name; default: from its suffix).

        vae_decoder: a latent model's decoder of the same kind (.plan, .onnx, or a VAE folder for a
        checkpoint) instead of the one found next to it. options go to the denoiser's backend
        (TensorRT: plugin, cuda_graph; ONNX Runtime: providers, intra_op_threads; PyTorch: device, threads).
        """
        kind = kind or ARTIFACT_KINDS.get(os.path.splitext(os.fspath(path))[1].lower())
        if kind is None:
            raise ValueError(f"{path}: not a model artifact (a .plan, .onnx or .pt file)")
        denoiser = load_denoiser(**{kind: path}, **options)
        if vae_decoder is not None and not denoiser.latent:
            raise ValueError(f"{path} is a pixel-space model: it takes no VAE decoder")
        decoder = None
        if denoiser.latent:  # the decoder runs where the denoiser does (device, threads, providers)
            shared = {k: v for k, v in options.items() if k in DECODER_OPTIONS[kind]}
            decoder = load_decoder(denoiser, vae_decoder, **shared)
        return cls(denoiser, decoder, vae_tile, vae_tile_overlap)

    @property
    def config(self):
        return self.denoiser.config

    def image_shape(self):
        """(height, width, channels) of the images this pipeline writes."""
        latent = self.denoiser.latent
        if latent:
            size = int(latent["image_size"])
            return size, size, self.decoder.image_channels
        return self.denoiser.image_size, self.denoiser.image_size, self.denoiser.in_channels

    def check_memory(self, num_images, batch_size, guided):
        """Refuse (ValueError, one line) a run whose images or batches cannot fit in memory, before
        any work: the uint8 images of the whole run, and a batch's float32 arrays (the sampler's
        state, the model output of the doubled batch under guidance, the decoded images)."""
        height, width, channels = self.image_shape()
        c, size = self.denoiser.in_channels, self.denoiser.image_size
        per_image = c * size * size * 4 * (2 + 2 * (1 + guided) * 2) + height * width * channels * 4
        # the batches' images, then their concatenation
        check_memory(2 * num_images * height * width * channels, f"{num_images} images of {width}x{height}")
        check_memory(batch_size * per_image, f"the arrays of a batch of {batch_size} at {size}x{size}")

    def __call__(self, classes=None, num_images=16, sampler="ddim", steps=50, cfg_scale=None, seed=0, eta=0.0,
                 clip_x0=None, batch_size=16, first_image=0, progress=None):
        """uint8 images [num_images, H, W, C] (C = 3 for RGB models, 1 for grey ones).

        classes: names or indices (None: every class in turn); image i has class i mod len(classes).
        cfg_scale: None is 1.5 (none for an unconditional model). clip_x0: clip the predicted x0 to
        [-1, 1] (None: for pixel models, not for latent ones). The images are numbers first_image ..
        of the run of ``seed``; each one's noise depends on (seed, its number) alone, so batch_size
        does not change them. progress: called as progress(done, total) after every denoiser step.
        """
        config = self.config
        check_settings(num_images, sampler, steps, cfg_scale, seed, eta, batch_size, first_image)
        labels_of_classes = parse_classes([classes] if isinstance(classes, (str, int)) else classes, config)
        cfg_scale = guidance_scale(cfg_scale, config)
        clip_x0 = not self.denoiser.latent if clip_x0 is None else bool(clip_x0)
        schedule = Schedule.from_config(config)
        if steps > len(schedule):
            raise ValueError(f"steps {steps} exceeds the model's {len(schedule)} diffusion timesteps")
        batch_size = min(batch_size, num_images)
        self.check_memory(num_images, batch_size, cfg_scale != 1.0)
        walk = make_sampler(sampler, schedule, steps, eta=eta, clip_x0=clip_x0)
        # image i has class i mod len(classes); numbers may pass 2^63, so the modulus is taken in Python ints
        offset = first_image % len(labels_of_classes)
        labels = np.array(labels_of_classes, dtype=np.int64)[(offset + np.arange(num_images)) % len(labels_of_classes)]
        starts = range(0, num_images, batch_size)
        total, done = len(starts) * walk.steps, 0

        def steps_with_progress(step_indices):
            nonlocal done
            for i in step_indices:
                yield i
                done += 1
                if progress is not None:
                    progress(done, total)

        images, sample_s, decode_s, tiles = [], 0.0, 0.0, 0
        for start in starts:
            t0 = time.perf_counter()
            x = sample(self.denoiser, walk, labels[start:start + batch_size], seed, cfg_scale, steps_with_progress,
                       first_image=first_image + start)
            t1 = time.perf_counter()
            if self.decoder is not None:
                before = self.decoder.tiles_decoded
                x = self.decoder(x, tile=self.vae_tile, overlap=self.vae_tile_overlap)
                tiles += self.decoder.tiles_decoded - before
            sample_s, decode_s = sample_s + t1 - t0, decode_s + time.perf_counter() - t1
            images.append(to_uint8(x))
        self.last_run = {"labels": labels, "clip_x0": clip_x0, "cfg_scale": cfg_scale, "steps": walk.steps,
                         "batches": len(starts), "sample_s": sample_s, "decode_s": decode_s, "tiles": tiles}
        return np.concatenate(images)
