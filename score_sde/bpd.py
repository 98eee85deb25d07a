"""Bits per dimension for discrete data, and uniform dequantisation.

Data with L levels per dimension (k in {0, ..., L - 1}: L = 256 for 8-bit images,
L = 17 for scikit-learn's digits) is modelled with a continuous density p(x) on data
scaled to a range [lo, hi] of width w = hi - lo. Uniform dequantisation puts k in its
cell of width 1/L in [0, 1] and then scales:

    y = (k + u) / L,  u ~ U[0, 1)^D        (the "(255 x + u) / 256" of 8-bit data x = k / 255)
    x = lo + w y.

The probability of the cell of k is at least (Jensen)

    log P(k) >= E_u[log p(x)] + D log w - D log L,

because the cell has volume (w / L)^D in x. In bits per dimension,

    bpd = -log p(x) / (D ln 2) + log2(L) - log2(w),

so the offset is log2(L) - log2(w): 8 - 1 = 7 for 8-bit data in [-1, 1], 8 for [0, 1],
log2(17) - 1 = 3.09 for the digits in [-1, 1]. Averaged over u, bpd is an upper bound on
the discrete model's -log2 P(k) / D, hence never negative for a proper density p.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from score_sde.sde import Array

DataRange = tuple[float, float]


def _width(data_range: DataRange) -> float:
    lo, hi = (float(v) for v in data_range)
    if not hi > lo:
        raise ValueError(f"data_range must be (lo, hi) with hi > lo, got {data_range}")
    return hi - lo


def _check_levels(num_levels: int) -> int:
    if int(num_levels) != num_levels or num_levels < 2:
        raise ValueError(f"num_levels must be an integer >= 2, got {num_levels}")
    return int(num_levels)


def bpd_offset(num_levels: int = 256, data_range: DataRange = (-1.0, 1.0)) -> float:
    """log2(num_levels) - log2(hi - lo): bits added to -log2 p(x) / D by dequantisation."""
    return math.log2(_check_levels(num_levels)) - math.log2(_width(data_range))


def bits_per_dim(logp: Array, data_shape, *, num_levels: int = 256,
                 data_range: DataRange = (-1.0, 1.0)) -> Array:
    """bpd = -logp / (D ln 2) + log2(num_levels) - log2(hi - lo).

    Args:
      logp: (B,) log-density in nats of dequantised data scaled to `data_range`
        (e.g. `log_likelihood(...).logp`).
      data_shape: the shape of one example (e.g. (32, 32, 3)); D is its product.
      num_levels: levels per dimension of the discrete data (256 for 8 bits, 17 for digits).
      data_range: (lo, hi) the data was scaled to.

    Returns:
      (B,) bits per dimension. Average it over examples (and dequantisation draws).
    """
    d = math.prod(tuple(data_shape))
    return -jnp.asarray(logp) / (d * math.log(2.0)) + bpd_offset(num_levels, data_range)


def scale_levels(x_int: Array, num_levels: int = 256, data_range: DataRange = (-1.0, 1.0),
                 dtype=jnp.float32) -> Array:
    """Maps levels k in {0..L-1} to lo + w k / (L - 1) (the training scaling; no noise)."""
    lo, w = float(data_range[0]), _width(data_range)
    levels = _check_levels(num_levels)
    return lo + w * jnp.asarray(x_int, dtype) / (levels - 1)


def uniform_dequantize(key: Array, x_int: Array, num_levels: int = 256,
                       data_range: DataRange = (-1.0, 1.0), dtype=jnp.float32) -> Array:
    """Dequantises levels k: x = lo + w (k + u) / L, u ~ U[0, 1), like x_int."""
    lo, w = float(data_range[0]), _width(data_range)
    levels = _check_levels(num_levels)
    u = jax.random.uniform(key, jnp.shape(x_int), dtype)
    return lo + w * (jnp.asarray(x_int, dtype) + u) / levels


def dequantize_scaled(key: Array, x: Array, num_levels: int = 256,
                      data_range: DataRange = (-1.0, 1.0)) -> Array:
    """Dequantises data already scaled by `scale_levels` (recovers k, then `uniform_dequantize`)."""
    lo, w = float(data_range[0]), _width(data_range)
    levels = _check_levels(num_levels)
    k = jnp.round((x - lo) / w * (levels - 1))
    return uniform_dequantize(key, k, levels, data_range, x.dtype)


__all__ = ["bpd_offset", "bits_per_dim", "scale_levels", "uniform_dequantize", "dequantize_scaled"]
