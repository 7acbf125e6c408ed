"""Diffusion-RWKV denoisers (and a DiT baseline with the same conditioning and head).

    model = build_model({"model": "DRWKV-S/2", "image_size": 32, "in_channels": 4,
                         "num_classes": 1000, "learn_sigma": True})
    out = model(x, t, y)        # x [B,C,H,W], t [B] timesteps, y [B] int64 (num_classes = null class)

DRWKV follows the paper's public code (Fei et al. 2024, "Diffusion-RWKV"): DiT's patch embedding,
timestep/class conditioning, adaLN-Zero and output head, with the attention/MLP block replaced by a
Vision-RWKV block (Q-Shift token mixing, SpatialMix through the bidirectional WKV operator,
ChannelMix) and U-ViT long skips between the first and second half of the blocks.

Two options serve the paper's released models (see ``training.import_official``): ``num_classes`` 0
is an unconditional model (no class embedding; y is accepted and ignored, so every artifact keeps
the x, t, y interface), and ``final_norm`` (config key, default False) adds the official code's
LayerNorm on the tokens before the head.

Checkpoints written by ``training.train`` are read with ``load_checkpoint(path) -> (config, model)``.

``python -m drwkv.model --summary`` prints parameters and GMACs of every configuration.
"""
import argparse
import math
import os
import pickle
import re
import warnings
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from drwkv.ops import bi_wkv
from drwkv.runtime.base import CONFIG_KEYS  # the keys every model config has

# ---------------------------------------------------------------------------------------------
# Configurations. family, depth, width (and heads for DiT), patch size.
# The paper's DRWKV sizes (S..H) and DiT's sizes (S..XL) are given as published; the sizes
# marked "ours" are small models for CPU training, not from either paper.

MODEL_CONFIGS: dict[str, dict] = {}


def _add(family, size, depth, hidden, heads=None, patches=(2, 4), ours=False):
    for p in patches:
        cfg = {"family": family, "depth": depth, "hidden_size": hidden, "patch_size": p, "ours": ours}
        if heads is not None:
            cfg["num_heads"] = heads
        MODEL_CONFIGS[f"{family}-{size}/{p}"] = cfg


_add("DRWKV", "T", 7, 128, ours=True)      # tiny: trains on one CPU core in under an hour
_add("DRWKV", "XS", 9, 192, ours=True)
_add("DRWKV", "S", 13, 384)
_add("DRWKV", "B", 25, 384)
_add("DRWKV", "M", 25, 512)
_add("DRWKV", "L", 37, 768)
_add("DRWKV", "H", 37, 1024)
# DiT-T and DiT-XS are ours, sized to match DRWKV-T and DRWKV-XS in parameters.
_add("DiT", "T", 7, 128, heads=4, ours=True)
_add("DiT", "XS", 9, 192, heads=6, ours=True)
_add("DiT", "S", 12, 384, heads=6, patches=(2, 4, 8))
_add("DiT", "B", 12, 768, heads=12, patches=(2, 4, 8))
_add("DiT", "L", 24, 1024, heads=16, patches=(2, 4, 8))
_add("DiT", "XL", 28, 1152, heads=16, patches=(2, 4, 8))


# ---------------------------------------------------------------------------------------------
# Shared pieces: embeddings, modulation, head.

def modulate(x, shift, scale):
    # x * (1 + scale) + shift in one pass over x (no full-size temporary).
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x, gate, branch):
    """x + gate * branch in one pass (no full-size temporary for gate * branch)."""
    return torch.addcmul(x, gate.unsqueeze(1), branch)


def sincos_pos_embed_2d(dim, grid_size):
    """[grid*grid, dim] sin-cos table; the first half of the channels encodes the row, the second the column."""
    assert dim % 4 == 0, "the 2-D sin-cos embedding needs a width divisible by 4"
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")

    def embed_1d(pos):
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([embed_1d(rows), embed_1d(cols)], axis=1).astype(np.float32)


