"""The final noise-free step: Tweedie's estimate of x_0 from x_eps."""

from __future__ import annotations

from score_sde.sde import SDE, Array, ScoreFn, batch_times, expand_to


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t) -> Array:
    """E[x_0 | x_t] = (x_t + std(t)^2 s(x_t, t)) / alpha(t)  (Tweedie's formula). One evaluation.

    For x_t = alpha x_0 + std z, E[alpha x_0 | x_t] = x_t + std^2 grad log p_t(x_t) (Efron 2011;
    Song et al. 2021 apply this "denoising" step at t = eps).

    Args:
      sde: the forward SDE (gives alpha(t), std(t)).
      score_fn: score_fn(x, t) -> like x.
      x: samples at time t, (B, *dims).
      t: scalar or (B,) time.

    Returns:
      The denoised samples, like x.
    """
    t = batch_times(t, x.shape[0], x.dtype)
    std, alpha = expand_to(sde.std(t), x), expand_to(sde.alpha(t), x)
    return (x + std**2 * score_fn(x, t)) / alpha


__all__ = ["tweedie_denoise"]
