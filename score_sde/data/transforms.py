"""Raw levels -> model inputs: scaling to [-1, 1] / [0, 1] and its inverse, uniform dequantisation,
random flips (`Transform`: per-example randomness keyed by (seed, split, epoch, id)).

Scaling of an integer level k in {0, ..., L-1} (L = ``num_levels``) to x in [0, 1]:
without dequantisation x = k / (L - 1); with uniform dequantisation x = (k + u) / L, u ~ U[0, 1),
so each level keeps its own bin [k / L, (k + 1) / L). Centered data is 2 x - 1.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from score_sde import bpd


# --- scaling (the rules live in score_sde.bpd; these are the data range of `centered`) ---------
def data_range(centered: bool) -> tuple[float, float]:
    """(-1, 1) for centered data, else (0, 1)."""
    return (-1.0, 1.0) if centered else (0.0, 1.0)


def scale(x_uint, num_levels: int, centered: bool) -> np.ndarray:
    """Integer levels k in {0, ..., L-1} -> float32 k / (L - 1) in [0, 1], or 2 k / (L - 1) - 1."""
    return bpd.scale_levels(np.asarray(x_uint), num_levels, data_range(centered))


def dequantize(x_uint, u, num_levels: int, centered: bool) -> np.ndarray:
    """Uniform dequantisation: level k and u in [0, 1) -> float32 (k + u) / L (centered: 2 (.) - 1).

    `score_sde.bpd.dequantize` on numpy arrays: the float32 result is clamped into the level's
    bin [k / L, (k + 1) / L) (scaled, exact edges), so ``inverse_scale(..., dequantized=True)``
    recovers k exactly despite rounding.
    """
    return bpd.dequantize(np.asarray(x_uint), np.asarray(u, np.float32), num_levels, data_range(centered))


def _affine(x01, centered):
    return 2.0 * x01 - 1.0 if centered else x01


def inverse_scale(x, num_levels: int, centered: bool, dequantized: bool = False) -> np.ndarray:
    """Inverse of `scale` (round(x (L - 1))) or of `dequantize` (floor(x L)) -> integer levels.

    Values outside the data range are clipped to {0, ..., L-1}. Returns uint8 when L <= 256
    (images), int32 otherwise.
    """
    x = np.asarray(x, np.float64)
    x01 = (x + 1.0) / 2.0 if centered else x
    if dequantized:  # floor, then corrected against the exact bin edges (float rounding near them)
        k = np.floor(x01 * num_levels)
        k = k - (x < _affine(k / num_levels, centered)) + (x >= _affine((k + 1) / num_levels, centered))
    else:
        k = np.rint(x01 * (num_levels - 1))
    k = np.clip(k, 0, num_levels - 1)
    return k.astype(np.uint8 if num_levels <= 256 else np.int32)


def bits_per_dim_offset(num_levels: int, centered: bool) -> float:
    """Bits/dim added to -log2 p / D for dequantised data: log2(L / width), width 2 if centered.

    A level's bin has width (2 if centered else 1) / L in data space, so the probability of the
    integer data is p(x) (width / L)^D; 8-bit data in [-1, 1] gives log2(256 / 2) = 7.
    """
    return bpd.bpd_offset(num_levels, data_range(centered))


def area_downsample(x: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor blocks of images (B, H, W, C) -> (B, H / factor, W / factor, C), float32:
    numpy's twin of `score_sde.image_to_image.area_downsample` (the data pipeline needs no jax)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4), dtype=np.float32)


# --- per-example transforms -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Transform:
    """Raw levels -> float32 model inputs, with per-example randomness from (seed, split, epoch, id)."""

    num_levels: int | None
    centered: bool
    random_flip: bool
    dequantize: bool
    seed: int
    split_code: int
    downsample: int = 1  # > 1: area-downsample the scaled (dequantised) images by this factor (data.downsample)

    def _example_rng(self, epoch: int, example_id: int) -> np.random.Generator:
        """A counter-based (Philox) stream keyed by (seed, split, epoch, id): cheap and independent."""
        key = np.array([(epoch << 32) | example_id, ((self.seed & (2**61 - 1)) << 2) | self.split_code], np.uint64)
        return np.random.Generator(np.random.Philox(key=key))

    def __call__(self, raw: np.ndarray, epoch: int, ids: np.ndarray) -> np.ndarray:
        x = self._full_size(raw, epoch, ids)
        return x if self.downsample == 1 else area_downsample(x, self.downsample)

    def _full_size(self, raw: np.ndarray, epoch: int, ids: np.ndarray) -> np.ndarray:
        if self.num_levels is None:  # continuous toy data
            return np.asarray(raw, np.float32)
        if not (self.random_flip or self.dequantize):
            return scale(raw, self.num_levels, self.centered)
        rngs = [self._example_rng(epoch, i) for i in np.asarray(ids).tolist()]
        if self.random_flip:  # horizontal: reverse the width axis of (H, W, C)
            flip = np.array([r.random() < 0.5 for r in rngs], bool)
            raw = np.array(raw)  # a copy: sources may hand out views of their storage
            raw[flip] = raw[flip][:, :, ::-1]
        if not self.dequantize:
            return scale(raw, self.num_levels, self.centered)
        u = np.stack([r.random(raw.shape[1:], np.float32) for r in rngs])
        return dequantize(raw, u, self.num_levels, self.centered)


