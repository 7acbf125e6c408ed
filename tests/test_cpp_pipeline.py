"""The C++ pipeline (drwkv::Pipeline, bound into drwkv._C) against drwkv.Pipeline, and the C++ PNG
settings (drwkv/settings.h) against drwkv.settings: same toy denoiser and decoder (numpy, called
from both), same settings -> the same uint8 images bit for bit, the same refusals in the same
words, the same PNG text chunks. The sampler steps are bit-identical (test_cpp_samplers.py), so the
images are too, except that DDPM with learned variance takes a float32 exp whose last bit numpy and
the C library may round differently (see there); its images are allowed 1 level in a few pixels.
"""
import io
import math
import struct

import numpy as np
import pytest
from PIL import Image

import drwkv
from drwkv import _C
from drwkv.png import make_grid, save_png
from drwkv.runtime.base import Decoder, Denoiser
from drwkv.runtime.tiling import decode_tiled
from drwkv.settings import RunSettings

NAMES = ["cat", "dog", "sneaker", "bag", "hat"]


def config(learn_sigma=False, num_classes=5, latent=False):
    c = {"model": "Toy/2", "image_size": 6, "in_channels": 3, "num_classes": num_classes,
         "learn_sigma": learn_sigma, "class_names": NAMES[:num_classes],
         "diffusion": {"num_timesteps": 200, "beta_start": 1e-4, "beta_end": 0.02}}
    if latent:
        c.update(in_channels=4, guidance_channels=3,
                 latent={"downsample": 2, "image_size": 12, "vae_sha256": "ab" * 32, "in_channels": 3})
    return c


class ToyDenoiser(Denoiser):
    """A fixed deterministic function of x, t and y; v in (-1, 1) with learned variance."""

    name = "toy"

    def __init__(self, config, path="toy.onnx"):
        self.config, self.path = config, path

    def forward(self, x, t, y):
        tt = (t / 200.0)[:, None, None, None]
        yy = (y.astype(np.float32) / max(self.config["num_classes"], 1))[:, None, None, None]
        eps = np.tanh(0.9 * x + 0.4 * tt - 0.3 * yy + 0.2 * np.roll(x, 1, axis=-1)).astype(np.float32)
        if not self.config["learn_sigma"]:
            return eps
        return np.concatenate([eps, np.tanh(0.5 * x - tt + 0.4 * yy).astype(np.float32)], axis=1)


class ToyDecoder(Decoder):
    """latents [B, 4, h, w] -> images [B, 3, 2h, 2w]; depends on the place in the tile, so a tile in
    the wrong place or with the wrong weight shows."""

    name, path, latent_channels, image_channels, downsample, vae_sha256 = "toy", "toy.vae.onnx", 4, 3, 2, "ab" * 32

    def __init__(self, max_tile=None, max_batch_size=None):
        self.max_tile, self.max_batch_size = max_tile, max_batch_size

    def forward(self, latents):
        up = latents.repeat(2, axis=2).repeat(2, axis=3)
        mix = np.array([[0.5, -0.2, 0.1, 0.3], [0.1, 0.4, -0.3, 0.2], [-0.2, 0.1, 0.6, -0.1]], np.float32)
        ramp = np.sin(np.arange(up.shape[2], dtype=np.float32))[:, None] * 0.1
        return np.tanh(np.einsum("oc,bchw->bohw", mix, up) + ramp).astype(np.float32)


def both(denoiser, decoder=None, **init):
    return drwkv.Pipeline(denoiser, decoder, **init), _C.Pipeline(denoiser, decoder, **init)


def assert_same_images(py_images, cpp_images, learned_ddpm=False):
    assert cpp_images.dtype == np.uint8 and cpp_images.shape == py_images.shape
    diff = np.abs(cpp_images.astype(int) - py_images.astype(int))
    if learned_ddpm:  # see the module doc
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01
    else:
        np.testing.assert_array_equal(cpp_images, py_images)


RUNS = [
    dict(sampler="ddim", steps=5),
    dict(sampler="ddim", steps=4, eta=0.6, cfg_scale=1.0, classes=["dog", "4"], first_image=5, batch_size=2),
    dict(sampler="ddpm", steps=3, cfg_scale=2.0, classes="SNEAKER,cat", num_images=7, batch_size=3),
    dict(sampler="dpm++2m", steps=6, classes=[3], first_image=2**64 - 4, num_images=4, batch_size=1, seed=2**64 - 1),
    dict(sampler="dpm++2m", steps=4, cfg_scale=0.0, clip_x0=False, num_images=3, seed=12345),
]


