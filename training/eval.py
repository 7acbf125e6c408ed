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
  of as many real train images as samples ("real-data floor") for scale.
- Samples: EMA weights, DDIM (eta 0) with --steps steps and classifier-free guidance --cfg-scale,
  classes taken in turn (sample i has class i mod num_classes), fixed seed.
- Accuracy: fraction of samples that the classifier assigns to the class they were generated for,
  next to its accuracy on the real test split.

These numbers compare models evaluated with the same procedure; they are not the Inception FID of
the literature.
"""
import argparse
import hashlib
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from drwkv.diffusion import diffusion_from_config, guided_model_fn
from drwkv.model import load_checkpoint
from training.data import load_dataset

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
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(cached, tmp)
    os.replace(tmp, path)
    return classifier, cached


@torch.no_grad()
def generate(model, config, num_samples, steps, cfg_scale, batch_size, seed):
    sampler = diffusion_from_config(config).respace(f"ddim{steps}")
    labels = torch.arange(num_samples) % config["num_classes"]
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in tqdm(range(0, num_samples, batch_size), desc="sampling"):
        y = labels[i:i + batch_size]
        shape = (len(y), config["in_channels"], config["image_size"], config["image_size"])
        out.append(sampler.ddim_sample(guided_model_fn(model, y, cfg_scale, config["num_classes"]), shape, generator=g))
    return torch.cat(out).clamp(-1, 1), labels


def main():
    parser = argparse.ArgumentParser(description="FID and class accuracy of a drwkv checkpoint's samples.")
    parser.add_argument("checkpoint")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="dataset directory, as given to training")
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "drwkv"),
                        help="where the reference classifier is cached")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    try:
        config, model = load_checkpoint(args.checkpoint)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(str(e)) from None
    classifier, ref = reference(config["dataset"], config["image_size"], args.cache, args.data_dir)

    samples, labels = generate(model, config, args.num_samples, args.steps, args.cfg_scale, args.batch_size, args.seed)
    feats, preds = embed(classifier, samples)
    mu_ref, sigma_ref = ref["test_mu"].numpy(), ref["test_sigma"].numpy()
    fid = frechet_distance(*gaussian_stats(feats), mu_ref, sigma_ref)
    accuracy = float((preds == labels).float().mean())
    # The same statistic for as many real train images as samples: the floor at this sample count.
    x_train = load_dataset(config["dataset"], config["image_size"], "train", args.data_dir)[0]
    real = x_train[torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[:args.num_samples]]
    fid_real = frechet_distance(*gaussian_stats(embed(classifier, real)[0]), mu_ref, sigma_ref)

    rows = [
        ("checkpoint", args.checkpoint),
        ("model", f"{config['model']} on {config['dataset']} {config['image_size']}px"),
        ("sampling", f"{args.num_samples} samples, DDIM {args.steps} steps, CFG {args.cfg_scale}, seed {args.seed}"),
        ("FID (samples vs test split)", f"{fid:.2f}"),
        (f"FID ({args.num_samples} real train images)", f"{fid_real:.2f}"),
        ("classifier accuracy on samples", f"{accuracy:.3f}"),
        ("classifier accuracy on test split", f"{ref['test_accuracy']:.3f}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
