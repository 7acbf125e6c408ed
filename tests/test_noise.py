"""The counter-based sampling noise (drwkv.noise): Philox4x32-10 against Random123's known answers, the
documented counter layout, the float64 log/cos/sin against numpy's, the normal distribution, and
independence from the batch; then the C++ generator (drwkv._C) bit for bit against the numpy one, and
the C++ sampling loop against drwkv.samplers.sample."""
import numpy as np
import pytest

from drwkv import _C, noise
from drwkv.noise import box_muller, philox4x32_10, standard_normal
from drwkv.samplers import make_sampler, sample
from drwkv.schedule import Schedule

# Random123's kat_vectors for philox4x32 with 10 rounds: (counter, key, output).
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

# Words where the reductions change branch: 0, powers of two, quarter-turn boundaries, the top.
EDGE_WORDS = np.array([0, 1, 2, 3, (1 << 29) - 1, 1 << 29, (1 << 29) + 1, 1 << 30, (1 << 30) + (1 << 29),
                       1 << 31, (1 << 31) + (1 << 29) - 1, 3 << 30, (3 << 30) + (1 << 29) - 1,
                       (3 << 30) + (1 << 29), 0xB504F333, 0xB504F334, 0x6A09E667, (1 << 32) - 2, (1 << 32) - 1],
                      dtype=np.uint32)


def _words(n, seed=0):
    return np.concatenate([np.random.default_rng(seed).integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32),
                           EDGE_WORDS])


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_philox_matches_random123_known_answers(counter, key, expected):
    assert tuple(int(w) for w in philox4x32_10(counter, key)) == expected


def test_log_cos_sin_are_float64_accurate():
    a = _words(2_000_000)
    u = (a.astype(np.float64) + 1.0) / 2.0 ** 32
    log = noise.log_uniform(a)
    reference = np.log(u)
    assert np.all(np.abs(log - reference) <= 1e-15 * np.maximum(np.abs(reference), 1e-3))
    assert noise.log_uniform(np.uint32(0xFFFFFFFF)) == 0.0  # u = 1
    cos, sin = noise.cos_sin_turn(a)
    theta = 2.0 * np.pi * (a.astype(np.float64) / 2.0 ** 32)
    assert np.abs(cos - np.cos(theta)).max() < 2e-15 and np.abs(sin - np.sin(theta)).max() < 2e-15


def test_draws_are_standard_normal():
    z = standard_normal(11, np.arange(64), 3, (4, 64, 64)).astype(np.float64).ravel()  # 1M draws
    n = z.size
    assert abs(z.mean()) < 5 / np.sqrt(n) and abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs((z ** 3).mean()) < 5 * np.sqrt(15 / n) and abs((z ** 4).mean() - 3) < 5 * np.sqrt(96 / n)
    for k, p in ((1, 0.6826894921370859), (2, 0.9544997361036416), (3, 0.9973002039367398)):
        assert abs((np.abs(z) < k).mean() - p) < 5 * np.sqrt(p * (1 - p) / n)
    assert np.abs(z).max() <= np.sqrt(64 * np.log(2))
    # neighbouring elements of one pair (cos, sin of the same radius) are uncorrelated
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / np.sqrt(n / 2)


def test_documented_counter_layout():
    seed, image, step = (7 << 32) + 12345, (3 << 32) + 99, 41
    z = standard_normal(seed, [image], step, (2, 3, 5)).ravel()  # 30 elements: blocks 0 .. 7, 2 surplus
    key = (seed & 0xFFFFFFFF, seed >> 32)
    for block in range(8):
        w = philox4x32_10((block, step, image & 0xFFFFFFFF, image >> 32), key)
        expected = np.float32(np.concatenate([box_muller(w[0], w[1]), box_muller(w[2], w[3])]))
        n = min(4, 30 - 4 * block)
        np.testing.assert_array_equal(z[4 * block:4 * block + n], expected[:n])


def test_an_image_depends_on_its_own_index_only():
    shape = (3, 5, 7)
    batch = standard_normal(5, [9, 0, 2 ** 40, 9], 2, shape)
    assert batch.dtype == np.float32 and batch.shape == (4, 3, 5, 7)
    for k, image in enumerate([9, 0, 2 ** 40, 9]):
        np.testing.assert_array_equal(batch[k], standard_normal(5, [image], 2, shape)[0])
    np.testing.assert_array_equal(batch[0], batch[3])
    # element e is the same whatever the shape: a smaller image is a prefix of a larger one
    np.testing.assert_array_equal(standard_normal(5, [9], 2, (105,))[0], batch[0].ravel())
    np.testing.assert_array_equal(standard_normal(5, [9], 2, (7,))[0], batch[0].ravel()[:7])
    others = [standard_normal(5, [1], 2, shape), standard_normal(6, [9], 2, shape),
              standard_normal(5 + (1 << 32), [9], 2, shape), standard_normal(5, [9 + (1 << 32)], 2, shape),
              standard_normal(5, [9], 3, shape)]
    for other in others:  # image, seed (both words), image high word, step each change every draw
        assert not np.any(other[0] == batch[0])
    assert standard_normal(5, [], 0, shape).shape == (0, 3, 5, 7)