class TimestepEmbedder(nn.Module):
    """Scalar timestep -> 256-d sinusoid -> Linear -> SiLU -> Linear."""

    def __init__(self, hidden_size, frequency_size=256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        half = self.frequency_size // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class FinalLayer(nn.Module):
    """LN -> adaLN shift/scale -> Linear to p*p*out_channels per token."""

    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class Denoiser(nn.Module):
    """What DRWKV and DiT share: patch embedding, position embedding, conditioning, head.

    Subclasses build ``self.blocks``-style bodies and implement ``body(x, c, h, w)`` on tokens.
    """

    def __init__(self, image_size, patch_size, in_channels, hidden_size, num_classes, learn_sigma,
                 trainable_pos_embed):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size {patch_size}")
        self.image_size = image_size
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.num_classes = num_classes
        self.grid = image_size // patch_size
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # num_classes + 1 rows: the last one is the null class used for classifier-free guidance.
        # An unconditional model (num_classes 0) has no class embedding at all.
        self.y_embedder = nn.Embedding(num_classes + 1, hidden_size) if num_classes > 0 else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid ** 2, hidden_size), requires_grad=trainable_pos_embed)
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def init_shared_weights(self):
        """DiT's initialisation; called by subclasses after their own blocks exist."""
        def basic_init(module):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        self.apply(basic_init)
        pos = torch.from_numpy(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid))
        self.pos_embed.data.copy_(pos.unsqueeze(0))
        # Patch embedding initialised like a Linear layer over the flattened patch.
        w = self.x_embedder.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation and the output projection start at zero, so a fresh model
        # is the identity in each block and outputs exactly zero.
        for module in self.modules():
            if hasattr(module, "adaLN_modulation"):
                nn.init.zeros_(module.adaLN_modulation[-1].weight)
                nn.init.zeros_(module.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)

    def unpatchify(self, x, h, w):
        """[B, h*w, p*p*C] -> [B, C, h*p, w*p]."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x, t, y):
        """x [B,C,H,W], t [B] timesteps (int or float), y [B] int64 labels -> [B, out_channels, H, W].

        An unconditional model ignores y (it may be None)."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.x_embedder(x).flatten(2).transpose(1, 2) + self.pos_embed   # [B, T, D]
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        x = self.body(x, c, h, w)
        out = self.unpatchify(self.final_layer(x, c), h, w)
        if self.y_embedder is None and _tracing():
            # Exported, an unconditional model still reads y (times 0) so that every artifact has the
            # inputs x, t, y: TensorRT removes network inputs that no layer reads.
            out = out + 0 * y.to(out.dtype)[:, None, None, None]
        return out


# ---------------------------------------------------------------------------------------------
# Diffusion-RWKV

