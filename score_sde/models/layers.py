"""Flax building blocks of NCSN++ / DDPM++ (Song et al. 2021, appendix H) and the small UNet.

All tensors are NHWC. `dtype` (None: float32 as the inputs) is the compute dtype of every
convolution, dense layer and GroupNorm (parameters stay float32; GroupNorm's statistics and the
attention softmax stay in float32): bfloat16 gives mixed precision (`training.precision=bf16`).
`remat_class` wraps a residual block in `nn.remat` under the same name, so the parameter tree is
unchanged (`model.remat`). Convolutions use DDPM's variance-scaling initialisation
(fan_avg, uniform) with a multiplier `init_scale`; init_scale = 0 stands for 1e-10, so
the last layer of a residual branch starts near zero and every block starts close to
the identity. Normalisation is GroupNorm with min(C // 4, 32) groups, activation SiLU.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models import resample

act = nn.silu


def default_init(scale: float = 1.0):
    """DDPM's initialiser: variance scaling, fan_avg, uniform; scale 0 is mapped to 1e-10."""
    return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def conv3x3(features: int, *, stride: int = 1, init_scale: float = 1.0, padding="SAME", name=None,
            dtype=None) -> nn.Conv:
    """3x3 convolution with bias and DDPM initialisation; `dtype` the compute dtype (None: the inputs')."""
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=padding,
                   kernel_init=default_init(init_scale), name=name, dtype=dtype)


def conv1x1(features: int, *, init_scale: float = 1.0, name=None, dtype=None) -> nn.Dense:
    """1x1 convolution ("network in network"): a Dense layer over the channel axis."""
    return nn.Dense(features, kernel_init=default_init(init_scale), name=name, dtype=dtype)


def dense(features: int, dtype=None) -> nn.Dense:
    """Dense layer with DDPM initialisation (the noise-embedding projections)."""
    return nn.Dense(features, kernel_init=default_init(), dtype=dtype)


