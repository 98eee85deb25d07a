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

This module holds the one implementation of these rules: `scale_levels` and `dequantize`
work on numpy arrays (the data pipeline, `score_sde.data`) and on jax arrays inside `jit` /
`vmap` (`uniform_dequantize`) alike, from per-level tables computed once in float64.
Continuous data (no levels) has no offset: `bits_per_dim(..., num_levels=None)`.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

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


def bits_per_dim(logp: Array, data_shape, *, num_levels: int | None = 256,
                 data_range: DataRange = (-1.0, 1.0)) -> Array:
    """bpd = -logp / (D ln 2) + log2(num_levels) - log2(hi - lo).

    Args:
      logp: (B,) log-density in nats of dequantised data scaled to `data_range`
        (e.g. `log_likelihood(...).logp`).
      data_shape: the shape of one example (e.g. (32, 32, 3)); D is its product.
      num_levels: levels per dimension of the discrete data (256 for 8 bits, 17 for digits);
        None for continuous data (e.g. 2-D toys): no offset, bpd = -logp / (D ln 2).
      data_range: (lo, hi) the data was scaled to (unused when `num_levels` is None).

    Returns:
      (B,) bits per dimension. Average it over examples (and dequantisation draws).
    """
    d = math.prod(tuple(data_shape))
    offset = 0.0 if num_levels is None else bpd_offset(num_levels, data_range)
    return -jnp.asarray(logp) / (d * math.log(2.0)) + offset


@dataclasses.dataclass(frozen=True)
class _LevelTables:
    """Per-level values in one float dtype, from exact float64 arithmetic (read-only)."""

    grid: np.ndarray  # (L,) lo + w k / (L - 1): level k without noise
    cell_lo: np.ndarray  # (L,) lo + w k / L, nearest
    cell_width: np.ndarray  # () w / L
    first: np.ndarray  # (L,) smallest value >= the exact lower edge of cell k
    last: np.ndarray  # (L,) largest value < the exact upper edge of cell k


@functools.lru_cache(maxsize=32)
def _level_tables(num_levels: int, lo: float, hi: float, dtype: str) -> _LevelTables:
    k, w, dt = np.arange(num_levels, dtype=np.float64), hi - lo, np.dtype(dtype)
    edge_lo, edge_hi = lo + w * (k / num_levels), lo + w * ((k + 1) / num_levels)
    first, last = edge_lo.astype(dt), edge_hi.astype(dt)
    first = np.where(first < edge_lo, np.nextafter(first, dt.type(np.inf)), first)
    last = np.where(last >= edge_hi, np.nextafter(last, dt.type(-np.inf)), last)
    tables = _LevelTables(grid=(lo + w * (k / (num_levels - 1))).astype(dt), cell_lo=edge_lo.astype(dt),
                          cell_width=np.asarray(w / num_levels, dt), first=first, last=last)
    for a in dataclasses.astuple(tables):
        a.flags.writeable = False
    return tables


def _tables(num_levels: int, data_range: DataRange, dtype) -> _LevelTables:
    _width(data_range)
    return _level_tables(_check_levels(num_levels), float(data_range[0]), float(data_range[1]),
                         np.dtype(dtype).name)


def _namespace(*arrays):
    """jax.numpy when any argument is a jax array (or tracer), else numpy (the host data pipeline)."""
    return jnp if any(isinstance(a, jax.Array) for a in arrays) else np


def scale_levels(x_int: Array, num_levels: int = 256, data_range: DataRange = (-1.0, 1.0),
                 dtype=np.float32) -> Array:
    """Maps levels k in {0..L-1} to lo + w k / (L - 1) (the training scaling; no noise).

    numpy in, numpy out (jax in, jax out); the values are float64-exact, rounded once to `dtype`.
    """
    xp = _namespace(x_int)
    return xp.asarray(_tables(num_levels, data_range, dtype).grid)[xp.asarray(x_int).astype("int32")]


def dequantize(x_int: Array, u: Array, num_levels: int = 256, data_range: DataRange = (-1.0, 1.0),
               dtype=np.float32) -> Array:
    """x = lo + w (k + u) / L for levels k and noise u in [0, 1), like x_int, in `dtype`.

    The result is clamped into the cell of k, [lo + w k / L, lo + w (k + 1) / L) (edges exact
    in float64), so rounding never moves a value into the next cell and the level is always
    recoverable. numpy in, numpy out; jax in (also inside `jit`/`vmap`), jax out.
    """
    xp = _namespace(x_int, u)
    t = _tables(num_levels, data_range, dtype)
    k = xp.asarray(x_int).astype("int32")
    x = xp.asarray(t.cell_lo)[k] + xp.asarray(u, dtype) * xp.asarray(t.cell_width)
    return xp.clip(x, xp.asarray(t.first)[k], xp.asarray(t.last)[k])


def uniform_dequantize(key: Array, x_int: Array, num_levels: int = 256,
                       data_range: DataRange = (-1.0, 1.0), dtype=jnp.float32) -> Array:
    """Dequantises levels k: x = lo + w (k + u) / L, u ~ U[0, 1) drawn from `key`, like x_int."""
    u = jax.random.uniform(key, jnp.shape(x_int), dtype)
    return dequantize(jnp.asarray(x_int), u, num_levels, data_range, dtype)


def dequantize_scaled(key: Array, x: Array, num_levels: int = 256,
                      data_range: DataRange = (-1.0, 1.0)) -> Array:
    """Dequantises data already scaled by `scale_levels` (recovers k, then `uniform_dequantize`)."""
    lo, w = float(data_range[0]), _width(data_range)
    levels = _check_levels(num_levels)
    k = jnp.round((x - lo) / w * (levels - 1))
    return uniform_dequantize(key, k, levels, data_range, x.dtype)


__all__ = ["bpd_offset", "bits_per_dim", "scale_levels", "dequantize", "uniform_dequantize", "dequantize_scaled"]
