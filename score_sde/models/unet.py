"""A small U-Net for tiny images (8x8 digits, 16x16 toys): tests and CPU demos.

Lighter than NCSN++: DDPM residual blocks, average-pool downsampling and nearest
upsampling without convolutions, one skip connection per resolution level, and
attention only where `attn_resolutions` asks for it. Same interface as every network:
x (B, H, W, C), c_noise (B,) -> noise prediction like x.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers, resample
from score_sde.models.conditions import conditioning, merge_label, network_spec
from score_sde.models.embeddings import add_class, gaussian_fourier_projection, positional_embedding


class UNet(nn.Module):
    """Small noise-prediction U-Net: x (B, H, W, C), c_noise (B,) -> (B, H, W, C).

    Level l has nf * ch_mult[l] channels and num_res_blocks DDPM blocks on each side;
    H and W must be divisible by 2^(len(ch_mult) - 1). With num_classes > 0 a learned class
    embedding (num_classes + 1 rows, the last the null class used when y is None) is added to the
    noise embedding. `dtype` is the compute dtype (None: float32; bfloat16 for mixed precision,
    parameters stay float32, the output is cast back to x's dtype); `remat` recomputes each residual
    block's activations in the backward pass (`nn.remat`) instead of storing them.
    """

    nf: int = 32
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    attn_resolutions: Sequence[int] = ()
    dropout: float = 0.0
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    conditional: bool = True
    skip_rescale: bool = True
    init_scale: float = 0.0
    num_classes: int = 0
    cond_spec: tuple = ()  # condition parts (score_sde.models.conditions); () and num_classes > 0: one label part
    dtype: Any = None  # compute dtype (None: float32 as the inputs; jnp.bfloat16: mixed precision)
    remat: bool = False  # nn.remat per residual block

    def _embed(self, c_noise):
        if not self.conditional:
            return None
        if self.embedding_type == "fourier":
            temb = gaussian_fourier_projection(c_noise, self.nf, self.fourier_scale)
        elif self.embedding_type == "positional":
            temb = positional_embedding(c_noise, self.nf)
        else:
            raise ValueError(f"embedding_type must be 'fourier' or 'positional', got {self.embedding_type!r}")
        temb = layers.dense(4 * self.nf, self.dtype)(temb)
        return layers.dense(4 * self.nf, self.dtype)(layers.act(temb))

    def _blocks(self, h, out_ch, temb, train):
        for _ in range(self.num_res_blocks):
            block = layers.remat_class(layers.ResnetBlockDDPM, self.remat)
            h = block(out_ch, dropout=self.dropout, skip_rescale=self.skip_rescale, init_scale=self.init_scale,
                      dtype=self.dtype)(h, temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = layers.AttnBlock(skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=self.dtype)(h)
        return h

    @nn.compact
    def __call__(self, x, c_noise, train: bool = False, y=None, cond=None):
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"x must have shape (B, H, W, C) with H, W divisible by {factor}, got {x.shape}")
        cemb, xc = conditioning(network_spec(self.cond_spec, self.num_classes), merge_label(cond, y), x, 4 * self.nf)
        temb = add_class(self._embed(c_noise), cemb)
        h = layers.conv3x3(self.nf, dtype=self.dtype)(xc)
        skips = []
        for level, mult in enumerate(self.ch_mult):
            if level:
                h = resample.downsample_mean(h)
            h = self._blocks(h, self.nf * mult, temb, train)
            skips.append(h)
        h = self._blocks(h, h.shape[-1], temb, train)  # bottleneck
        for level in reversed(range(len(self.ch_mult))):
            h = self._blocks(jnp.concatenate([h, skips.pop()], -1), self.nf * self.ch_mult[level], temb, train)
            if level:
                h = resample.upsample_nearest(h)
        h = layers.act(layers.group_norm(h.shape[-1], dtype=self.dtype)(h))
        return layers.conv3x3(x.shape[-1], init_scale=self.init_scale, dtype=self.dtype)(h).astype(x.dtype)


__all__ = ["UNet"]
