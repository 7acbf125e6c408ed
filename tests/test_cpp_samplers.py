"""The C++ samplers (cpp/runtime, bound into drwkv._C) against the numpy samplers (drwkv.samplers).

Both get identical inputs at every step (x, model output, noise) from a synthetic deterministic
denoiser, so each step is compared on its own: max abs difference < 1e-6 (bit-identical except for
DDPM's learned variance, see _tolerance). Also the PNG writer (decoded by Pillow) and the
float -> uint8 image conversion.
"""
import io

import numpy as np
import pytest
from PIL import Image

from drwkv import _C
from drwkv.png import to_uint8
from drwkv.samplers import guided_output, make_sampler
from drwkv.schedule import Schedule

B, C, SIZE, NUM_CLASSES = 3, 3, 8, 10
TOL = 1e-6


class SyntheticDenoiser:
    """A smooth deterministic stand-in for the network: eps depends on x, t and y; v in (-1, 1)."""

    def __init__(self, learn_sigma):
        self.learn_sigma = learn_sigma
        self.raw = None  # the last raw output, to feed the C++ guidance combine the same numbers

    def __call__(self, x, t, y):
        tt = (t.astype(np.float32) / 1000.0)[:, None, None, None]
        yy = (y.astype(np.float32) / NUM_CLASSES)[:, None, None, None]
        eps = np.tanh(0.8 * x + 0.3 * tt - 0.2 * yy + 0.1 * np.roll(x, 1, axis=-1)).astype(np.float32)
        out = eps
        if self.learn_sigma:
            out = np.concatenate([eps, np.tanh(0.5 * x - tt + 0.4 * yy).astype(np.float32)], axis=1)
        self.raw = out
        return out


def _tolerance(x):
    """1e-6, or one float32 spacing at the largest |x| when that is coarser (|x| >= 8, unclipped x0).

    DDPM with learned variance takes exp of a float32 array; numpy's SIMD float32 exp is within an
    ulp of the C library's but not identical, so those results can differ in the last bit, which is
    more than 1e-6 once |x| reaches 8. Everything else is bit-identical (checked below).
    """
    return max(TOL, float(np.spacing(np.abs(x).max().astype(np.float32))))


CASES = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.7), ("dpm++2m", 0.0)]


