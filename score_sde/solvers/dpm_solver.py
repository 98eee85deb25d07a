"""DPM-Solver (Lu et al., NeurIPS 2022) and DPM-Solver++ (Lu et al., 2022b), orders 1-3.

Both are exponential integrators of the probability-flow ODE in lambda = log(alpha / std).
DPM-Solver integrates the noise prediction eps_hat, DPM-Solver++ the data prediction x0_hat;
with the "frame" (a, w, l) = (alpha, std, lambda) for eps_hat and (std, alpha, -lambda) for
x0_hat, the two families share one set of formulas (Lu et al. 2022a eq. 3.7, Alg. 1-2;
2022b Alg. 1-2, "dpmsolver" solver type). With h = l(t) - l(s) and m the prediction,

    order 1:  x_t = a_t / a_s x_s - w_t phi1(h) m_s                           (= DDIM)
    order 2:  ... - w_t phi1(h) (m_s1 - m_s) / (2 r1),         s1 at l_s + r1 h, r1 = 1/2
    order 3:  ... - w_t phi2(h) (m_s2 - m_s) / r2,    s1, s2 at r1 = 1/3, r2 = 2/3

phi1(h) = e^h - 1, phi2(h) = phi1(h) / h - 1, phi3(h) = phi2(h) / h - 1/2. Multistep
variants reuse the previous predictions instead of intermediate evaluations (one NFE per step).
Everything comes from the SDE's alpha(t), std(t), lambda(t): VP, sub-VP and VE all work.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array, ScoreFn
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import data_prediction, noise_prediction
from score_sde.solvers.timesteps import as_custom_grid, check_grid_steps, check_skip, fraction_steps, inverse_log_snr, time_steps

ALGORITHMS = ("dpmsolver", "dpmsolver++")
METHODS = ("singlestep", "multistep")


def _phi1(h):
    return jnp.expm1(h)


def _phi2(h):
    return jnp.expm1(h) / h - 1.0


def _phi3(h):
    return _phi2(h) / h - 0.5


def frame(sde: SDE, t: Array, algorithm: str) -> tuple[Array, Array, Array]:
    """(a, w, l) at t: (alpha, std, lambda) for "dpmsolver", (std, alpha, -lambda) for "dpmsolver++"."""
    if algorithm == "dpmsolver":
        return sde.alpha(t), sde.std(t), sde.log_snr(t)
    return sde.std(t), sde.alpha(t), -sde.log_snr(t)


def prediction(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, algorithm: str) -> Array:
    """eps_hat for "dpmsolver", x0_hat for "dpmsolver++"; one score evaluation."""
    fn = noise_prediction if algorithm == "dpmsolver" else data_prediction
    return fn(sde, score_fn, x, t)


def _time_at_fraction(sde: SDE, s: Array, t: Array, r: float) -> Array:
    """The time whose lambda is lambda(s) + r (lambda(t) - lambda(s))."""
    ls, lt = sde.log_snr(s), sde.log_snr(t)
    return inverse_log_snr(sde, ls + r * (lt - ls), sde.T)


def singlestep_update(sde: SDE, score_fn: ScoreFn, x: Array, s: Array, t: Array, order: int,
                      algorithm: str, inner: tuple[Array, ...] | None = None) -> Array:
    """One singlestep DPM-Solver(++)-`order` step x_s -> x_t; `order` score evaluations.

    Args:
      inner: the order - 1 intermediate times between s and t; default the logSNR fractions
        r1 = 1/2 (order 2) or r1, r2 = 1/3, 2/3 (order 3). Any r_i = (lambda(s_i) - lambda(s)) / h
        works: the sampler passes times that follow its time spacing, as the reference code does.
    """
    pred = lambda y, u: prediction(sde, score_fn, y, u, algorithm)  # noqa: E731
    a_s, _, l_s = frame(sde, s, algorithm)
    a_t, w_t, l_t = frame(sde, t, algorithm)
    h = l_t - l_s
    m_s = pred(x, s)
    x_t = a_t / a_s * x - w_t * _phi1(h) * m_s
    if order == 1:
        return x_t
    if inner is None:
        fractions = (0.5,) if order == 2 else (1.0 / 3.0, 2.0 / 3.0)
        inner = tuple(_time_at_fraction(sde, s, t, r) for r in fractions)
    s1 = inner[0]
    a_1, w_1, l_1 = frame(sde, s1, algorithm)
    r1 = (l_1 - l_s) / h
    m_1 = pred(a_1 / a_s * x - w_1 * _phi1(r1 * h) * m_s, s1)
    if order == 2:
        return x_t - w_t * _phi1(h) * (m_1 - m_s) / (2.0 * r1)
    s2 = inner[1]
    a_2, w_2, l_2 = frame(sde, s2, algorithm)
    r2 = (l_2 - l_s) / h
    u_2 = a_2 / a_s * x - w_2 * _phi1(r2 * h) * m_s - r2 / r1 * w_2 * _phi2(r2 * h) * (m_1 - m_s)
    m_2 = pred(u_2, s2)
    return x_t - w_t * _phi2(h) * (m_2 - m_s) / r2


def multistep_update(sde: SDE, x: Array, ms: Array, ts: Array, t: Array, order: int, algorithm: str) -> Array:
    """One multistep DPM-Solver(++)-`order` step from ts[0] to t; no score evaluation.

    Args:
      x: the state at ts[0], (B, *dims).
      ms: (K, B, *dims) predictions at the previous times ts (K >= order), most recent first.
      ts: (K,) previous times, most recent first.
      t: the new time.
    """
    a_p, _, l_0 = frame(sde, ts[0], algorithm)
    a_t, w_t, l_t = frame(sde, t, algorithm)
    h = l_t - l_0
    x_t = a_t / a_p * x - w_t * _phi1(h) * ms[0]
    if order == 1:
        return x_t
    r0 = (l_0 - frame(sde, ts[1], algorithm)[2]) / h
    d1_0 = (ms[0] - ms[1]) / r0
    if order == 2:
        return x_t - 0.5 * w_t * _phi1(h) * d1_0
    r1 = (frame(sde, ts[1], algorithm)[2] - frame(sde, ts[2], algorithm)[2]) / h
    d1_1 = (ms[1] - ms[2]) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    return x_t - w_t * _phi2(h) * d1 - w_t * _phi3(h) * d2


def budget_orders(nfe: int, order: int) -> list[int]:
    """Splits an NFE budget into singlestep orders as Lu et al. (2022a, Sec. 3.4) do.

    order 3: [3, ..., 3] then [2, 1], [1] or [2] as nfe % 3 is 0, 1, 2; order 2: [2, ..., 2]
    (+ [1] if nfe is odd); order 1: [1] * nfe. The orders sum to nfe.
    """
    if order == 3:
        k = nfe // 3 + 1
        tail = {0: [2, 1], 1: [1], 2: [2]}[nfe % 3]
        return [3] * (k - 1 - (nfe % 3 == 0)) + tail
    if order == 2:
        return [2] * (nfe // 2) + [1] * (nfe % 2)
    return [1] * nfe


def multistep_orders(n_steps: int, order: int, lower_order_final: bool) -> list[int]:
    """Order of each multistep step: warm-up min(order, i); with lower_order_final and fewer than
    10 steps, also min(order, n_steps + 1 - i) at the end (Lu et al. 2022b, Alg. 2 and App.)."""
    orders = [min(order, i) for i in range(1, n_steps + 1)]
    if lower_order_final and n_steps < 10:
        orders = [min(o, n_steps + 1 - i) for i, o in zip(range(1, n_steps + 1), orders)]
    return orders


class DPMSolverSampler(StepSampler):
    """DPM-Solver / DPM-Solver++ of order 1-3, singlestep or multistep.

    Attributes:
      order: 1, 2 or 3.
      method: "singlestep" (order - 1 intermediate evaluations per step) or "multistep"
        (one evaluation per step; the first steps warm up with lower orders).
      algorithm: "dpmsolver" (noise prediction) or "dpmsolver++" (data prediction).
      n_steps: number of steps N from T to eps (default 20 when `nfe` is not given either).
        NFE = order * N (singlestep) or N (multistep), + 1 with denoise_to_zero.
      nfe: alternatively, a budget of score evaluations (Lu et al.'s `steps`): singlestep splits it
        into steps of decreasing order (`budget_orders`), equal in logSNR (skip="logSNR") or placed
        on the `skip` grid of nfe intervals; multistep uses nfe steps (nfe - 1 with denoise_to_zero).
        Give n_steps or nfe.
      skip: time spacing "logSNR", "time_uniform", "time_quadratic" or "edm".
      eps: smallest time; None -> the SDE's convention.
      custom_grid: instead of `skip`, the logSNR fractions 0 = u_0 < ... < u_N = 1 of the N steps'
        boundaries (singlestep intermediate times at the logSNR fractions), or the path of a JSON grid
        file written by `score_sde.solvers.grid_opt` (an optimised grid).
      denoise_to_zero: finish with Tweedie's x0_hat at eps (one more evaluation).
      lower_order_final: multistep with fewer than 10 steps lowers the order of the last steps,
        which stabilises very small budgets (Lu et al. 2022b).
    """

    order: int = eqx.field(default=3, static=True)
    method: str = eqx.field(default="multistep", static=True)
    algorithm: str = eqx.field(default="dpmsolver++", static=True)
    n_steps: int | None = eqx.field(default=None, static=True)
    nfe: int | None = eqx.field(default=None, static=True)
    skip: str = eqx.field(default="logSNR", static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise_to_zero: bool = eqx.field(default=False, static=True)
    lower_order_final: bool = eqx.field(default=True, static=True)
    custom_grid: str | tuple[float, ...] | None = eqx.field(default=None, static=True, converter=as_custom_grid)

    def __check_init__(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        check_choice(self.method, METHODS, "method")
        check_choice(self.algorithm, ALGORITHMS, "algorithm")
        check_skip(self.skip)
        if self.n_steps is not None and self.nfe is not None:
            raise ValueError("give either n_steps or nfe (an evaluation budget), not both")
        check_n_steps(self.n_steps, "n_steps", allow_none=True)
        check_n_steps(self.nfe, "nfe", allow_none=True)
        if self.nfe is not None and self.method == "multistep" and self.nfe < 1 + self.denoise_to_zero:
            raise ValueError(f"nfe = {self.nfe} leaves no step after denoise_to_zero; use nfe >= 2")
        check_grid_steps(self.custom_grid, len(self.step_orders()))

    @classmethod
    def for_budget(cls, nfe: int) -> dict:
        """Best settings for nfe evaluations (benchmarks/path_error.py, 2-D and 64-d mixtures, VP and VE):
        DPM-Solver++(2M) up to 12 evaluations, (3S) above, both at time_quadratic spacing."""
        if nfe <= 12:
            return dict(nfe=nfe, order=2, method="multistep", skip="time_quadratic")
        return dict(nfe=nfe, order=3, method="singlestep", skip="time_quadratic")

    def step_orders(self) -> list[int]:
        """The order of each step (static); len = number of steps."""
        if self.method == "singlestep":
            if self.nfe is not None:
                return budget_orders(self.nfe - self.denoise_to_zero, self.order)
            return [self.order] * (self.n_steps or 20)
        n = self.nfe - self.denoise_to_zero if self.nfe is not None else (self.n_steps or 20)
        return multistep_orders(n, self.order, self.lower_order_final)

    def with_steps(self, n_steps: int):
        """This sampler with n_steps steps on its `skip` spacing (no budget or custom grid)."""
        return dataclasses.replace(self, n_steps=n_steps, nfe=None, custom_grid=None)

    def total_nfe(self, hooked: bool = False) -> int:
        orders = self.step_orders()
        return (sum(orders) if self.method == "singlestep" else len(orders)) + int(self.denoise_to_zero)

    @property
    def final_denoise(self) -> bool:
        return self.denoise_to_zero

    def step_kinds(self) -> list[int]:
        return self.step_orders()

    def grid(self, sde, t_start, t_end, dtype):
        """The `skip` grid of one interval per step. A singlestep `nfe` budget on a time spacing
        places the steps on the grid of nfe intervals (each step spans as many as its order); on
        logSNR its steps are equal in logSNR, as in Lu et al. (2022a, Sec. 3.4) and their code."""
        orders = self.step_orders()
        if self.custom_grid is not None:
            ts = fraction_steps(sde, self.custom_grid, t_start, t_end, dtype)
        elif self.method == "singlestep" and self.nfe is not None and self.skip != "logSNR":
            fine = time_steps(sde, self.skip, t_start, t_end, sum(orders), dtype)
            ts = fine[np.cumsum([0] + orders)]
        else:
            ts = time_steps(sde, self.skip, t_start, t_end, len(orders), dtype)
        return ts, (self.inner_times(sde, ts, orders) if self.method == "singlestep" else None)

    def inner_times(self, sde, ts, orders: list[int]) -> Array:
        """(N, 2) intermediate times of each singlestep step (unused entries repeat its end), computed
        once before the loop (the logSNR fractions need a bisection each): the fractions 1/2 (order 2)
        or 1/3, 2/3 (order 3) in logSNR, else the step's own `skip` spacing (the reference code)."""
        if self.skip == "logSNR" or self.custom_grid is not None:
            lam = sde.log_snr(ts)
            r = jnp.asarray([[0.5, 1.0] if o == 2 else [1.0 / 3.0, 2.0 / 3.0] for o in orders], ts.dtype)
            return inverse_log_snr(sde, lam[:-1, None] + r * (lam[1:] - lam[:-1])[:, None], sde.T)
        rows = [time_steps(sde, self.skip, ts[i], ts[i + 1], max(o, 2), ts.dtype)[1:-1] for i, o in enumerate(orders)]
        return jnp.stack([jnp.pad(row, (0, 2 - row.shape[0]), mode="edge") for row in rows])

    def init(self, sde, score_fn, x, ts):
        """Multistep: the last max(order) predictions and their times, most recent first."""
        if self.method == "singlestep":
            return None
        k = max(self.step_orders())
        return jnp.zeros((k,) + x.shape, x.dtype), jnp.full((k,), ts[0])

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        """A step of order `kind`: singlestep (kind evaluations), or multistep (one evaluation, at x)."""
        if self.method == "singlestep":  # inputs: this step's intermediate times (`inner_times`)
            inner = tuple(inputs[j] for j in range(kind - 1))
            return singlestep_update(sde, score_fn, x, t, t_next, kind, self.algorithm, inner or None), state
        ms, hist = state
        ms = jnp.concatenate([prediction(sde, score_fn, x, t, self.algorithm).astype(ms.dtype)[None], ms[:-1]])
        hist = jnp.concatenate([t[None], hist[:-1]])
        return multistep_update(sde, x, ms, hist, t_next, kind, self.algorithm), (ms, hist)


__all__ = ["DPMSolverSampler", "singlestep_update", "multistep_update", "budget_orders", "multistep_orders"]