def _tracing():
    """True under torch.export / torch.onnx.export (dynamo) and torch.jit.trace: the model then takes
    its export-friendly forms (no in-place writes, no eager-only chunking, ONNX-friendly ops)."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing()


def token_mix(x, xx, mix):
    """x * mix + xx * (1 - mix): RWKV's per-channel interpolation between a token and its Q-shift.

    Eager mode computes it as one lerp pass (the plain form makes three full-size passes). Traced
    models keep the plain form: torch.export decomposes lerp into a larger ONNX graph (Sub, Where,
    Mul, Add) than these two Muls and an Add.
    """
    if _tracing():
        return x * mix + xx * (1 - mix)
    # lerp takes no mixed dtypes: under bf16 autocast the tokens may be bf16 while mix is float32.
    return torch.lerp(xx, x, mix.to(x.dtype))


def q_shift(x, h, w):
    """Q-Shift on tokens [B, h*w, C]: channel quarters take the value of the left, right, upper and
    lower neighbour (zero past the border); channels past 4*(C//4) pass through unchanged.

    Eager mode writes the shifted quarters straight into one output tensor; under tracing or
    export (torch.export, torch.jit) the pads-and-cat form below runs instead, which has no
    in-place writes and traces to ONNX. Both give bit-identical results (pure copies).
    """
    if _tracing():
        return _q_shift_traceable(x, h, w)
    B, T, C = x.shape
    q = C // 4
    x = x.reshape(B, h, w, C)
    out = torch.empty_like(x)
    out[:, :, 1:, 0:q] = x[:, :, : w - 1, 0:q]              # from the left
    out[:, :, 0, 0:q] = 0
    out[:, :, : w - 1, q:2 * q] = x[:, :, 1:, q:2 * q]      # from the right
    out[:, :, w - 1, q:2 * q] = 0
    out[:, 1:, :, 2 * q:3 * q] = x[:, : h - 1, :, 2 * q:3 * q]  # from above
    out[:, 0, :, 2 * q:3 * q] = 0
    out[:, : h - 1, :, 3 * q:4 * q] = x[:, 1:, :, 3 * q:4 * q]  # from below
    out[:, h - 1, :, 3 * q:4 * q] = 0
    out[..., 4 * q:] = x[..., 4 * q:]
    return out.reshape(B, T, C)


def _q_shift_traceable(x, h, w):
    """q_shift with slices, pads and one cat only (no in-place writes), so it traces to ONNX.
    (A pad-and-cat costs two full-size tensors, which is why eager mode does not use it.)"""
    B, T, C = x.shape
    q = C // 4
    x = x.reshape(B, h, w, C)
    from_left = F.pad(x[:, :, : w - 1, 0:q], (0, 0, 1, 0))           # out[.., j] = x[.., j-1]
    from_right = F.pad(x[:, :, 1:, q:2 * q], (0, 0, 0, 1))           # out[.., j] = x[.., j+1]
    from_up = F.pad(x[:, : h - 1, :, 2 * q:3 * q], (0, 0, 0, 0, 1, 0))  # out[i] = x[i-1]
    from_down = F.pad(x[:, 1:, :, 3 * q:4 * q], (0, 0, 0, 0, 0, 1))     # out[i] = x[i+1]
    out = torch.cat([from_left, from_right, from_up, from_down, x[..., 4 * q:]], dim=-1)
    return out.reshape(B, T, C)


def _fancy_mix(n, exponent):
    """RWKV's "fancy" token-mix init: channel i gets (i/n)**exponent."""
    return (torch.arange(n, dtype=torch.float32) / n).pow(exponent)


class SpatialMix(nn.Module):
    """Token mixing: y = Out(sigmoid(r) * BiWKV(decay/T, first/T, k, v)) on Q-shifted inputs."""

    def __init__(self, dim, layer_id, num_layers):
        super().__init__()
        # RWKV's layer-dependent init of decay, bonus and mixes (as in the Vision-RWKV code).
        r01 = layer_id / (num_layers - 1) if num_layers > 1 else 0.0
        r10 = 1.0 - layer_id / num_layers
        i = torch.arange(dim, dtype=torch.float32)
        self.spatial_decay = nn.Parameter(-5 + 8 * (i / max(dim - 1, 1)) ** (0.7 + 1.3 * r01))
        zigzag = ((i.long() + 1) % 3 - 1).float() * 0.5
        self.spatial_first = nn.Parameter(torch.full((dim,), math.log(0.3)) + zigzag)
        self.mix_k = nn.Parameter(_fancy_mix(dim, r10))
        self.mix_v = nn.Parameter(_fancy_mix(dim, r10) + 0.3 * r01)
        self.mix_r = nn.Parameter(_fancy_mix(dim, 0.5 * r10))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)

    def forward(self, x, h, w):
        xx = q_shift(x, h, w)
        k = self.key(token_mix(x, xx, self.mix_k))
        v = self.value(token_mix(x, xx, self.mix_v))
        r = self.receptance(token_mix(x, xx, self.mix_r))
        T = x.shape[1]
        # The operator takes float32/float16; under bf16 autocast k and v arrive in bf16.
        y = bi_wkv(self.spatial_decay / T, self.spatial_first / T, k.float(), v.float())
        # In place on r: a Linear's backward does not need its output, and sigmoid keeps its own.
        return self.output(torch.sigmoid_(r) * y.to(r.dtype))


