"""Latent diffusion: the emoji loader, train_vae, the latent cache, train --vae and eval on latent models."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_vae

from drwkv.model import build_model, load_checkpoint
from drwkv.vae import WEIGHTS_FILE, encode, latent_space, load_vae, weights_sha256
from training.data import EMOJI_MIN_CLASS_IMAGES, load_dataset
from training.latents import LatentCache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Digits (1 channel, 8x8) through a tiny 1-channel VAE with 2x downsampling: 4x4x4 latents, 4 tokens.
TINY = ["--dataset", "digits", "--model", "DRWKV-T/2", "--image-size", "8", "--batch-size", "8", "--lr", "1e-3",
        "--warmup", "2", "--sample-every", "0", "--sample-steps", "2", "--ckpt-every", "3", "--threads", "1"]


def run(module, *args, check=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def one_line_error(proc, start):
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(start), last
    return last


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def digits_vae(tmp_path_factory):
    return make_tiny_vae(tmp_path_factory.mktemp("digits_vae") / "vae", in_channels=1, downsample=2)


@pytest.fixture(scope="module")
def latent_run(tmp_path_factory, digits_vae):
    """An uninterrupted 6-step latent run (checkpoint at 3 and 6, a sample grid at 6) and its cache."""
    root = tmp_path_factory.mktemp("latent_run")
    run("training.train", *TINY, "--vae", digits_vae, "--latent-cache", root / "cache", "--steps", 6,
        "--sample-every", 6, "--out", root / "full")
    return root


# ----------------------------------------------------------------------------- the emoji dataset
def write_emoji_package(root, categories):
    """A copy of the npm package's layout: emoji.json and RGBA PNGs under img/google/64/."""
    from PIL import Image
    image_dir = root / "img" / "google" / "64"
    image_dir.mkdir(parents=True)
    def save(path, colour):  # transparent but for an opaque square in the middle
        im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
        im.paste(colour, (16, 16, 48, 48))
        im.save(path)

    entries, code = [], 0x1F600
    for category, count, skin in categories:
        for _ in range(count):
            name = f"{code:x}"
            entry = {"image": f"{name}.png", "category": category, "has_img_google": True}
            save(image_dir / f"{name}.png", (255, 0, 0, 255))
            if skin:  # a skin-tone variant, listed under its base emoji
                entry["skin_variations"] = {"1F3FB": {"image": f"{name}-1f3fb.png", "has_img_google": True}}
                save(image_dir / f"{name}-1f3fb.png", (0, 0, 255, 255))
            entries.append(entry)
            code += 1
    entries.append({"image": "missing.png", "category": "Flags", "has_img_google": False})
    (root / "emoji.json").write_text(json.dumps(entries))
    return root