@pytest.mark.parametrize("learn_sigma", [False, True], ids=["fixed", "learned"])
@pytest.mark.parametrize("run", RUNS, ids=[f"{r['sampler']}-{i}" for i, r in enumerate(RUNS)])
def test_pixel_model_images_equal_python(run, learn_sigma):
    py, cpp = both(ToyDenoiser(config(learn_sigma)))
    run = {"num_images": 5, **run}
    calls = []
    images, last_run = cpp(**run, progress=lambda done, total: calls.append((done, total)))
    expected = py(**run)
    assert_same_images(expected, images, learned_ddpm=learn_sigma and run["sampler"] == "ddpm")
    for key in ("clip_x0", "cfg_scale", "steps", "batches", "tiles"):
        assert last_run[key] == py.last_run[key], key
    np.testing.assert_array_equal(last_run["labels"], py.last_run["labels"])
    total = last_run["batches"] * last_run["steps"]
    assert calls == [(i, total) for i in range(1, total + 1)]


def test_batch_size_and_first_image_do_not_change_an_image():
    _, cpp = both(ToyDenoiser(config()))
    whole, _ = cpp(num_images=6, steps=3, seed=9, batch_size=6)
    np.testing.assert_array_equal(cpp(num_images=6, steps=3, seed=9, batch_size=4)[0], whole)
    np.testing.assert_array_equal(cpp(num_images=2, steps=3, seed=9, first_image=3)[0], whole[3:5])
    assert not np.array_equal(cpp(num_images=6, steps=3, seed=10)[0], whole)


def test_unconditional_model_takes_no_guidance():
    py, cpp = both(ToyDenoiser(config(num_classes=0)))
    images, last_run = cpp(num_images=3, steps=3)
    np.testing.assert_array_equal(images, py(num_images=3, steps=3))
    assert last_run["cfg_scale"] == 1.0 and list(last_run["labels"]) == [0, 0, 0]


@pytest.mark.parametrize("tiles", [dict(), dict(vae_tile=4, vae_tile_overlap=1), dict(vae_tile=3, vae_tile_overlap=2),
                                   dict(vae_tile=5)], ids=["whole", "4-1", "3-2", "5-default"])
def test_latent_model_decodes_in_the_same_tiles(tiles):
    decoder = ToyDecoder(max_batch_size=2)
    py, cpp = both(ToyDenoiser(config(latent=True)), decoder, **tiles)
    run = dict(num_images=5, steps=3, batch_size=3, sampler="ddpm")
    images, last_run = cpp(**run)
    assert images.shape == (5, 12, 12, 3) and last_run["clip_x0"] is False
    np.testing.assert_array_equal(images, py(**run))
    assert last_run["tiles"] == py.last_run["tiles"] > 0


def test_tiled_decode_equals_python():
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, 4, 7, 9), dtype=np.float32)
    decoder = ToyDecoder()
    for tile, overlap in ((3, 1), (4, 3), (5, 0), (9, 2), (2, 1)):
        expected, _ = decode_tiled(decoder.forward, latents, tile, overlap, 2)
        np.testing.assert_array_equal(_C.decode_tiled(decoder.forward, latents, 3, 2, tile, overlap), expected)


def _message(call):
    with pytest.raises(ValueError) as error:
        call()
    return str(error.value)


REFUSED = [dict(num_images=0), dict(steps=-1), dict(batch_size=0), dict(sampler="euler"), dict(seed=-1),
           dict(seed=2**64), dict(first_image=-1), dict(first_image=2**64 - 2, num_images=3),
           dict(first_image=2**64, num_images=3), dict(sampler="ddpm", eta=0.5), dict(eta=1.5), dict(eta=math.nan),
           dict(cfg_scale=-1.0), dict(cfg_scale=math.inf), dict(cfg_scale=math.nan), dict(classes=["giraffe"]),
           dict(classes=[5]), dict(classes=["-1"]), dict(classes=[" , "]), dict(classes="dog,it's"),
           dict(steps=201)]


@pytest.mark.parametrize("run", REFUSED, ids=[",".join(f"{k}={v}" for k, v in r.items()) for r in REFUSED])
def test_refuses_what_python_refuses_in_its_words(run):
    py, cpp = both(ToyDenoiser(config()))
    assert _message(lambda: cpp(**run)) == _message(lambda: py(**run))


def test_refuses_runs_beyond_memory_and_unconditional_settings():
    py, cpp = both(ToyDenoiser(config()))
    # the available memory moves between the calls: compare up to the number
    expected = _message(lambda: py(num_images=10**14))
    assert _message(lambda: cpp(num_images=10**14)).split(" GiB")[0] == expected.split(" GiB")[0]
    assert expected.startswith("100000000000000 images of 6x6 need about")
    py, cpp = both(ToyDenoiser(config(num_classes=0)))
    for run in (dict(classes=["0"]), dict(cfg_scale=2.0)):
        assert _message(lambda: cpp(**run)) == _message(lambda: py(**run))


