"""Sampled images to PNG files: [-1, 1] floats to 8-bit, grids, and generation parameters in tEXt chunks.

Two kinds of text chunk carry the settings: ``drwkv.*`` chunks, one value each (what drwkv-infer
--info reads back), and one ``parameters`` chunk, a single line of "Name: value" pairs separated by
", " in the style image galleries and viewers show (values holding a comma, colon or quote are
JSON-quoted):

    Steps: 20, Sampler: dpm++2m, CFG scale: 1.5, Seed: 0, Size: 32x32, Model: DRWKV-T/4, ...
"""
import json
import math

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from drwkv.files import atomic_write


def to_uint8(x):
    """float [B,C,H,W] in [-1, 1] -> uint8 [B,H,W,C] (rounded, clipped)."""
    x = np.asarray(x, dtype=np.float32)
    return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def check_nrow(nrow, num_images):
    """Refuse (ValueError, one line) a grid row length outside 1 .. num_images (None: about square)."""
    if nrow is not None and not 1 <= nrow <= num_images:
        raise ValueError(f"nrow must be between 1 and the number of images ({num_images}), got {nrow}")


def make_grid(images, nrow=None, padding=2):
    """uint8 [B,H,W,C] -> one uint8 [rows*(H+p)+p, nrow*(W+p)+p, C] image, row-major, black padding."""
    B, H, W, C = images.shape
    check_nrow(nrow, B)
    nrow = nrow or math.ceil(math.sqrt(B))
    rows = math.ceil(B / nrow)
    grid = np.zeros((rows * (H + padding) + padding, nrow * (W + padding) + padding, C), dtype=np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[top:top + H, left:left + W] = image
    return grid


def save_png(path, image, text=None):
    """Write uint8 [H,W,1] (grayscale) or [H,W,3] (RGB) to ``path`` with ``text`` as tEXt chunks.

    Written through a temp file and a rename: an existing ``path`` stays whole until the new one is.
    The bytes depend only on the pixels and the text (no timestamps), so equal inputs give equal files.
    """
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"PNG needs 1 or 3 channels, the images have {image.shape[-1]} "
                         f"(a latent-space model needs its decoder first)")
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, str(value))
    pixels = image[:, :, 0] if image.shape[2] == 1 else image
    with atomic_write(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG", pnginfo=info)


def parameters_line(fields):
    """The single-line ``parameters`` text of (name, value) pairs: "Name: value, Name: value"."""
    def quoted(value):
        value = str(value)
        return json.dumps(value) if any(ch in value for ch in ',:"') else value
    return ", ".join(f"{name}: {quoted(value)}" for name, value in fields)


def read_text(path):
    """The tEXt chunks of a PNG file as a dict; ValueError (one line) for a missing or non-PNG file."""
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise ValueError(f"{path} is a {image.format} image, not a PNG")
            image.load()  # text chunks after the image data are read with it
            return dict(image.text)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, SyntaxError) as e:  # PIL: UnidentifiedImageError (an OSError), truncated or corrupt chunks
        raise ValueError(f"{path} is not a readable PNG ({e})") from None
