"""Inverse problems with a score model: inpainting and colourisation (Song et al. 2021, sec. 5, app. I).

The observation is a set of known entries: y = x on the mask (1 = known), nothing elsewhere,
optionally with Gaussian noise on them (`noise_std`, smc only). Colourisation is the same problem
after the paper's orthogonal colour transform (the grey level is one coordinate of an orthonormal
basis of RGB, and an orthogonal map carries the score with it), and so is any linear observation
y = A x + noise (`linear`), in the basis of A's right singular vectors.

Two methods:

* ``"smc"`` (default, asymptotically exact): a particle filter over the discretised reverse process
  with ``n_particles`` particles per observation, in the manner of Monte-Carlo-guided diffusion
  (MCGdiff, Cardoso et al. 2023). With the reverse kernel q(x_s | x_t) = N(mu(x_t), tau^2 I) (the
  ancestral step of `sde.ancestral_coeffs`) and the potential g_t(x_t) = N(x_t^o; alpha_t y,
  std_t^2 I) on the observed entries (the forward-noised observation; with observation noise the
  variance is std_t^2 + alpha_t^2 noise_std^2, the likelihood itself at t = 0), the particles target
  p(x_t) g_t(x_t) at every grid time: the proposal is q times g_s (Gaussian: exact on the observed
  entries, q on the others) and the incremental log weight is

      log N(alpha_s y; mu^o(x_t), (tau^2 + std_s^2) I) - log g_t(x_t)     (observed entries summed)

  Resampling (systematic) happens when the effective sample size falls below ``ess_threshold`` N.
  At eps one particle per observation is drawn by weight, denoised with Tweedie's formula, and its
  exactly observed entries are set to y. As N grows the output converges to the reverse chain's
  p(x | y); with the exact score and a fine grid, to the true posterior. Cost: n_steps (+1)
  score calls on a batch of B N.
* ``"replace"`` (the paper's method): any fixed-grid sampler, with a step hook that replaces the
  known entries by a forward-noised copy of y after every step (`ReplaceHook`); optionally
  RePaint-style resampling (``n_resample`` > 1: re-noise x_s back to t with the exact forward
  transition and redo the step). Biased: the unknown entries see the observation only through
  the noised copy of the known ones, which says little at high noise, and nothing reweights the
  choices made early, so a posterior mode with little prior mass is undersampled (tests/test_inverse.py measures it).

The whole SMC run is one jitted program (one `lax.scan` over the steps, no host round trips).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from score_sde import solvers
from score_sde.lookup import check_choice
from score_sde.sde import SDE, Array, ScoreFn, batch_times, expand_to, require_capability
from score_sde.solvers.base import StepSampler
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.timesteps import time_steps

METHODS = ("smc", "replace")
_OPTIONS = {
    "smc": dict(n_particles=64, n_steps=500, eps=None, denoise=True, ess_threshold=0.5, noise_std=0.0),
    "replace": dict(sampler=None, n_steps=1000, n_resample=1),
}


class InverseInfo(NamedTuple):
    """What an inverse solve reports besides x.

    Attributes:
      nfe: score-function calls (int32); for "smc" each call is on a batch of B x n_particles.
      ess: "smc": (B, n_steps) effective sample size after each step's reweighting; else None.
      particles: "smc": (B, n_particles, *dims) the final weighted particles at eps (not
        denoised); else None.
      log_weights: "smc": (B, n_particles) their normalised log weights; else None.
    """

    nfe: Array
    ess: Array | None = None
    particles: Array | None = None
    log_weights: Array | None = None


# --- public entry points ----------------------------------------------------------------------------
def inpaint(key: Array, sde: SDE, score_fn: ScoreFn, x_known: Array, mask, method: str = "smc",
            **opts) -> tuple[Array, InverseInfo]:
    """Samples x ~ p(x | x = x_known where mask = 1).

    Args:
      key: PRNG key.
      sde: the forward SDE of the score model.
      score_fn: score_fn(x, t) -> like x.
      x_known: (B, *dims) observations; entries where mask = 0 are ignored.
      mask: 0 / 1 (1 = known), shaped like x_known or like one example (*dims).
      method: "smc" (default, asymptotically exact) or "replace" (the paper's).
      **opts: "smc": n_particles (64), n_steps (500), eps (None: the SDE's sampling eps), denoise
        (True), ess_threshold (0.5), noise_std (0.0: the known entries are observed exactly; else the
        std of Gaussian noise on them, a scalar or an array like the mask). "replace" (noiseless
        only): sampler (None: pc with n_steps), n_steps (1000, for the default sampler), n_resample (1).

    Returns:
      (x (B, *dims), equal to x_known on the mask when noiseless, InverseInfo).
    """
    require_capability(sde, "scalar_kernel", "inverse.inpaint")
    check_choice(method, METHODS, "inpainting method", "methods")
    opts = _resolve_options(method, opts)
    x_known = jnp.asarray(x_known)
    if not jnp.issubdtype(x_known.dtype, jnp.floating):
        x_known = x_known.astype(jnp.float32)
    mask = _check_mask(mask, x_known)
    if method == "smc":
        eps = sde.sampling_eps if opts["eps"] is None else float(opts["eps"])
        if not 0 < eps < sde.T:
            raise ValueError(f"eps must lie in (0, T) = (0, {sde.T}), got {eps}")
        _check_positive_int(opts["n_particles"], "n_particles")
        _check_positive_int(opts["n_steps"], "n_steps")
        noise = _check_noise(opts["noise_std"], x_known)
        return _smc(key, sde, score_fn, x_known, mask, noise, opts["n_particles"], opts["n_steps"], eps,
                    bool(opts["denoise"]), float(opts["ess_threshold"]))
    return _replace(key, sde, score_fn, x_known, mask, opts)


def colorize(key: Array, sde: SDE, score_fn: ScoreFn, gray: Array, method: str = "smc",
             **opts) -> tuple[Array, InverseInfo]:
    """Samples RGB images whose channel mean is `gray` (Song et al. 2021, appendix I).

    In the orthonormal colour basis `COLOR_BASIS` (columns (1,1,1)/sqrt 3, (-2,1,1)/sqrt 6,
    (0,1,-1)/sqrt 2) the first coordinate is sqrt(3) x the grey level, so colourisation is
    inpainting of that coordinate; the score in the rotated coordinates is s(x' M^T) M.

    Args:
      gray: (B, H, W) or (B, H, W, 1) grey levels (the mean of R, G, B), on the model's scale.
      method, **opts: as for `inpaint`.

    Returns:
      (x (B, H, W, 3) with mean over channels = gray up to rounding, InverseInfo with particles in
      RGB).
    """
    require_capability(sde, "scalar_kernel", "inverse.colorize")
    gray = jnp.asarray(gray)
    if gray.ndim == 4 and gray.shape[-1] == 1:
        gray = gray[..., 0]
    if gray.ndim != 3:
        raise ValueError(f"gray must be (B, H, W) or (B, H, W, 1), got shape {tuple(gray.shape)}")
    if not jnp.issubdtype(gray.dtype, jnp.floating):
        gray = gray.astype(jnp.float32)
    m = jnp.asarray(COLOR_BASIS, gray.dtype)
    known = jnp.zeros(gray.shape + (3,), gray.dtype).at[..., 0].set(math.sqrt(3.0) * gray)
    mask = np.zeros(gray.shape[1:] + (3,), np.float32)
    mask[..., 0] = 1.0
    x_dec, info = inpaint(key, sde, RotatedScore(score_fn, m), known, mask, method, **opts)
    if info.particles is not None:
        info = info._replace(particles=info.particles @ m.T)
    return x_dec @ m.T, info


def linear(key: Array, sde: SDE, score_fn: ScoreFn, y: Array, A, shape, method: str = "smc", noise_std=0.0,
           **opts) -> tuple[Array, InverseInfo]:
    """Samples x ~ p(x | y = A x + noise_std n) for a linear observation of the flattened x.

    Through the SVD A = U S V^T (r non-zero singular values s_i): in the orthonormal coordinates
    x' = V^T x the observation is y'_i = (U^T y)_i / s_i = x'_i + (noise_std / s_i) n_i for i < r,
    an inpainting problem with per-entry noise, and the score rotates with V (`BasisScore`).

    Args:
      y: (B, M) observations.
      A: (M, D) observation matrix (concrete), D = prod(shape).
      shape: one example's shape (*dims).
      method, **opts: as for `inpaint` ("replace" only when noiseless).
      noise_std: observation noise std (a float >= 0).

    Returns:
      (x (B, *shape), InverseInfo with the particles in the original coordinates).
    """
    require_capability(sde, "scalar_kernel", "inverse.linear")
    shape = tuple(int(d) for d in shape)
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.floating):
        y = y.astype(jnp.float32)
    A = np.asarray(A, np.float64)
    d = math.prod(shape)
    if A.ndim != 2 or A.shape[1] != d or y.ndim != 2 or y.shape[1] != A.shape[0]:
        raise ValueError(f"A must be (M, {d}) for examples of shape {shape} and y (B, M); got A {A.shape}, "
                         f"y {tuple(y.shape)}")
    if float(noise_std) < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    if method == "replace" and float(noise_std) != 0:
        raise ValueError("method 'replace' assumes a noiseless observation; use method='smc' with noise_std")
    u, sv, vt = np.linalg.svd(A, full_matrices=True)
    r = int(np.sum(sv > sv.max(initial=0.0) * 1e-6)) if sv.size else 0
    v = jnp.asarray(vt.T, y.dtype)  # (D, D), columns: the right singular vectors
    known = jnp.zeros((y.shape[0], d), y.dtype).at[:, :r].set((y @ jnp.asarray(u[:, :r], y.dtype)) / sv[:r])
    mask = np.zeros(d, np.float32)
    mask[:r] = 1.0
    if method == "smc":
        noise = np.zeros(d)
        noise[:r] = float(noise_std) / sv[:r]
        opts = {**opts, "noise_std": noise}
    xp, info = inpaint(key, sde, BasisScore(score_fn, v, shape), known, mask, method, **opts)
    to_x = lambda a: (a @ v.T).reshape(a.shape[:-1] + shape)  # noqa: E731
    if info.particles is not None:
        info = info._replace(particles=to_x(info.particles))
    return to_x(xp), info


class BasisScore(eqx.Module):
    """The score in the orthonormal coordinates x' = V^T x of the flattened x: s'(x', t) = V^T s(V x', t)."""

    score_fn: ScoreFn
    v: Array
    shape: tuple[int, ...] = eqx.field(static=True)

    def __call__(self, xp, t):
        x = (xp @ self.v.T).reshape((xp.shape[0],) + self.shape)
        return self.score_fn(x, t).reshape(xp.shape[0], -1) @ self.v


# Orthonormal RGB basis of the paper's colourisation (columns); x' = x M, x = x' M^T.
COLOR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / math.sqrt(3.0),
                        np.array([-2.0, 1.0, 1.0]) / math.sqrt(6.0),
                        np.array([0.0, 1.0, -1.0]) / math.sqrt(2.0)], axis=1)


class RotatedScore(eqx.Module):
    """The score of x' = x M (M orthogonal, acting on the last axis): s'(x', t) = s(x' M^T, t) M."""

    score_fn: ScoreFn
    m: Array

    def __call__(self, x, t):
        return self.score_fn(x @ self.m.T, t) @ self.m


# --- checks -------------------------------------------------------------------------------------------
def _resolve_options(method: str, opts: dict) -> dict:
    valid = _OPTIONS[method]
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for method {method!r}; "
                         f"valid options: {', '.join(valid)}")
    return {**valid, **opts}


def _check_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_mask(mask, x_known: Array) -> Array:
    """The mask as a float array shaped like x_known (broadcast from one example's shape)."""
    if x_known.ndim < 2:
        raise ValueError(f"x_known must be (B, *dims) with at least one data dim, got shape {tuple(x_known.shape)}")
    mask = jnp.asarray(mask)
    shape = tuple(mask.shape)
    if shape not in (tuple(x_known.shape), tuple(x_known.shape[1:])):
        raise ValueError(f"mask must have x_known's shape {tuple(x_known.shape)} or one example's shape "
                         f"{tuple(x_known.shape[1:])}, got {shape}")
    if not isinstance(mask, jax.core.Tracer):
        values = np.asarray(mask)
        if not np.all((values == 0) | (values == 1)):
            raise ValueError("mask must hold only 0 (unknown) and 1 (known); got other values")
    return jnp.broadcast_to(mask.astype(x_known.dtype), x_known.shape)


def _check_noise(noise_std, x_known: Array) -> Array:
    """Observation noise std >= 0 as an array like x_known (a scalar, one example's shape or x's shape)."""
    noise = jnp.asarray(noise_std, x_known.dtype)
    if noise.shape not in ((), tuple(x_known.shape), tuple(x_known.shape[1:])):
        raise ValueError(f"noise_std must be a scalar or shaped like x_known {tuple(x_known.shape)} or one example "
                         f"{tuple(x_known.shape[1:])}, got shape {tuple(noise.shape)}")
    if not isinstance(noise, jax.core.Tracer) and bool(jnp.any(noise < 0)):
        raise ValueError("noise_std must be >= 0")
    return jnp.broadcast_to(noise, x_known.shape)


# --- SMC ---------------------------------------------------------------------------------------------
def _log_normal(x, mean, var):
    """Elementwise log N(x; mean, var)."""
    return -0.5 * jnp.log(2 * jnp.pi * var) - 0.5 * (x - mean) ** 2 / var


def _sum_dims(a: Array) -> Array:
    return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def _initial(key, sde: SDE, y, mask, noise, t):
    """x_T ~ prior(x) g_T(x): the prior on unknown entries; prior x N(alpha_T y, v_T) on known ones."""
    p2 = sde.prior_std**2
    a = sde.alpha(t)
    v = sde.std(t) ** 2 + a**2 * noise**2
    z = jax.random.normal(key, y.shape, y.dtype)
    known = p2 * a * y / (p2 + v) + jnp.sqrt(p2 * v / (p2 + v)) * z
    return jnp.where(mask > 0, known, jnp.sqrt(p2) * z)


def _propose(key, sde: SDE, score_fn: ScoreFn, x, y, mask, noise, t, s):
    """One guided reverse step t -> s for every particle; returns (x_s, incremental log weight (B N,)).

    The potential on a known entry is g_t = N(x_t; alpha_t y, v_t), v_t = std_t^2 + alpha_t^2 noise^2:
    the law of the forward-noised observation, and at t = 0 the observation's likelihood.
    """
    inv_r, v_over_r, tau = sde.ancestral_coeffs(s, t)
    mu = inv_r * x + v_over_r * score_fn(x, batch_times(t, x.shape[0], x.dtype))
    a_s, a_t = sde.alpha(s), sde.alpha(t)
    v_s, v_t = sde.std(s) ** 2 + a_s**2 * noise**2, sde.std(t) ** 2 + a_t**2 * noise**2
    tau2 = tau**2
    z = jax.random.normal(key, x.shape, x.dtype)
    known = (v_s * mu + tau2 * a_s * y) / (tau2 + v_s) + jnp.sqrt(tau2 * v_s / (tau2 + v_s)) * z
    x_s = jnp.where(mask > 0, known, mu + tau * z)
    log_w = mask * (_log_normal(a_s * y, mu, tau2 + v_s) - _log_normal(x, a_t * y, v_t))
    return x_s, _sum_dims(log_w)


def _ess(log_w: Array) -> Array:
    """Effective sample size of each row of log weights (B, N) -> (B,)."""
    w = jax.nn.softmax(log_w, axis=1)
    return 1.0 / jnp.sum(w**2, axis=1)


def _systematic(key, log_w: Array) -> Array:
    """Systematic resampling indices (B, N) from log weights (B, N)."""
    b, n = log_w.shape
    cdf = jnp.cumsum(jax.nn.softmax(log_w, axis=1), axis=1)
    u = (jax.random.uniform(key, (b, 1), log_w.dtype) + jnp.arange(n, dtype=log_w.dtype)) / n
    idx = jax.vmap(jnp.searchsorted)(cdf, u)
    return jnp.minimum(idx, n - 1)


def _resample_if_needed(key, x, log_w, threshold):
    """Resamples the rows whose ESS < threshold N (then their weights are uniform)."""
    b, n = log_w.shape
    low = _ess(log_w) < threshold * n
    idx = jnp.where(low[:, None], _systematic(key, log_w), jnp.arange(n)[None])
    xb = x.reshape((b, n) + x.shape[1:])
    xb = jax.vmap(lambda xi, ii: xi[ii])(xb, idx)
    return xb.reshape(x.shape), jnp.where(low[:, None], 0.0, log_w)


@eqx.filter_jit
def _smc(key, sde, score_fn, y, mask, noise, n_particles, n_steps, eps, denoise, ess_threshold):
    b, n = y.shape[0], n_particles
    yp, mp, npart = (jnp.repeat(a, n, axis=0) for a in (y, mask, noise))  # (B N, *dims), one obs's particles adjacent
    ts = time_steps(sde, "time_uniform", sde.T, eps, n_steps, y.dtype)
    k_init, k_loop, k_pick = jax.random.split(key, 3)
    x = _initial(k_init, sde, yp, mp, npart, ts[0])

    def body(carry, xs):
        x, log_w = carry
        i, t, s = xs
        k_res, k_prop = jax.random.split(jax.random.fold_in(k_loop, i))
        x, log_w = _resample_if_needed(k_res, x, log_w, ess_threshold)
        x, incr = _propose(k_prop, sde, score_fn, x, yp, mp, npart, t, s)
        log_w = log_w + incr.reshape(b, n)
        log_w = log_w - jax.nn.logsumexp(log_w, axis=1, keepdims=True)
        return (x.astype(y.dtype), log_w), _ess(log_w)

    (x, log_w), ess = lax.scan(body, (x, jnp.zeros((b, n), y.dtype)), (jnp.arange(n_steps), ts[:-1], ts[1:]))
    particles = x.reshape((b, n) + y.shape[1:])
    pick = jax.random.categorical(k_pick, log_w, axis=1)  # (B,)
    x = particles[jnp.arange(b), pick]
    if denoise:
        x = data_prediction(sde, score_fn, x, jnp.asarray(eps, y.dtype))
    x = jnp.where((mask > 0) & (noise == 0), y, x)  # exactly observed entries are y
    info = InverseInfo(nfe=jnp.asarray(n_steps + int(denoise), jnp.int32), ess=ess.T, particles=particles,
                       log_weights=log_w)
    return x, info


# --- replacement ---------------------------------------------------------------------------------------
class ReplaceHook(eqx.Module):
    """Step hook: x <- forward-noised y on the mask, y_t = alpha(t) y + std(t) z (the paper's inpainting).

    Attributes:
      sde: the forward SDE.
      y: (B, *dims) observations.
      mask: (B, *dims) 0 / 1, 1 = known.
    """

    sde: SDE
    y: Array
    mask: Array

    def __call__(self, x, t, key):
        mean, std = self.sde.marginal_prob(self.y, t)
        y_t = mean + expand_to(std, self.y) * jax.random.normal(key, self.y.shape, self.y.dtype)
        return jnp.where(self.mask > 0, y_t.astype(x.dtype), x)


class RePaint(StepSampler):
    """A fixed-grid sampler with replacement and RePaint-style resampling (Lugmayr et al. 2022).

    Each grid step t -> s is done `n_resample` times: step, replace (the hook), and — all but the
    last time — re-noise x_s back to t with the exact forward transition x_t = r x_s + sqrt(v) z, so
    the unknown entries are harmonised with the replaced ones. Meant for one-step samplers (the base
    sampler's carried state, if any, is reused for each repeat).

    Attributes:
      base: the fixed-grid sampler.
      hook: the replacement hook.
      n_resample: repeats per step (>= 1).
    """

    base: StepSampler
    hook: ReplaceHook
    n_resample: int = eqx.field(static=True)

    def resolved_eps(self, sde):
        return self.base.resolved_eps(sde)

    @property
    def final_denoise(self):
        return self.base.final_denoise

    def total_nfe(self, hooked=False):
        per_grid = self.base.total_nfe(True) - int(self.base.final_denoise)
        return per_grid * self.n_resample + int(self.base.final_denoise)

    def grid(self, sde, t_start, t_end, dtype):
        return self.base.grid(sde, t_start, t_end, dtype)

    def init(self, sde, score_fn, x, ts):
        return self.base.init(sde, score_fn, x, ts)

    def step_kinds(self):
        return self.base.step_kinds()

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        def once(j, x):
            k_step, k_hook = jax.random.split(jax.random.fold_in(key, j))
            x_next, new_state = self.base.step(sde, score_fn, x, state, t, t_next, inputs, k_step, kind=kind,
                                               hooked=True)
            return self.hook(x_next.astype(x.dtype), t_next, k_hook), new_state

        def repeat(j, x):
            x_next, _ = once(j, x)
            r, v = sde.transition(t_next, t)
            z = jax.random.normal(jax.random.fold_in(key, self.n_resample + j), x.shape, x.dtype)
            return (r * x_next + jnp.sqrt(v) * z).astype(x.dtype)

        x = lax.fori_loop(0, self.n_resample - 1, repeat, x)
        return once(self.n_resample - 1, x)


def _replace(key, sde, score_fn, y, mask, opts):
    sampler, n_steps, n_resample = opts["sampler"], opts["n_steps"], opts["n_resample"]
    _check_positive_int(n_resample, "n_resample")
    if sampler is None:
        _check_positive_int(n_steps, "n_steps")
        sampler = solvers.get("pc", n_steps=n_steps)
    elif isinstance(sampler, str):
        sampler = solvers.get(sampler, n_steps=n_steps)
    if not isinstance(sampler, StepSampler):
        raise ValueError(f"method 'replace' needs a fixed-grid sampler (a StepSampler), got {type(sampler).__name__}")
    hook = ReplaceHook(sde, y, mask)
    k_start, k_run = jax.random.split(key)
    k_prior, k_hook = jax.random.split(k_start)
    x_t = hook(sde.prior_sampling(k_prior, y.shape, y.dtype), jnp.asarray(sde.T, y.dtype), k_hook)
    if n_resample == 1:
        x, info = sampler(k_run, sde, score_fn, x_init=x_t, t_init=sde.T, hook=hook)
    else:
        x, info = RePaint(sampler, hook, n_resample)(k_run, sde, score_fn, x_init=x_t, t_init=sde.T)
    return jnp.where(mask > 0, y, x), InverseInfo(nfe=info.nfe)


__all__ = ["METHODS", "COLOR_BASIS", "BasisScore", "InverseInfo", "RePaint", "ReplaceHook", "RotatedScore", "colorize",
           "inpaint", "linear"]
