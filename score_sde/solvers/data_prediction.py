"""Noise and data predictions from a score, the quantities the fast solvers integrate.

With x_t = alpha(t) x_0 + std(t) z (any of VP, sub-VP, VE):

    eps_hat(x, t) = -std(t) s(x, t)                                  (noise prediction)
    x0_hat(x, t)  = (x + std(t)^2 s(x, t)) / alpha(t)                (data prediction, Tweedie)

so x = alpha x0_hat + std eps_hat exactly. DPM-Solver integrates eps_hat (Lu et al. 2022a,
eq. 3.4), DPM-Solver++ and EDM integrate x0_hat (Lu et al. 2022b, eq. 9; Karras et al. 2022, D).
One score evaluation each.
"""

from __future__ import annotations

from score_sde.sde import SDE, Array, ScoreFn, batch_times, expand_to


def noise_prediction(sde: SDE, score_fn: ScoreFn, x: Array, t) -> Array:
    """eps_hat = -std(t) s(x, t), like x (x: (B, *dims); t scalar or (B,))."""
    t = batch_times(t, x.shape[0], x.dtype)
    return -expand_to(sde.std(t), x) * score_fn(x, t)


def data_prediction(sde: SDE, score_fn: ScoreFn, x: Array, t) -> Array:
    """x0_hat = (x + std(t)^2 s(x, t)) / alpha(t), like x (x: (B, *dims); t scalar or (B,))."""
    t = batch_times(t, x.shape[0], x.dtype)
    std, alpha = expand_to(sde.std(t), x), expand_to(sde.alpha(t), x)
    return (x + std**2 * score_fn(x, t)) / alpha


__all__ = ["noise_prediction", "data_prediction"]
