"""A small MLP score network for low-dimensional data (2-D toys, tests, CPU demos)."""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn

from score_sde.models.embeddings import add_class, class_embedding, fourier_embedding


class MLP(nn.Module):
    """Noise-prediction MLP: x (B, *dims), c_noise (B,) -> like x.

    The noise level enters through a Fourier embedding added after every hidden layer; with
    num_classes > 0 a learned class embedding of y (None: the null class) is added to it.
    """

    hidden: Sequence[int] = (128, 128, 128)
    embed_dim: int = 32
    fourier_scale: float = 1.0
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, c_noise, train: bool = False, y=None):
        shape = x.shape
        h = x.reshape(shape[0], -1)
        emb = fourier_embedding(c_noise, self.embed_dim, self.fourier_scale)
        emb = nn.silu(nn.Dense(self.embed_dim)(emb))
        emb = add_class(emb, class_embedding(y, self.num_classes, self.embed_dim, shape[0]))
        for width in self.hidden:
            h = nn.Dense(width)(h) + nn.Dense(width)(emb)
            h = nn.silu(h)
        out = nn.Dense(math.prod(shape[1:]), kernel_init=nn.initializers.zeros)(h)
        return out.reshape(shape)