def test_emoji_loader_reads_the_npm_layout(tmp_path):
    n = EMOJI_MIN_CLASS_IMAGES
    root = write_emoji_package(tmp_path, [("Smileys & Emotion", n, False), ("People & Body", n // 2, True),
                                          ("Component", 3, False)])
    train, test = load_dataset("emoji", 64, "train", str(root)), load_dataset("emoji", 64, "test", str(root))
    # Component (3 images) is dropped; a skin-tone variant counts for its base emoji's category.
    assert train[2] == test[2] == ["People & Body", "Smileys & Emotion"]
    assert len(train[0]) + len(test[0]) == 2 * n and len(test[0]) == int(2 * n * 0.2)
    assert train[0].shape[1:] == (3, 64, 64) and train[0].dtype == torch.float32
    x = torch.cat([train[0], test[0]])
    torch.testing.assert_close(x[:, :, 0, 0], torch.ones(len(x), 3))  # transparency composited onto white
    assert {tuple(p) for p in x[:, :, 32, 32].tolist()} == {(1.0, -1.0, -1.0), (-1.0, -1.0, 1.0)}
    assert sorted(set(torch.cat([train[1], test[1]]).tolist())) == [0, 1]
    # The split is fixed.
    assert torch.equal(load_dataset("emoji", 64, "test", str(root))[0], test[0])


def test_emoji_not_installed_names_the_setup_step(tmp_path):
    with pytest.raises(FileNotFoundError, match="scripts/setup.sh installs it"):
        load_dataset("emoji", 32, "train", str(tmp_path))
    proc = run("training.train_vae", "--dataset", "emoji", "--data-dir", tmp_path, "--steps", 1,
               "--out", tmp_path / "vae", check=False)
    one_line_error(proc, f"emoji data not found in {tmp_path}")


# ----------------------------------------------------------------------------- train_vae
def test_train_vae_writes_a_diffusers_folder_and_resumes_exactly(tmp_path):
    from diffusers import AutoencoderKL
    args = ["--dataset", "digits", "--image-size", 8, "--downsample", 4, "--width", 8, "--batch-size", 16,
            "--log-every", 1, "--ckpt-every", 2, "--threads", 1]
    full, part = tmp_path / "full", tmp_path / "part"
    proc = run("training.train_vae", *args, "--steps", 4, "--out", full)
    assert "held-out PSNR" in proc.stdout
    run("training.train_vae", *args, "--steps", 2, "--out", part)
    run("training.train_vae", *args, "--steps", 4, "--out", part, "--resume", part / "train_state.pt")
    losses = [(m["step"], m["loss"]) for m in metrics(full) if "loss" in m]
    assert [s for s, _ in losses] == [1, 2, 3, 4]
    assert [(m["step"], m["loss"]) for m in metrics(part) if "loss" in m] == losses  # 1, 2, then resumed 3, 4
    assert weights_sha256(full) == weights_sha256(part)  # bit-identical weights

    vae = AutoencoderKL.from_pretrained(full, local_files_only=True, low_cpu_mem_usage=False)
    assert list(vae.config.block_out_channels) == [8, 16, 16] and vae.config.latent_channels == 4
    final = metrics(full)[-1]
    assert final["held_out_psnr"] > 0 and final["held_out_images"] == 360
    # scaling_factor = 1 / std of the training latents: scaled posterior samples have unit std.
    assert vae.config.scaling_factor == pytest.approx(final["scaling_factor"]) and vae.config.scaling_factor != 0.18215
    mean, std = encode(load_vae(full), load_dataset("digits", 8)[0])
    samples = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
    assert samples.std().item() == pytest.approx(1.0, rel=0.05)
    assert not [f for f in os.listdir(full) if ".tmp" in f]
    assert (full / "reconstructions.png").is_file()


def test_train_vae_bad_input(tmp_path):
    proc = run("training.train_vae", "--dataset", "digits", "--image-size", 10, "--downsample", 4, "--out", tmp_path / "v",
               check=False)
    one_line_error(proc, "--image-size 10 is not divisible by --downsample 4")
    assert not (tmp_path / "v").exists()
    bad = tmp_path / "state.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    proc = run("training.train_vae", "--dataset", "digits", "--image-size", 8, "--steps", 1, "--resume", bad,
               "--out", tmp_path / "v", check=False)
    one_line_error(proc, f"--resume: {bad}: not a train_vae state")


# ----------------------------------------------------------------------------- train --vae
def test_latent_checkpoint_describes_its_latent_space(latent_run, digits_vae):
    ckpt = torch.load(latent_run / "full" / "ckpt.pt", weights_only=True)
    cfg = ckpt["config"]
    assert cfg["image_size"] == 4 and cfg["in_channels"] == 4 and ckpt["step"] == 6  # the denoiser's input
    assert cfg["latent"] == {"vae": "vae", "vae_sha256": weights_sha256(digits_vae), "scaling_factor": 0.5,
                             "shift_factor": 0.0, "channels": 4, "downsample": 2, "image_size": 8, "in_channels": 1}
    # The run's folder holds its VAE (an artifact names files only inside its own folder).
    assert weights_sha256(latent_run / "full" / "vae") == weights_sha256(digits_vae)
    assert os.stat(latent_run / "full" / "vae" / WEIGHTS_FILE).st_ino == os.stat(digits_vae / WEIGHTS_FILE).st_ino
    config, model = load_checkpoint(latent_run / "full" / "ckpt.pt")
    assert model.x_embedder.in_channels == 4 and model.out_channels == 8
    from PIL import Image
    with Image.open(latent_run / "full" / "samples" / "step_0000006.png") as im:
        assert im.size == (8 * 10 + 2, 10 * 10 + 2) and im.mode == "L"  # decoded to the VAE's pixels


