"""The compiled normal generator (mesu_snn.kernels.noise): Philox4x32-10 known answers, the Box-Muller
arithmetic against a float64 reference on the same words, the law (moments, Kolmogorov-Smirnov, tails,
independence) with fixed seeds and stated tolerances, reproducibility through the torch generator, and
the torch.randn fallback."""
from __future__ import annotations

import ctypes
import math

import numpy as np
import pytest
import torch

from mesu_snn.kernels import fast_paths, native
from mesu_snn.kernels.noise import standard_normal

needs_lib = pytest.mark.skipif(not native.available(), reason="native loops unavailable (no C++ compiler)")

M0, M1, W0, W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
L = 64          # blocks per chunk of the output layout (RNG_L in native.py)


def philox_ref(key: int, ctr: tuple[int, int, int, int]) -> list[int]:
    """Philox4x32-10 as Random123 defines it (plain Python integers)."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key & 0xFFFFFFFF, key >> 32
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & 0xFFFFFFFF, p1 & 0xFFFFFFFF, ((p0 >> 32) ^ c3 ^ k1) & 0xFFFFFFFF, \
            p0 & 0xFFFFFFFF
        k0, k1 = (k0 + W0) & 0xFFFFFFFF, (k1 + W1) & 0xFFFFFFFF
    return [c0, c1, c2, c3]


def words(key: int, first: int, n: int) -> np.ndarray:
    out = (ctypes.c_uint32 * (4 * n))()
    native.library().philox_words(key, first, n, out)
    return np.frombuffer(out, dtype=np.uint32).reshape(n, 4)


@needs_lib
def test_philox_known_answers():
    # Random123's kat_vectors: philox4x32_10, counter 0, key 0
    assert philox_ref(0, (0, 0, 0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert words(0, 0, 1)[0].tolist() == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    # the loop's words (counter = block index in words 0, 1) equal the reference, keys with both halves set,
    # blocks across a 2^32 boundary
    for key in (1, 0xA4093822299F31D0, 2**63 - 1):
        for first in (0, 5, 2**32 - 3):
            got = words(key, first, 70)
            for i in (0, 1, 63, 64, 69):
                b = first + i
                assert got[i].tolist() == philox_ref(key, (b & 0xFFFFFFFF, b >> 32, 0, 0)), (key, b)


def _reference_normals(key: int, n: int) -> np.ndarray:
    """The documented layout and Box-Muller in float64 from the same Philox words."""
    chunks = -(-n // (4 * L))
    w = words(key, 0, chunks * L).astype(np.float64).reshape(chunks, L, 4)
    s = 2.0 ** -24
    u1 = 1.0 - np.floor(w[..., 0] / 256) * s
    u2 = np.floor(w[..., 1] / 256) * s
    u3 = 1.0 - np.floor(w[..., 2] / 256) * s
    u4 = np.floor(w[..., 3] / 256) * s
    r1, r2 = np.sqrt(-2 * np.log(u1)), np.sqrt(-2 * np.log(u3))
    out = np.concatenate([r1 * np.cos(2 * np.pi * u2), r1 * np.sin(2 * np.pi * u2),
                          r2 * np.cos(2 * np.pi * u4), r2 * np.sin(2 * np.pi * u4)], axis=1)   # (chunks, 4L)
    return out.reshape(-1)[:n]


@needs_lib
@pytest.mark.parametrize("n", [1, 3, 255, 256, 257, 100_003])
def test_normals_equal_float64_box_muller_on_the_same_words(n):
    key = 0x1234_5678_9ABC_DEF0
    out = torch.empty(n)
    native.library().normal_f32(key, out.data_ptr(), n)
    ref = _reference_normals(key, n)
    err = np.abs(out.numpy().astype(np.float64) - ref)
    # float arithmetic (polynomial log, sin, cos; sqrt): within a few float ulps of the exact transform
    assert float(np.max(err / np.maximum(1.0, np.abs(ref)))) < 2e-6


@needs_lib
def test_law_of_the_draws():
    g = torch.Generator().manual_seed(20261203)
    z = standard_normal((2_000_000,), generator=g, dtype=torch.float32, device="cpu").double()
    n = z.numel()
    # moments: standard errors sqrt(1/n), sqrt(2/n), sqrt(6/n), sqrt(96/n); 5 sigma
    assert abs(z.mean()) < 5 * math.sqrt(1 / n)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z ** 3).mean()) < 5 * math.sqrt(15 / n)
    assert abs((z ** 4).mean() - 3) < 5 * math.sqrt(96 / n)
    # Kolmogorov-Smirnov against N(0, 1): D < 1.95 / sqrt(n) (p ≈ 0.001)
    zs = torch.sort(z).values
    cdf = 0.5 * (1 + torch.erf(zs / math.sqrt(2)))
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = torch.maximum(i / n - cdf, cdf - (i - 1) / n).max()
    assert d < 1.95 / math.sqrt(n)
    # tails: P(|z| > 4) = 6.334e-5 (count within 5 sigma of its Poisson mean); |z| <= sqrt(-2 ln 2^-24)
    k = int((z.abs() > 4).sum())
    mu = 6.334e-5 * n
    assert abs(k - mu) < 5 * math.sqrt(mu)
    assert z.abs().max() <= math.sqrt(-2 * math.log(2.0 ** -24)) + 1e-5
    # no correlation between neighbours (the two members of a Box-Muller pair sit L apart) or lags
    for lag in (1, 2, 3, L, 2 * L, 4 * L):
        r = float((z[:-lag] * z[lag:]).mean())
        assert abs(r) < 5 / math.sqrt(n), lag
    # pairs are independent, not only uncorrelated: E[z1^2 z2^2] = 1 for the members of a pair
    zz = z[: n // (4 * L) * 4 * L].view(-1, 4, L)
    assert abs(float((zz[:, 0] ** 2 * zz[:, 1] ** 2).mean()) - 1) < 5 * math.sqrt(8 / zz[:, 0].numel())


@needs_lib
def test_reproducible_through_the_torch_generator():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return [standard_normal((10, 7, 3), generator=g, dtype=torch.float32, device="cpu") for _ in range(3)]
    a, b, c = draw(1), draw(1), draw(2)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2])    # the generator advances
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(3)                                                   # the default generator too
    d = standard_normal((50,), dtype=torch.float32, device="cpu")
    torch.manual_seed(3)
    assert torch.equal(d, standard_normal((50,), dtype=torch.float32, device="cpu"))
    # the draw is a prefix-free stream per key: a larger draw starts with a smaller one's values
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    small = standard_normal((300,), generator=g1, dtype=torch.float32, device="cpu")
    big = standard_normal((1000,), generator=g2, dtype=torch.float32, device="cpu")
    assert torch.equal(small, big[:300])


def test_torch_fallback():
    """float64, native off, a device of None: torch.randn's numbers."""
    for kw in (dict(dtype=torch.float64, device="cpu"), dict(dtype=torch.float32, device=None)):
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(standard_normal((5, 6), generator=g1, **kw),
                           torch.randn((5, 6), generator=g2, dtype=kw["dtype"]))
    with fast_paths(native=False):
        g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(standard_normal((5, 6), generator=g1, dtype=torch.float32, device="cpu"),
                           torch.randn((5, 6), generator=g2))
    assert standard_normal((0, 3), dtype=torch.float32, device="cpu").shape == (0, 3)
