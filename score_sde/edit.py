"""Editing with a score model: SDEdit, and encoding / decoding / interpolation through the probability-flow ODE.

* `sdedit` (Meng et al., ICLR 2022): noise a guide x_g to t0 with the exact forward kernel,
  x_t0 = alpha(t0) x_g + std(t0) z (`sde.marginal_prob`), then run any sampler from (x_t0, t0)
  (its `x_init` / `t_init`). Small t0 stays near the guide; t0 = T forgets it and samples p_0.
* `encode` / `decode`: the probability-flow ODE dx/dt = f - g^2 s / 2 (Song et al. 2021, eq. 13) is
  a deterministic, invertible map between x at eps and a latent z at T. `encode` integrates
  eps -> T (one jitted diffrax solve), `decode` is the `ode` sampler from z at T with
  denoise=False, so decode(encode(x)) = x up to the solver tolerance.
* `interpolate`: spherical interpolation of two latents (the prior is an isotropic Gaussian, whose
  typical set is a sphere), decoded.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde import solvers
from score_sde.sde import SDE, Array, ScoreFn, expand_to, require_capability
from score_sde.solvers.base import Sampler


def sdedit(key: Array, sampler: Sampler, sde: SDE, score_fn: ScoreFn, x_guide: Array, t0) -> tuple[Array, object]:
    """SDEdit: forward-noise the guide to t0 exactly, then run the reverse process from there.

    Args:
      key: PRNG key (split: the forward noise, then the sampler's key).
      sampler: any sampler (it must accept x_init / t_init, as all built-in ones do).
      sde: the forward SDE.
      score_fn: score_fn(x, t) -> like x.
      x_guide: (B, *dims) guides (strokes, a coarse image, an image to edit).
      t0: the starting time, eps < t0 <= T (a scalar; traced, so new values do not recompile).

    Returns:
      (x (B, *dims), the sampler's info).
    """
    require_capability(sde, "scalar_kernel", "edit.sdedit")
    x_guide = jnp.asarray(x_guide)
    if not jnp.issubdtype(x_guide.dtype, jnp.floating):
        x_guide = x_guide.astype(jnp.float32)
    k_noise, k_run = jax.random.split(key)
    t0 = jnp.asarray(t0, x_guide.dtype)
    if t0.ndim != 0:
        raise ValueError(f"t0 must be a scalar time, got shape {t0.shape}")
    mean, std = sde.marginal_prob(x_guide, t0)
    x_t0 = mean + expand_to(std, x_guide) * jax.random.normal(k_noise, x_guide.shape, x_guide.dtype)
    return sampler(k_run, sde, score_fn, x_init=x_t0, t_init=t0)


def encode(sde: SDE, score_fn: ScoreFn, x: Array, solver="tsit5", rtol: float = 1e-5, atol: float = 1e-5,
           n_steps: int | None = None, eps: float | None = None, max_steps: int = 4096) -> Array:
    """The latent z = x_T of x (taken at time eps) under the probability-flow ODE, solved eps -> T.

    Args:
      sde, score_fn: the model.
      x: (B, *dims) data.
      solver: a diffrax solver name (`score_sde.solvers.ode.ODE_SOLVERS`) or instance.
      rtol, atol: adaptive step-size tolerances (when n_steps is None).
      n_steps: a fixed number of equal steps instead of adaptive ones.
      eps: the time x is taken at (None: the SDE's sampling eps, as `decode` and the samplers use).
      max_steps: bound on adaptive steps (exceeding it raises).

    Returns:
      z, like x.
    """
    require_capability(sde, "scalar_kernel", "edit.encode")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    if x.ndim < 2:
        raise ValueError(f"x must be (B, *dims) with at least one data dim, got shape {tuple(x.shape)}")
    ode = solvers.get("ode", solver=solver, rtol=rtol, atol=atol, n_steps=n_steps, max_steps=max_steps,
                      denoise=False)  # validates the options before tracing
    return _encode(ode, sde, score_fn, x, ode.resolved_eps(sde) if eps is None else float(eps))


@eqx.filter_jit
def _encode(ode, sde, score_fn, x, eps):
    """The `ode` sampler's solve, run forward from eps to T (the same solver the decoder uses)."""
    return ode.solve(sde, score_fn, x, sde.T, t_start=eps, end_name="T")[0]


def decode(sde: SDE, score_fn: ScoreFn, z: Array, solver="tsit5", rtol: float = 1e-5, atol: float = 1e-5,
           n_steps: int | None = None, eps: float | None = None, max_steps: int = 4096) -> Array:
    """x at eps from a latent z at T: the `ode` sampler with x_init = z and denoise=False.

    Args: as for `encode` (use the same options for a faithful round trip).

    Returns:
      x, like z.
    """
    require_capability(sde, "scalar_kernel", "edit.decode")
    z = jnp.asarray(z)
    sampler = solvers.get("ode", solver=solver, rtol=rtol, atol=atol, n_steps=n_steps, eps=eps,
                          max_steps=max_steps, denoise=False)
    x, _ = sampler(jax.random.PRNGKey(0), sde, score_fn, x_init=z, t_init=sde.T)  # deterministic: key unused
    return x


def slerp(z_a: Array, z_b: Array, lam: Array) -> Array:
    """Spherical interpolation of each pair of rows, z(l) = sin((1-l) th) / sin th z_a + sin(l th) / sin th z_b.

    Args:
      z_a, z_b: (B, *dims).
      lam: (n,) fractions in [0, 1].

    Returns:
      (B, n, *dims); linear interpolation where the two are (nearly) parallel.
    """
    a, b = z_a.reshape(z_a.shape[0], -1), z_b.reshape(z_b.shape[0], -1)
    cos = jnp.sum(a * b, axis=1) / (jnp.linalg.norm(a, axis=1) * jnp.linalg.norm(b, axis=1))
    theta = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None]  # (B, 1)
    lam = jnp.asarray(lam, a.dtype)[None]  # (1, n)
    small = theta < 1e-4
    sin = jnp.where(small, 1.0, jnp.sin(theta))
    wa = jnp.where(small, 1.0 - lam, jnp.sin((1.0 - lam) * theta) / sin)
    wb = jnp.where(small, lam, jnp.sin(lam * theta) / sin)
    out = wa[..., None] * a[:, None] + wb[..., None] * b[:, None]
    return out.reshape((z_a.shape[0], lam.shape[1]) + z_a.shape[1:])


def interpolate(sde: SDE, score_fn: ScoreFn, x_a: Array, x_b: Array, n: int, **ode_opts) -> Array:
    """n points between x_a and x_b: encode both, slerp the latents, decode.

    Args:
      x_a, x_b: (B, *dims) endpoints (B pairs).
      n: number of points per pair, endpoints included (>= 2).
      **ode_opts: options of `encode` / `decode` (solver, rtol, atol, n_steps, eps, max_steps).

    Returns:
      (B, n, *dims); [:, 0] reproduces x_a and [:, -1] x_b up to the ODE tolerance.
    """
    require_capability(sde, "scalar_kernel", "edit.interpolate")
    x_a, x_b = jnp.asarray(x_a), jnp.asarray(x_b)
    if x_a.shape != x_b.shape:
        raise ValueError(f"x_a and x_b must have the same shape, got {tuple(x_a.shape)} and {tuple(x_b.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2 (the endpoints are included), got {n!r}")
    b = x_a.shape[0]
    z = encode(sde, score_fn, jnp.concatenate([x_a, x_b]), **ode_opts)
    zs = slerp(z[:b], z[b:], jnp.linspace(0.0, 1.0, n))
    x = decode(sde, score_fn, zs.reshape((b * n,) + x_a.shape[1:]), **ode_opts)
    return x.reshape(zs.shape)


__all__ = ["decode", "encode", "interpolate", "sdedit", "slerp"]