class ChannelMix(nn.Module):
    """Per-token MLP: sigmoid(R xr) * V(relu(K xk)^2), hidden 4*dim, on Q-shifted inputs."""

    def __init__(self, dim, layer_id, num_layers, hidden_ratio=4):
        super().__init__()
        r10 = 1.0 - layer_id / num_layers
        self.mix_k = nn.Parameter(_fancy_mix(dim, r10))
        self.mix_r = nn.Parameter(_fancy_mix(dim, r10))
        self.key = nn.Linear(dim, hidden_ratio * dim, bias=False)
        self.value = nn.Linear(hidden_ratio * dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)

    # Inference runs the per-token MLP over chunks of this many tokens. The 4*dim hidden of a whole
    # image (100 MB at 16384 tokens and width 384) would not stay in cache between its four passes
    # and, being larger than glibc's mmap threshold (32 MB at most), would be mapped and
    # page-faulted afresh by every call; a chunk's hidden (6 MB here) is reused from the heap.
    chunk_tokens = 1024

    def forward(self, x, h, w):
        xx = q_shift(x, h, w)
        T, n = x.shape[1], self.chunk_tokens
        if T <= n or torch.is_grad_enabled() or _tracing():
            return self.mlp(x, xx)
        out = torch.empty_like(x)
        for s in range(0, T, n):
            out[:, s:s + n] = self.mlp(x[:, s:s + n], xx[:, s:s + n])
        return out

    def mlp(self, x, xx):
        """The block's per-token work: sigmoid(R xr) * V(relu(K xk)^2)."""
        k = self.key(token_mix(x, xx, self.mix_k))
        r = self.receptance(token_mix(x, xx, self.mix_r))
        # relu and sigmoid in place on Linear outputs (their backward needs only their own result).
        # square in place only without autograd, where relu's saved result need not survive.
        # Exported, the square is a Mul: runtimes run Pow with a general exponent, several times slower.
        k = torch.relu_(k)
        if _tracing():
            k = k * k
        else:
            k = k.square_() if not torch.is_grad_enabled() else k.square()
        return torch.sigmoid_(r) * self.value(k)


class RWKVBlock(nn.Module):
    """Vision-RWKV block with adaLN-Zero; out-blocks first fuse the long skip with Linear(2D -> D)."""

    def __init__(self, dim, layer_id, num_layers, skip=False):
        super().__init__()
        # The paper's code keeps the affine parameters of these LayerNorms (DiT drops them).
        self.ln0 = nn.LayerNorm(dim) if layer_id == 0 else None
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.att = SpatialMix(dim, layer_id, num_layers)
        self.ffn = ChannelMix(dim, layer_id, num_layers)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x, c, h, w, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        if self.ln0 is not None:
            x = self.ln0(x)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated_residual(x, gate1, self.att(modulate(self.ln1(x), shift1, scale1), h, w))
        x = gated_residual(x, gate2, self.ffn(modulate(self.ln2(x), shift2, scale2), h, w))
        return x


class DRWKV(Denoiser):
    """final_norm: a LayerNorm (affine, eps 1e-5) on the tokens before the head, as in the paper's
    released code (its ``norm_f``); off in models trained here."""

    def __init__(self, image_size, patch_size, in_channels, hidden_size, depth, num_classes, learn_sigma,
                 final_norm=False):
        super().__init__(image_size, patch_size, in_channels, hidden_size, num_classes, learn_sigma,
                         trainable_pos_embed=True)
        half = depth // 2
        self.in_blocks = nn.ModuleList(RWKVBlock(hidden_size, i, depth) for i in range(half))
        self.mid_block = RWKVBlock(hidden_size, half, depth)
        self.out_blocks = nn.ModuleList(RWKVBlock(hidden_size, half + 1 + i, depth, skip=True)
                                        for i in range(half))
        self.final_norm = nn.LayerNorm(hidden_size) if final_norm else None
        self.init_shared_weights()

    def body(self, x, c, h, w):
        skips = []
        for block in self.in_blocks:
            x = block(x, c, h, w)
            skips.append(x)
        x = self.mid_block(x, c, h, w)
        for block in self.out_blocks:
            x = block(x, c, h, w, skip=skips.pop())
        return self.final_norm(x) if self.final_norm is not None else x


