"""Optimised time grids ("Align Your Steps"-style, Sabour et al. 2024): the N + 1 times of a fixed-grid
sampler chosen to minimise its error against a converged probability-flow solve, once per model and budget.

The grid is parametrised by its logSNR fractions u_0 = 0 < u_1 < ... < u_N = 1 (the times with
lambda(t_i) = lambda(T) + u_i (lambda(eps) - lambda(T))), u = cumsum(softmax(z)) over N free logits z,
so every z is a valid grid. With x_T a batch of prior draws ("training noise") and x_ref their
probability-flow endpoints from a tight adaptive solve (`reference_solve`), the loss is the path error

    L(z) = mean_b || sampler(x_T^b; t(u(z))) - x_ref^b ||_2

differentiated through the jitted sampler loop (`run_steps`) and the times (`inverse_log_snr` has the
implicit-function derivative 1 / lambda'(t)), and minimised by Adam from the sampler's own spacing. The
fractions are independent of the SDE's parametrisation of time and of t_start: a saved grid is passed
to any sampler with a `custom_grid` option (ddim excepted), as fractions or as the JSON file's path:

    fractions, info = optimise_grid(sampler, sde, score_fn, x_T)
    save_grid(workdir + "/grids/unipc_10.json", fractions, **info)
    sampler = ss.solvers.get("unipc", n_steps=10, custom_grid=workdir + "/grids/unipc_10.json")

Evaluate an optimised grid on other draws of x_T than the ones it was fitted to.
"""

from __future__ import annotations

import json
import os

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_sde.sde import SDE, Array, ScoreFn, probability_flow_drift
from score_sde.solvers.base import StepSampler, run_steps
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import check_fractions, fraction_steps


def reference_solve(sde: SDE, score_fn: ScoreFn, x_T: Array, eps: float, rtol: float = 1e-9,
                    atol: float = 1e-9, denoise: bool = False) -> Array:
    """x_eps of the probability-flow ODE from x_T at T by diffrax Tsit5 (adaptive, rtol / atol), then
    Tweedie's x0_hat at eps when `denoise` (for samplers that end with it)."""
    term = diffrax.ODETerm(lambda t, y, _: probability_flow_drift(sde, score_fn, y, t))
    sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), sde.T, eps, -1e-3, x_T, max_steps=200_000,
                              stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol))
    x = sol.ys[-1]
    return data_prediction(sde, score_fn, x, eps) if denoise else x


def solve_on_grid(sampler: StepSampler, sde: SDE, score_fn: ScoreFn, x_T: Array, ts: Array) -> Array:
    """The sampler's deterministic solve from x_T over the times ts (traced; differentiable in ts).

    Only samplers whose steps need nothing but the times (their `grid` gives no per-step inputs:
    ddim, dpm_solver multistep, unipc, ipndm)."""
    x = run_steps(sampler, jax.random.PRNGKey(0), sde, score_fn, x_T, ts)
    if sampler.final_denoise:
        x = data_prediction(sde, score_fn, x, ts[-1])
    return x


def fractions_of(sampler: StepSampler, sde: SDE, eps: float, dtype=jnp.float64) -> np.ndarray:
    """The logSNR fractions of the sampler's own grid from T to eps, (N + 1,)."""
    ts, inputs = sampler.grid(sde, jnp.asarray(sde.T, dtype), eps, dtype)
    if inputs is not None:
        raise ValueError(f"{type(sampler).__name__} with these options takes per-step inputs besides the times; "
                         "grids can be optimised for ddim, dpm_solver (multistep), unipc and ipndm")
    lam = np.asarray(sde.log_snr(ts), np.float64)
    u = (lam - lam[0]) / (lam[-1] - lam[0])
    u[0], u[-1] = 0.0, 1.0
    return u


def _fractions(z: Array) -> Array:
    inc = jax.nn.softmax(z)
    return jnp.concatenate([jnp.zeros((1,), z.dtype), jnp.cumsum(inc)]).at[-1].set(1.0)


def optimise_grid(sampler: StepSampler, sde: SDE, score_fn: ScoreFn, x_T: Array, *, eps: float | None = None,
                  n_iter: int = 300, learning_rate: float = 0.05, rtol: float = 1e-9,
                  x_ref: Array | None = None) -> tuple[tuple[float, ...], dict]:
    """Fits the sampler's N + 1 logSNR fractions to minimise its mean path error on x_T.

    Args:
      sampler: a StepSampler without per-step inputs (ddim, dpm_solver multistep, unipc, ipndm); its
        own grid is the starting point and its number of steps N is kept.
      sde, score_fn: the model (a trained network's score or an analytic one).
      x_T: (B, *dims) prior draws to fit on (use other draws to evaluate).
      eps: the end time (default: the sampler's).
      n_iter, learning_rate: Adam iterations and step size on the logits.
      rtol: tolerance of the reference solve (1e-9 needs float64; 1e-5 suits float32 networks).
      x_ref: the reference endpoints, if already computed (skips `reference_solve`).

    Returns:
      (fractions, info): the best fractions seen (a tuple of floats, u_0 = 0, u_N = 1) and
      {"loss_initial", "loss_final", "n_iter", "n_fit", "eps"}, losses in the path-error units.
    """
    eps = sampler.resolved_eps(sde) if eps is None else float(eps)
    dtype = x_T.dtype
    u0 = fractions_of(sampler, sde, eps)
    if x_ref is None:
        x_ref = reference_solve(sde, score_fn, x_T, eps, rtol, rtol, denoise=sampler.final_denoise)
    t_start = jnp.asarray(sde.T, dtype)

    def loss(z):
        ts = fraction_steps(sde, _fractions(z), t_start, eps, dtype)
        x = solve_on_grid(sampler, sde, score_fn, x_T, ts)
        return jnp.mean(jnp.linalg.norm((x - x_ref).reshape(x.shape[0], -1), axis=1))

    opt = optax.adam(learning_rate)
    value_and_grad = jax.jit(jax.value_and_grad(loss))

    @jax.jit
    def update(z, state):
        value, grad = value_and_grad(z)
        upd, state = opt.update(grad, state, z)
        return optax.apply_updates(z, upd), state, value

    z = jnp.log(jnp.asarray(np.diff(u0), dtype))
    state = opt.init(z)
    best_z, best, first = z, np.inf, None
    for _ in range(n_iter):
        z_new, state, value = update(z, state)
        value = float(value)
        first = value if first is None else first
        if value < best:  # the loss at z (before this update)
            best, best_z = value, z
        z = z_new
    final = float(loss(z))
    if final < best:
        best, best_z = final, z
    u = check_fractions(np.asarray(_fractions(best_z), np.float64))
    return u, {"loss_initial": first, "loss_final": best, "n_iter": n_iter, "n_fit": int(x_T.shape[0]), "eps": eps}


def save_grid(path: str, fractions, **meta) -> str:
    """Writes {"fractions": [...], **meta} as JSON (folders created); returns the path."""
    u = check_fractions(fractions)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"fractions": list(u), **meta}, f, indent=1)
    return path


def load_grid(path: str) -> tuple[float, ...]:
    """The checked fractions of a grid file written by `save_grid`."""
    with open(path) as f:
        return check_fractions(json.load(f)["fractions"])


__all__ = ["fractions_of", "load_grid", "optimise_grid", "reference_solve", "save_grid", "solve_on_grid"]
