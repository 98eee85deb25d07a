"""Time grids for the fast samplers, all derived from the SDE's log-SNR lambda(t) = log(alpha / std).

* `time_steps`: the N + 1 times T = t_0 > ... > t_N = eps of every fixed-grid sampler, spaced
  uniformly in logSNR, in t (the predictor-corrector and fixed-step ODE grid), or in sqrt(t)
  ("time_quadratic"; Lu et al. 2022a, Sec. 3.3 / App. D.1).
* `edm_sigmas`: Karras et al. (2022) eq. 5, sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho.
* `inverse_log_snr`: t(lambda) by bisection on the monotone lambda(t), so that every SDE
  works without a per-SDE closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")


def check_skip(skip: str) -> None:
    """Raises a ValueError naming the valid spacings if `skip` is not one of them."""
    check_choice(skip, SKIP_TYPES, "skip")


def inverse_log_snr(sde: SDE, lam: Array, t_max: float, n_iter: int = 64) -> Array:
    """Solves lambda(t) = lam for t in (0, 2 t_max] by bisection (lambda is decreasing in t).

    64 halvings of [0, 2 t_max] reach the float64 resolution of t; float32 stops earlier at its own.

    Args:
      sde: the forward SDE (gives `log_snr`).
      lam: target log-SNR values, any shape.
      t_max: the SDE's end time T; the bracket is (0, 2 T] (room for EDM's churn above sigma_max).

    Returns:
      t with the shape and dtype of lam.
    """
    lam = jnp.asarray(lam)
    lo = jnp.zeros_like(lam)
    hi = jnp.full_like(lam, 2.0 * t_max)

    def halve(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = sde.log_snr(mid) > lam  # mid is earlier than the solution
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, n_iter, halve, (lo, hi))
    return 0.5 * (lo + hi)


def time_steps(sde: SDE, skip: str, t_start: float, t_end: float, n: int, dtype) -> Array:
    """N + 1 decreasing times from t_start (= T) to t_end (= eps), endpoints exact.

    Args:
      sde: the forward SDE.
      skip: "logSNR" (uniform in lambda), "time_uniform" (uniform in t) or "time_quadratic"
        (uniform in sqrt(t)).
      t_start, t_end: first and last time, t_start > t_end > 0.
      n: number of intervals N (static).
      dtype: dtype of the result.

    Returns:
      (N + 1,) times.
    """
    check_skip(skip)
    u = jnp.linspace(0.0, 1.0, n + 1, dtype=dtype)
    t0, t1 = jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)
    if skip == "time_uniform":
        ts = t0 + u * (t1 - t0)
    elif skip == "time_quadratic":
        ts = (jnp.sqrt(t0) + u * (jnp.sqrt(t1) - jnp.sqrt(t0))) ** 2
    else:
        l0, l1 = sde.log_snr(t0), sde.log_snr(t1)
        ts = inverse_log_snr(sde, l0 + u * (l1 - l0), sde.T)
    return ts.at[0].set(t0).at[-1].set(t1)


def edm_sigmas(sigma_min: Array, sigma_max: Array, n: int, rho: float, dtype) -> Array:
    """Karras et al. (2022) eq. 5: N noise levels from sigma_max down to sigma_min, then 0; (N + 1,)."""
    if n == 1:
        return jnp.stack([jnp.asarray(sigma_max, dtype), jnp.zeros((), dtype)])
    u = jnp.arange(n, dtype=dtype) / (n - 1)
    a, b = jnp.asarray(sigma_max, dtype) ** (1.0 / rho), jnp.asarray(sigma_min, dtype) ** (1.0 / rho)
    return jnp.append((a + u * (b - a)) ** rho, jnp.zeros((), dtype))


def sigma_to_time(sde: SDE, sigma: Array) -> Array:
    """t with std(t) / alpha(t) = sigma, i.e. lambda(t) = -log sigma (sigma > 0)."""
    return inverse_log_snr(sde, -jnp.log(sigma), sde.T)


__all__ = ["SKIP_TYPES", "check_skip", "inverse_log_snr", "time_steps", "edm_sigmas", "sigma_to_time"]
