"""PyTorch backend: the EMA model of a training checkpoint (``ckpt.pt``), in eval mode.

The reference the exported artifacts are checked against, and a way to sample straight from
training output. torch is imported here only, when this backend is chosen.
"""
import os

from drwkv.runtime.base import ArtifactError, Denoiser


class TorchDenoiser(Denoiser):
    """device: "cpu" (default) or "cuda"; threads: torch's intra-op thread count (default: torch's)."""

    name = "torch"

    def __init__(self, path, device="cpu", threads=None):
        import torch

        from drwkv.model import load_checkpoint

        path = os.fspath(path)
        try:
            self.config, self.model = load_checkpoint(path, map_location=device)
        except (FileNotFoundError, ValueError) as e:
            raise ArtifactError(str(e)) from None
        if threads:
            torch.set_num_threads(int(threads))
        self.path = path
        self.device = torch.device(device)
        self._torch = torch

    def forward(self, x, t, y):
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(x).to(self.device), torch.from_numpy(t).to(self.device),
                             torch.from_numpy(y).to(self.device))
        return out.float().cpu().numpy()
