"""Correctors: score-based MCMC at a fixed time t of the predictor-corrector sampler.

Each corrector is a small immutable Module holding its options (`snr`, `n_steps`) with
`correct(key, sde, score_fn, x, t, s)`: a few Langevin steps targeting p_t. (t, s) is the
grid step the predictor takes next; it sets the step-size scale alpha_i = r^2 with
r = alpha(t) / alpha(s) from `SDE.transition` (the paper's alpha_i = 1 - beta_i for VP,
1 for VE), defined the same way for every SDE, sub-VP included.

Each Langevin step costs one score evaluation: `nfe_per_call = n_steps` (0 for "none").
"""

from __future__ import annotations

import abc
import types
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from score_sde.lookup import lookup
from score_sde.sde import SDE, Array, ScoreFn, batch_times, expand_to


def _mean_norm(x: Array) -> Array:
    """Batch mean of the per-example L2 norms over all non-batch dims, a scalar.

    As in Song et al. (2021): a per-example ratio blows up where the score vanishes (at a
    mode), so the step size uses norms averaged over the batch.
    """
    return jnp.mean(jnp.sqrt(jnp.sum(jnp.reshape(x, (x.shape[0], -1)) ** 2, axis=1)))


class Corrector(eqx.Module):
    """Base class: `n_steps` Langevin-type steps x <- x + h s(x, t) + sqrt(2 h) z at time t."""

    snr: float = eqx.field(default=0.16, static=True)
    n_steps: int = eqx.field(default=1, static=True)
    requires: ClassVar[frozenset] = frozenset({"scalar_kernel"})  # the step size uses SDE.transition

    def __check_init__(self):
        if not self.snr > 0:
            raise ValueError(f"snr must be positive, got {self.snr!r}")
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int) or self.n_steps < 0:
            raise ValueError(f"n_corrector_steps must be a non-negative int, got {self.n_steps!r}")

    @property
    def nfe_per_call(self) -> int:
        return self.n_steps

    @abc.abstractmethod
    def step_size(self, sde: SDE, score: Array, noise: Array, t: Array, s) -> Array:
        """Per-example step size h, (B,)."""

    def correct(self, key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t, s) -> Array:
        """Runs `n_steps` Langevin steps targeting p_t; returns an array like x."""
        tb = batch_times(t, x.shape[0], x.dtype)

        def one(i, x):
            score = score_fn(x, tb)
            z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
            h = expand_to(self.step_size(sde, score, z, tb, s), x)
            return x + h * score + jnp.sqrt(2.0 * h) * z

        return lax.fori_loop(0, self.n_steps, one, x)


def _alpha_i(sde: SDE, t: Array, s, dtype) -> Array:
    """alpha_i = r^2, r = alpha(t) / alpha(s): the step-size scale of Song et al. (Alg. 4/5)."""
    r, _ = sde.transition(jnp.asarray(s, dtype), t)
    return r**2


class LangevinCorrector(Corrector):
    """Langevin corrector with a target signal-to-noise ratio (Song et al. 2021, Algorithm 5).

    h = 2 alpha_i (snr ||z|| / ||s||)^2, norms averaged over the batch (so h is the same for
    every example of a batch, as in the paper).
    """

    def step_size(self, sde, score, noise, t, s):
        ratio = self.snr * _mean_norm(noise) / jnp.maximum(_mean_norm(score), jnp.finfo(score.dtype).tiny)
        return 2.0 * _alpha_i(sde, t, s, score.dtype) * ratio**2


class AnnealedLangevinCorrector(Corrector):
    """Annealed Langevin dynamics (Song & Ermon 2019), step proportional to the noise variance.

    h = 2 alpha_i (snr std(t))^2, std(t) the marginal standard deviation of p_0t.
    """

    def step_size(self, sde, score, noise, t, s):
        return 2.0 * _alpha_i(sde, t, s, score.dtype) * (self.snr * sde.std(t)) ** 2


class NoneCorrector(Corrector):
    """No corrector: x unchanged, zero evaluations."""

    requires: ClassVar[frozenset] = frozenset()

    @property
    def nfe_per_call(self) -> int:
        return 0

    def step_size(self, sde, score, noise, t, s):
        return jnp.zeros(score.shape[:1], score.dtype)

    def correct(self, key, sde, score_fn, x, t, s):
        return x


# name -> Corrector class (read-only; the `pc` sampler's `corrector` option).
CORRECTORS: types.MappingProxyType = types.MappingProxyType({
    "langevin": LangevinCorrector,
    "ald": AnnealedLangevinCorrector,
    "none": NoneCorrector,
})


def get_corrector(corrector: str | Corrector, snr: float | None = None, n_steps: int | None = None) -> Corrector:
    """The corrector called `corrector` with its options, or a Corrector object as it is.

    snr and n_steps default to the corrector's own (0.16, 1); they cannot be given with an object,
    which carries its own. An unknown name raises ValueError listing the valid ones.
    """
    opts = {k: v for k, v in (("snr", snr), ("n_steps", n_steps)) if v is not None}
    if isinstance(corrector, Corrector):
        if opts:
            raise ValueError(f"{', '.join(opts)} configure a corrector given by name; the corrector object "
                             f"{corrector!r} carries its own (e.g. LangevinCorrector(snr=0.16, n_steps=1))")
        return corrector
    return lookup(CORRECTORS, corrector, "corrector")(**opts)


__all__ = ["Corrector", "LangevinCorrector", "AnnealedLangevinCorrector", "NoneCorrector", "CORRECTORS",
           "get_corrector"]
