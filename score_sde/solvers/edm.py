"""EDM's Heun sampler (Karras et al., NeurIPS 2022, Algorithms 1 and 2) for any linear SDE.

In the scaled variable y = x / alpha(t) every SDE here becomes the variance-exploding process
with noise level sigma = std / alpha = exp(-lambda), whose probability-flow ODE is

    dy / dsigma = (y - D(y; sigma)) / sigma,   D = x0_hat (Tweedie),           (Karras eq. 4 with s = 1)

with D(y; sigma) = (x + std^2 s(x, t)) / alpha at x = alpha(t) y, t = t(sigma). The noise
levels follow the rho-schedule between sigma(eps) and sigma(T) (eq. 5), or the times of a spacing
(`schedule`), and end at 0; each step
is Heun's method except the last (to sigma = 0), which is Euler, so NFE = 2 N - 1. With
s_churn > 0 each step first raises the noise level to sigma_hat = (1 + gamma) sigma by adding
fresh noise (Algorithm 2). The result is the denoised sample at sigma = 0.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array, ScoreFn
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import SKIP_TYPES, edm_sigmas, sigma_to_time, time_steps


SCHEDULES = ("karras",) + tuple(s for s in SKIP_TYPES if s != "edm")  # "edm" spacing = the karras levels


def _denoiser(sde: SDE, score_fn: ScoreFn, y: Array, t: Array) -> Array:
    """D(y; sigma(t)) = x0_hat(alpha(t) y, t); one score evaluation."""
    return data_prediction(sde, score_fn, sde.alpha(t) * y, t)


def churn_levels(sigmas: Array, s_churn: float, s_min: float, s_max: float) -> Array:
    """sigma_hat_i = (1 + gamma_i) sigma_i, gamma_i = min(s_churn / N, sqrt 2 - 1) on [s_min, s_max]."""
    n = sigmas.shape[0] - 1
    gamma = min(s_churn / n, math.sqrt(2.0) - 1.0)
    inside = (sigmas[:-1] >= s_min) & (sigmas[:-1] <= s_max)
    return sigmas[:-1] * (1.0 + jnp.where(inside, gamma, 0.0))


class EDMHeunSampler(StepSampler):
    """Karras et al. (2022) Heun sampler with the rho-schedule and optional stochastic churn.

    The driver's x is alpha(t) y at the time t of each noise level; the last level, sigma = 0,
    is t = 0 (x = y, the denoised sample), so a hook sees every state on the data scale.

    Attributes:
      n_steps: number of noise levels N > 0 (steps); NFE = 2 N - 1.
      rho: exponent of the "karras" schedule (7 in the paper).
      schedule: the noise levels: "karras" (the rho-schedule, eq. 5), or the levels at the times of a
        time spacing, "time_uniform" (the paper's VP schedule), "logSNR" (uniform in log sigma) or
        "time_quadratic".
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
    schedule: str = eqx.field(default="karras", static=True)
    eps: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_n_steps(self.n_steps)
        check_choice(self.schedule, SCHEDULES, "schedule")
        if not self.rho > 0:
            raise ValueError(f"rho must be positive, got {self.rho!r}")
        if self.s_churn < 0 or self.s_noise < 0 or self.s_min > self.s_max:
            raise ValueError(f"need s_churn >= 0, s_noise >= 0 and s_min <= s_max; got s_churn={self.s_churn!r}, "
                             f"s_noise={self.s_noise!r}, s_min={self.s_min!r}, s_max={self.s_max!r}")

    @classmethod
    def for_budget(cls, nfe: int) -> dict:
        """Best settings for at most nfe evaluations (benchmarks/path_error.py): (nfe + 1) // 2 levels
        at time_quadratic times (NFE 2 n - 1)."""
        return dict(n_steps=(nfe + 1) // 2, schedule="time_quadratic")

    def total_nfe(self, hooked: bool = False) -> int:
        return 2 * self.n_steps - 1

    def step_kinds(self) -> list[str]:
        """Heun's method on every step but the last, which is Euler (to sigma = 0)."""
        return ["heun"] * (self.n_steps - 1) + ["euler"]

    def grid(self, sde, t_start, t_end, dtype):
        """Times of the noise levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0, and per step
        (sigma, sigma_hat, sigma_next, t(sigma_hat), t(sigma_next))."""
        t_end = jnp.asarray(t_end, dtype)
        if self.schedule == "karras" or self.n_steps == 1:
            sigmas = edm_sigmas(sde.std(t_end) / sde.alpha(t_end), sde.std(t_start) / sde.alpha(t_start),
                                self.n_steps, self.rho, dtype)
        else:  # the levels at the times of a time spacing (Karras et al.'s "VP" schedule is time_uniform)
            levels = time_steps(sde, self.schedule, t_start, t_end, self.n_steps - 1, dtype)
            sigmas = jnp.append(sde.std(levels) / sde.alpha(levels), jnp.zeros((), dtype))
        hats = churn_levels(sigmas, self.s_churn, self.s_min, self.s_max)
        ts = jnp.append(sigma_to_time(sde, sigmas[:-1]).at[0].set(t_start), jnp.zeros((), dtype))
        # the times of sigma_hat and sigma_next, by bisection once here rather than in every step
        return ts, (sigmas[:-1], hats, sigmas[1:], sigma_to_time(sde, hats), sigma_to_time(sde, sigmas[1:]))

    def partial_step_kinds(self) -> list[str]:
        """A partial solve (to a given t_end > 0) ends at sigma(t_end) > 0: Heun's method on every step."""
        return ["heun"] * self.n_steps

    def partial_nfe(self, hooked: bool = False) -> int:
        return 2 * self.n_steps

    def partial_grid(self, sde, t_start, t_end, dtype):
        """N + 1 noise levels from sigma(t_start) down to sigma(t_end) (the schedule's spacing; no level 0)."""
        t_end = jnp.asarray(t_end, dtype)
        if self.schedule == "karras":
            sigmas = edm_sigmas(sde.std(t_end) / sde.alpha(t_end), sde.std(t_start) / sde.alpha(t_start),
                                self.n_steps + 1, self.rho, dtype)[:-1]
        else:
            levels = time_steps(sde, self.schedule, t_start, t_end, self.n_steps, dtype)
            sigmas = sde.std(levels) / sde.alpha(levels)
        return self._grid_of(sde, sigmas, t_start, t_end, dtype)

    def _grid_of(self, sde, sigmas, t_start, t_last, dtype):
        """(ts, per-step inputs) of the noise levels sigmas (N + 1,), the last at time t_last."""
        hats = churn_levels(sigmas, self.s_churn, self.s_min, self.s_max)
        ts = sigma_to_time(sde, sigmas).at[0].set(t_start).at[-1].set(t_last)
        return ts, (sigmas[:-1], hats, sigmas[1:], sigma_to_time(sde, hats), ts[1:])

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        """One step of Algorithm 2 from sigma (raised to sigma_hat) to sigma_next, in y = x / alpha."""
        sigma, sigma_hat, sigma_next, t_hat, t_sigma_next = inputs
        y = x / sde.alpha(t)
        if self.s_churn > 0:
            z = jax.random.normal(key, y.shape, y.dtype)
            y = y + jnp.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * z
        d = (y - _denoiser(sde, score_fn, y, t_hat)) / sigma_hat
        y_next = y + (sigma_next - sigma_hat) * d
        if kind == "heun":
            d_next = (y_next - _denoiser(sde, score_fn, y_next, t_sigma_next)) / sigma_next
            y_next = y + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        return sde.alpha(t_next) * y_next, state


__all__ = ["EDMHeunSampler", "SCHEDULES", "churn_levels"]
