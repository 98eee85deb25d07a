"""Noise-level embeddings shared by the networks."""

from __future__ import annotations

import math

import jax.numpy as jnp


def fourier_embedding(c, dim: int, scale: float = 1.0):
    """Deterministic sinusoidal features of a real input c (B,) -> (B, dim).

    Frequencies are log-spaced from 1 to 100, multiplied by `scale`;
    unlike DDPM's positional embedding it needs no integer time steps.
    """
    half = dim // 2
    freqs = jnp.exp(jnp.linspace(0.0, math.log(100.0), half)) * scale
    ang = jnp.asarray(c)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(ang), jnp.cos(ang)], axis=-1)