@pytest.mark.parametrize("bad,message", [
    (dict(seed=-1), "seed must be an integer in"), (dict(seed=1 << 64), "seed must be an integer in"),
    (dict(step=-1), "noise step must be in"), (dict(step=1 << 32), "noise step must be in"),
    (dict(images=[-1]), "non-negative integer"), (dict(images=[[0]]), "1-D array"),
    (dict(images=[0.5]), "non-negative integer")])
def test_bad_arguments(bad, message):
    args = dict(seed=0, images=[0], step=0, shape=(2, 2)) | bad
    with pytest.raises(ValueError, match=message):
        standard_normal(**args)


class PerImage:
    """A denoiser that treats each image on its own (as a real one does), recording nothing."""

    config = {"in_channels": 2, "image_size": 5, "num_classes": 3, "learn_sigma": True}

    def __call__(self, x, t, y):
        eps = np.tanh(0.7 * x + 0.1 * y.reshape(-1, 1, 1, 1) - t.reshape(-1, 1, 1, 1) / 2000)
        v = np.tanh(0.3 * x - 0.2)
        return np.concatenate([eps, v], axis=1).astype(np.float32)


class NoiseRecorder:
    """Wraps a sampler and keeps the noise each step is given."""

    def __init__(self, sampler):
        self.sampler, self.noise = sampler, []

    def __getattr__(self, name):
        return getattr(self.sampler, name)

    def step(self, i, x, model_out, noise=None):
        self.noise.append(noise)
        return self.sampler.step(i, x, model_out, noise)


def test_sample_takes_noise_step_i_plus_1_at_step_i():
    recorder = NoiseRecorder(make_sampler("ddpm", Schedule.linear(), 4))
    sample(PerImage(), recorder, [0, 1, 2], seed=3, first_image=10)
    images = np.arange(10, 13)
    for i, given in enumerate(recorder.noise):
        np.testing.assert_array_equal(given, standard_normal(3, images, i + 1, (2, 5, 5)))


@pytest.mark.parametrize("name,eta", [("ddpm", 0.0), ("ddim", 0.5), ("dpm++2m", 0.0)])
def test_an_image_does_not_change_with_the_batch_size(name, eta):
    sampler = make_sampler(name, Schedule.linear(), 5, eta=eta)
    labels = np.array([0, 1, 2, 0, 1])
    whole = sample(PerImage(), sampler, labels, seed=8, cfg_scale=1.5)
    parts = [sample(PerImage(), sampler, labels[i:i + 2], seed=8, cfg_scale=1.5, first_image=i) for i in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


# --- the C++ generator and loop (drwkv._C) ---------------------------------------------------------


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint64 if a.dtype == np.float64 else np.uint32)


@pytest.mark.parametrize("counter,key,expected", PHILOX_KAT)
def test_cpp_philox_matches_random123_known_answers(counter, key, expected):
    assert tuple(_C.philox4x32_10(counter, key)) == expected


def test_cpp_philox_matches_numpy_on_random_counters():
    rng = np.random.default_rng(4)
    counters = rng.integers(0, 1 << 32, (300, 4), dtype=np.uint64)
    keys = rng.integers(0, 1 << 32, (300, 2), dtype=np.uint64)
    for counter, key in zip(counters, keys):
        expected = philox4x32_10(counter, key)
        assert list(_C.philox4x32_10([int(c) for c in counter], [int(k) for k in key])) == [int(w) for w in expected]


def test_cpp_box_muller_is_bit_identical_in_float64():
    """4M word pairs, edge words against every edge word included: the float64 values before rounding
    agree in every bit, so their float32 roundings do too."""
    a, b = _words(4_000_000, seed=5), _words(4_000_000, seed=6)
    edges = np.array(np.meshgrid(EDGE_WORDS, EDGE_WORDS)).reshape(2, -1)
    a, b = np.concatenate([a, edges[0]]), np.concatenate([b, edges[1]])
    for ours, theirs in zip(box_muller(a, b), _C.box_muller(a, b)):
        np.testing.assert_array_equal(_bits(ours), _bits(theirs))


@pytest.mark.parametrize("seed,images,step,shape", [
    (0, [0], 0, (1,)), (1, [3], 1, (3,)), (2, [0, 1, 2], 7, (5,)), (3, [4, 0], 2, (2, 3, 5)),
    (12345, list(range(16)), 50, (4, 32, 32)), ((1 << 64) - 1, [(1 << 64) - 1, 1 << 32], (1 << 32) - 1, (3, 7, 9)),
    (1 << 32, [5], 1, (1, 1, 6)), (9, [], 3, (2, 2)), (7, [2], 4, (0,))])
