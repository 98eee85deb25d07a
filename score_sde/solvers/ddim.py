"""DDIM (Song, Meng & Ermon, ICLR 2021) on the continuous marginal of any linear SDE.

One step from s to t < s with eps_hat = -std(s) s(x, s) and x0_hat = (x - std(s) eps_hat) / alpha(s):

    x_t = alpha(t) x0_hat + sqrt(std(t)^2 - c^2) eps_hat + c z,
    c   = eta std(t) sqrt(1 - exp(-2 h)),   h = lambda(t) - lambda(s)          (DDIM eq. 12, 16)

c^2 = std(t)^2 (1 - exp(-2h)) is the variance of the exact posterior q(x_t | x_s, x_0), so
eta = 1 is ancestral sampling and eta = 0 the deterministic DDIM, which equals
DPM-Solver-1 (Lu et al. 2022a, Sec. 4.1). Only alpha, std and lambda are used: VP, sub-VP
and VE (alpha = 1) all work, and any number of steps.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.sde import SDE, Array, ScoreFn
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import noise_prediction
from score_sde.solvers.timesteps import check_skip, time_steps


def ddim_step(sde: SDE, score_fn: ScoreFn, x: Array, s: Array, t: Array, eta: float, key: Array) -> Array:
    """One DDIM step x_s -> x_t (s > t scalars); one score evaluation. eta = 0 ignores key."""
    e = noise_prediction(sde, score_fn, x, s)
    x0 = (x - sde.std(s) * e) / sde.alpha(s)
    if eta == 0:
        return sde.alpha(t) * x0 + sde.std(t) * e
    h = sde.log_snr(t) - sde.log_snr(s)
    c = eta * sde.std(t) * jnp.sqrt(-jnp.expm1(-2.0 * h))
    z = jax.random.normal(key, x.shape, x.dtype)
    return sde.alpha(t) * x0 + jnp.sqrt(sde.std(t) ** 2 - c**2) * e + c * z


class DDIMSampler(StepSampler):
    """DDIM: deterministic (eta = 0) or stochastic (0 < eta <= 1) implicit sampler.

    Attributes:
      n_steps: number of steps N from T (or t_init) to eps; NFE = N.
      eta: noise scale in [0, 1]; 0 is the deterministic DDIM (the probability-flow ODE's
        first-order exponential integrator), 1 is DDPM-style ancestral sampling.
      skip: time spacing, "time_uniform" (DDIM's uniform skip), "time_quadratic" or "logSNR".
      eps: smallest time; None -> the SDE's convention. The output is x_eps (no denoising).
    """

    n_steps: int = eqx.field(default=50, static=True)
    eta: float = eqx.field(default=0.0, static=True)
    skip: str = eqx.field(default="time_uniform", static=True)
    eps: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_n_steps(self.n_steps)
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0: deterministic DDIM, 1: ancestral), got {self.eta!r}")
        check_skip(self.skip)

    @classmethod
    def for_budget(cls, nfe: int) -> dict:
        """Best settings for nfe evaluations (benchmarks/path_error.py): nfe uniform steps in t."""
        return dict(n_steps=nfe, skip="time_uniform")

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps

    def grid(self, sde, t_start, t_end, dtype):
        return time_steps(sde, self.skip, t_start, t_end, self.n_steps, dtype), None

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        return ddim_step(sde, score_fn, x, t, t_next, self.eta, key), state


__all__ = ["DDIMSampler", "ddim_step"]
