"""The counter-based sampling noise (drwkv.noise): Philox4x32-10 against Random123's known answers, the
documented counter layout, the float64 log/cos/sin against numpy's, the normal distribution, and
independence from the batch; then the C++ generator (drwkv._C) bit for bit against the numpy one, and
the C++ sampling loop against drwkv.samplers.sample."""
import numpy as np
import pytest

from drwkv import noise
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
        expected = np.concatenate([np.ravel(box_muller(w[0], w[1])), np.ravel(box_muller(w[2], w[3]))])
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
