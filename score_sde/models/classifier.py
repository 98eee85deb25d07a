"""A noise-conditional classifier p_t(y | x_t) for classifier guidance (Song et al. 2021; Dhariwal & Nichol 2021).

Images: the encoder half of the small U-Net (DDPM residual blocks conditioned on the noise
embedding, average-pool downsampling), GroupNorm + SiLU, global average pooling and a linear
head. Low-dimensional data (x of shape (B, D)): an MLP whose hidden layers each add a Dense
projection of the noise embedding. Both take x_t (B, *dims) and c_noise (B,) (the same
conditioning as the score networks, `parameterization.noise_conditioning`) and return logits
(B, num_classes).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_sde.models import layers, resample
from score_sde.models.embeddings import fourier_embedding, gaussian_fourier_projection


class NoisyClassifier(nn.Module):
    """Time-conditioned classifier: x_t (B, H, W, C) or (B, D), c_noise (B,) -> logits (B, num_classes).

    Images use levels of nf * ch_mult[l] channels with num_res_blocks blocks each (H, W divisible
    by 2^(len(ch_mult) - 1)); flat data uses two hidden layers of width 8 nf.
    """

    num_classes: int
    nf: int = 16
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 1
    fourier_scale: float = 16.0

    def _temb(self, c_noise, image: bool):
        if image:
            emb = gaussian_fourier_projection(c_noise, self.nf, self.fourier_scale)
        else:  # the MLP's log-spaced embedding (a random-feature scale of 16 does not suit 2-D data)
            emb = fourier_embedding(c_noise, 2 * self.nf)
        emb = nn.Dense(4 * self.nf, kernel_init=layers.default_init())(emb)
        return nn.Dense(4 * self.nf, kernel_init=layers.default_init())(layers.act(emb))

    @nn.compact
    def __call__(self, x, c_noise, train: bool = False):
        if self.num_classes < 2:
            raise ValueError(f"NoisyClassifier needs num_classes >= 2, got {self.num_classes}")
        if x.ndim == 4:
            return self._image(x, self._temb(c_noise, True), train)
        h, temb = x.reshape(x.shape[0], -1), self._temb(c_noise, False)
        for _ in range(2):
            h = layers.act(nn.Dense(8 * self.nf)(h) + nn.Dense(8 * self.nf)(temb))
        return nn.Dense(self.num_classes)(h)

    def _image(self, x, temb, train):
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"x must have H, W divisible by {factor} (len(ch_mult) = {len(self.ch_mult)}), got {x.shape}")
        h = layers.conv3x3(self.nf)(x)
        for level, mult in enumerate(self.ch_mult):
            if level:
                h = resample.downsample_mean(h)
            for _ in range(self.num_res_blocks):
                h = layers.ResnetBlockDDPM(self.nf * mult, dropout=0.0, init_scale=1.0)(h, temb, train)
        h = layers.act(layers.group_norm(h.shape[-1])(h))
        return nn.Dense(self.num_classes)(jnp.mean(h, axis=(1, 2)))


__all__ = ["NoisyClassifier"]
