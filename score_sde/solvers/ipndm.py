"""iPNDM (Zhang & Chen, ICLR 2023, App. "improved PNDM"; Zhou et al., CVPR 2024): Adams-Bashforth
on the probability-flow ODE in the noise level sigma = std / alpha = exp(-lambda).

In y = x / alpha(t) every linear SDE's probability-flow ODE is (Karras et al. 2022, eq. 4 with s = 1)

    dy / dsigma = eps_hat(alpha y, t(sigma)),       eps_hat = -std s(x, t)   (noise prediction)

and iPNDM takes explicit multistep steps y_{i+1} = y_i + (sigma_{i+1} - sigma_i) sum_j c_j eps_{i-j}
with the evaluations of the last k steps (k = min(i + 1, order): a lower-order warm-up instead of
PNDM's Runge-Kutta start, so NFE = N). `variable_step=False` uses the uniform-step
Adams-Bashforth weights (1), (3, -1)/2, (23, -16, 5)/12, (55, -59, 37, -9)/24, as iPNDM does on any
grid; `variable_step=True` ("iPNDM-v") integrates the Lagrange polynomial through the actual previous
noise levels, sum_j c_j p(u_j) = int_0^1 p(u) du for deg p < k with u_j = (sigma_{i-j} - sigma_i) / h,
which keeps order k on any grid (and equals the fixed weights on uniform steps in sigma).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp

from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import noise_prediction
from score_sde.solvers.timesteps import as_custom_grid, check_grid_steps, check_skip, sampler_steps

# Adams-Bashforth weights for uniform steps, newest evaluation first.
AB_WEIGHTS = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12), 4: (55 / 24, -59 / 24, 37 / 24, -9 / 24)}


def ab_weights(sigmas, k: int):
    """Variable-step Adams-Bashforth weights from sigma_i = sigmas[0] to sigmas[-1] through the nodes
    sigmas[0], sigmas[1], ... (most recent first; sigmas[1:k] earlier levels), shape (k,)."""
    s_i, s_next = sigmas[0], sigmas[-1]
    h = s_next - s_i
    u = jnp.stack([(sigmas[j] - s_i) / h for j in range(k)])  # u_0 = 0, earlier nodes at u < 0
    vander = jnp.stack([u**m for m in range(k)])  # (k, k): row m = u_j^m
    rhs = jnp.asarray([1.0 / (m + 1) for m in range(k)], u.dtype)
    return jnp.linalg.solve(vander, rhs)


class IPNDMSampler(StepSampler):
    """iPNDM: explicit Adams-Bashforth multistep in sigma on the noise prediction, orders 1-4, NFE = N.

    Attributes:
      order: the largest multistep order, 1-4 (4 in the papers).
      n_steps: number of steps N from T (or t_init) to eps; NFE = N.
      skip: time spacing "logSNR", "time_uniform", "time_quadratic" or "edm".
      custom_grid: instead of `skip`, the N + 1 logSNR fractions 0 = u_0 < ... < u_N = 1 of the steps, or
        the path of a JSON grid file written by `score_sde.solvers.grid_opt` (an optimised grid).
      variable_step: Adams-Bashforth weights for the actual (non-uniform) steps instead of iPNDM's
        uniform-step weights.
      eps: smallest time; None -> the SDE's convention. The output is x_eps (no denoising).
    """

    order: int = eqx.field(default=4, static=True)
    n_steps: int = eqx.field(default=10, static=True)
    skip: str = eqx.field(default="logSNR", static=True)
    custom_grid: str | tuple[float, ...] | None = eqx.field(default=None, static=True, converter=as_custom_grid)
    variable_step: bool = eqx.field(default=False, static=True)
    eps: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        if self.order not in (1, 2, 3, 4):
            raise ValueError(f"order must be 1, 2, 3 or 4, got {self.order!r}")
        check_n_steps(self.n_steps)
        check_skip(self.skip)
        check_grid_steps(self.custom_grid, self.n_steps)

    @classmethod
    def for_budget(cls, nfe: int) -> dict:
        """Best settings for nfe evaluations (benchmarks/path_error.py): order 4, logSNR spacing up to 12
        evaluations (best on the 2-D mixture, VP and VE), time_quadratic above (best at 20 on VP)."""
        return dict(n_steps=nfe, order=4, skip="logSNR" if nfe <= 12 else "time_quadratic")

    def with_steps(self, n_steps: int):
        """This sampler with n_steps steps on its `skip` spacing (no budget or custom grid)."""
        return dataclasses.replace(self, n_steps=n_steps, custom_grid=None)

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps

    def step_kinds(self) -> list[int]:
        """The order of each step: min(i + 1, order) (a lower-order warm-up)."""
        return [min(i + 1, self.order) for i in range(self.n_steps)]

    def grid(self, sde, t_start, t_end, dtype):
        ts = sampler_steps(sde, self.skip, self.custom_grid, t_start, t_end, self.n_steps, dtype)
        return ts, None

    def init(self, sde, score_fn, x, ts):
        """The last `order` - 1 noise predictions and their noise levels, most recent first."""
        k = max(self.order - 1, 1)
        return jnp.zeros((k,) + x.shape, x.dtype), jnp.ones((k,), ts.dtype)

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        """One Adams-Bashforth step of order `kind` in (y, sigma); one evaluation, at x."""
        es, sig_hist = state
        sigma, sigma_next = jnp.exp(-sde.log_snr(t)), jnp.exp(-sde.log_snr(t_next))
        e = noise_prediction(sde, score_fn, x, t).astype(x.dtype)
        history = [e] + [es[j] for j in range(kind - 1)]
        if self.variable_step:
            w = ab_weights([sigma] + [sig_hist[j] for j in range(kind - 1)] + [sigma_next], kind)
        else:
            w = AB_WEIGHTS[kind]
        y_next = x / sde.alpha(t) + (sigma_next - sigma) * sum(w[j] * history[j] for j in range(kind))
        es = jnp.concatenate([e[None], es[:-1]])
        sig_hist = jnp.concatenate([sigma[None], sig_hist[:-1]])
        return sde.alpha(t_next) * y_next, (es, sig_hist)


__all__ = ["AB_WEIGHTS", "IPNDMSampler", "ab_weights"]
