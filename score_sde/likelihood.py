"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, sec. 4.3 and app. D.2).

Along the probability-flow ODE dx/dt = f~(x, t) = f(x, t) - g(t)^2 s(x, t) / 2 the
log-density obeys d log p_t(x_t) / dt = -div f~(x_t, t) (instantaneous change of
variables), so integrating data -> prior, from eps to T,

    log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt,

with log p_T replaced by the SDE's prior. The state (x_t, delta_t) with
d delta / dt = div f~ is one pytree solved by diffrax inside one `jit`; the divergence
is exact (`score_sde.divergence.exact_divergence`) or Hutchinson's estimate with one
probe per example, fixed over the solve. Bits/dim and dequantisation live in
`score_sde.bpd` and are re-exported here.
"""

from __future__ import annotations

from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.bpd import bits_per_dim, bpd_offset, dequantize_scaled, scale_levels, uniform_dequantize
from score_sde.divergence import PROBES, exact_divergence, hutchinson_divergence, sample_probe
from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array, ScoreFn, default_eps, probability_flow_drift
from score_sde.solvers.base import check_score_shape
from score_sde.solvers.ode import ODE_SOLVERS, get_ode_solver, solve_nfe

DIVERGENCES = ("exact", "hutchinson")

class LikelihoodResult(NamedTuple):
    """What `log_likelihood` returns (all per example, nats).

    Attributes:
      logp: (B,) log p_eps(x) under the model, = prior_logp + delta_logp.
      z: (B, *dims) the latent x_T reached by the probability-flow ODE.
      prior_logp: (B,) log of the SDE's prior at z.
      delta_logp: (B,) int_eps^T div f~(x_t, t) dt (exact or Hutchinson estimate).
      nfe: int32 scalar, evaluations of the fused drift-and-divergence function (each one
        network forward-and-jvp; for "exact", one jvp per data dimension, batched).
    """

    logp: Array
    z: Array
    prior_logp: Array
    delta_logp: Array
    nfe: Array


def resolve_solver(solver) -> diffrax.AbstractAdaptiveSolver:
    """An adaptive diffrax solver from a name in `score_sde.solvers.ode.ODE_SOLVERS` or an instance."""
    solver = get_ode_solver(solver)
    if not isinstance(solver, diffrax.AbstractAdaptiveSolver):
        raise ValueError(f"the likelihood solve is adaptive: solver must have an error estimate "
                         f"({', '.join(n for n in ODE_SOLVERS if n != 'euler')}), got {solver!r}")
    return solver


def _vector_field(t, state, args):
    """d/dt (x, delta) = (f~(x, t), div f~(x, t)) for the batch."""
    x, _ = state
    sde, score_fn, probe, fused = args

    def drift(y):
        return probability_flow_drift(sde, score_fn, y, t)

    if probe is None:
        return exact_divergence(drift, x, fused=fused)
    return hutchinson_divergence(drift, x, probe, fused=fused)


@eqx.filter_jit
def _solve(key, sde, score_fn, x, solver, divergence, probe, fused, rtol, atol, eps, max_steps):
    check_score_shape(score_fn, x, sde.score_shape(x.shape))
    e = None if divergence == "exact" else sample_probe(key, x.shape, x.dtype, probe)
    state0 = (x, jnp.zeros(x.shape[:1], x.dtype))
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(_vector_field), solver, t0=eps, t1=jnp.asarray(sde.T, x.dtype), dt0=None,
        y0=state0, args=(sde, score_fn, e, fused),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False)
    failed = sol.result != diffrax.RESULTS.successful
    z, delta = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    z = eqx.error_if(z, failed, f"log_likelihood: the ODE solve did not reach T within max_steps={max_steps} "
                                "steps; increase max_steps or loosen rtol/atol")
    prior = sde.prior_logp(z)
    nfe = jnp.asarray(solve_nfe(solver, sol.stats["num_steps"]), jnp.int32)
    return LikelihoodResult(prior + delta, z, prior, delta, nfe)


def log_likelihood(key: Array | None, sde: SDE, score_fn: ScoreFn, x: Array, *,
                   divergence: str = "exact", probe: str = "rademacher", fused: bool = True,
                   solver: str | diffrax.AbstractSolver = "tsit5", rtol: float = 1e-5, atol: float = 1e-5,
                   eps: float | None = None, max_steps: int = 4096) -> LikelihoodResult:
    """log p_eps(x) under the model defined by `score_fn`, through the probability-flow ODE.

    Solves d(x, delta)/dt = (f~, div f~) from eps to T (data -> prior) with an adaptive
    diffrax solver, then logp = log prior(x_T) + delta (module docstring). One jitted
    solve; a second call with the same shapes, dtypes and string/int options does not
    recompile (rtol, atol and eps are traced values).

    Args:
      key: PRNG key for the Hutchinson probes (one per example); unused (may be None)
        for divergence="exact".
      sde: the forward SDE (VPSDE, SubVPSDE, VESDE).
      score_fn: score_fn(x, t) -> like x, x: (B, *dims), t: (B,).
      x: (B, *dims) floating data (dequantised and scaled, see `uniform_dequantize`).
      divergence: "exact" (full Jacobian trace; D jvps per evaluation, practical for D up
        to a few hundred) or "hutchinson" (unbiased estimate, one fused jvp per evaluation).
      probe: Hutchinson probe distribution, "rademacher" or "gaussian".
      fused: drift and Jacobian-vector product from one `jax.jvp` (True) or from a separate
        drift call plus a jvp (False; same values, for comparison).
      solver: a name in `score_sde.solvers.ode.ODE_SOLVERS` other than euler, or an adaptive
        diffrax solver instance.
      rtol, atol: tolerances of the PID step-size controller.
      eps: start time; default `default_eps(sde, "likelihood")` = 1e-5.
      max_steps: step budget; exceeding it raises at run time.

    Returns:
      A `LikelihoodResult` (logp, z, prior_logp, delta_logp, nfe).
    """
    check_choice(divergence, DIVERGENCES, "divergence", "divergences")
    check_choice(probe, PROBES, "probe", "probes")
    if divergence == "hutchinson" and key is None:
        raise ValueError("divergence='hutchinson' needs a PRNG key for its probes, got key=None")
    x = jnp.asarray(x)
    if x.ndim < 2 or not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be floating with shape (B, *dims), got {x.dtype} {x.shape}; "
                         "dequantise integer data first (uniform_dequantize)")
    if x.shape[0] == 0:
        raise ValueError(f"x holds no examples (batch size 0, shape {x.shape})")
    if not isinstance(x, jax.core.Tracer):  # traced data (inside jit / pmap) cannot be inspected
        bad = jnp.flatnonzero(~jnp.all(jnp.isfinite(x.reshape(x.shape[0], -1)), axis=1))
        if bad.size:
            raise ValueError(f"x has non-finite values (NaN/Inf) in example(s) {bad[:10].tolist()}"
                             f"{' ...' if bad.size > 10 else ''} of {x.shape[0]}; clean the data first")
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, jax.core.Tracer) and not float(tol) >= 0:
            raise ValueError(f"{name} must be >= 0, got {tol}")
    if int(max_steps) < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps}")
    eps = default_eps(sde, "likelihood") if eps is None else float(eps)
    if not 0.0 <= eps < sde.T:
        raise ValueError(f"eps must lie in [0, T={sde.T}), got {eps}")
    key = jax.random.key(0) if key is None else key
    as_x = lambda v: jnp.asarray(v, x.dtype)  # noqa: E731
    return _solve(key, sde, score_fn, x, resolve_solver(solver), divergence, probe, bool(fused),
                  as_x(rtol), as_x(atol), as_x(eps), int(max_steps))


__all__ = [
    "DIVERGENCES", "LikelihoodResult", "augmented_elbo", "log_likelihood", "resolve_solver",
    "bits_per_dim", "bpd_offset", "scale_levels", "uniform_dequantize", "dequantize_scaled",
]


AUX_STREAM = 0x5EED  # draw 0 of `augmented_elbo` takes its auxiliary variables from fold_in(key, AUX_STREAM)


def augmented_elbo(key: Array, sde, score_fn: ScoreFn, x0: Array, *, n_samples: int = 1,
                   **options) -> tuple[Array, Array]:
    """A lower bound on log p(x0) for an SDE whose state carries auxiliary variables (CLD's velocity).

    log p(x0) >= E_{aux ~ q}[log p_eps(x0, aux) - log q(aux)] (Dockhorn et al. 2022, eq. 14 / App. B.7),
    estimated with `n_samples` draws of aux from the SDE's initial distribution (`sde.augment`) and
    the ODE likelihood of the joint state. For an SDE without auxiliary variables this is
    `log_likelihood(...).logp` itself.

    Args:
      key: PRNG key (auxiliary draws and, for "hutchinson", the probes).
      sde, score_fn: as in `log_likelihood`; x0: (B, *dims) data.
      n_samples: auxiliary draws per example (the bound is their mean).
      options: `log_likelihood`'s keyword options (divergence, solver, rtol, atol, eps, ...).

    Returns:
      (bound (B,) nats, total nfe int32).
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    total, nfe = 0.0, 0
    for i in range(n_samples):
        # draw i: probes from k_ll (the key itself for draw 0, so without auxiliary variables this is
        # `log_likelihood(key, ...)` exactly), auxiliary variables from fold_in(k_ll, AUX_STREAM)
        k_ll = key if i == 0 else jax.random.fold_in(key, i)
        u0, log_q = sde.augment(jax.random.fold_in(k_ll, AUX_STREAM), jnp.asarray(x0))
        res = log_likelihood(k_ll, sde, score_fn, u0, **options)
        total, nfe = total + res.logp - log_q, nfe + res.nfe
    return total / n_samples, nfe
