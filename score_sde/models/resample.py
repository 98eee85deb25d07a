"""Resampling of NHWC image batches by a factor of 2: FIR (StyleGAN2 / NCSN++) and naive.

FIR resampling (Karras et al. 2020, "upfirdn"): upsampling inserts a zero after every
pixel and filters with the 2-D kernel k k^T / sum(k)^2 times factor^2; downsampling
filters with k k^T / sum(k)^2 and keeps every second pixel. Both are one depthwise
`lax.conv_general_dilated` (zero insertion is its `lhs_dilation`, decimation its
stride), so they run on any XLA backend without custom kernels. A constant image
stays constant away from the borders (the kernel sums to 1 per output phase).
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

Array = jnp.ndarray


def fir_kernel_2d(k: Sequence[float]) -> np.ndarray:
    """Separable 2-D FIR kernel k k^T normalised to sum 1, as float64 numpy, (K, K)."""
    k = np.asarray(k, dtype=np.float64)
    if k.ndim != 1 or k.size < 1:
        raise ValueError(f"fir_kernel must be a non-empty 1-D sequence, got {k!r}")
    k2 = np.outer(k, k)
    return k2 / k2.sum()


def upfirdn2d(x: Array, k2: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Array:
    """Zero-insert upsampling by `up`, zero padding, FIR filtering with k2, decimation by `down`.

    Args:
      x: (B, H, W, C).
      k2: (K, K) filter (true convolution: the kernel is flipped before correlation).
      up, down: integer factors.
      pad: (before, after) zero padding of the upsampled image, both >= 0.

    Returns:
      (B, H', W', C) with H' = (H * up + pad[0] + pad[1] - K) // down + 1.
    """
    c = x.shape[-1]
    kernel = np.asarray(k2[::-1, ::-1], dtype=np.float64)
    kernel = jnp.asarray(np.tile(kernel[:, :, None, None], (1, 1, 1, c)), dtype=x.dtype)  # HWIO, I = 1
    # lhs_dilation gives (H - 1) * up + 1 samples; upfirdn's zero insertion gives H * up
    # (the trailing zeros), hence the extra up - 1 on the far side.
    padding = [(pad[0], pad[1] + up - 1)] * 2
    return lax.conv_general_dilated(
        x, kernel, window_strides=(down, down), padding=padding, lhs_dilation=(up, up),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)


def upsample_fir(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """FIR upsampling (B, H, W, C) -> (B, factor H, factor W, C), gain 1 for constant images."""
    k2 = fir_kernel_2d(k) * factor**2
    p = k2.shape[0] - factor
    return upfirdn2d(x, k2, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def downsample_fir(x: Array, k: Sequence[float] = (1, 3, 3, 1), factor: int = 2) -> Array:
    """FIR downsampling (B, H, W, C) -> (B, H / factor, W / factor, C)."""
    k2 = fir_kernel_2d(k)
    p = k2.shape[0] - factor
    return upfirdn2d(x, k2, down=factor, pad=((p + 1) // 2, p // 2))


def blur_for_strided_conv(x: Array, k: Sequence[float], conv_size: int = 3, factor: int = 2) -> Array:
    """FIR blur with the padding that makes a following VALID conv of stride `factor` halve H, W.

    This is the first half of StyleGAN2's fused `conv_downsample_2d`: the result has
    H + K - factor + conv_size - 1 - K + 1 rows, so the strided VALID conv returns H / factor.
    """
    k2 = fir_kernel_2d(k)
    p = (k2.shape[0] - factor) + (conv_size - 1)
    return upfirdn2d(x, k2, pad=((p + 1) // 2, p // 2))


def upsample_nearest(x: Array, factor: int = 2) -> Array:
    """Nearest-neighbour upsampling (each pixel repeated factor x factor times)."""
    return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def downsample_mean(x: Array, factor: int = 2) -> Array:
    """Average pooling over non-overlapping factor x factor windows."""
    b, h, w, c = x.shape
    if h % factor or w % factor:
        raise ValueError(f"image size {(h, w)} must be divisible by {factor} to downsample")
    return x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


__all__ = ["fir_kernel_2d", "upfirdn2d", "upsample_fir", "downsample_fir", "blur_for_strided_conv",
           "upsample_nearest", "downsample_mean"]
