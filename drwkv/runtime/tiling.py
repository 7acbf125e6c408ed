"""Tiled VAE decoding: overlapping latent tiles, decoded one at a time and blended linearly.

A decoder's working memory grows with the image it decodes (SD's decoder keeps 512-channel
activations at 1/8 of the output size and 128-channel ones at full size), so large latents are cut
into tiles of ``tile`` x ``tile`` latent pixels overlapping by ``overlap``. Along each axis of length
L the tiles start every ``tile - overlap`` pixels and the last one ends at L exactly (it may overlap
its neighbour by more), so every row and column is covered for any L; an axis no longer than the
tile is one tile of length L. In the output (``downsample`` pixels per latent pixel) each
overlap between neighbours is a linear ramp: the weight of the tile on the right (or below) rises
from 0 to 1 across it, the other tile's falls, so the weights sum to 1 everywhere and no tile's cut
edge, where it lacks context, shows (``axis_weights``). A pixel's weight is the product of its two axis weights.

    images = decode_tiled(forward, latents, tile=32, overlap=8, downsample=8)

Only the output image and one tile's decode are alive at a time.
"""
import numpy as np


def tile_starts(length, tile, overlap):
    """Start offsets of the tiles along an axis of ``length`` latent pixels (see the module doc)."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def axis_weights(starts, size, downsample):
    """Per tile, its output weights along one axis: float32 [size * downsample], summing to 1 over
    the tiles at every output position (``size`` is the tile's length along the axis).

    Each tile ramps up linearly across its overlap with the previous tile and down across its
    overlap with the next; the ramps are then divided by their sum, which changes nothing where two
    tiles meet (their ramps already sum to 1) and keeps the sum 1 where a short last step makes
    three tiles share pixels."""
    n = size * downsample
    position = np.arange(n, dtype=np.float64) + 0.5
    ramps = []
    for i, start in enumerate(starts):
        ramp = np.ones(n)
        shared_before = (starts[i - 1] + size - start) * downsample if i > 0 else 0   # output pixels
        shared_after = (start + size - starts[i + 1]) * downsample if i + 1 < len(starts) else 0
        if shared_before > 0:
            ramp = np.minimum(ramp, position / shared_before)
        if shared_after > 0:
            ramp = np.minimum(ramp, (n - position) / shared_after)
        ramps.append(ramp)
    total = np.zeros((starts[-1] + size) * downsample)
    for start, ramp in zip(starts, ramps):
        total[start * downsample:start * downsample + n] += ramp
    return [(ramp / total[start * downsample:start * downsample + n]).astype(np.float32)
            for start, ramp in zip(starts, ramps)]


def tile_plan(height, width, tile, overlap):
    """(row starts, column starts, tile height, tile width) for a latent of height x width."""
    if tile <= 0:
        raise ValueError(f"the VAE tile must be at least 1 latent pixel, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"the VAE tile overlap must be in 0..{tile - 1} (below the tile {tile}), got {overlap}")
    return (tile_starts(height, tile, overlap), tile_starts(width, tile, overlap),
            min(tile, height), min(tile, width))


def decode_tiled(forward, latents, tile, overlap, downsample):
    """Decode ``latents`` [B, c, h, w] tile by tile with ``forward`` (latents -> images [B, C, h*f, w*f]);
    returns (images float32 [B, C, h*f, w*f], number of tiles decoded)."""
    B, _, h, w = latents.shape
    rows, cols, th, tw = tile_plan(h, w, tile, overlap)
    row_weights = axis_weights(rows, th, downsample)
    col_weights = axis_weights(cols, tw, downsample)
    f = downsample
    images = None
    for r, row_weight in zip(rows, row_weights):
        for c, col_weight in zip(cols, col_weights):
            part = forward(np.ascontiguousarray(latents[:, :, r:r + th, c:c + tw]))
            if images is None:
                images = np.zeros((B, part.shape[1], h * f, w * f), np.float32)
            images[:, :, r * f:(r + th) * f, c * f:(c + tw) * f] += part * (row_weight[:, None] * col_weight[None, :])
    return images, len(rows) * len(cols)