# ---------------------------------------------------------------------------------------------
# DiT baseline (Peebles & Xie 2023): the same shell with attention + MLP blocks, fixed pos-embed.

class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class DiTBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio=4):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = gated_residual(x, gate1, self.attn(modulate(self.norm1(x), shift1, scale1)))
        x = gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))
        return x


class DiT(Denoiser):
    def __init__(self, image_size, patch_size, in_channels, hidden_size, depth, num_heads, num_classes,
                 learn_sigma):
        super().__init__(image_size, patch_size, in_channels, hidden_size, num_classes, learn_sigma,
                         trainable_pos_embed=False)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads) for _ in range(depth))
        self.init_shared_weights()

    def body(self, x, c, h, w):
        for block in self.blocks:
            x = block(x, c)
        return x


# ---------------------------------------------------------------------------------------------
# Construction and checkpoints

def build_model(config: dict) -> nn.Module:
    """Build a model from {"model", "image_size", "in_channels", "num_classes", "learn_sigma"} and the
    optional "final_norm" (DRWKV only; default False). Other keys are ignored."""
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise ValueError(f"model config lacks {missing}")
    name = config["model"]
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_CONFIGS)}")
    arch = MODEL_CONFIGS[name]
    common = dict(image_size=int(config["image_size"]), patch_size=arch["patch_size"],
                  in_channels=int(config["in_channels"]), hidden_size=arch["hidden_size"],
                  depth=arch["depth"], num_classes=int(config["num_classes"]),
                  learn_sigma=bool(config["learn_sigma"]))
    if arch["family"] == "DRWKV":
        return DRWKV(final_norm=bool(config.get("final_norm", False)), **common)
    if config.get("final_norm"):
        raise ValueError(f"final_norm is a DRWKV option; {name!r} has none")
    return DiT(num_heads=arch["num_heads"], **common)


CHECKPOINT_FORMAT = "drwkv-checkpoint"
CHECKPOINT_VERSION = 1