def test_latent_resume_is_exact(latent_run, digits_vae, tmp_path, monkeypatch):
    part = tmp_path / "part"
    common = [*TINY, "--vae", digits_vae, "--latent-cache", latent_run / "cache", "--out", part]
    run("training.train", *common, "--steps", 3)
    run("training.train", *common, "--steps", 6, "--resume", part / "ckpt.pt")
    assert [(m["step"], m["loss"]) for m in metrics(part)] == [(m["step"], m["loss"]) for m in metrics(latent_run / "full")]
    a = torch.load(latent_run / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(part / "ckpt.pt", weights_only=True)
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    # A latent checkpoint does not resume into a pixel run.
    message = train_error(monkeypatch, *TINY, "--steps", 7, "--resume", part / "ckpt.pt", "--out", part)
    assert message == (f"--resume: checkpoint was trained through a VAE with weights sha256 "
                       f"{weights_sha256(digits_vae)[:12]}..., this run in pixel space")


def test_latent_cache_is_reused_only_when_its_manifest_matches(latent_run, digits_vae, tmp_path):
    folder = latent_run / "cache"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["vae_sha256"] == weights_sha256(digits_vae) and manifest["dataset"] == "digits"
    assert manifest["image_size"] == 8 and manifest["split"] == "train" and manifest["shape"] == [4, 4, 4]
    mean = np.load(folder / "mean.npy", mmap_mode="r")
    assert mean.dtype == np.float16 and mean.shape == (manifest["count"], 4, 4, 4)
    vae = load_vae(digits_vae)
    stamp = os.stat(folder / "mean.npy").st_mtime_ns
    cache = LatentCache.open_or_build(folder, vae, weights_sha256(digits_vae), "digits", 8)
    assert os.stat(folder / "mean.npy").st_mtime_ns == stamp  # reused, not re-encoded
    # The cache holds the posterior of every training image in the denoiser's space.
    images = load_dataset("digits", 8)[0]
    m, s = encode(vae, images[:5])
    torch.testing.assert_close(cache.sample(np.arange(5), torch.zeros(5, 4, 4, 4)), m, atol=2e-3, rtol=1e-3)
    eps = torch.randn(5, 4, 4, 4)
    torch.testing.assert_close(cache.sample(np.arange(5), eps), m + s * eps, atol=2e-3, rtol=1e-3)

    # Another VAE (same architecture, other weights) in the same folder: rebuilt, never reused.
    other = make_tiny_vae(tmp_path / "other", in_channels=1, downsample=2, seed=1)
    copy = tmp_path / "cache"
    os.makedirs(copy)
    for name in os.listdir(folder):
        (copy / name).write_bytes((folder / name).read_bytes())
    rebuilt = LatentCache.open_or_build(copy, load_vae(other), weights_sha256(other), "digits", 8)
    assert rebuilt.manifest["vae_sha256"] == weights_sha256(other)
    assert not np.array_equal(np.asarray(rebuilt.mean), mean)
    # Another dataset (or split) with the same VAE: rebuilt too.
    test_split = LatentCache.open_or_build(copy, load_vae(other), weights_sha256(other), "digits", 8, "test")
    assert test_split.manifest["split"] == "test" and len(test_split) == 360


def train_error(monkeypatch, *args):
    """The SystemExit message of training.train run in this process (bad input stops it before any work)."""
    from training import train
    monkeypatch.setattr(sys, "argv", ["train", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        train.main()
    return str(e.value)


def test_train_with_a_bad_vae_is_one_line(digits_vae, tiny_vae, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = [*TINY, "--steps", 1, "--latent-cache", tmp_path / "cache", "--out", out]
    # One case end to end: a missing folder is one line on stderr, no traceback.
    proc = run("training.train", *common, "--vae", tmp_path / "missing", check=False)
    one_line_error(proc, f"--vae: VAE folder not found: {tmp_path / 'missing'}")
    not_diffusers = tmp_path / "not_diffusers"
    not_diffusers.mkdir()
    (not_diffusers / "model.bin").write_bytes(b"x")
    assert train_error(monkeypatch, *common, "--vae", not_diffusers).startswith(
        f"--vae: {not_diffusers}: not a diffusers VAE folder")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_bytes((digits_vae / "config.json").read_bytes())
    weights = (digits_vae / "diffusion_pytorch_model.safetensors").read_bytes()
    (truncated / "diffusion_pytorch_model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert train_error(monkeypatch, *common, "--vae", truncated).startswith(
        f"--vae: {truncated}: the VAE weights cannot be loaded")
    # An RGB VAE for a one-channel dataset, and a pixel size the VAE cannot downsample.
    assert train_error(monkeypatch, *common, "--vae", tiny_vae) == "the VAE takes 3-channel images, digits has 1"
    assert train_error(monkeypatch, *common, "--image-size", 6, "--vae", tiny_vae) == (
        "--vae: image size 6 is not divisible by the VAE's downsampling factor 4")
    assert not out.exists() and not (tmp_path / "cache" / "manifest.json").exists()


def test_eval_decodes_a_latent_model_to_rgb(latent_run, tmp_path):
    proc = run("training.eval", latent_run / "full" / "ckpt.pt", "--num-samples", 20, "--steps", 2,
               "--cache", tmp_path, "--threads", 1)
    table = {k.strip(): v.strip() for k, v in (line.split("  ", 1) for line in proc.stdout.strip().splitlines())}
    assert "through the VAE" in table["model"] and "8px" in table["model"]
    assert float(table["FID (the same 20, through the VAE)"]) > 0
    assert float(table["FID (samples vs test split)"]) > 0
    assert 0 <= float(table["classifier accuracy on samples"]) <= 1
    assert os.listdir(tmp_path) == ["classifier-digits-8px.pt"]  # the classifier works on the VAE's pixels


# ----------------------------------------------------------------------------- the paper's configuration
def test_paper_configuration_builds_through_sd_vae_architecture(tmp_path):
    """DRWKV-H/2 at 256x256 through an AutoencoderKL of Stable Diffusion's exact architecture (random
    weights): a 32x32x4 latent model; then one train --vae step of a small DRWKV on that VAE."""
    from diffusers import AutoencoderKL
    from PIL import Image
    torch.manual_seed(0)
    sd = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 4,
                       up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                       layers_per_block=2, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
    assert sum(p.numel() for p in sd.parameters()) == 83_653_863  # SD's VAE
    folder = tmp_path / "sd-vae"
    sd.save_pretrained(folder, safe_serialization=True)
    latent = latent_space(folder, 256)
    assert (latent["downsample"], latent["channels"], latent["scaling_factor"]) == (8, 4, 0.18215)
    config = {"model": "DRWKV-H/2", "image_size": 256 // latent["downsample"], "in_channels": latent["channels"],
              "num_classes": 1000, "learn_sigma": True, "latent": latent}
    with torch.device("meta"):  # 780M parameters: shapes only
        model = build_model(config)
        out = model(torch.empty(1, 4, 32, 32), torch.zeros(1), torch.zeros(1, dtype=torch.long))
    assert out.shape == (1, 8, 32, 32) and model.grid == 16
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(780.3e6, rel=1e-3)

    data = tmp_path / "images"
    for name, colour in [("red", (200, 30, 30)), ("blue", (30, 30, 200))]:
        (data / name).mkdir(parents=True)
        Image.new("RGB", (256, 256), colour).save(data / name / "0.png")
    out_dir = tmp_path / "run"
    run("training.train", "--dataset", "folder", "--data-dir", data, "--vae", folder, "--image-size", 256,
        "--model", "DRWKV-T/4", "--batch-size", 1, "--steps", 1, "--sample-every", 0, "--threads", 1,
        "--latent-cache", tmp_path / "cache", "--out", out_dir)
    cfg = torch.load(out_dir / "ckpt.pt", weights_only=True)["config"]
    assert (cfg["image_size"], cfg["in_channels"], cfg["latent"]["image_size"]) == (32, 4, 256)


def test_two_ranks_encode_the_cache_and_train_as_one_process(latent_run, digits_vae, tmp_path):
    # Each torchrun rank encodes its share of a fresh cache; the cache equals the one-process cache,
    # and two ranks of 4 compute the updates of one process with two micro-batches of 4.
    common = [*TINY, "--vae", digits_vae, "--steps", 3]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "training.train",
           *map(str, common), "--latent-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("mean.npy", "std.npy", "labels.npy"):
        assert np.array_equal(np.load(tmp_path / "cache" / name), np.load(latent_run / "cache" / name)), name
    run("training.train", *common, "--grad-accum", 2, "--latent-cache", latent_run / "cache", "--out", tmp_path / "one")
    for a, b in zip(metrics(tmp_path / "one"), metrics(tmp_path / "ddp"), strict=True):
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
