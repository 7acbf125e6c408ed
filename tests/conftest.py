"""Shared test helpers: a random drwkv checkpoint, a tiny random diffusers AutoencoderKL saved as a
VAE folder, and a benchmark script loaded as a module."""
import importlib.util
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def load_benchmark():
    """Load benchmarks/NAME.py as a module; torch's thread count is restored afterwards, since a
    benchmark's main() sets it for the whole process."""
    import torch

    threads = torch.get_num_threads()

    def load(name):
        spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    yield load
    torch.set_num_threads(threads)


def write_random_checkpoint(path, config, seed=0):
    """A random checkpoint of ``config`` as training.train writes it; -> path. The weights are perturbed
    so that no block is the identity (adaLN-Zero would make a fresh model output exactly zero)."""
    import torch

    from drwkv.model import build_model

    torch.manual_seed(seed)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": model.state_dict(),
                "ema": model.state_dict(), "step": 0}, path)
    return path


def make_tiny_vae(folder, in_channels=3, latent_channels=4, downsample=4, scaling_factor=0.5, seed=0):
    """A random AutoencoderKL of a few thousand parameters, saved in diffusers format; -> folder."""
    import torch
    from diffusers import AutoencoderKL

    blocks = downsample.bit_length()  # 2**(blocks - 1) == downsample
    if 2 ** (blocks - 1) != downsample:
        raise ValueError(f"downsample must be a power of two, got {downsample}")
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
                        down_block_types=("DownEncoderBlock2D",) * blocks,
                        up_block_types=("UpDecoderBlock2D",) * blocks,
                        block_out_channels=(8,) * blocks, layers_per_block=1, norm_num_groups=4,
                        scaling_factor=scaling_factor)
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_vae(tmp_path_factory):
    """A tiny RGB VAE folder: 4x downsampling, 4 latent channels, scaling_factor 0.5."""
    return make_tiny_vae(tmp_path_factory.mktemp("tiny_vae") / "vae")
