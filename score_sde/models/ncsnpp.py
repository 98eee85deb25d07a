"""NCSN++ / DDPM++: the configurable U-Net of Song et al. (ICLR 2021, appendix H).

One class covers both families; DDPM++ is this class with DDPM++ settings
(`score_sde.models.ddpmpp`). The class defaults are NCSN++ cont. on CIFAR-10.

Layout (resolution levels l = 0..L-1, channels nf * ch_mult[l]):

    conv3x3 -> [num_res_blocks x (ResBlock [+ Attn if H in attn_resolutions]), Down] per level
            -> ResBlock, Attn, ResBlock
            -> [(num_res_blocks + 1) x ResBlock(concat skip) [+ Attn], Up] per level
            -> GroupNorm, SiLU, conv3x3 (init_scale)

`resblock_type` picks DDPM blocks (with separate ResampleConv down/up layers) or BigGAN
blocks (the block resamples). `progressive_input` feeds a downsampled copy of the input
into every level ('input_skip': combined by `progressive_combine`; 'residual': a
learned resampling conv added with skip rescaling); `progressive` builds the output as
a sum of upsampled per-level predictions ('output_skip') or a residual pyramid
('residual'). The noise conditioning c_noise (B,) = log(std / alpha) is embedded with
random Fourier features (`fourier_scale`) or the DDPM positional embedding, then two
Dense layers of width 4 nf; `conditional=False` drops it. The output predicts the
normalised noise; `parameterization.py` turns it into a score.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers
from score_sde.models.conditions import conditioning, merge_label, network_spec
from score_sde.models.embeddings import add_class, gaussian_fourier_projection, positional_embedding

_CHOICES = {
    "resblock_type": ("ddpm", "biggan"),
    "progressive": ("none", "output_skip", "residual"),
    "progressive_input": ("none", "input_skip", "residual"),
    "progressive_combine": ("sum", "cat"),
    "embedding_type": ("fourier", "positional"),
}


class NCSNpp(nn.Module):
    """NCSN++ / DDPM++ noise-prediction network: x (B, H, W, C), c_noise (B,) -> (B, H, W, C).

    H and W must be divisible by 2^(len(ch_mult) - 1). Dropout needs rngs={'dropout': key}
    when train=True and dropout > 0. With num_classes > 0, labels y (B,) (None: the null class
    num_classes) enter through a learned class embedding added to the noise embedding.
    """

    nf: int = 128
    ch_mult: Sequence[int] = (1, 2, 2, 2)
    num_res_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.1
    resblock_type: str = "biggan"
    fir: bool = True
    fir_kernel: Sequence[int] = (1, 3, 3, 1)
    skip_rescale: bool = True
    progressive: str = "none"
    progressive_input: str = "residual"
    progressive_combine: str = "sum"
    embedding_type: str = "fourier"
    fourier_scale: float = 16.0
    conditional: bool = True
    init_scale: float = 0.0
    resamp_with_conv: bool = True
    num_classes: int = 0
    cond_spec: tuple = ()  # condition parts (score_sde.models.conditions); () and num_classes > 0: one label part
    dtype: Any = None  # compute dtype (None: float32 as the inputs; jnp.bfloat16: mixed precision)
    remat: bool = False  # nn.remat per residual block

    # --- pieces ---------------------------------------------------------------------
    def _check(self, x):
        for field, valid in _CHOICES.items():
            if getattr(self, field) not in valid:
                raise ValueError(f"{field} must be one of {valid}, got {getattr(self, field)!r}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.ndim != 4 or x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"x must have shape (B, H, W, C) with H, W divisible by {factor} "
                             f"(len(ch_mult) = {len(self.ch_mult)}), got {x.shape}")

    def _embed(self, c_noise):
        """Noise-level embedding (B, 4 nf), or None when not conditional."""
        if not self.conditional:
            return None
        if self.embedding_type == "fourier":
            temb = gaussian_fourier_projection(c_noise, self.nf, self.fourier_scale)
        else:
            temb = positional_embedding(c_noise, self.nf)
        temb = layers.dense(4 * self.nf, self.dtype)(temb)
        return layers.dense(4 * self.nf, self.dtype)(layers.act(temb))

    def _resblock(self, out_ch=None, up=False, down=False):
        common = dict(out_ch=out_ch, dropout=self.dropout, skip_rescale=self.skip_rescale,
                      init_scale=self.init_scale, dtype=self.dtype)
        if self.resblock_type == "ddpm":
            return layers.remat_class(layers.ResnetBlockDDPM, self.remat)(**common)
        return layers.remat_class(layers.ResnetBlockBigGAN, self.remat)(
            up=up, down=down, fir=self.fir, fir_kernel=tuple(self.fir_kernel), **common)

    def _attn(self):
        return layers.AttnBlock(skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=self.dtype)

    def _resample(self, up, out_ch=None, with_conv=True):
        return layers.ResampleConv(up=up, out_ch=out_ch, with_conv=with_conv, fir=self.fir,
                                   fir_kernel=tuple(self.fir_kernel), dtype=self.dtype)

    def _down_level(self, h, temb, train):
        """Resolution change on the way down: DDPM conv downsampling or a BigGAN down block."""
        if self.resblock_type == "ddpm":
            return self._resample(up=False, with_conv=self.resamp_with_conv)(h)
        return self._resblock(down=True)(h, temb, train)

    def _up_level(self, h, temb, train):
        if self.resblock_type == "ddpm":
            return self._resample(up=True, with_conv=self.resamp_with_conv)(h)
        return self._resblock(up=True)(h, temb, train)

    def _input_skip(self, pyramid, h):
        """Merges the downsampled input into h (progressive_input); returns (pyramid, h)."""
        if self.progressive_input == "input_skip":
            pyramid = self._resample(up=False, with_conv=False)(pyramid)
            return pyramid, layers.Combine(self.progressive_combine, dtype=self.dtype)(pyramid, h)
        pyramid = self._resample(up=False, out_ch=h.shape[-1])(pyramid)
        pyramid = layers.residual_sum(pyramid, h, self.skip_rescale)
        return pyramid, pyramid

    def _output_pyramid(self, h, pyramid, out_channels, first):
        """One step of the output pyramid (progressive); returns (h, pyramid)."""
        feat = layers.act(layers.group_norm(h.shape[-1], dtype=self.dtype)(h))
        if self.progressive == "output_skip":
            out = layers.conv3x3(out_channels, init_scale=self.init_scale, dtype=self.dtype)(feat)
            return h, out if first else self._resample(up=True, with_conv=False)(pyramid) + out
        if first:
            return h, layers.conv3x3(h.shape[-1], dtype=self.dtype)(feat)
        pyramid = self._resample(up=True, out_ch=h.shape[-1])(pyramid)
        pyramid = layers.residual_sum(pyramid, h, self.skip_rescale)
        return pyramid, pyramid

    def _encode(self, x, temb, train):
        """Downsampling path; returns the skip activations hs (last one is the bottom input)."""
        pyramid = x
        hs = [layers.conv3x3(self.nf, dtype=self.dtype)(x)]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = self._resblock(self.nf * mult)(hs[-1], temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = self._attn()(h)
                hs.append(h)
            if level != len(self.ch_mult) - 1:
                h = self._down_level(hs[-1], temb, train)
                if self.progressive_input != "none":
                    pyramid, h = self._input_skip(pyramid, h)
                hs.append(h)
        return hs

    def _decode(self, h, hs, temb, train, out_channels):
        """Upsampling path with skip concatenations; returns the output (B, H, W, out_channels)."""
        pyramid = None
        for level in reversed(range(len(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = self._resblock(self.nf * self.ch_mult[level])(jnp.concatenate([h, hs.pop()], -1), temb, train)
            if h.shape[1] in self.attn_resolutions:
                h = self._attn()(h)
            if self.progressive != "none":
                h, pyramid = self._output_pyramid(h, pyramid, out_channels, level == len(self.ch_mult) - 1)
            if level != 0:
                h = self._up_level(h, temb, train)
        assert not hs, "every skip activation is consumed exactly once"
        if self.progressive == "output_skip":
            return pyramid
        h = layers.act(layers.group_norm(h.shape[-1], dtype=self.dtype)(h))
        return layers.conv3x3(out_channels, init_scale=self.init_scale, dtype=self.dtype)(h)

    # --- network --------------------------------------------------------------------
    @nn.compact
    def __call__(self, x, c_noise, train: bool = False, y=None, cond=None):
        self._check(x)
        cemb, xc = conditioning(network_spec(self.cond_spec, self.num_classes), merge_label(cond, y), x, 4 * self.nf)
        temb = add_class(self._embed(c_noise), cemb)
        hs = self._encode(xc, temb, train)
        h = self._resblock()(hs[-1], temb, train)
        h = self._attn()(h)
        h = self._resblock()(h, temb, train)
        return self._decode(h, hs, temb, train, x.shape[-1]).astype(x.dtype)


__all__ = ["NCSNpp"]
