"""Symmetric splitting CLD sampler (SSCS; Dockhorn, Vahdat & Kreis, ICLR 2022, Sec. 3.3, Alg. 1).

The reverse-time CLD SDE's drift splits into a linear Ornstein-Uhlenbeck part A (with all of the
noise), whose flow is exact (`CLD.split_flow`), and the score part S(u, t) = (0, 2 Gamma beta
(s(u, t) + M^-1 v)), which changes v only. One step t -> t_next = t - h is the symmetric
(Strang) composition

    u <- A-flow over h / 2                  (exact Gaussian draw)
    u <- u + h S(u, t - h / 2)              (Euler; one score evaluation)
    u <- A-flow over h / 2                  (exact Gaussian draw)

on a uniform grid from T (or t_init) to eps. NFE = n_steps. It needs an SDE with the
"sscs_split" capability (CLD); the output is the state at eps (no denoising step).
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax

from score_sde.sde import batch_times
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.timesteps import time_steps


class SSCSSampler(StepSampler):
    """SSCS: analytic OU half-steps around an Euler score step.

    Attributes:
      n_steps: number of steps N from T (or t_init) to eps; NFE = N.
      eps: smallest time; None -> the SDE's convention (1e-3 for CLD).
    """

    n_steps: int = eqx.field(default=100, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    requires: ClassVar[frozenset] = frozenset({"sscs_split"})

    def __check_init__(self):
        check_n_steps(self.n_steps)

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps

    def grid(self, sde, t_start, t_end, dtype):
        return time_steps(sde, "time_uniform", t_start, t_end, self.n_steps, dtype), None

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        k1, k2 = jax.random.split(key)
        h = t - t_next
        u = sde.split_flow(x, 0.5 * h, k1)
        t_mid = batch_times(t - 0.5 * h, u.shape[0], u.dtype)
        u = u + h * sde.split_score_drift(u, score_fn(u, t_mid), t_mid)
        return sde.split_flow(u, 0.5 * h, k2), state


__all__ = ["SSCSSampler"]
