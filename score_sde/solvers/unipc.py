"""UniPC (Zhao et al., NeurIPS 2023): a multistep predictor with a corrector that costs no evaluation.

Data-prediction form in lambda = log(alpha / std), step t_{i-1} -> t_i with h = lambda_i - lambda_{i-1},
m the data prediction x0_hat (Tweedie) and B(h) = -h ("bh1") or expm1(-h) ("bh2"):

    base_i = std_i / std_{i-1} x_{i-1} - alpha_i expm1(-h) m_{i-1}                (= DPM-Solver++-1)
    UniP:    x_i  = base_i - alpha_i B(h) sum_k a_k D_k,    D_k = (m_{i-1-k} - m_{i-1}) / r_k
    UniC:    x_i^c = base_i - alpha_i B(h) (sum_k c_k D_k + c_K (m_i - m_{i-1})),  m_i = m(x_i, t_i)

with r_k = (lambda_{i-1-k} - lambda_{i-1}) / h and the coefficients solving R a = b (UniP, order p:
the p - 1 history points; a = 1/2 for p = 2) and R c = b with r_K = 1 added (UniC; c = 1/2 for order
1), R_jk = r_k^(j-1), b_j = j! phi_{j+1}(-h) / B(h) (the paper's eq. (4)-(6), Algorithms 1-3).
The evaluation m_i at the predicted x_i corrects x_i and is reused by the next predictor, so each
step costs one evaluation and the corrector raises the order by one for free; the last step is not
corrected. In the shared driver, step i evaluates m_i at the state it receives, corrects it (except
after a hook: then the hooked state is kept as it is), and predicts the next state.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import as_custom_grid, check_grid_steps, check_skip, sampler_steps

VARIANTS = ("bh1", "bh2")


def _b_vector(hh, order: int, variant: str):
    """(B(h), [b_1..b_order]) with b_j = j! phi_{j+1}(hh) / B(h), hh = -h (data prediction)."""
    b_h = hh if variant == "bh1" else jnp.expm1(hh)
    phi = jnp.expm1(hh) / hh - 1.0  # phi_2 (hh) hh-scaled as in the paper's recursion
    out, fact = [], 1.0
    for j in range(1, order + 1):
        out.append(phi * fact / b_h)
        fact *= j + 1
        phi = phi / hh - 1.0 / fact
    return b_h, out


def _solve(rks, b):
    """Coefficients solving sum_k r_k^(j-1) a_k = b_j (j = 1..len(b)) for small static sizes."""
    n = len(b)
    if n == 1:
        return [b[0]]
    mat = jnp.stack([jnp.stack([r ** j for r in rks]) for j in range(n)])
    return list(jnp.linalg.solve(mat, jnp.stack(b)))


def _update(sde, x, m0, hist_m, hist_t, t0, t, order: int, variant: str, m_new=None):
    """UniP (m_new None) or UniC (m_new = m at t) update from (x, m0) at t0 to t, with `order` - 1
    (UniP) / `order` - 1 (UniC, plus m_new) history points hist_m, hist_t (most recent first)."""
    l0, lt = sde.log_snr(t0), sde.log_snr(t)
    h = lt - l0
    hh = -h
    base = sde.std(t) / sde.std(t0) * x - sde.alpha(t) * jnp.expm1(hh) * m0
    rks = [(sde.log_snr(hist_t[k]) - l0) / h for k in range(order - 1)]
    d1s = [(hist_m[k] - m0) / rks[k] for k in range(order - 1)]
    if m_new is None:  # predictor: order - 1 differences
        if order == 1:
            return base
        b_h, b = _b_vector(hh, order - 1, variant)
        coeffs = [jnp.asarray(0.5, x.dtype)] if order == 2 else _solve(rks, b)
        return base - sde.alpha(t) * b_h * sum(c * d for c, d in zip(coeffs, d1s))
    b_h, b = _b_vector(hh, order, variant)
    coeffs = [jnp.asarray(0.5, x.dtype)] if order == 1 else _solve(rks + [jnp.ones_like(h)], b)
    res = sum((c * d for c, d in zip(coeffs[:-1], d1s)), jnp.zeros_like(x)) + coeffs[-1] * (m_new - m0)
    return base - sde.alpha(t) * b_h * res


class UniPCSampler(StepSampler):
    """UniPC with the data prediction, orders 1-3, B(h) variants bh1 / bh2.

    Attributes:
      order: 1, 2 or 3 (predictor order; the corrector adds one).
      variant: "bh1" (B(h) = h) or "bh2" (B(h) = e^h - 1).
      n_steps: number of steps N from T (or t_init) to eps; NFE = N.
      skip: time spacing "logSNR", "time_uniform", "time_quadratic" or "edm".
      custom_grid: instead of `skip`, the N + 1 logSNR fractions 0 = u_0 < ... < u_N = 1 of the steps, or
        the path of a JSON grid file written by `score_sde.solvers.grid_opt` (an optimised grid).
      eps: smallest time; None -> the SDE's convention. The output is x_eps (no denoising).
      lower_order_final: lower the order of the last steps (min(order, N - i)), as the reference code.
    """

    order: int = eqx.field(default=2, static=True)
    variant: str = eqx.field(default="bh1", static=True)
    n_steps: int = eqx.field(default=10, static=True)
    skip: str = eqx.field(default="time_quadratic", static=True)
    eps: float | None = eqx.field(default=None, static=True)
    lower_order_final: bool = eqx.field(default=True, static=True)
    custom_grid: str | tuple[float, ...] | None = eqx.field(default=None, static=True, converter=as_custom_grid)

    def __check_init__(self):
        if self.order not in (1, 2, 3):
            raise ValueError(f"order must be 1, 2 or 3, got {self.order!r}")
        check_choice(self.variant, VARIANTS, "variant")
        check_n_steps(self.n_steps)
        check_skip(self.skip)
        check_grid_steps(self.custom_grid, self.n_steps)

    @classmethod
    def for_budget(cls, nfe: int) -> dict:
        """Best settings for nfe evaluations (benchmarks/path_error.py): order 2 (3 with the corrector),
        B(h) = e^h - 1, time_quadratic spacing."""
        return dict(n_steps=nfe, order=2, variant="bh2", skip="time_quadratic")

    def with_steps(self, n_steps: int):
        """This sampler with n_steps steps on its `skip` spacing (no budget or custom grid)."""
        return dataclasses.replace(self, n_steps=n_steps, custom_grid=None)

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps

    def predictor_orders(self) -> list[int]:
        n = self.n_steps
        last = (lambda i: n - i) if self.lower_order_final else (lambda i: self.order)  # noqa: E731
        return [max(1, min(self.order, i + 1, last(i))) for i in range(n)]

    def step_kinds(self) -> list[tuple[int, int]]:
        """(order of the correction of the state received (0: none, step 0), order of the prediction)."""
        p = self.predictor_orders()
        return [(0 if i == 0 else p[i - 1], p[i]) for i in range(self.n_steps)]

    def grid(self, sde, t_start, t_end, dtype):
        return sampler_steps(sde, self.skip, self.custom_grid, t_start, t_end, self.n_steps, dtype), None

    def init(self, sde, score_fn, x, ts):
        """(the corrected previous state, the last `order` predictions and their times, most recent first)."""
        k = self.order
        return x, jnp.zeros((k,) + x.shape, x.dtype), jnp.full((k,), ts[0])

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        corr_order, pred_order = kind
        x_prev, ms, hist = state
        m = data_prediction(sde, score_fn, x, t).astype(x.dtype)
        if corr_order > 0 and not hooked:  # UniC: correct x (at t) with the new evaluation, no extra cost
            x = _update(sde, x_prev, ms[0], ms[1:], hist[1:], hist[0], t, corr_order, self.variant, m_new=m)
        ms = jnp.concatenate([m[None], ms[:-1]])
        hist = jnp.concatenate([t[None], hist[:-1]])
        x_next = _update(sde, x, ms[0], ms[1:], hist[1:], hist[0], t_next, pred_order, self.variant)
        return x_next, (x, ms, hist)


__all__ = ["UniPCSampler", "VARIANTS"]
