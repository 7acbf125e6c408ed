"""Write the inference part of a training checkpoint: format tag, version, config, EMA weights, step
and training arguments (no raw weights, optimizer or RNG state, so it cannot be resumed).

    python -m training.export_ema runs/fm/ckpt.pt pretrained/fashion-mnist-drwkv-t4.pt

The result loads with drwkv.model.load_checkpoint like a full checkpoint. An existing destination
is never overwritten.
"""
import argparse
import os

import torch

from drwkv.files import atomic_write
from drwkv.model import read_checkpoint


def main():
    parser = argparse.ArgumentParser(description="Keep only the EMA weights of a drwkv checkpoint.")
    parser.add_argument("src")
    parser.add_argument("dst")
    args = parser.parse_args()
    if os.path.exists(args.dst):
        raise SystemExit(f"{args.dst} exists; not overwriting it")
    try:
        ckpt = read_checkpoint(args.src)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    small = {k: ckpt[k] for k in ("format", "version", "config", "ema", "step", "args") if k in ckpt}
    try:
        with atomic_write(args.dst, replace=False) as tmp:
            torch.save(small, tmp)
    except FileExistsError:
        raise SystemExit(f"{args.dst} exists; not overwriting it") from None
    print(f"{args.dst}: {os.path.getsize(args.dst) / 1e6:.1f} MB, {ckpt['config']['model']} EMA weights at step {ckpt.get('step')}")


if __name__ == "__main__":
    main()
