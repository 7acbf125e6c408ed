"""The VAE decoder beside the denoiser: its ONNX export (graph contract, metadata tying it to the
denoiser, fp16 rules, the no-VAE-at-hand path, bad --vae), the Decoder backends (ONNX Runtime
against diffusers), finding and checking a model's decoder, tiled decoding, and the torch-free path.

One latent DRWKV-T/2 checkpoint on the tiny VAE of conftest.py is exported once per module (the
denoiser export takes about 20 s, the decoder's a few seconds)."""
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime_extensions")
pytest.importorskip("diffusers")

from conftest import make_tiny_vae, write_random_checkpoint  # noqa: E402
from test_runtime import BLOCK_TORCH, REPO  # noqa: E402

from drwkv.runtime import ArtifactError, Decoder, load_decoder, load_denoiser  # noqa: E402
from drwkv.runtime.tiling import axis_weights, tile_plan, tile_starts  # noqa: E402
from drwkv.vae import latent_space  # noqa: E402
from export import to_onnx  # noqa: E402

PIXELS = 32  # 8x8 latents through the 4x tiny VAE


def latent_config(vae_folder):
    return {"model": "DRWKV-T/2", "image_size": PIXELS // 4, "in_channels": 4, "num_classes": 3,
            "learn_sigma": True, "class_names": ["a", "b", "c"], "latent": latent_space(vae_folder, PIXELS),
            "diffusion": {"schedule": "linear", "beta_start": 1e-4, "beta_end": 0.02, "num_timesteps": 1000}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("decoder")


@pytest.fixture(scope="module")
def ckpt(workdir, tiny_vae):
    """A latent checkpoint with its VAE beside it, where a training run keeps it."""
    shutil.copytree(tiny_vae, workdir / "vae")
    return write_random_checkpoint(workdir / "ckpt.pt", latent_config(workdir / "vae"))


@pytest.fixture(scope="module")
def exported(ckpt, workdir):
    path = workdir / "out" / "model.onnx"
    to_onnx.export_onnx(ckpt, path)
    return path


def _meta(path):
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def _latents(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- export ---------------------------------------------------------------------------------------

def test_decoder_graph_contract_and_metadata(exported, tiny_vae):
    decoder = exported.with_name("model.vae_decoder.onnx")
    model = onnx.load(decoder)
    (latents,), (image,) = model.graph.input, model.graph.output
    assert latents.name == "latents" and image.name == "image"
    batch, h, w = (_dims(latents)[i] for i in (0, 2, 3))
    assert all(isinstance(d, str) for d in (batch, h, w)) and len({batch, h, w}) == 3   # all dynamic
    assert _dims(latents)[1] == 4 and _dims(image)[:2] == [batch, 3]
    sha = latent_space(tiny_vae, PIXELS)["vae_sha256"]
    meta = _meta(decoder)
    assert meta["drwkv.format"] == "drwkv-onnx-vae-decoder" and meta["drwkv.vae_sha256"] == sha
    assert (meta["drwkv.vae_downsample"], meta["drwkv.vae_channels"], meta["drwkv.dtype"]) == ("4", "4", "fp32")
    denoiser = _meta(exported)
    assert denoiser["drwkv.vae_decoder"] == "model.vae_decoder.onnx" and denoiser["drwkv.vae_sha256"] == sha
    assert json.loads(denoiser["drwkv.config"])["latent"]["vae_sha256"] == sha


def test_onnx_decoder_matches_diffusers_on_any_size(exported, tiny_vae):
    ort_decoder = load_decoder(load_denoiser(onnx=exported))
    torch_decoder = load_decoder(load_denoiser(ckpt=exported.parents[1] / "ckpt.pt", threads=1))
    assert (ort_decoder.name, torch_decoder.name) == ("onnxruntime", "torch")
    for shape in ((1, 4, 5, 7), (3, 4, 8, 8)):   # batch, h and w dynamic, odd sizes included
        z = _latents(shape)
        ours, reference = ort_decoder(z), torch_decoder(z)
        assert ours.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
        assert np.abs(reference).max() > 0.05 and np.abs(ours).max() <= 1.0
        np.testing.assert_allclose(ours, reference, atol=1e-5)
    # The graph divides by the scaling factor itself: it decodes z / 0.5 through the VAE.
    from drwkv.vae import load_vae
    with torch.no_grad():
        direct = load_vae(tiny_vae).decode(torch.from_numpy(z) / 0.5).sample.clamp(-1, 1).numpy()
    np.testing.assert_allclose(ort_decoder(z), direct, atol=1e-5)


def test_fp16_decoder_only_when_asked_and_checked_for_overflow(tiny_vae, tmp_path):
    fp16 = to_onnx.export_decoder(tiny_vae, PIXELS, "fp16")
    types = {t.data_type for t in fp16.graph.initializer if t.name.endswith(".weight")}
    assert types == {onnx.TensorProto.FLOAT16}
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT   # float32 I/O
    # A VAE whose decoder overflows float16 (SD's black-image failure, forced with large weights).
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(tiny_vae, local_files_only=True, low_cpu_mem_usage=False)
    with torch.no_grad():
        vae.post_quant_conv.weight.mul_(3e4)
    vae.save_pretrained(tmp_path / "hot")
    with pytest.raises(ValueError, match="non-finite pixels on test latents .* --vae-dtype fp32"):
        to_onnx.export_decoder(tmp_path / "hot", PIXELS, "fp16")


def test_vae_override_must_fit_the_latent_space(ckpt, tiny_vae, tmp_path):
    config = torch.load(ckpt, weights_only=True)["config"]
    assert to_onnx.find_vae(config, ckpt) == (str(ckpt.parent / "vae"), None)
    other = make_tiny_vae(tmp_path / "other", seed=1)           # same space, other weights
    with pytest.raises(ValueError, match="other weights .* --force"):
        to_onnx.find_vae(config, ckpt, other)
    assert to_onnx.find_vae(config, ckpt, other, force=True) == (str(other), None)
    for name, kwargs in (("three", {"latent_channels": 3}), ("eight", {"downsample": 8}),
                         ("scale", {"scaling_factor": 0.25})):
        with pytest.raises(ValueError, match=f"VAE {tmp_path / name} has"):
            to_onnx.find_vae(config, ckpt, make_tiny_vae(tmp_path / name, **kwargs), force=True)
    with pytest.raises(ValueError, match="VAE folder not found"):
        to_onnx.find_vae(config, ckpt, tmp_path / "missing")


def _export_cli(*args):
    return subprocess.run([sys.executable, "-m", "export.to_onnx", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_without_the_vae_at_hand_the_denoiser_is_written_alone(tmp_path, tiny_vae, capsys):
    moved = tmp_path / "moved_vae"
    shutil.copytree(tiny_vae, moved)
    ckpt = write_random_checkpoint(tmp_path / "ckpt.pt", latent_config(moved))
    shutil.rmtree(moved)
    out = tmp_path / "m.onnx"
    to_onnx.main([str(ckpt), "-o", str(out)])
    hint = [line for line in capsys.readouterr().err.splitlines() if line.startswith("no VAE decoder written")]
    assert hint == [f"no VAE decoder written (its VAE folder {moved} is not inside {tmp_path} (an artifact may only "
                    f"name files inside its own folder)); add it with: python -m "
                    f"export.to_onnx {ckpt} -o {out} --vae FOLDER"]
    assert out.exists() and not (tmp_path / "m.vae_decoder.onnx").exists()
    assert "drwkv.vae_decoder" not in _meta(out)
    # Runtimes refuse, in one line, to make images without it.
    with pytest.raises(ArtifactError, match=r"is a latent model and its VAE decoder .*m.vae_decoder.onnx is missing"):
        load_decoder(load_denoiser(onnx=out))
    with pytest.raises(ArtifactError, match="its VAE folder .* is not inside .*: give the VAE folder with --vae-decoder"):
        load_decoder(load_denoiser(ckpt=ckpt))


def test_a_recorded_relative_vae_folder_is_found_beside_the_checkpoint(tmp_path, tiny_vae, monkeypatch):
    """A checkpoint records its VAE as given to training ("pretrained/emoji-vae"); moved together with
    the VAE, it still finds it from any working directory, in the runtime and in the export."""
    shipped = tmp_path / "shipped"
    shutil.copytree(tiny_vae, shipped / "the-vae")
    config = latent_config(shipped / "the-vae")
    config["latent"]["vae"] = "elsewhere/the-vae"
    ckpt = write_random_checkpoint(shipped / "ckpt.pt", config)
    monkeypatch.chdir(tmp_path)
    assert load_decoder(load_denoiser(ckpt=ckpt)).path == str(shipped / "the-vae")
    folder, why_not = to_onnx.find_vae(config, ckpt)
    assert (folder, why_not) == (str(shipped / "the-vae"), None)


@pytest.mark.parametrize("case", ["other channels", "other hash", "vae-dtype on a pixel model", "force alone"])
def test_export_bad_input_is_one_line(case, ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    if case == "other channels":
        args = [ckpt, "-o", out, "--vae", make_tiny_vae(tmp_path / "v3", latent_channels=3)]
    elif case == "other hash":
        args = [ckpt, "-o", out, "--vae", make_tiny_vae(tmp_path / "v", seed=2)]
    elif case == "vae-dtype on a pixel model":
        config = {k: v for k, v in latent_config(make_tiny_vae(tmp_path / "v")).items() if k != "latent"}
        args = [write_random_checkpoint(tmp_path / "pixel.pt", config), "-o", out, "--vae-dtype", "fp16"]
    else:
        args = [ckpt, "-o", out, "--force"]
    result = _export_cli(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m export.to_onnx: error: "), result.stderr
    assert not out.exists()


# --- finding and checking a model's decoder --------------------------------------------------------

def test_a_decoder_from_another_vae_or_space_is_refused(exported, tmp_path):
    def beside_a_copy(name, decoder_proto):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(exported, folder / "model.onnx")
        to_onnx._save(decoder_proto, folder / "model.vae_decoder.onnx")
        return load_denoiser(onnx=folder / "model.onnx")

    other = beside_a_copy("hash", to_onnx.export_decoder(make_tiny_vae(tmp_path / "v1", seed=3), PIXELS))
    with pytest.raises(ArtifactError, match="is the decoder of another VAE"):
        load_decoder(other)
    three = beside_a_copy("channels", to_onnx.export_decoder(make_tiny_vae(tmp_path / "v3", latent_channels=3),
                                                             PIXELS))
    with pytest.raises(ArtifactError, match="decodes 3-channel latents at 4x, the model's are 4-channel at 4x"):
        load_decoder(three)
    denoiser = load_denoiser(onnx=exported)
    with pytest.raises(ArtifactError, match="the decoder of a onnxruntime model is an ONNX decoder"):
        load_decoder(denoiser, tmp_path / "model.vae_decoder.plan")
    with pytest.raises(ArtifactError, match="is a VAE decoder, not a denoiser"):
        load_denoiser(onnx=exported.with_name("model.vae_decoder.onnx"))
    with pytest.raises(ArtifactError, match="not a drwkv VAE decoder"):
        load_decoder(denoiser, exported)   # a denoiser given as the decoder


# --- tiled decoding --------------------------------------------------------------------------------

@pytest.mark.parametrize("length,tile,overlap", [(20, 8, 2), (9, 8, 4), (13, 8, 4), (8, 8, 2), (5, 8, 2),
                                                 (17, 6, 5), (64, 16, 0)])
def test_tiles_cover_every_pixel_and_weights_sum_to_one(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    size = min(tile, length)
    assert starts[0] == 0 and starts[-1] + size == length                        # last tile ends at the edge
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))     # overlap at least as asked
    total = np.zeros(3 * length)
    for start, weight in zip(starts, axis_weights(starts, size, 3)):
        assert weight.shape == (3 * size,) and (weight > 0).all()
        total[3 * start:3 * (start + size)] += weight
    np.testing.assert_allclose(total, 1.0, atol=1e-6)


def test_bad_tile_sizes_are_refused():
    for tile, overlap, message in ((0, 0, "at least 1"), (-4, 0, "at least 1"), (8, 8, "overlap must be in 0..7"),
                                   (8, -1, "overlap must be in 0..7")):
        with pytest.raises(ValueError, match=message):
            tile_plan(20, 20, tile, overlap)


class Pointwise(Decoder):
    """A decoder without spatial context (each latent pixel becomes f x f pixels on its own), so that
    tiling must reproduce whole decoding exactly; it records the largest latent it was given."""

    name, path, latent_channels, image_channels, downsample, vae_sha256 = "pointwise", "-", 4, 3, 4, "0"

    def __init__(self):
        self.largest = (0, 0)
        self.mix = _latents((3, 4), seed=9)

    def forward(self, latents):
        self.largest = max(self.largest, latents.shape[2:])
        rgb = np.tanh(np.einsum("oc,bchw->bohw", self.mix, latents))
        return rgb.repeat(4, axis=2).repeat(4, axis=3).astype(np.float32)


@pytest.mark.parametrize("shape", [(2, 4, 37, 23), (1, 4, 16, 16), (1, 4, 5, 70)])
def test_tiled_decoding_of_a_context_free_decoder_is_exact(shape):
    decoder = Pointwise()
    z = _latents(shape)
    whole = decoder.forward(z)
    decoder.largest = (0, 0)
    tiled = decoder(z, tile=12, overlap=3)
    np.testing.assert_allclose(tiled, whole, atol=2e-6)
    assert max(decoder.largest) <= 12            # no call ever saw more than one tile: memory is the tile's
    assert decoder.tiles_decoded == len(tile_starts(shape[2], 12, 3)) * len(tile_starts(shape[3], 12, 3))


def test_automatic_tiling_above_the_default_tile():
    decoder = Pointwise()
    decoder(_latents((1, 4, 64, 64)))
    assert decoder.tiles_decoded == 1                               # 64 latent pixels: one tile
    decoder(_latents((1, 4, 65, 130)))
    assert decoder.tiles_decoded == 1 + 2 * 3 and max(decoder.largest) == 64
    decoder(_latents((1, 4, 65, 130)), tile=200)                    # a tile larger than the latent: whole
    assert decoder.tiles_decoded == 8 and decoder.largest == (65, 130)


def test_tiled_and_whole_vae_decoding_agree_without_seams(tmp_path):
    """The committed emoji VAE (trained with training.train_vae) through ONNX Runtime, on 45x37
    latents drawn N(0, 1) in the denoiser's space (the scale its latent models sample at), tiles of
    32 with overlap 8: 2 x 2 tiles, cut at other places than any tile's edge.

    Bound: its GroupNorm statistics and mid-block attention see a tile rather than the whole
    image, so tiling is an approximation; measured mean |tiled - whole| 0.0085 and max 0.081 (images
    in [-1, 1]), asserted below 0.015 and 0.15. Seams: the difference at the tile borders is no
    larger than elsewhere, and the tiled image's jumps between neighbouring pixels at the borders
    are those of the rest of it."""
    from drwkv.runtime.onnx import OnnxRuntimeDecoder

    vae = Path(REPO) / "pretrained" / "emoji-vae"
    to_onnx._save(to_onnx.export_decoder(vae, 64), tmp_path / "emoji.vae_decoder.onnx")
    decoder = OnnxRuntimeDecoder(tmp_path / "emoji.vae_decoder.onnx")
    z = _latents((1, 4, 45, 37), seed=0)
    whole = decoder(z, tile=64)
    tiled = decoder(z, tile=32, overlap=8)
    assert decoder.tiles_decoded == 1 + 4
    diff = np.abs(tiled - whole)
    assert diff.mean() < 0.015 and diff.max() < 0.15, (diff.mean(), diff.max())
    rows, cols, th, tw = tile_plan(45, 37, 32, 8)
    for axis, starts, size in ((2, rows, th), (3, cols, tw)):
        borders = sorted({4 * s for s in starts[1:]} | {4 * (s + size) - 1 for s in starts[:-1]})
        rest = [i for i in range(diff.shape[axis] - 1) if i not in borders]
        at_border, elsewhere = diff.take(borders, axis).mean(), diff.take(rest, axis).mean()
        assert at_border <= 1.25 * elsewhere, (axis, at_border, elsewhere)
        jumps = np.abs(np.diff(tiled, axis=axis))
        assert jumps.take(borders, axis).mean() <= 1.25 * jumps.take(rest, axis).mean()


# --- no torch on the ONNX path ---------------------------------------------------------------------

def test_onnx_decoder_runs_where_torch_cannot_be_imported(exported):
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import numpy as np
        from drwkv.runtime import load_decoder, load_denoiser
        decoder = load_decoder(load_denoiser(onnx={str(exported)!r}))
        images = decoder(np.zeros((1, 4, 20, 9), np.float32), tile=8, overlap=2)
        assert images.shape == (1, 3, 80, 36) and np.isfinite(images).all() and decoder.tiles_decoded == 6
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# --- the latent model end to end: Pipeline and drwkv-infer -----------------------------------------

def test_pipeline_gives_the_same_rgb_images_from_onnx_and_the_checkpoint(exported):
    import drwkv

    kwargs = dict(classes=[2, 0], num_images=3, steps=4, seed=3, batch_size=2)
    from_onnx = drwkv.Pipeline.load(exported, vae_tile=6, vae_tile_overlap=2)
    images = from_onnx(**kwargs)
    assert images.shape == (3, PIXELS, PIXELS, 3) and images.dtype == np.uint8 and images.std() > 5
    # Two batches of 2 x 2 tiles (8x8 latents, tiles at 0 and 2); latent models do not clip x0.
    assert from_onnx.last_run["tiles"] == 2 * 4 and from_onnx.last_run["clip_x0"] is False
    from_ckpt = drwkv.Pipeline.load(exported.parents[1] / "ckpt.pt", vae_tile=6, vae_tile_overlap=2, threads=1)
    assert from_ckpt.decoder.name == "torch"
    assert np.abs(from_ckpt(**kwargs).astype(int) - images).max() <= 1          # float rounding at most


def _infer(args):
    script = BLOCK_TORCH + f"from drwkv.cli import main\nsys.exit(main({[str(a) for a in args]!r}))\n"
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_drwkv_infer_writes_rgb_pngs_of_a_latent_model_without_torch(exported, tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    result = _infer(["--onnx", exported, "--steps", "3", "--num-images", "2", "--vae-tile", "5", "--vae-tile-overlap",
                     "2", "--out", out])
    assert result.returncode == 0, result.stderr
    assert "4 VAE tiles decoded" in result.stderr.splitlines()[-1]      # 8x8 latents: tiles at 0 and 3, each way
    image = Image.open(out)
    assert image.mode == "RGB" and image.size == (2 * PIXELS + 6, PIXELS + 4)
    from drwkv.settings import regenerate_command   # the tiles are part of the settings that remake the image
    assert (image.text["drwkv.vae_tile"], image.text["drwkv.clip_x0"]) == ("5", "False")
    command = regenerate_command(image.text)
    assert command[command.index("--vae-tile") + 1] == "5" and command[command.index("--vae-tile-overlap") + 1] == "2"


@pytest.mark.parametrize("case", ["tile zero", "tile negative", "overlap too big", "plan for onnx", "missing decoder"])
def test_drwkv_infer_decoder_bad_input_is_one_line(case, exported, tmp_path):
    args = ["--onnx", exported, "--steps", "2", "--out", tmp_path / "o.png"]
    if case == "tile zero":
        args += ["--vae-tile", "0"]
    elif case == "tile negative":
        args += ["--vae-tile", "-8"]
    elif case == "overlap too big":
        args += ["--vae-tile", "4", "--vae-tile-overlap", "4"]
    elif case == "plan for onnx":
        args += ["--vae-decoder", tmp_path / "model.vae_decoder.plan"]
    else:
        shutil.copy(exported, tmp_path / "alone.onnx")
        args[1] = tmp_path / "alone.onnx"
    result = _infer(args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("drwkv-infer: error: "), result.stderr
    assert not (tmp_path / "o.png").exists()
