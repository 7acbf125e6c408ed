"""The sampling noise: a counter-based generator, so that a seed means the same image everywhere.

Every standard normal a sampling run uses is a pure function of (seed, image, step, element):

    image    the image's global index in the run (0, 1, 2, ... over all batches), so an image does not
             change with the batch size or its place in a batch
    step     0 for the initial x_T, i + 1 for the noise of sampler step i
    element  the flat (C-order) index in the image's [C, H, W]

This module (numpy, vectorised) and cpp/runtime/src/noise.cpp (C++) compute it bit for bit alike;
the test suite compares them over millions of draws.

Generator. Philox4x32-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3"; the
philox4x32 of Random123 with 10 rounds, checked against its known-answer vectors) maps a 128-bit
counter under a 64-bit key to four 32-bit words:

    key      = (seed mod 2^32, seed div 2^32)                         seed in [0, 2^64)
    counter  = (block, step, image mod 2^32, image div 2^32)          block = element div 4
    words    (w0, w1, w2, w3) = philox4x32_10(counter, key)
    elements 4 block + (0, 1) = box_muller(w0, w1),  4 block + (2, 3) = box_muller(w2, w3)

(an image of n elements uses blocks 0 .. ceil(n / 4) - 1 and drops the surplus). Box-Muller on two
words (a, b), in float64, rounded to float32 at the end:

    u        = (a + 1) / 2^32                     in (0, 1]
    r        = sqrt(-2 log u)
    theta    = 2 pi b / 2^32
    (z0, z1) = (r cos theta, r sin theta)

log, cos and sin are not taken from numpy or the C library (their last bits differ between
libraries and CPUs) but computed here from +, -, *, / and sqrt only, which IEEE 754 rounds
correctly, in the same order in both languages (the C++ side is built without fused multiply-adds):

    log u:       a + 1 = m 2^e (frexp, exact), m in [sqrt(1/2), sqrt(2)); s = (m - 1) / (m + 1);
                 log u = (e - 32) ln 2 + 2 s (1 + s^2/3 + s^4/5 + ... + s^20/21)
    cos, sin:    b = n 2^30 + d with n = round(b / 2^30), d in [-2^29, 2^29) (integers, exact);
                 x = d pi / 2^31 in [-pi/4, pi/4); Taylor series of sin x (to x^17) and cos x (to
                 x^18); then rotated by the quarter turns n

Both series are truncated below float64 rounding (tested against np.log, np.sin, np.cos to 1e-15), so
the draws are Box-Muller normals to float32 precision; |z| <= sqrt(64 ln 2) = 6.66.
"""
import numpy as np

#: Philox4x32 round multipliers and Weyl key increments (Random123).
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
PHILOX_ROUNDS = 10

_MASK32 = 0xFFFFFFFF
_LN2 = 0.6931471805599453
_SQRT_HALF = 0.7071067811865476
_PI_OVER_2_31 = 1.4629180792671596e-09  # pi / 2^31, exact scaling of float64 pi
# 1 / (2k + 1), k = 0 .. 10: log m = 2 atanh s = 2 s sum_k s^(2k) / (2k + 1)
_ATANH = (1.0, 0.3333333333333333, 0.2, 0.14285714285714285, 0.1111111111111111, 0.09090909090909091,
          0.07692307692307693, 0.06666666666666667, 0.058823529411764705, 0.05263157894736842,
          0.047619047619047616)
# (-1)^k / (2k + 1)!, k = 0 .. 8, and (-1)^k / (2k)!, k = 0 .. 9
_SIN = (1.0, -0.16666666666666666, 0.008333333333333333, -0.0001984126984126984, 2.7557319223985893e-06,
        -2.505210838544172e-08, 1.6059043836821613e-10, -7.647163731819816e-13, 2.8114572543455206e-15)
_COS = (1.0, -0.5, 0.041666666666666664, -0.001388888888888889, 2.48015873015873e-05, -2.755731922398589e-07,
        2.08767569878681e-09, -1.1470745597729725e-11, 4.779477332387385e-14, -1.5619206968586225e-16)


