"""Time grids for the fast samplers, all derived from the SDE's log-SNR lambda(t) = log(alpha / std).

* `time_steps`: the N + 1 times T = t_0 > ... > t_N = eps of every fixed-grid sampler, spaced
  uniformly in logSNR, in t (the predictor-corrector and fixed-step ODE grid), in sqrt(t)
  ("time_quadratic"; Lu et al. 2022a, Sec. 3.3 / App. D.1), or uniformly in sigma^(1/7) with
  sigma = exp(-lambda) ("edm": Karras et al.'s rho = 7 spacing, defined through lambda so that it
  is the same for VP, sub-VP and VE).
* `fraction_steps`: the times of a grid given as logSNR fractions u_0 = 0 < ... < u_N = 1
  (lambda_i = lambda(t_start) + u_i (lambda(t_end) - lambda(t_start))), e.g. an optimised grid
  (`grid_opt`), for any start and end time.
* `edm_sigmas`: Karras et al. (2022) eq. 5, sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho.
* `inverse_log_snr`: t(lambda) by bisection on the monotone lambda(t), so that every SDE
  works without a per-SDE closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic", "edm")
EDM_RHO = 7.0


def check_skip(skip: str) -> None:
    """Raises a ValueError naming the valid spacings if `skip` is not one of them."""
    check_choice(skip, SKIP_TYPES, "skip")


def inverse_log_snr(sde: SDE, lam: Array, t_max: float, n_iter: int = 64) -> Array:
    """Solves lambda(t) = lam for t in (0, 2 t_max] by bisection (lambda is decreasing in t).

    64 halvings of [0, 2 t_max] reach the float64 resolution of t; float32 stops earlier at its own.
    A last Newton step t - (lambda(t) - lam) / lambda'(t) from the bisection's (gradient-stopped)
    answer gives the derivative dt/dlam = 1 / lambda'(t), so grids can be optimised by gradient.

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
    t = jax.lax.stop_gradient(0.5 * (lo + hi))
    lam_t, dlam = jax.jvp(sde.log_snr, (t,), (jnp.ones_like(t),))
    return t - (lam_t - lam) / dlam


def time_steps(sde: SDE, skip: str, t_start: float, t_end: float, n: int, dtype) -> Array:
    """N + 1 decreasing times from t_start (= T) to t_end (= eps), endpoints exact.

    Args:
      sde: the forward SDE.
      skip: "logSNR" (uniform in lambda), "time_uniform" (uniform in t), "time_quadratic"
        (uniform in sqrt(t)) or "edm" (uniform in exp(-lambda)^(1/7)).
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
    elif skip == "edm":  # sigma^(1/rho) uniform, sigma = exp(-lambda)
        a, b = jnp.exp(-sde.log_snr(t0) / EDM_RHO), jnp.exp(-sde.log_snr(t1) / EDM_RHO)
        ts = inverse_log_snr(sde, -EDM_RHO * jnp.log(a + u * (b - a)), sde.T)
    else:
        l0, l1 = sde.log_snr(t0), sde.log_snr(t1)
        ts = inverse_log_snr(sde, l0 + u * (l1 - l0), sde.T)
    return ts.at[0].set(t0).at[-1].set(t1)


def check_fractions(fractions) -> tuple[float, ...]:
    """A grid of logSNR fractions as a tuple of floats; ValueError unless 0 = u_0 < u_1 < ... < u_N = 1, N >= 1."""
    try:
        u = tuple(float(v) for v in fractions)
    except (TypeError, ValueError):
        raise ValueError(f"a grid is a sequence of N + 1 increasing logSNR fractions from 0 to 1, got {fractions!r}") from None
    if len(u) < 2 or u[0] != 0.0 or u[-1] != 1.0 or any(b <= a for a, b in zip(u, u[1:])):
        raise ValueError(f"a grid must increase strictly from 0 to 1 with at least 2 points, got {u}")
    return u


def as_custom_grid(value) -> tuple[float, ...] | None:
    """A sampler's `custom_grid` option: None, N + 1 logSNR fractions, or the path of a JSON grid file
    (`grid_opt.save_grid`), read once when the sampler is built; returns the checked fractions."""
    if value is None:
        return None
    if isinstance(value, str):
        import json  # a grid file: {"fractions": [...], ...}
        try:
            with open(value) as f:
                value = json.load(f)["fractions"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"custom_grid {value!r} is not a readable grid file with a 'fractions' list: {err}") from None
    return check_fractions(value)


def check_grid_steps(custom_grid, n_steps: int) -> None:
    """Raises ValueError unless a custom grid (if any) has n_steps steps."""
    if custom_grid is not None and len(custom_grid) != n_steps + 1:
        raise ValueError(f"custom_grid has {len(custom_grid) - 1} steps but n_steps = {n_steps}; set n_steps to match")


def fraction_steps(sde: SDE, fractions: Array, t_start, t_end, dtype) -> Array:
    """The N + 1 times with lambda(t_i) = lambda(t_start) + u_i (lambda(t_end) - lambda(t_start)).

    Args:
      fractions: (N + 1,) logSNR fractions, 0 = u_0 < ... < u_N = 1 (a tuple or a traced array:
        the times are differentiable in them).
      t_start, t_end: first and last time.

    Returns:
      (N + 1,) decreasing times, endpoints exact.
    """
    u = jnp.asarray(fractions, dtype)
    t0, t1 = jnp.asarray(t_start, dtype), jnp.asarray(t_end, dtype)
    l0, l1 = sde.log_snr(t0), sde.log_snr(t1)
    ts = inverse_log_snr(sde, l0 + u * (l1 - l0), sde.T)
    return ts.at[0].set(t0).at[-1].set(t1)


def sampler_steps(sde: SDE, skip: str, custom_grid, t_start, t_end, n: int, dtype) -> Array:
    """A fixed-grid sampler's times: its `custom_grid` of logSNR fractions if given, else its `skip` spacing."""
    if custom_grid is not None:
        return fraction_steps(sde, custom_grid, t_start, t_end, dtype)
    return time_steps(sde, skip, t_start, t_end, n, dtype)


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


__all__ = ["SKIP_TYPES", "EDM_RHO", "as_custom_grid", "check_fractions", "check_grid_steps", "check_skip", "fraction_steps", "inverse_log_snr", "sampler_steps",
           "time_steps", "edm_sigmas", "sigma_to_time"]
