"""Predictors: one reverse-time step x_t -> x_s (s < t) of the predictor-corrector sampler.

Every predictor is a small immutable Module with `step(key, sde, score_fn, x, t, s)` and a
class constant `nfe` (score evaluations per step). The discrete updates are derived from
the SDE's exact transition x_t | x_s = N(r x_s, v I) (`SDE.transition`), so they work
for VP, sub-VP and VE alike and for any step size.

Shapes: x is (B, *dims); t and s are scalars (the sampler's time grid).
"""

from __future__ import annotations

import abc
import types
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.lookup import lookup
from score_sde.sde import SDE, Array, ScoreFn, batch_times, expand_to, reverse_drift


class Predictor(eqx.Module):
    """Base class of the predictors; `requires` names the SDE capabilities a step uses."""

    nfe: ClassVar[int] = 1
    requires: ClassVar[frozenset] = frozenset({"scalar_kernel"})

    @abc.abstractmethod
    def step(self, key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t, s) -> Array:
        """Moves x from time t to the earlier time s; returns an array like x."""


def _coef(c, x):
    """A scalar or (B,) step coefficient, broadcast against x (B, *dims)."""
    return expand_to(batch_times(c, x.shape[0], x.dtype), x)


class EulerMaruyamaPredictor(Predictor):
    """Euler–Maruyama on the reverse SDE dx = [f - g^2 s] dt + g dw-bar (Song et al. 2021, eq. 6).

    x_s = x_t + (f - g^2 s(x_t, t)) (s - t) + g(t) sqrt(t - s) z,  z ~ N(0, I).
    Any SDE with a reverse SDE (CLD too: f - G G^T s and G z, `sde.score_drift` / `sde.noise`).
    """

    requires: ClassVar[frozenset] = frozenset({"reverse_sde"})

    def step(self, key, sde, score_fn, x, t, s):
        tb = batch_times(t, x.shape[0], x.dtype)
        drift = reverse_drift(sde, score_fn, x, tb)
        dt = jnp.asarray(s - t, x.dtype)
        z = jax.random.normal(key, x.shape, x.dtype)
        return x + drift * dt + sde.noise(x, z, tb) * jnp.sqrt(-dt)


class ReverseDiffusionPredictor(Predictor):
    """The discretised reverse SDE (Song et al. 2021, eq. 46) with f_disc = (r - 1) x, G^2 = v.

    x_s = x_t - (r - 1) x_t + v s(x_t, t) + sqrt(v) z, with (r, v) = sde.transition(s, t).
    For VP this is the paper's reverse-diffusion predictor (r = sqrt(1 - beta_i), v = beta_i);
    for VE it is (r = 1, v = sigma_i^2 - sigma_{i-1}^2).
    """

    def step(self, key, sde, score_fn, x, t, s):
        tb = batch_times(t, x.shape[0], x.dtype)
        r, v = sde.transition(jnp.asarray(s, x.dtype), jnp.asarray(t, x.dtype))
        r, v = _coef(r, x), _coef(v, x)
        z = jax.random.normal(key, x.shape, x.dtype)
        return (2.0 - r) * x + v * score_fn(x, tb) + jnp.sqrt(v) * z


class AncestralSamplingPredictor(Predictor):
    """Ancestral sampling: the Gaussian posterior q(x_s | x_t, x0_hat) (DDPM / SMLD, eq. 47).

    x_s = x_t / r + (v / r) s(x_t, t) + post_std z, with the coefficients of
    `sde.ancestral_coeffs(s, t)`, derived from the continuous marginal (so sub-VP works too).
    """

    def step(self, key, sde, score_fn, x, t, s):
        tb = batch_times(t, x.shape[0], x.dtype)
        inv_r, v_over_r, post_std = sde.ancestral_coeffs(jnp.asarray(s, x.dtype), jnp.asarray(t, x.dtype))
        z = jax.random.normal(key, x.shape, x.dtype)
        return _coef(inv_r, x) * x + _coef(v_over_r, x) * score_fn(x, tb) + _coef(post_std, x) * z


class NonePredictor(Predictor):
    """No predictor: x is unchanged (the corrector alone samples; zero evaluations)."""

    nfe: ClassVar[int] = 0
    requires: ClassVar[frozenset] = frozenset()

    def step(self, key, sde, score_fn, x, t, s):
        return x


# name -> Predictor class (read-only; the `pc` sampler's `predictor` option).
PREDICTORS: types.MappingProxyType = types.MappingProxyType({
    "euler_maruyama": EulerMaruyamaPredictor,
    "reverse_diffusion": ReverseDiffusionPredictor,
    "ancestral_sampling": AncestralSamplingPredictor,
    "none": NonePredictor,
})


def get_predictor(predictor: str | Predictor) -> Predictor:
    """The predictor called `predictor` (or the object itself); an unknown name raises ValueError
    listing the valid ones."""
    if isinstance(predictor, Predictor):
        return predictor
    return lookup(PREDICTORS, predictor, "predictor")()


__all__ = ["Predictor", "EulerMaruyamaPredictor", "ReverseDiffusionPredictor", "AncestralSamplingPredictor",
           "NonePredictor", "PREDICTORS", "get_predictor"]
