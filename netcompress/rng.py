"""Caffe's global random stream, so that `random_seed` gives Caffe's initial weights.

Caffe seeds one `boost::mt19937` with `random_seed` (plus the solver rank) and draws every
filler from it in layer order; a few layers draw seeds from it at set-up (data layers start a
prefetch thread, a transformer that mirrors or crops makes its own generator). numpy's legacy
MT19937 is the same engine with the same seeding, and Boost's uniform and Bernoulli draws are
reproduced below, so constant, uniform, xavier, positive_unitball and bilinear fillers come out
bit-identical to Caffe's (checked against Caffe's logged iteration-0 loss of LeNet). Gaussian
draws (gaussian, msra fillers) come from the same stream but not with Boost's ziggurat, so they
are reproducible, not Caffe's.
"""
from __future__ import annotations

import os

import numpy as np

from .proto import caffe_pb2 as pb

__all__ = ["CaffeRNG", "transform_setup_draws"]

_TWO32 = np.float32(4294967296.0)


class CaffeRNG:
    """Caffe's `caffe_rng()`: a boost::mt19937 seeded with a 32-bit seed."""

    def __init__(self, seed: int | None = None):
        if seed is None or seed < 0:
            seed = int.from_bytes(os.urandom(4), "little")  # Caffe's cluster_seedgen()
        self.seed = int(seed) & 0xFFFFFFFF
        self._rs = np.random.RandomState(self.seed)
        self.consumed = 0  # engine outputs taken so far (rand_u32 only)

    def rand_u32(self, n: int | None = None):
        """Raw engine outputs (Caffe's caffe_rng_rand())."""
        if n is None:
            self.consumed += 1
            return int(self._rs.randint(0, 2 ** 32, dtype=np.uint32))
        self.consumed += n
        return self._rs.randint(0, 2 ** 32, size=n, dtype=np.uint32)

    def skip(self, n: int) -> None:
        if n > 0:
            self.rand_u32(n)

    def uniform(self, n: int, a: float, b: float) -> np.ndarray:
        """float32 draws in [a, b] as caffe_rng_uniform<float>: Boost's uniform_real on
        [a, nextafter(b)), i.e. u32 / 2^32 * (b' - a) + a in float, redrawn when it reaches b'."""
        a32 = np.float32(a)
        b32 = np.nextafter(np.float32(b), np.float32(np.inf))
        with np.errstate(over="ignore", invalid="ignore"):
            width = b32 - a32
        if not (np.isfinite(a32) and np.isfinite(width) and width > 0):
            # Caffe's CHECK_LE(a, b); an inverted, infinite or NaN range would redraw forever.
            raise ValueError(f"uniform: need finite a <= b, got a = {a}, b = {b}")
        out = np.empty(n, np.float32)
        i = 0
        while i < n:
            raw = self.rand_u32(n - i).astype(np.float32)
            r = raw / _TWO32 * (b32 - a32) + a32
            bad = np.flatnonzero(r >= b32)
            k = len(r) if len(bad) == 0 else int(bad[0])
            out[i:i + k] = r[:k]
            i += k
            if k < len(r):
                # the rejected draw is consumed; the next draws continue from the one after it
                self._rewind(len(r) - k - 1)
        return out

    def _rewind(self, n: int) -> None:
        # Draws taken past a rejection go back to the stream: replay it from the seed (a
        # rejection needs a float32 rounding up to 2^32, about one draw in 10^9).
        if n <= 0:
            return
        target = self.consumed - n
        self._rs = np.random.RandomState(self.seed)
        self.consumed = 0
        self.skip(target)

    def normal(self, n: int, mean: float, std: float) -> np.ndarray:
        """float32 Gaussian draws from this stream (Box-Muller on its uniforms; not Boost's
        ziggurat, see the module doc)."""
        m = (n + 1) // 2
        u = self.rand_u32(2 * m).astype(np.float64)
        u1 = (u[0::2] + 1.0) / 4294967297.0
        u2 = u[1::2] / 4294967296.0
        rad = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate([rad * np.cos(2 * np.pi * u2), rad * np.sin(2 * np.pi * u2)])[:n]
        return (z * std + mean).astype(np.float32)

    def bernoulli(self, n: int, p: float) -> np.ndarray:
        """0/1 draws as caffe_rng_bernoulli: Boost's bernoulli_distribution<float>."""
        if p <= 0:
            return np.zeros(n, np.float32)
        u = self.rand_u32(n).astype(np.float32)
        return (u <= np.float32(p) * np.float32(4294967295.0)).astype(np.float32)


def transform_setup_draws(tp: pb.TransformationParameter, phase: int) -> int:
    """Values a data layer's DataTransformer takes from Caffe's global stream at set-up: one seed
    when it mirrors, or crops in TRAIN. Each data layer class adds its own draws (its
    `setup_draws` classmethod: ImageData's shuffle and rand_skip, a prefetch thread's seed)."""
    return 1 if (tp.mirror or (phase == pb.TRAIN and tp.crop_size)) else 0
