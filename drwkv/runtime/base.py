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

import numpy as np

CONFIG_KEYS = ("model", "image_size", "in_channels", "num_classes", "learn_sigma")


class ArtifactError(ValueError):
    """A model file that is missing, unreadable, or not a drwkv denoiser; the message is one line."""


def parse_config(text, source):
    """The model config from its JSON text (ONNX metadata, engine sidecar); ArtifactError if unusable."""
    try:
        config = json.loads(text)
    except (TypeError, ValueError):
        raise ArtifactError(f"{source}: the drwkv model config is not valid JSON") from None
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_KEYS):
        raise ArtifactError(f"{source}: the drwkv model config lacks some of {', '.join(CONFIG_KEYS)}")
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
        return f"<{type(self).__name__} {self.name} {self.config.get('model')} {self.image_size}px>"
