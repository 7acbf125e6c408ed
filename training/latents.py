"""The on-disk latent cache: a dataset split encoded once by a VAE, then streamed from disk.

    cache = LatentCache.open_or_build(cache_dir, vae, vae_sha256, "emoji", 32, "train")
    x = cache.sample(indices, eps)      # mean + std * eps, float32 [B, c, h, w], in the denoiser space

A cache directory holds the posterior's mean and std in the denoiser's space (``drwkv.vae.encode``)
as memory-mapped float16 arrays (``mean.npy``, ``std.npy``, [N, c, h, w]), the labels
(``labels.npy``) and ``manifest.json``: the VAE weights' sha256, dataset, data directory, pixel
size, split, count, shape and class names. It is reused only when its manifest matches the request
exactly; otherwise it is rebuilt. The manifest is removed before a rebuild and written last, each
file through a temp name and a rename, so a cache that was interrupted is never taken for whole.

Keeping mean and std (not one sample) lets training draw a fresh posterior sample for every batch,
as the paper's code does. Under torchrun each rank encodes its share (every world-th image) into
the same files; rank 0 creates and finalises them. At ImageNet scale (1.28M latents of 4x32x32,
float16) the two arrays are about 10 GB and are read batch by batch, never held in memory.
"""
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from drwkv.files import atomic_write, write_bytes_atomically
from drwkv.vae import encode
from training.data import load_dataset

CACHE_VERSION = 1
ARRAYS = ("mean", "std")


def _barrier(world):
    if world > 1:
        torch.distributed.barrier()


class LatentCache:
    def __init__(self, folder, manifest):
        self.folder = folder
        self.manifest = manifest
        self.mean = np.load(os.path.join(folder, "mean.npy"), mmap_mode="r")
        self.std = np.load(os.path.join(folder, "std.npy"), mmap_mode="r")
        self.labels = torch.from_numpy(np.load(os.path.join(folder, "labels.npy")))
        self.class_names = list(manifest["class_names"])

    def __len__(self):
        return len(self.labels)

    @property
    def shape(self):
        """(c, h, w) of one latent."""
        return tuple(self.mean.shape[1:])

    def sample(self, indices, eps):
        """Posterior samples mean + std * eps of the latents at ``indices`` (eps: float32 [B, c, h, w])."""
        order = np.asarray(indices)
        mean = torch.from_numpy(np.ascontiguousarray(self.mean[order])).float()
        std = torch.from_numpy(np.ascontiguousarray(self.std[order])).float()
        return mean + std * eps

    @staticmethod
    def wanted(vae_sha256, dataset, image_size, split, data_dir):
        """The manifest a cache for this request must have (without shape and count)."""
        return {"version": CACHE_VERSION, "vae_sha256": vae_sha256, "dataset": dataset,
                "data_dir": os.path.abspath(data_dir) if data_dir else None, "image_size": int(image_size),
                "split": split}

    @classmethod
    def open_or_build(cls, folder, vae, vae_sha256, dataset, image_size, split="train", data_dir=None,
                      rank=0, world=1, batch_size=256):
        """The cache in ``folder`` if its manifest matches; else encode the split with ``vae`` (a loaded
        AutoencoderKL whose weights file has ``vae_sha256``) into it. Every rank calls this; ranks > 0 wait for rank 0's files."""
        wanted = cls.wanted(vae_sha256, dataset, image_size, split, data_dir)
        manifest_path = os.path.join(folder, "manifest.json")
        manifest = None
        if os.path.isfile(manifest_path):
            with open(manifest_path) as f:
                manifest = json.load(f)
        if manifest is not None and {k: manifest.get(k) for k in wanted} == wanted:
            return cls(folder, manifest)
        _barrier(world)  # every rank has read the old manifest before rank 0 removes it

        images, labels, class_names = load_dataset(dataset, image_size, split, data_dir)
        if images.shape[1] != vae.config.in_channels:
            raise ValueError(f"the VAE takes {vae.config.in_channels}-channel images, {dataset} has {images.shape[1]}")
        with torch.no_grad():
            shape = tuple(vae.encode(images[:1]).latent_dist.mean.shape[1:])
        partial = {name: os.path.join(folder, f"{name}.npy.partial") for name in ARRAYS}
        if rank == 0:
            if manifest is not None:
                print(f"latent cache {folder}: made for {', '.join(f'{k}={manifest.get(k)!r}' for k in wanted if manifest.get(k) != wanted[k])}; rebuilding")
            os.makedirs(folder, exist_ok=True)
            if os.path.exists(manifest_path):
                os.remove(manifest_path)
            for path in partial.values():
                np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(len(images), *shape)).flush()
        _barrier(world)
        arrays = {name: np.load(path, mmap_mode="r+") for name, path in partial.items()}
        mine = range(rank * batch_size, len(images), world * batch_size)  # every world-th batch
        for start in tqdm(mine, desc=f"encoding {dataset} {split} latents", disable=rank != 0):
            mean, std = encode(vae, images[start:start + batch_size])
            arrays["mean"][start:start + len(mean)] = mean.numpy().astype(np.float16)
            arrays["std"][start:start + len(std)] = std.numpy().astype(np.float16)
        for array in arrays.values():
            array.flush()
        del arrays
        _barrier(world)
        if rank == 0:
            for name, path in partial.items():
                os.replace(path, os.path.join(folder, f"{name}.npy"))
            with atomic_write(os.path.join(folder, "labels.npy")) as tmp:
                np.save(tmp, labels.numpy())
            manifest = {**wanted, "count": len(images), "shape": list(shape), "class_names": class_names}
            write_bytes_atomically(manifest_path, json.dumps(manifest, indent=1).encode())
        _barrier(world)
        with open(manifest_path) as f:
            return cls(folder, json.load(f))


def default_cache_dir(vae_sha256, dataset, image_size, split="train"):
    """~/.cache/drwkv/latents/<dataset>-<size>px-<split>-<first 16 hex digits of the VAE sha256>."""
    return os.path.join(os.path.expanduser("~"), ".cache", "drwkv", "latents",
                        f"{dataset}-{image_size}px-{split}-{vae_sha256[:16]}")
