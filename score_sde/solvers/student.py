"""The sampler of a distilled student: K steps of its data prediction on a uniform time grid to t = 0.

A student (`score_sde.distill`) predicts x0_hat(x, t) directly; as a score function it is the
score of that prediction, s = (alpha x0_hat - x) / std^2, so every sampler accepts it and this one
recovers x0_hat = (x + std^2 s) / alpha exactly (Tweedie, `data_prediction`). The grid is
t_i = t_start (1 - i / K), i = 0..K, ending at t = 0, the clean data: the last step returns x0_hat.

    kind="ddim"         progressive distillation (Salimans & Ho 2022): deterministic DDIM steps,
                        x_next = alpha(t') x0_hat + std(t') (x - alpha(t) x0_hat) / std(t)
    kind="consistency"  multistep consistency sampling (Song et al. 2023, Alg. 1): x0_hat = f(x, t),
                        then re-noise to the next time, x_next = alpha(t') x0_hat + std(t') z

With K = 1 both are one evaluation: x0_hat(x_T, T). Any score function works (the exact score
gives DDIM on a uniform grid), but the student is the one trained to make these few steps good.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import expand_to
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import data_prediction

KINDS = ("ddim", "consistency")


def student_grid(t_start, t_end, n_steps: int, dtype):
    """(n_steps + 1,) times from t_start down to t_end, uniform in t (the grid a student was trained on)."""
    u = jnp.arange(n_steps + 1, dtype=dtype) / n_steps
    return jnp.asarray(t_start, dtype) + u * (jnp.asarray(t_end, dtype) - jnp.asarray(t_start, dtype))


def clean_coeffs(sde, t):
    """(alpha(t), std(t)) with t = 0 meaning clean data, (1, 0), for every SDE (VE's std(0) is sigma_min)."""
    clean = t <= 0
    safe = jnp.where(clean, sde.T, t)
    return jnp.where(clean, 1.0, sde.alpha(safe)), jnp.where(clean, 0.0, sde.std(safe))


def ddim_from_x0(sde, x, x0, t, t_next):
    """The deterministic DDIM move of x at t to t_next given its data prediction x0 (t_next = 0: x0)."""
    a, s = clean_coeffs(sde, t)
    a_n, s_n = clean_coeffs(sde, t_next)
    return expand_to(a_n, x) * x0 + expand_to(s_n / s, x) * (x - expand_to(a, x) * x0)


class StudentSampler(StepSampler):
    """A distilled student's sampler: `n_steps` steps of its data prediction (module docstring).

    Attributes:
      n_steps: number of student steps K (the student distilled for K steps; NFE = K).
      kind: "ddim" (progressive distillation) or "consistency" (multistep consistency sampling).
    """

    n_steps: int = eqx.field(default=1, static=True)
    kind: str = eqx.field(default="ddim", static=True)

    def __check_init__(self):
        check_n_steps(self.n_steps)
        check_choice(self.kind, KINDS, "kind")

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps

    def grid(self, sde, t_start, t_end, dtype):
        """The full solve ends at t = 0 (clean data), whatever the SDE's eps."""
        return student_grid(t_start, 0.0, self.n_steps, dtype), None

    def partial_grid(self, sde, t_start, t_end, dtype):
        return student_grid(t_start, t_end, self.n_steps, dtype), None

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        x0 = data_prediction(sde, score_fn, x, t)
        if self.kind == "ddim":
            return ddim_from_x0(sde, x, x0, t, t_next), state
        a_n, s_n = clean_coeffs(sde, t_next)
        z = jax.random.normal(key, x.shape, x.dtype)
        return (a_n * x0 + s_n * z).astype(x.dtype), state


__all__ = ["StudentSampler", "student_grid", "clean_coeffs", "ddim_from_x0", "KINDS"]