def group_norm(channels: int, name=None, dtype=None) -> nn.GroupNorm:
    """GroupNorm with min(C // 4, 32) groups (at least one); statistics in float32 whatever `dtype`."""
    return nn.GroupNorm(num_groups=max(1, min(channels // 4, 32)), name=name, dtype=dtype)


def remat_class(cls, remat: bool):
    """`cls`, or `nn.remat(cls)` (activations recomputed in the backward pass) under the same class
    name, so that auto-naming, and therefore the parameter tree and its initialisation, is identical.

    The block's `train` flag (positional argument 3 counting self) is static.
    """
    if not remat:
        return cls
    if cls not in _REMAT:
        wrapped = nn.remat(cls, static_argnums=(3,))
        wrapped.__name__ = wrapped.__qualname__ = cls.__name__
        _REMAT[cls] = wrapped
    return _REMAT[cls]


_REMAT: dict = {}


def residual_sum(x, h, skip_rescale: bool):
    """x + h, divided by sqrt(2) when skip_rescale (keeps the variance of two unit inputs)."""
    return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


class ResampleConv(nn.Module):
    """Up- or downsampling by 2 with a learned 3x3 conv, FIR or plain (NCSN++ Up/Downsample).

    FIR up: FIR upsampling then a 3x3 conv (StyleGAN2's fused `upsample_conv_2d` up to the
    order of two linear filters). FIR down: FIR blur then a stride-2 VALID 3x3 conv (exactly
    StyleGAN2's `conv_downsample_2d`). Plain: nearest up + conv, or stride-2 conv.
    Without a conv (`with_conv=False`) the channels stay unchanged.
    """

    up: bool
    out_ch: Optional[int] = None
    with_conv: bool = True
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        out_ch = self.out_ch or x.shape[-1]
        if self.up:
            h = resample.upsample_fir(x, self.fir_kernel) if self.fir else resample.upsample_nearest(x)
            return conv3x3(out_ch, dtype=self.dtype)(h) if self.with_conv else h
        if not self.with_conv:
            return resample.downsample_fir(x, self.fir_kernel) if self.fir else resample.downsample_mean(x)
        if self.fir:
            return conv3x3(out_ch, stride=2, padding="VALID",
                           dtype=self.dtype)(resample.blur_for_strided_conv(x, self.fir_kernel))
        return conv3x3(out_ch, stride=2, dtype=self.dtype)(x)


def _resample_plain(x, up: bool, down: bool, fir: bool, fir_kernel):
    """Parameter-free resampling used inside BigGAN blocks (identity when neither up nor down)."""
    if up:
        return resample.upsample_fir(x, fir_kernel) if fir else resample.upsample_nearest(x)
    if down:
        return resample.downsample_fir(x, fir_kernel) if fir else resample.downsample_mean(x)
    return x


class ResnetBlockDDPM(nn.Module):
    """DDPM residual block: GN-act-conv, + Dense(act(temb)), GN-act-dropout-conv, skip.

    x (B, H, W, C), temb (B, E) or None -> (B, H, W, out_ch). The skip path is a 1x1 conv
    when C != out_ch.
    """

    out_ch: Optional[int] = None
    dropout: float = 0.1
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        out_ch, dt = self.out_ch or x.shape[-1], self.dtype
        h = conv3x3(out_ch, dtype=dt)(act(group_norm(x.shape[-1], dtype=dt)(x)))
        if temb is not None:
            h = h + dense(out_ch, dt)(act(temb))[:, None, None, :]
        h = act(group_norm(out_ch, dtype=dt)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(out_ch, init_scale=self.init_scale, dtype=dt)(h)
        if x.shape[-1] != out_ch:
            x = conv1x1(out_ch, init_scale=0.1, dtype=dt)(x)
        return residual_sum(x, h, self.skip_rescale)


class ResnetBlockBigGAN(nn.Module):
    """BigGAN residual block with optional up/down-sampling of both paths (FIR or plain).

    x (B, H, W, C), temb (B, E) or None -> (B, H', W', out_ch) with H' = 2H (up),
    H / 2 (down) or H. The skip path gets a 1x1 conv when the shape changes.
    """

    out_ch: Optional[int] = None
    up: bool = False
    down: bool = False
    dropout: float = 0.1
    fir: bool = False
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x, temb=None, train: bool = False):
        c, dt = x.shape[-1], self.dtype
        out_ch = self.out_ch or c
        h = act(group_norm(c, dtype=dt)(x))
        h = _resample_plain(h, self.up, self.down, self.fir, self.fir_kernel)
        x = _resample_plain(x, self.up, self.down, self.fir, self.fir_kernel)
        h = conv3x3(out_ch, dtype=dt)(h)
        if temb is not None:
            h = h + dense(out_ch, dt)(act(temb))[:, None, None, :]
        h = act(group_norm(out_ch, dtype=dt)(h))
        h = nn.Dropout(self.dropout)(h, deterministic=not train)
        h = conv3x3(out_ch, init_scale=self.init_scale, dtype=dt)(h)
        if c != out_ch or self.up or self.down:
            x = conv1x1(out_ch, dtype=dt)(x)
        return residual_sum(x, h, self.skip_rescale)


class AttnBlock(nn.Module):
    """Single-head self-attention over the H*W positions (DDPM), residual.

    softmax(q k^T / sqrt(C)) v with q, k, v 1x1 convs of GroupNorm(x); (B, H, W, C) -> same.
    """

    skip_rescale: bool = True
    init_scale: float = 0.0
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        b, hh, ww, c = x.shape
        h = group_norm(c, dtype=self.dtype)(x).reshape(b, hh * ww, c)
        q, k, v = (conv1x1(c, init_scale=0.1, dtype=self.dtype)(h) for _ in range(3))
        logits = jnp.einsum("bic,bjc->bij", q, k) * c**-0.5
        w = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1).astype(v.dtype)
        h = conv1x1(c, init_scale=self.init_scale, dtype=self.dtype)(jnp.einsum("bij,bjc->bic", w, v))
        return residual_sum(x, h.reshape(b, hh, ww, c), self.skip_rescale)


class Combine(nn.Module):
    """Merges a progressive-input pyramid image x into features y: 1x1 conv of x, then sum or concat."""

    method: str = "sum"
    dtype: Any = None

    @nn.compact
    def __call__(self, x, y):
        h = conv1x1(y.shape[-1], dtype=self.dtype)(x)
        if self.method == "cat":
            return jnp.concatenate([h, y], axis=-1)
        if self.method == "sum":
            return h + y
        raise ValueError(f"progressive_combine must be 'sum' or 'cat', got {self.method!r}")


__all__ = ["act", "default_init", "conv3x3", "conv1x1", "dense", "group_norm", "remat_class", "residual_sum", "ResampleConv",
           "ResnetBlockDDPM", "ResnetBlockBigGAN", "AttnBlock", "Combine"]
