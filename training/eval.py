"""Evaluate a checkpoint: FID in a reference classifier's feature space and class accuracy of samples.

    python -m training.eval runs/fm/ckpt.pt [--num-samples 500 --steps 50 --cfg-scale 1.5]

Procedure
- Reference classifier: a small CNN (3 conv layers 16-32-64 with max-pooling, then
  Linear(->128) -> ReLU -> Linear(->classes)), trained on the checkpoint's dataset's train split at
  the checkpoint's resolution: Adam, lr 1e-3, batch 128, seed 0, float32 CPU, for 3 epochs or
  1400 batches, whichever is more (small datasets need more epochs).
  Its 128-d penultimate activations are the feature space. It is trained once per
  (dataset, image size) and cached with the test-split statistics in
  <cache>/classifier-<dataset>-<size>px.pt (default cache ~/.cache/drwkv, --cache to change).
- FID: Frechet distance between Gaussians fitted to the features of the generated samples and of
  the whole test split. FID grows as the sample count shrinks, so the table also gives the FID
  of as many real train images as samples ("real-data floor") for scale, and for a latent model
  the FID of those images encoded and decoded by its VAE (what the VAE alone costs).
- Samples: EMA weights, the runtime's DDIM sampler (``drwkv.samplers``, eta 0) with --steps steps
  and classifier-free guidance --cfg-scale, fixed seed. Sample i has the class of the i-th of
  num_samples random training images (the floor's images): the classes follow the data's
  frequencies, as FID against the test split requires on an unbalanced dataset (emoji). A latent model's samples are decoded to RGB by its VAE (the folder in
  config["latent"]["vae"], or --vae), and the classifier works at the VAE's pixel size.
- Accuracy: fraction of samples that the classifier assigns to the class they were generated for,
  next to its accuracy on the real test split.

These numbers compare models evaluated with the same procedure; they are not the Inception FID of
the literature.
"""
import argparse
import hashlib
import math
import os
import tempfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from drwkv import known_warnings
from drwkv.files import atomic_write
from drwkv.model import load_checkpoint
from drwkv.runtime import PRECISIONS
from drwkv.runtime.base import recorded_vae_folder
from drwkv.runtime.torch_ckpt import TorchDenoiser
from drwkv.samplers import make_sampler, sample
from drwkv.schedule import Schedule
from drwkv.vae import VAEError, decode, encode, load_vae, weights_sha256
from training.data import DATASETS, load_dataset

CLASSIFIER_VERSION = 1


class Classifier(nn.Module):
    def __init__(self, in_channels, num_classes, image_size, feature_dim=128):
        super().__init__()
        pooled = max(1, image_size // 8)
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(pooled),
        )
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * pooled * pooled, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        f = self.features(self.conv(x))
        return f, self.head(f)


@torch.no_grad()
def embed(classifier, images, batch_size=500):
    """-> (features [N, 128] float64 numpy, predicted classes [N])."""
    feats, preds = [], []
    for i in range(0, len(images), batch_size):
        f, logits = classifier(images[i:i + batch_size])
        feats.append(f.double())
        preds.append(logits.argmax(1))
    return torch.cat(feats).numpy(), torch.cat(preds)


