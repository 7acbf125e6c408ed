"""Random-weight checkpoints for the benchmarks to time."""


def write_random_checkpoint(config, path):
    """A drwkv checkpoint of ``config`` with seeded random weights at ``path``: adaLN-Zero would make
    every block of a fresh model the identity, so all weights get small noise. torch is imported
    here only (a benchmark may want it loaded as late as possible)."""
    import torch

    from drwkv.model import build_model

    torch.manual_seed(0)
    model = build_model(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = model.state_dict()
    torch.save({"format": "drwkv-checkpoint", "version": 1, "config": config, "model": state, "ema": state}, path)