def test_cpp_noise_is_bit_identical(seed, images, step, shape):
    ours, theirs = standard_normal(seed, images, step, shape), _C.standard_normal(seed, images, step, shape)
    assert theirs.dtype == np.float32 and theirs.shape == ours.shape == (len(images),) + shape
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))


def test_cpp_noise_is_bit_identical_over_a_million_draws():
    shape = (4, 64, 64)
    ours, theirs = standard_normal(77, np.arange(8, 72), 12, shape), _C.standard_normal(77, list(range(8, 72)), 12, shape)
    np.testing.assert_array_equal(_bits(ours), _bits(theirs))


class SmoothDenoiser:
    """A smooth deterministic stand-in for a network, per image: eps from x, t and y; v in (-1, 1)."""

    def __init__(self, learn_sigma, num_classes=4, guidance_channels=None, channels=3, size=6):
        self.config = {"in_channels": channels, "image_size": size, "num_classes": num_classes,
                       "learn_sigma": learn_sigma, "guidance_channels": guidance_channels}

    def __call__(self, x, t, y):
        tt = (t / 1000.0).astype(np.float32).reshape(-1, 1, 1, 1)
        yy = (y / 4.0).astype(np.float32).reshape(-1, 1, 1, 1)
        eps = np.tanh(np.float32(0.8) * x + np.float32(0.3) * tt - np.float32(0.2) * yy
                      + np.float32(0.1) * np.roll(x, 1, axis=-1))
        if not self.config["learn_sigma"]:
            return eps
        return np.concatenate([eps, np.tanh(np.float32(0.5) * x - tt + np.float32(0.4) * yy)], axis=1)

    def cpp_shape(self):
        c = self.config
        return _C.DenoiserShape(c["in_channels"], c["image_size"], c["in_channels"] * (2 if c["learn_sigma"] else 1),
                                c["num_classes"], c["guidance_channels"] or 0)


LOOP_CASES = [("ddpm", 0.0), ("ddim", 0.0), ("ddim", 0.6), ("dpm++2m", 0.0)]


@pytest.mark.parametrize("learn_sigma", [True, False], ids=["learned", "fixed"])
@pytest.mark.parametrize("cfg_scale,guidance_channels", [(1.0, None), (1.5, None), (2.0, 2)],
                         ids=["nocfg", "cfg", "cfg-2ch"])
@pytest.mark.parametrize("name,eta", LOOP_CASES, ids=[f"{n}-eta{e}" for n, e in LOOP_CASES])
def test_cpp_loop_matches_the_python_loop(name, eta, cfg_scale, guidance_channels, learn_sigma):
    denoiser = SmoothDenoiser(learn_sigma, guidance_channels=guidance_channels)
    steps, labels, seed, first = 12, np.array([0, 3, 1, 2, 0]), (1 << 40) + 3, 6
    ours = sample(denoiser, make_sampler(name, Schedule.linear(), steps, eta=eta), labels, seed, cfg_scale,
                  first_image=first)
    theirs = _C.sample(denoiser, denoiser.cpp_shape(), _C.make_sampler(name, steps, eta=eta), labels, cfg_scale, seed,
                       first)
    assert theirs.dtype == np.float32 and theirs.shape == ours.shape == (5, 3, 6, 6)
    if name == "ddpm" and learn_sigma:
        # numpy's float32 exp of the learned variance may differ from the C library's in the last bit
        # (see test_cpp_samplers); everything else is the same float32 operations on the same noise
        np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-5)
    else:
        np.testing.assert_array_equal(_bits(theirs), _bits(ours))


def test_cpp_loop_images_do_not_change_with_the_batch():
    denoiser = SmoothDenoiser(learn_sigma=False)
    labels = np.array([0, 1, 2, 3, 0])
    whole = _C.sample(denoiser, denoiser.cpp_shape(), _C.make_sampler("ddpm", 6), labels, 1.5, 4)
    parts = [_C.sample(denoiser, denoiser.cpp_shape(), _C.make_sampler("ddpm", 6), labels[i:i + 2], 1.5, 4, i)
             for i in (0, 2, 4)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_cpp_loop_errors_are_value_errors():
    denoiser = SmoothDenoiser(learn_sigma=False, num_classes=0)
    with pytest.raises(ValueError, match="unconditional model"):
        _C.sample(denoiser, denoiser.cpp_shape(), _C.make_sampler("ddim", 3), [0], 1.5, 0)
    wrong = SmoothDenoiser(learn_sigma=False)
    shape = _C.DenoiserShape(3, 6, 6, 4)  # claims learned variance; the denoiser returns C channels
    with pytest.raises(ValueError, match="must return"):
        _C.sample(wrong, shape, _C.make_sampler("ddim", 3), [0], 1.0, 0)