def gaussian_stats(features):
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); the trace of the root is the sum of the square
    roots of the eigenvalues of S1^(1/2) S2 S1^(1/2), a symmetric PSD matrix."""
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(np.clip(cross, 0, None)).sum())


def reference(dataset, image_size, cache_dir, data_dir=None):
    """The cached classifier and test-split statistics for (dataset, image_size); trained if absent."""
    # A folder dataset is identified by its path.
    tag = dataset if dataset != "folder" else f"folder-{hashlib.sha1(os.path.abspath(data_dir).encode()).hexdigest()[:10]}"
    path = os.path.join(cache_dir, f"classifier-{tag}-{image_size}px.pt")
    x_test, y_test, classes = load_dataset(dataset, image_size, "test", data_dir)
    torch.manual_seed(0)
    classifier = Classifier(x_test.shape[1], len(classes), image_size)
    if os.path.exists(path):
        cached = torch.load(path, weights_only=True)
        if cached.get("version") == CLASSIFIER_VERSION:
            classifier.load_state_dict(cached["state_dict"])
            return classifier.eval(), cached
    x, y, _ = load_dataset(dataset, image_size, "train", data_dir)
    epochs = max(3, math.ceil(1400 * 128 / len(x)))
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in tqdm(range(0, len(x), 128), desc=f"reference classifier, epoch {epoch + 1}/{epochs}", leave=False):
            idx = perm[i:i + 128]
            loss = F.cross_entropy(classifier(x[idx])[1], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    classifier.eval()
    feats, preds = embed(classifier, x_test)
    mu, sigma = gaussian_stats(feats)
    cached = {"version": CLASSIFIER_VERSION, "state_dict": classifier.state_dict(),
              "test_accuracy": float((preds == y_test).float().mean()),
              "test_mu": torch.from_numpy(mu), "test_sigma": torch.from_numpy(sigma)}
    with atomic_write(path) as tmp:
        torch.save(cached, tmp)
    return classifier, cached


def check_sample_steps(steps, config):
    """ValueError unless the runtime's samplers can take ``steps`` steps of the model's schedule."""
    timesteps = len(Schedule.from_config(config))
    if not 1 <= steps <= timesteps:
        raise ValueError(f"sampling steps must be between 1 and the model's {timesteps} diffusion timesteps, got {steps}")


@torch.no_grad()
def generate(model, config, labels, steps, cfg_scale, seed, batch_size=100, vae=None, device="cpu", progress=False,
             denoiser=None):
    """Images float32 [N, C, H, W] in [-1, 1] of classes ``labels`` (int64 [N]) from ``model`` (or from
    ``denoiser``, a drwkv.runtime Denoiser of it) through the runtime's DDIM sampler (eta 0; x0 clipped
    for pixel models only); latents are decoded by ``vae``."""
    denoiser = denoiser or TorchDenoiser.from_model(model, config, device)
    sampler = make_sampler("ddim", Schedule.from_config(config), steps, clip_x0="latent" not in config)
    out = []
    for i in tqdm(range(0, len(labels), batch_size), desc="sampling", disable=not progress):
        x = torch.from_numpy(sample(denoiser, sampler, labels[i:i + batch_size].numpy(), seed, cfg_scale, first_image=i))
        out.append(decode(vae, x.to(device)).cpu() if vae is not None else x)
    return torch.cat(out).clamp(-1, 1)


def main():
    known_warnings.silence()
    parser = argparse.ArgumentParser(description="FID and class accuracy of a drwkv checkpoint's samples.")
    parser.add_argument("checkpoint")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default=None, choices=DATASETS,
                        help="the reference dataset (default: the one the checkpoint was trained on; "
                             "needed for imported checkpoints, which record none)")
    parser.add_argument("--data-dir", default=None, help="dataset directory, as given to training")
    parser.add_argument("--vae", default=None, metavar="FOLDER",
                        help="latent model: the VAE folder, if not where training had it (same weights)")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "drwkv"),
                        help="where the reference classifier is cached")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="sample through the checkpoint's ONNX export at this CPU precision, as drwkv-infer "
                             "--precision does (exported to a temporary folder); "
                             "default: the PyTorch model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        config, model = load_checkpoint(args.checkpoint)
        check_sample_steps(args.steps, config)
        dataset = args.dataset or config.get("dataset")
        if dataset is None:
            raise ValueError(f"{args.checkpoint} records no training dataset (an imported checkpoint?): "
                             f"give the reference one with --dataset")
        if not config["num_classes"]:
            raise ValueError(f"{args.checkpoint} is unconditional: the class accuracy this evaluation reports "
                             f"needs a class-conditional model")
        vae, image_size = None, config["image_size"]
        if "latent" in config:
            latent = config["latent"]
            folder, why_not = (args.vae, None) if args.vae else recorded_vae_folder(latent, args.checkpoint)
            if folder is None:
                raise VAEError(f"{args.checkpoint} is a latent model and {why_not}: give the VAE folder with --vae")
            vae = load_vae(folder)
            if weights_sha256(folder) != latent["vae_sha256"]:
                raise VAEError(f"{folder}: not the VAE this model was trained with (weights sha256 differs)")
            image_size = latent["image_size"]
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    classifier, ref = reference(dataset, image_size, args.cache, args.data_dir)

    # Samples and the floor's real images share their labels: those of num_samples random training
    # images. FID compares distributions, so the classes asked for must follow the data's frequencies
    # (uniform classes on the unbalanced emoji set cost 20x the floor with real images alone).
    x_train, y_train = load_dataset(dataset, image_size, "train", args.data_dir)[:2]
    chosen = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[:args.num_samples]
    labels = y_train[chosen].long()
    with tempfile.TemporaryDirectory() as export_folder:
        denoiser = None
        if args.precision:
            from drwkv.runtime import load_denoiser
            from export.to_onnx import export_onnx

            path = os.path.join(export_folder, "model.onnx")
            export_onnx(args.checkpoint, path)
            denoiser = load_denoiser(onnx=path, precision=args.precision, intra_op_threads=args.threads or None)
        samples = generate(model, config, labels, args.steps, args.cfg_scale, args.seed, args.batch_size, vae,
                           progress=True, denoiser=denoiser)
    feats, preds = embed(classifier, samples)
    mu_ref, sigma_ref = ref["test_mu"].numpy(), ref["test_sigma"].numpy()
    fid = frechet_distance(*gaussian_stats(feats), mu_ref, sigma_ref)
    accuracy = float((preds == labels).float().mean())
    # The same statistic for as many real train images as samples: the floor at this sample count.
    real = x_train[chosen]
    fid_real = frechet_distance(*gaussian_stats(embed(classifier, real)[0]), mu_ref, sigma_ref)
    if vae is not None:  # what the VAE alone costs: the real images encoded and decoded (posterior mean)
        reconstructed = torch.cat([decode(vae, encode(vae, real[i:i + args.batch_size])[0])
                                   for i in range(0, len(real), args.batch_size)])
        fid_vae = frechet_distance(*gaussian_stats(embed(classifier, reconstructed)[0]), mu_ref, sigma_ref)

    rows = [
        ("checkpoint", args.checkpoint),
        ("model", f"{config['model']} on {dataset} {image_size}px"
                  + (f" through the VAE {folder}" if vae is not None else "")),
        ("sampling", f"{args.num_samples} samples, DDIM {args.steps} steps, CFG {args.cfg_scale}, seed {args.seed}"
                     + (f", ONNX export at {args.precision}" if args.precision else ", PyTorch")),
        ("FID (samples vs test split)", f"{fid:.2f}"),
        (f"FID ({args.num_samples} real train images)", f"{fid_real:.2f}"),
        *([(f"FID (the same {args.num_samples}, through the VAE)", f"{fid_vae:.2f}")] if vae is not None else []),
        ("classifier accuracy on samples", f"{accuracy:.3f}"),
        ("classifier accuracy on test split", f"{ref['test_accuracy']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
