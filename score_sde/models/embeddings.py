"""Embeddings of the real-valued noise conditioning c_noise (B,) shared by the networks.

Every network is conditioned on c_noise = log(std / alpha) (see `parameterization.py`),
a real number in about [-7, 5], never an integer time step. All three embeddings below
map c (B,) to features (B, dim) with sines and cosines:

- `fourier_embedding`: log-spaced deterministic frequencies (the small MLP).
- `gaussian_fourier_projection`: NCSN++'s random Fourier features (Tancik et al. 2020),
  sin / cos(2 pi c W) with W ~ N(0, fourier_scale^2) drawn once from a fixed seed and
  held as a constant (not a trainable parameter, not touched by the optimiser).
- `positional_embedding`: DDPM's transformer-style sinusoidal embedding of positions
  `position_scale * c`. DDPM fed integer steps 0..999; with the default
  position_scale = 100, the conditioning range [-7, 5] spans ~1200 positions, the same
  resolution. No shift to a positive range is applied: shifting c only rotates every
  (sin, cos) pair by a fixed angle, which the following Dense layer absorbs.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np


def fourier_embedding(c, dim: int, scale: float = 1.0):
    """Deterministic sinusoidal features of a real input c (B,) -> (B, dim).

    Frequencies are log-spaced from 1 to 100, multiplied by `scale`;
    unlike DDPM's positional embedding it needs no integer time steps.
    """
    half = dim // 2
    freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), half)) * scale
    ang = jnp.asarray(c)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)


def gaussian_fourier_projection(c, embedding_size: int, scale: float = 16.0, seed: int = 0):
    """Random Fourier features [sin(2 pi c W), cos(2 pi c W)], (B,) -> (B, 2 embedding_size).

    W (embedding_size,) ~ N(0, scale^2) is drawn from numpy with a fixed `seed` at trace
    time, so it is a compile-time constant: identical across runs, hosts and restarts,
    never trained, and absent from the parameter tree.
    """
    w = np.random.default_rng(seed).normal(size=(embedding_size,)) * scale
    c = jnp.asarray(c)
    proj = c[:, None] * jnp.asarray(w * 2.0 * np.pi, dtype=c.dtype)[None]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


def positional_embedding(c, dim: int, max_positions: float = 10000.0, position_scale: float = 100.0):
    """DDPM sinusoidal embedding of positions p = position_scale * c, (B,) -> (B, dim).

    Features sin(p w_k), cos(p w_k) with w_k = max_positions^(-k / (dim/2 - 1)),
    k = 0..dim/2-1 (Vaswani et al. 2017; Ho et al. 2020); an odd dim is zero-padded.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"positional_embedding needs dim >= 4, got {dim}")
    c = jnp.asarray(c)
    freqs = np.exp(-math.log(max_positions) * np.arange(half) / (half - 1))
    ang = (position_scale * c)[:, None] * jnp.asarray(freqs, dtype=c.dtype)[None]
    emb = jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


def class_embedding(y, num_classes: int, dim: int, batch: int):
    """Learned embedding (B, dim) of class labels y (B,) ints, or None for the null class.

    The table has num_classes + 1 rows: row `num_classes` is the "null" class (no label), which
    label dropout trains and classifier-free guidance uses as the unconditional model. Call it
    inside a compact Flax module; the parameter is named "class_embedding".
    """
    if not num_classes:
        if y is not None:
            raise ValueError("this network has no class embedding (num_classes=0) but was given labels y; "
                             "set config.data.num_classes > 0 to train a class-conditional model")
        return None
    y = jnp.full((batch,), num_classes, jnp.int32) if y is None else jnp.asarray(y, jnp.int32)
    if y.shape != (batch,):
        raise ValueError(f"labels y must have shape ({batch},), got {y.shape}")
    return nn.Embed(num_classes + 1, dim, name="class_embedding")(y)


def add_class(temb, cemb):
    """The time embedding plus the class embedding (either may be None)."""
    if cemb is None:
        return temb
    return cemb if temb is None else temb + cemb


__all__ = ["fourier_embedding", "gaussian_fourier_projection", "positional_embedding", "class_embedding",
           "add_class"]
