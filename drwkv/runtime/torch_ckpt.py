"""PyTorch backend: the EMA model of a training checkpoint (``ckpt.pt``), in eval mode, and the
diffusers decoder of a VAE folder.

The reference the exported artifacts are checked against, and a way to sample straight from
training output. torch is imported here only, when this backend is chosen.
"""
import os

from drwkv.runtime.base import ArtifactError, Decoder, Denoiser


class TorchDenoiser(Denoiser):
    """device: "cpu" (default) or "cuda"; threads: torch's intra-op thread count (default: torch's)."""

    name = "torch"

    def __init__(self, path, device="cpu", threads=None):
        import torch

        from drwkv.model import load_checkpoint

        path = os.fspath(path)
        try:
            config, model = load_checkpoint(path, map_location=device)
        except (FileNotFoundError, ValueError) as e:
            raise ArtifactError(str(e)) from None
        if threads:
            torch.set_num_threads(int(threads))
        self._attach(path, config, model, device)

    @classmethod
    def from_model(cls, model, config, device="cpu"):
        """A model in memory (a training run's EMA model) as a Denoiser, for drwkv.samplers."""
        denoiser = cls.__new__(cls)
        denoiser._attach(None, config, model.eval(), device)
        return denoiser

    def _attach(self, path, config, model, device):
        import torch

        self.path, self.config, self.model = path, config, model
        self.device = torch.device(device)
        self._torch = torch

    def forward(self, x, t, y):
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device), torch.from_numpy(t).to(self.device),
                             torch.from_numpy(y).to(self.device))
        return out.float().cpu().numpy()


class TorchDecoder(Decoder):
    """The decoder of a diffusers VAE folder (``drwkv.vae.LatentDecoder``, an AutoencoderKL).

    device: "cpu" (default) or "cuda"; threads: torch's intra-op thread count (default: torch's).
    """

    name = "torch"  # the backend, as for the denoiser (the module is diffusers' AutoencoderKL)

    def __init__(self, folder, device="cpu", threads=None):
        import torch

        from drwkv.vae import VAEError, LatentDecoder, downsample_factor, load_vae, read_vae_config, weights_sha256

        self.path = os.fspath(folder)
        try:
            config = read_vae_config(self.path)
            self.module = LatentDecoder(load_vae(self.path, device))
        except VAEError as e:
            raise ArtifactError(str(e)) from None
        self.vae_sha256 = weights_sha256(self.path)
        self.downsample = downsample_factor(config)
        self.latent_channels = int(config.get("latent_channels", 4))
        self.image_channels = int(config.get("in_channels", 3))
        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self._torch = torch

    def forward(self, latents):
        torch = self._torch
        with torch.inference_mode():
            images = self.module(torch.from_numpy(latents).to(self.device))
        return images.float().cpu().numpy()