@pytest.mark.parametrize("clip_x0", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("learn_sigma", [True, False], ids=["learned", "fixed"])
@pytest.mark.parametrize("cfg_scale", [1.0, 1.5], ids=["nocfg", "cfg"])
@pytest.mark.parametrize("name,eta", CASES, ids=[f"{n}-eta{e}" for n, e in CASES])
@pytest.mark.parametrize("steps", [1, 2, 25])
def test_every_step_matches_numpy(name, eta, cfg_scale, learn_sigma, clip_x0, steps):
    py = make_sampler(name, Schedule.linear(), steps, eta=eta, clip_x0=clip_x0)
    cpp = _C.make_sampler(name, steps, eta=eta, clip_x0=clip_x0)
    assert (cpp.name, cpp.steps, cpp.stochastic) == (py.name, py.steps, py.stochastic)
    assert [cpp.timestep(i) for i in range(steps)] == [py.timestep(i) for i in range(steps)]

    denoiser = SyntheticDenoiser(learn_sigma)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((B, C, SIZE, SIZE), dtype=np.float32)
    y = np.array([0, 7, NUM_CLASSES], dtype=np.int64)  # the last one is the null class
    py.reset()
    cpp.reset()
    for i in range(steps):
        t = np.full(B, py.timestep(i), dtype=np.float32)
        out = guided_output(denoiser, x, t, y, cfg_scale, NUM_CLASSES)
        if cfg_scale != 1.0:
            guided = _C.guided_output(denoiser.raw, cfg_scale, C)
            assert np.abs(guided - out).max() < TOL
        noise = rng.standard_normal(x.shape, dtype=np.float32) if py.stochastic else None
        x_py = py.step(i, x, out, noise)
        x_cpp = cpp.step(i, x, out, noise)
        assert x_cpp.dtype == np.float32 and x_cpp.shape == x_py.shape
        diff = np.abs(x_cpp.astype(np.float64) - x_py).max()
        assert diff < _tolerance(x_py), f"step {i} (timestep {py.timestep(i)}): max abs diff {diff:.3g}"
        if not (name == "ddpm" and learn_sigma):  # no float32 exp involved: the same float32 operations
            np.testing.assert_array_equal(x_cpp, x_py)
        x = x_py
    assert np.isfinite(x).all()


@pytest.mark.parametrize("name,eta", CASES, ids=[f"{n}-eta{e}" for n, e in CASES])
def test_whole_trajectory_matches_numpy(name, eta):
    """Each sampler on its own trajectory (x fed back) over 50 steps ends where numpy ends."""
    steps, denoiser = 50, SyntheticDenoiser(learn_sigma=True)
    py = make_sampler(name, Schedule.linear(), steps, eta=eta)
    cpp = _C.make_sampler(name, steps, eta=eta)
    rng = np.random.default_rng(2)
    x_py = x_cpp = rng.standard_normal((B, C, SIZE, SIZE), dtype=np.float32)
    y = np.array([1, 2, 3], dtype=np.int64)
    for i in range(steps):
        t = np.full(B, py.timestep(i), dtype=np.float32)
        noise = rng.standard_normal(x_py.shape, dtype=np.float32) if py.stochastic else None
        x_py = py.step(i, x_py, denoiser(x_py, t, y), noise)
        x_cpp = cpp.step(i, x_cpp, denoiser(x_cpp, t, y), noise)
    assert np.abs(x_cpp - x_py).max() < 1e-5


def test_other_schedule_parameters_are_used():
    py = make_sampler("ddim", Schedule.linear(500, 2e-4, 0.03), 20)
    cpp = _C.make_sampler("ddim", 20, num_timesteps=500, beta_start=2e-4, beta_end=0.03)
    assert [cpp.timestep(i) for i in range(20)] == [py.timestep(i) for i in range(20)]
    x = np.linspace(-2, 2, B * C * SIZE * SIZE, dtype=np.float32).reshape(B, C, SIZE, SIZE)
    out = np.tanh(x)
    assert np.abs(cpp.step(3, x, out) - py.step(3, x, out)).max() < TOL


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        _C.make_sampler("euler", 10)
    with pytest.raises(ValueError, match="steps must be between 1 and 1000"):
        _C.make_sampler("ddim", 0)
    with pytest.raises(ValueError, match="eta must be between 0 and 1"):
        _C.make_sampler("ddim", 10, eta=1.5)
    sampler = _C.make_sampler("ddpm", 10)
    x = np.zeros((1, C, SIZE, SIZE), np.float32)
    with pytest.raises(ValueError, match="model output has 5 channels; expected 3 or 6"):
        sampler.step(0, x, np.zeros((1, 5, SIZE, SIZE), np.float32), x)
    with pytest.raises(ValueError, match="step 10 out of range for a 10-step sampler"):
        sampler.step(10, x, x, x)
    with pytest.raises(ValueError, match="needs noise"):
        sampler.step(0, x, x)


@pytest.mark.parametrize("shape", [(5, 7), (6, 4, 1), (9, 3, 2), (200, 150, 3), (17, 13, 4)])
def test_png_decodes_to_the_same_pixels(shape):
    pixels = np.random.default_rng(3).integers(0, 256, shape, dtype=np.uint8)  # 200x150x3 needs 2 stored blocks
    png = _C.encode_png(pixels)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        image.load()  # verifies the chunk CRCs and the zlib stream's Adler-32
        decoded = np.asarray(image)
    np.testing.assert_array_equal(decoded.reshape(shape), pixels)


def test_image_to_uint8_matches_the_python_png_path():
    image = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 1.2, 0.998], np.float32).reshape(2, 2, 2)
    np.testing.assert_array_equal(_C.image_to_uint8(image), to_uint8(image[None])[0])
    assert _C.image_to_uint8(np.full((1, 1, 1), np.nan, np.float32))[0, 0, 0] == 0