def philox4x32_10(counter, key):
    """Philox4x32-10 of counters under one key: counter uint [..., 4] (32-bit words), key (k0, k1) ints.

    Returns uint32 [..., 4]. Word 0 of the counter is its lowest (Random123's ctr.v[0]).
    """
    c = np.asarray(counter, dtype=np.uint64)
    c0, c1, c2, c3 = (c[..., i] for i in range(4))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, mask = np.uint64(PHILOX_M[0]), np.uint64(PHILOX_M[1]), np.uint64(_MASK32)
    for _ in range(PHILOX_ROUNDS):
        p0, p1 = c0 * m0, c2 * m1  # exact: both factors are below 2^32
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & mask,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & mask)
        k0, k1 = (k0 + PHILOX_W[0]) & _MASK32, (k1 + PHILOX_W[1]) & _MASK32
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def _horner(x, coefficients):
    """c0 + x (c1 + x (c2 + ...)), from the innermost term out."""
    y = coefficients[-1]
    for c in coefficients[-2::-1]:
        y = y * x + c
    return y


def log_uniform(a):
    """log((a + 1) / 2^32) in float64 for uint32 words a (see the module docstring)."""
    m, e = np.frexp(np.asarray(a, dtype=np.float64) + 1.0)  # a + 1 = m 2^e, m in [1/2, 1)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = np.where(low, e - 1, e)
    f = m - 1.0  # exact (Sterbenz)
    s = f / (f + 2.0)
    return (e - 32).astype(np.float64) * _LN2 + 2.0 * s * _horner(s * s, _ATANH)


def cos_sin_turn(b):
    """(cos, sin) of theta = 2 pi b / 2^32 in float64 for uint32 words b (see the module docstring)."""
    b = np.asarray(b, dtype=np.int64)
    n = (b + (1 << 29)) >> 30  # the nearest quarter turn, 0 .. 4
    x = (b - (n << 30)).astype(np.float64) * _PI_OVER_2_31
    x2 = x * x
    s, c = x * _horner(x2, _SIN), _horner(x2, _COS)
    n &= 3
    cos = np.select([n == 0, n == 1, n == 2], [c, -s, -c], s)
    sin = np.select([n == 0, n == 1, n == 2], [s, c, -s], -c)
    return cos, sin


def box_muller(a, b):
    """Two standard normals from uint32 words a, b in float64 (the noise rounds them to float32):
    r cos theta and r sin theta."""
    r = np.sqrt(-2.0 * log_uniform(a))
    cos, sin = cos_sin_turn(b)
    return r * cos, r * sin


def _image_indices(images):
    """uint64 [N] from an integer array or a sequence of ints (numpy would turn ints above 2^63 into floats)."""
    message = "images must be a 1-D array of non-negative integer indices below 2^64"
    if isinstance(images, np.ndarray):
        if images.ndim != 1 or (images.size and (images.dtype.kind not in "iu" or images.min() < 0)):
            raise ValueError(message)
        return images.astype(np.uint64)
    images = list(images)
    if not all(isinstance(i, (int, np.integer)) and 0 <= i < 1 << 64 for i in images):
        raise ValueError(message)
    return np.array([int(i) for i in images], dtype=np.uint64)


def standard_normal(seed, images, step, shape):
    """The noise of ``images`` (global indices) at ``step``: float32 [len(images), *shape].

    Row k is the same whatever the other rows are: it depends on (seed, images[k], step) alone.
    step 0 is x_T; step i + 1 is the noise of sampler step i.
    """
    seed, step = int(seed), int(step)
    if not 0 <= seed < 1 << 64:
        raise ValueError(f"seed must be an integer in [0, 2^64), got {seed}")
    if not 0 <= step < 1 << 32:
        raise ValueError(f"noise step must be in [0, 2^32), got {step}")
    images = _image_indices(images)
    shape = tuple(int(n) for n in shape)
    numel = int(np.prod(shape, dtype=np.int64))
    blocks = -(-numel // 4)
    if blocks > 1 << 32:
        raise ValueError(f"an image of {numel} elements is more than the noise generator addresses (2^34)")
    counter = np.empty((len(images), blocks, 4), dtype=np.uint64)
    counter[..., 0] = np.arange(blocks, dtype=np.uint64)
    counter[..., 1] = step
    counter[..., 2] = (images & np.uint64(_MASK32))[:, None]
    counter[..., 3] = (images >> np.uint64(32))[:, None]
    w = philox4x32_10(counter, (seed & _MASK32, seed >> 32))
    z = np.empty((len(images), blocks, 4), dtype=np.float32)
    z[..., 0], z[..., 1] = box_muller(w[..., 0], w[..., 1])
    z[..., 2], z[..., 3] = box_muller(w[..., 2], w[..., 3])
    return z.reshape(len(images), 4 * blocks)[:, :numel].reshape((len(images),) + shape)