def test_refuses_decoders_and_tiles_as_python():
    pixel = ToyDenoiser(config())
    latent = ToyDenoiser(config(latent=True))
    for denoiser, decoder, init in ((pixel, None, dict(vae_tile=8)), (pixel, ToyDecoder(), {}),
                                    (latent, ToyDecoder(), dict(vae_tile=0)),
                                    (latent, ToyDecoder(), dict(vae_tile=4, vae_tile_overlap=4)),
                                    (latent, ToyDecoder(max_tile=4), dict(vae_tile=5))):
        assert (_message(lambda: _C.Pipeline(denoiser, decoder, **init))
                == _message(lambda: drwkv.Pipeline(denoiser, decoder, **init)))
    assert "is a latent model: it needs its VAE decoder" in _message(lambda: _C.Pipeline(latent))


def test_non_finite_samples_stop_with_pythons_message():
    class Broken(ToyDenoiser):
        def forward(self, x, t, y):
            return np.where(t[:, None, None, None] < 100, np.inf, super().forward(x, t, y)).astype(np.float32)

    py, cpp = both(Broken(config()))
    with pytest.raises(RuntimeError) as cpp_error:
        cpp(num_images=3, steps=4, first_image=7, clip_x0=False, cfg_scale=1.0)
    with pytest.raises(RuntimeError) as py_error:
        py(num_images=3, steps=4, first_image=7, clip_x0=False, cfg_scale=1.0)
    assert str(cpp_error.value) == str(py_error.value)
    assert "at step 3 of 4 (images 7..9)" in str(cpp_error.value)


def test_python_float_is_repr():
    rng = np.random.default_rng(1)
    values = [0.0, -0.0, 1.0, 1.5, 2.0, 0.1, 1e-4, 1e-5, 9.999e-5, 1e15, 1e16, 123456789012345678.0, 5e-324,
              1.7976931348623157e308, math.inf, -math.inf, math.nan, 1 / 3, 2.5e-7, 100.0]
    values += list(rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200))
    for value in values:
        assert _C.python_float(value) == repr(float(value))


def _text_chunks(png):
    """(type, data) of every tEXt and iTXt chunk, in file order."""
    chunks, at = [], 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind in (b"tEXt", b"iTXt"):
            chunks.append((kind, png[at + 8:at + 8 + length]))
        at += 12 + length
    return chunks


SETTINGS = [
    dict(sampler="ddim", eta=0.0, cfg_scale=1.5, clip_x0=True, class_names=NAMES, conditional=True),
    dict(sampler="dpm++2m", eta=0.0, cfg_scale=2.0, clip_x0=False, class_names=["café au lait", "a, b: \"c\"",
                                                                               "smile 🙂", "tab\there"],
         conditional=True, vae_decoder="x.vae_decoder.plan", vae_tile=16, vae_tile_overlap=4),
    dict(sampler="ddim", eta=1e-05, cfg_scale=1.0, clip_x0=True, class_names=[], conditional=False),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=["plain", "quoted-unicode-vae", "unconditional"])
def test_png_text_equals_pythons(settings, tmp_path):
    args = dict(software="drwkv_generate", model="Toy/2", artifact="toy: v1.plan", backend="tensorrt", steps=20,
                seed=2**64 - 1, batch_size=16, size=(6, 4), **settings)
    py, cpp = RunSettings(**args), _C.RunSettings(**args)
    labels = [0, 0, 0] if not settings["conditional"] else [1, 2, 3, 0, 7]
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for py_text, cpp_text in ((py.grid_text(labels, 2**64 - 6, 3), cpp.grid_text(labels, 2**64 - 6, 3)),
                              (py.image_text(41, labels[1]), cpp.image_text(41, labels[1]))):
        assert cpp_text == [(key, str(value)) for key, value in py_text.items()]
        save_png(tmp_path / "py.png", image, py_text)
        cpp_png = _C.encode_png(image, cpp_text)
        assert _text_chunks(cpp_png) == _text_chunks((tmp_path / "py.png").read_bytes())
        with Image.open(io.BytesIO(cpp_png)) as read:
            read.load()
            np.testing.assert_array_equal(np.asarray(read), image)
            assert read.text == {key: str(value) for key, value in py_text.items()}
    for index, label in ((7, labels[0]), (12345, labels[-1])):
        assert cpp.image_file_name(index, label) == py.image_file_name(index, label)


def test_grid_equals_pythons():
    images = np.random.default_rng(2).integers(0, 256, (7, 3, 5, 3), dtype=np.uint8)
    for nrow in (0, 1, 3, 7):
        np.testing.assert_array_equal(_C.make_grid(images, nrow), make_grid(images, nrow or None))
