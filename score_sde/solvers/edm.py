"""EDM's Heun sampler (Karras et al., NeurIPS 2022, Algorithms 1 and 2) for any linear SDE.

In the scaled variable y = x / alpha(t) every SDE here becomes the variance-exploding process
with noise level sigma = std / alpha = exp(-lambda), whose probability-flow ODE is

    dy / dsigma = (y - D(y; sigma)) / sigma,   D = x0_hat (Tweedie),           (Karras eq. 4 with s = 1)

with D(y; sigma) = (x + std^2 s(x, t)) / alpha at x = alpha(t) y, t = t(sigma). The noise
levels follow the rho-schedule between sigma(eps) and sigma(T) (eq. 5) and end at 0; each step
is Heun's method except the last (to sigma = 0), which is Euler, so NFE = 2 N - 1. With
s_churn > 0 each step first raises the noise level to sigma_hat = (1 + gamma) sigma by adding
fresh noise (Algorithm 2). The result is the denoised sample at sigma = 0.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.sde import SDE, Array, ScoreFn
from score_sde.solvers.base import SampleInfo, Sampler, resolve_eps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import edm_sigmas, sigma_to_time


def _denoiser(sde: SDE, score_fn: ScoreFn, y: Array, t: Array) -> Array:
    """D(y; sigma(t)) = x0_hat(alpha(t) y, t); one score evaluation."""
    return data_prediction(sde, score_fn, sde.alpha(t) * y, t)


def churn_levels(sigmas: Array, s_churn: float, s_min: float, s_max: float) -> Array:
    """sigma_hat_i = (1 + gamma_i) sigma_i, gamma_i = min(s_churn / N, sqrt 2 - 1) on [s_min, s_max]."""
    n = sigmas.shape[0] - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    inside = (sigmas[:-1] >= s_min) & (sigmas[:-1] <= s_max)
    return sigmas[:-1] * (1.0 + jnp.where(inside, gamma, 0.0))


class EDMHeunSampler(Sampler):
    """Karras et al. (2022) Heun sampler with the rho-schedule and optional stochastic churn.

    Attributes:
      n_steps: number of noise levels N > 0 (steps); NFE = 2 N - 1.
      rho: schedule exponent (7 in the paper).
      s_churn, s_min, s_max, s_noise: Algorithm 2's stochasticity; s_churn = 0 is the
        deterministic Algorithm 1.
      eps: smallest time, giving sigma_min = std(eps) / alpha(eps); None -> the SDE's convention.
    """

    n_steps: int = eqx.field(default=18, static=True)
    rho: float = eqx.field(default=7.0, static=True)
    s_churn: float = eqx.field(default=0.0, static=True)
    s_min: float = eqx.field(default=0.0, static=True)
    s_max: float = eqx.field(default=float("inf"), static=True)
    s_noise: float = eqx.field(default=1.0, static=True)
    eps: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {self.n_steps!r}")
        if not self.rho > 0:
            raise ValueError(f"rho must be positive, got {self.rho!r}")
        if self.s_churn < 0 or self.s_noise < 0 or self.s_min > self.s_max:
            raise ValueError(f"need s_churn >= 0, s_noise >= 0 and s_min <= s_max; got s_churn={self.s_churn!r}, "
                             f"s_noise={self.s_noise!r}, s_min={self.s_min!r}, s_max={self.s_max!r}")

    def _step(self, sde, score_fn, y, key, sigma, sigma_hat, sigma_next, heun: bool):
        """One step of Algorithm 2 from sigma (raised to sigma_hat) to sigma_next."""
        if self.s_churn > 0:
            z = jax.random.normal(key, y.shape, y.dtype)
            y = y + jnp.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * z
        d = (y - _denoiser(sde, score_fn, y, sigma_to_time(sde, sigma_hat))) / sigma_hat
        y_next = y + (sigma_next - sigma_hat) * d
        if not heun:
            return y_next
        d_next = (y_next - _denoiser(sde, score_fn, y_next, sigma_to_time(sde, sigma_next))) / sigma_next
        return y + (sigma_next - sigma_hat) * 0.5 * (d + d_next)

    def sample(self, key, sde, score_fn, shape, dtype):
        eps = resolve_eps(self.eps, sde)
        k_prior, k_loop = jax.random.split(key)
        t_end, t_start = jnp.asarray(eps, dtype), jnp.asarray(sde.T, dtype)
        sigma_min = sde.std(t_end) / sde.alpha(t_end)
        sigma_max = sde.std(t_start) / sde.alpha(t_start)
        sigmas = edm_sigmas(sigma_min, sigma_max, self.n_steps, self.rho, dtype)
        hats = churn_levels(sigmas, self.s_churn, self.s_min, self.s_max)
        keys = jax.random.split(k_loop, self.n_steps)
        y = sde.prior_sampling(k_prior, shape, dtype) / sde.alpha(t_start)

        def body(y, inp):
            key, s, s_hat, s_next = inp
            return self._step(sde, score_fn, y, key, s, s_hat, s_next, heun=True), None

        n = self.n_steps - 1
        y, _ = jax.lax.scan(body, y, (keys[:n], sigmas[:n], hats[:n], sigmas[1:n + 1]))
        y = self._step(sde, score_fn, y, keys[n], sigmas[n], hats[n], sigmas[n + 1], heun=False)
        return y, SampleInfo(nfe=jnp.asarray(2 * self.n_steps - 1, jnp.int32))


__all__ = ["EDMHeunSampler", "churn_levels"]