def read_checkpoint(path, map_location="cpu") -> dict:
    """torch.load a drwkv checkpoint safely (weights_only) and check its format.

    Raises FileNotFoundError for a missing file and ValueError with a one-line message for a file
    that is truncated, not a torch file, or not a drwkv checkpoint. Only reads.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols before refusing them: the refusal says it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False: never do that
        refused = re.search(r"GLOBAL (\S+)", str(e))
        opcode = re.search(r"Unsupported operand \d+", str(e))
        if refused or (opcode and zipfile.is_zipfile(path)):  # a torch archive whose pickle wants more than data
            what = f"the pickled object {refused.group(1)}" if refused else f"a pickle instruction ({opcode.group(0)})"
            raise ValueError(f"{path}: refused: it needs {what}; drwkv loads only tensors and plain data and never "
                             f"unpickles code (nothing in the file was run)") from None
        raise ValueError(f"{path}: not a readable drwkv checkpoint (torch.load failed: "
                         f"{str(e).strip().splitlines()[-1][:200]})") from None
    except Exception as e:  # zip/pickle errors vary by corruption; report them in one line
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: not a readable drwkv checkpoint (torch.load failed: {reason[:200]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a drwkv checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: drwkv checkpoint version {ckpt.get('version')!r} is not supported "
                         f"(this code reads version {CHECKPOINT_VERSION})")
    config = ckpt.get("config")
    if not isinstance(config, dict) or any(k not in config for k in CONFIG_KEYS) or "ema" not in ckpt:
        raise ValueError(f"{path}: drwkv checkpoint lacks its config or EMA weights")
    return ckpt


def load_checkpoint(path, map_location="cpu"):
    """-> (config, model): the checkpoint's config dict and its EMA model in eval mode.

    Errors as in ``read_checkpoint``; a state dict that does not fit the config, or a non-finite
    weight, is a ValueError too.
    """
    ckpt = read_checkpoint(path, map_location)
    config = ckpt["config"]
    for name, tensor in ckpt["ema"].items():  # one NaN weight makes every image black
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise ValueError(f"{path}: the EMA weight {name} has {bad} non-finite value{'s' * (bad > 1)} (NaN or Inf): "
                             f"the checkpoint is damaged or its training diverged")
    model = build_model(config)
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as e:
        raise ValueError(f"{path}: EMA weights do not match model {config['model']!r}: "
                         f"{str(e).splitlines()[0]}") from None
    return config, model.to(map_location).eval()


# ---------------------------------------------------------------------------------------------
# Summary: parameters and multiply-accumulates per configuration.

def count_macs(model, image_size):
    """Multiply-accumulates of one forward pass at batch 1, counted analytically from the layers:
    every Linear/Conv2d, the attention matmuls (QK^T and AV) for DiT, and the WKV operator as
    4 MACs per (token, channel) (two scans updating numerator and denominator). Element-wise ops
    (norms, modulation, activations, Q-Shift mixes) are left out."""
    T = (image_size // model.patch_size) ** 2
    macs = model.x_embedder.weight.numel() * T  # Conv2d: out*in*p*p per output position
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            # The conditioning path (t embedding, adaLN) runs once per image, the rest per token.
            per_image = name.startswith("t_embedder") or "adaLN_modulation" in name
            macs += m.in_features * m.out_features * (1 if per_image else T)
        elif isinstance(m, Attention):
            macs += 2 * T * T * m.proj.in_features
        elif isinstance(m, SpatialMix):
            macs += 4 * T * m.key.out_features
    return macs


def summary(image_size, in_channels, num_classes, learn_sigma=True):
    print(f"image {image_size}x{image_size}x{in_channels}, {num_classes} classes, learn_sigma={learn_sigma}")
    print(f"{'model':<14}{'depth':>6}{'width':>7}{'patch':>6}{'tokens':>8}{'params (M)':>12}{'GMACs':>10}")
    for name, arch in MODEL_CONFIGS.items():
        if image_size % arch["patch_size"]:
            continue
        with torch.device("meta"):  # shapes only: even DRWKV-H costs no memory
            model = build_model({"model": name, "image_size": image_size, "in_channels": in_channels,
                                 "num_classes": num_classes, "learn_sigma": learn_sigma})
        params = sum(p.numel() for p in model.parameters())
        tokens = (image_size // arch["patch_size"]) ** 2
        note = "  (ours)" if arch["ours"] else ""
        print(f"{name:<14}{arch['depth']:>6}{arch['hidden_size']:>7}{arch['patch_size']:>6}{tokens:>8}"
              f"{params / 1e6:>12.2f}{count_macs(model, image_size) / 1e9:>10.3f}{note}")
    print("GMACs: one forward pass, batch 1; Linear/Conv/attention matmuls and WKV scans, element-wise ops excluded.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--summary", action="store_true", help="print params and GMACs per config")
    parser.add_argument("--image-size", type=int, default=32, help="input resolution (latent size for latents)")
    parser.add_argument("--in-channels", type=int, default=4)
    parser.add_argument("--num-classes", type=int, default=1000)
    args = parser.parse_args()
    if not args.summary:
        parser.error("nothing to do; pass --summary")
    summary(args.image_size, args.in_channels, args.num_classes)


if __name__ == "__main__":
    main()
