"""A small MLP score network for low-dimensional data (2-D toys, tests, CPU demos)."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn

from score_sde.models.conditions import conditioning, merge_label, network_spec
from score_sde.models.embeddings import add_class, fourier_embedding


class MLP(nn.Module):
    """Noise-prediction MLP: x (B, *dims), c_noise (B,) -> like x.

    The noise level enters through a Fourier embedding added after every hidden layer; the
    condition parts of `cond_spec` (or one label part for num_classes > 0; `score_sde.models.conditions`)
    add their embeddings to it and their channels to the input (`cond`: dict of parts, None: null).
    """

    hidden: Sequence[int] = (128, 128, 128)
    embed_dim: int = 32
    fourier_scale: float = 1.0
    num_classes: int = 0
    cond_spec: tuple = ()

    @nn.compact
    def __call__(self, x, c_noise, train: bool = False, y=None, cond=None):
        shape = x.shape
        emb = fourier_embedding(c_noise, self.embed_dim, self.fourier_scale)
        emb = nn.silu(nn.Dense(self.embed_dim)(emb))
        cemb, xc = conditioning(network_spec(self.cond_spec, self.num_classes), merge_label(cond, y), x,
                                self.embed_dim)
        emb = add_class(emb, cemb)
        h = xc.reshape(shape[0], -1)
        for width in self.hidden:
            h = nn.Dense(width)(h) + nn.Dense(width)(emb)
            h = nn.silu(h)
        out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros)(h)
        return out.reshape(shape)
