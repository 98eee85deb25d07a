"""Grayscale baseline JPEG (ITU T.81) in JAX: compress and decompress in one jit-able function.

Palette's JPEG-restoration task degrades images with Pillow's JPEG encoder at quality 5..15; the
conditions of `score_sde.image_to_image` are made on device inside the loss, so the codec is written
here in JAX. For a grayscale image of uint8 levels u (B, H, W):

1. pad H and W up to multiples of 8 by replicating the last row / column (what libjpeg does for a
   partial block: `expand_right_edge`, `expand_bottom_edge`); cropped back at the end;
2. level shift u - 128 and the 8 x 8 block DCT-II, F = C B C^T with the orthonormal DCT matrix
   C[k, n] = a_k cos((2 n + 1) k pi / 16), a_0 = sqrt(1/8), a_k = sqrt(2/8) (T.81 A.3.3);
3. quantise q = round(F / Q), rounding half away from zero (libjpeg's jcdctmgr), Q the standard
   luminance table (T.81 Annex K.1) scaled by the libjpeg quality formula (`quant_table`);
4. decode: dequantise F' = q Q, inverse DCT C^T F' C, + 128, round, clip to [0, 255].

Pillow (libjpeg-turbo) computes the DCTs in scaled integer arithmetic (JDCT_ISLOW, 13-bit
constants): its coefficients differ from the exact float DCT by a fraction of a unit, which flips a
rounding decision when a coefficient lies within that fraction of a half-step; a flipped
coefficient moves its block by up to Q / 8 levels. tests/test_palette.py (test_jpeg_matches_pillow) states the agreement.
Colour JPEG (YCbCr, chroma subsampling) is not built: the codec takes one channel.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# T.81 Annex K.1 Table K.1: luminance quantisation table (row-major, natural order)
LUMINANCE_TABLE = np.array([
    [16, 11, 10, 16, 24, 40, 51, 61],
    [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77],
    [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101],
    [72, 92, 95, 98, 112, 100, 103, 99],
], np.int32)


def dct_matrix() -> np.ndarray:
    """(8, 8) orthonormal DCT-II matrix C[k, n] = a_k cos((2 n + 1) k pi / 16)."""
    k, n = np.arange(8)[:, None], np.arange(8)[None, :]
    a = np.where(k == 0, math.sqrt(1 / 8), math.sqrt(2 / 8))
    return (a * np.cos((2 * n + 1) * k * np.pi / 16)).astype(np.float32)


def quant_table(quality: Array) -> Array:
    """(..., 8, 8) int32 quantisation tables for integer qualities (...) in [1, 100] (libjpeg's
    jpeg_quality_scaling + jpeg_add_quant_table with force_baseline, as Pillow calls it):
    s = 5000 / quality below 50, else 200 - 2 quality; Q = clip((K s + 50) // 100, 1, 255)."""
    q = jnp.clip(jnp.asarray(quality, jnp.int32), 1, 100)
    scale = jnp.where(q < 50, 5000 // q, 200 - 2 * q)[..., None, None]
    return jnp.clip((jnp.asarray(LUMINANCE_TABLE) * scale + 50) // 100, 1, 255)


def _round_half_away(x: Array) -> Array:
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


def jpeg_levels(levels: Array, quality: Array) -> Array:
    """Grayscale JPEG compress + decompress of uint8 levels: (B, H, W) floats in [0, 255] (rounded
    first) at integer qualities (B,) -> (B, H, W) float32 decoded levels (integers in [0, 255])."""
    levels = jnp.clip(jnp.round(jnp.asarray(levels, jnp.float32)), 0, 255)
    b, h, w = levels.shape
    ph, pw = -h % 8, -w % 8
    x = jnp.pad(levels, ((0, 0), (0, ph), (0, pw)), mode="edge") - 128.0
    hb, wb = (h + ph) // 8, (w + pw) // 8
    blocks = x.reshape(b, hb, 8, wb, 8)
    c = jnp.asarray(dct_matrix())
    coef = jnp.einsum("kn,bincj,lj->bickl", c, blocks, c, precision=jax.lax.Precision.HIGHEST)
    table = quant_table(quality).astype(jnp.float32)[:, None, None]  # (B, 1, 1, 8, 8)
    deq = _round_half_away(coef / table) * table
    pix = jnp.einsum("kn,bickl,lj->bincj", c, deq, c, precision=jax.lax.Precision.HIGHEST)
    out = jnp.clip(jnp.round(pix + 128.0), 0, 255).reshape(b, h + ph, w + pw)
    return out[:, :h, :w]


def jpeg(x: Array, quality: Array, data_range: tuple[float, float] = (-1.0, 1.0)) -> Array:
    """JPEG round trip of images x (B, H, W, 1) in model scale (`data_range`) at qualities (B,) (or a
    scalar): x -> uint8 levels round((x - lo) / (hi - lo) 255) -> `jpeg_levels` -> model scale.

    Raises:
      ValueError: x is not (B, H, W, 1) (colour JPEG is not built).
    """
    x = jnp.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 1:
        raise ValueError(f"JPEG restoration takes grayscale images (B, H, W, 1); got shape {x.shape} "
                         f"(colour JPEG with YCbCr and chroma subsampling is not built)")
    lo, hi = data_range
    quality = jnp.broadcast_to(jnp.asarray(quality, jnp.int32), (x.shape[0],))
    levels = jnp.round((x[..., 0] - lo) / (hi - lo) * 255.0)
    return (lo + jpeg_levels(levels, quality) / 255.0 * (hi - lo))[..., None].astype(x.dtype)


__all__ = ["LUMINANCE_TABLE", "dct_matrix", "quant_table", "jpeg_levels", "jpeg"]
