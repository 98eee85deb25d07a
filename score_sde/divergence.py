"""Divergence of a batched drift: the exact Jacobian trace and Hutchinson's estimator.

A drift here is a function `drift(x) -> array like x` on a batch x of shape (B, *dims)
whose examples are independent: row b of the output depends only on row b of the input
(true of the probability-flow drift of any per-example score network). The divergence
of example b is tr(d drift_b / d x_b), shape (B,) for the batch.

Each function returns the drift *and* the divergence. With `fused=True` (the default)
both come out of one `jax.jvp` (forward mode: the primal output is the drift, the tangent
output the Jacobian-vector product), so the network's forward pass is not run twice.
`fused=False` is the textbook two-pass version (one drift call plus one `jax.jvp`), kept
for tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import Array

DriftFn = Callable[[Array], Array]

PROBES = ("rademacher", "gaussian")


def _sum_event(a: Array) -> Array:
    """Sums over every non-batch dim: (B, *dims) -> (B,)."""
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def sample_probe(key: Array, shape: tuple[int, ...], dtype, kind: str = "rademacher") -> Array:
    """A Hutchinson probe e with E[e e^T] = I, shape (B, *dims).

    Args:
      key: PRNG key.
      shape: (B, *dims), the shape of x.
      dtype: floating dtype of x.
      kind: "rademacher" (entries +-1, the lower-variance choice) or "gaussian" (N(0, 1)).
    """
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, dtype)
    if kind == "gaussian":
        return jax.random.normal(key, shape, dtype)
    check_choice(kind, PROBES, "probe", "probes")
    raise AssertionError(kind)  # unreachable: every probe is handled above


def exact_divergence(drift: DriftFn, x: Array, *, fused: bool = True) -> tuple[Array, Array]:
    """Drift f(x) (like x) and the exact divergence tr(df/dx) (B,).

    One batched jvp per basis vector e_i of the event space gives column i of every
    example's Jacobian, J_b e_i; the trace is sum_i (J_b e_i)_i. The D jvps run as one
    `vmap`, in which the primal (the drift) is computed once. Cost per call: about D
    forward passes of the network and a (D, B, D) tangent in memory, so this is the
    method for small D (toy data, 8x8 digits: D <= a few hundred). Past that, e.g.
    CIFAR-10 (D = 3072), use `hutchinson_divergence`.
    """
    d = math.prod(x.shape[1:])
    eye = jnp.eye(d, dtype=x.dtype).reshape((d, 1) + x.shape[1:])
    basis = jnp.broadcast_to(eye, (d,) + x.shape)

    def column(e):
        return jax.jvp(drift, (x,), (e,))

    if fused:
        fx, cols = jax.vmap(column, out_axes=(None, 0))(basis)
    else:
        fx = drift(x)
        cols = jax.vmap(lambda e: column(e)[1])(basis)
    cols = cols.reshape(d, x.shape[0], d)  # cols[i, b, j] = (J_b)_{j i}
    return fx, jnp.einsum("ibi->b", cols)


def hutchinson_divergence(drift: DriftFn, x: Array, probe: Array, *,
                          fused: bool = True) -> tuple[Array, Array]:
    """Drift f(x) (like x) and Hutchinson's estimate e^T (df/dx) e of the divergence (B,).

    Unbiased for tr(df/dx) when E[e e^T] = I (Rademacher or Gaussian probes, see
    `sample_probe`). One probe per example, `probe` like x.
    """
    if probe.shape != x.shape:
        raise ValueError(f"probe must have the shape of x {x.shape}, got {probe.shape}")
    if fused:
        fx, jvp = jax.jvp(drift, (x,), (probe,))
    else:
        fx = drift(x)
        _, jvp = jax.jvp(drift, (x,), (probe,))
    return fx, _sum_event(probe * jvp)


__all__ = ["PROBES", "sample_probe", "exact_divergence", "hutchinson_divergence"]
