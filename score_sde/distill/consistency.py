"""Consistency distillation (Song, Dhariwal, Chen & Sutskever, ICML 2023, Algorithm 2).

Neighbouring times on Karras et al.'s rho = 7 scale of the noise level sigma = std / alpha,
u(t) = (sigma(t)^(1/7) - sigma(T)^(1/7)) / (sigma(eps)^(1/7) - sigma(T)^(1/7)) in [0, 1], whose N
equally spaced points are the paper's discretisation eps = t_1 < ... < t_N = T
(`timesteps.time_steps(..., "edm", ...)`); per example:

    u_hi ~ U[0, 1 - du], du = 1 / (N - 1);  t_hi = t(u_hi), t_lo = t(u_hi + du)   (one grid step apart)
    x_hi = alpha(t_hi) x0 + std(t_hi) z
    x_lo = teacher(x_hi, t_hi -> t_lo)                       (one ODE step: Heun or DDIM)
    loss = d(f_theta(x_hi, t_hi), f_theta-(x_lo, t_lo))      (theta-: the EMA target, no gradient)

The paper draws t_hi among the N grid times only. Here u_hi is continuous (the step size is the
grid's), so that the student is trained at every time its multistep sampler visits: a small MLP
trained on the 18 grid times alone fitted them (RMS 0.06 to the exact flow on the toy mixture) but
not the times between them (up to 0.84), and multistep consistency sampling got worse with every
step (sliced W1 0.045 / 0.09 / 0.21 / 0.31 at 1 / 2 / 4 / 8 steps).

with lambda(t_n) = 1 and d the squared L2 distance (mean over dimensions) or the pseudo-Huber
distance sqrt(||a - b||^2 + c^2) - c (Song & Dhariwal 2023, "improved techniques"; c = 0.00054
sqrt(D) by default, D the data dimension). The paper's best image results use LPIPS, which needs
pretrained VGG/AlexNet weights that are not available offline here: not offered.

f has the boundary condition f(x, eps) = x built in (`Student` kind "consistency"); at the
optimum f is the teacher's ODE flow to eps, so the loss is zero when the teacher's step is exact.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.losses import draw_time_and_noise, split_batch
from score_sde.sde import SDE, Array, expand_to
from score_sde.solvers.timesteps import EDM_RHO, inverse_log_snr, time_steps

DISTANCES = ("l2", "pseudo_huber")


def consistency_times(sde: SDE, n_points: int, eps: float, dtype=jnp.float32) -> Array:
    """The N = n_points times, decreasing from T to eps, on Karras's rho = 7 spacing."""
    if n_points < 2:
        raise ValueError(f"consistency distillation needs at least 2 time points, got n_points={n_points}")
    return time_steps(sde, "edm", sde.T, eps, n_points - 1, dtype)


def consistency_pair(sde: SDE, u: Array, n_points: int, eps: float) -> tuple[Array, Array]:
    """(t_hi, t_lo) at positions u and u + 1 / (N - 1) of the rho = 7 noise-level scale (u in [0, 1 - du];
    u = 0 is T, the upper end t = eps exactly)."""
    du = 1.0 / (n_points - 1)
    dtype = u.dtype
    big_t, small = jnp.asarray(sde.T, dtype), jnp.asarray(eps, dtype)
    a, b = jnp.exp(-sde.log_snr(big_t) / EDM_RHO), jnp.exp(-sde.log_snr(small) / EDM_RHO)

    def at(v):
        t = inverse_log_snr(sde, -EDM_RHO * jnp.log(a + v * (b - a)), sde.T)
        return jnp.where(v <= 0, big_t, jnp.where(v >= 1, small, t)).astype(dtype)

    return at(u), at(jnp.minimum(u + du, 1.0))


def distance(a: Array, b: Array, kind: str, huber_c: float | None = None) -> Array:
    """d(a, b) per example (B,): "l2" the mean squared difference, "pseudo_huber" sqrt(|a-b|^2 + c^2) - c."""
    diff = (a - b).reshape(a.shape[0], -1)
    if kind == "l2":
        return jnp.mean(diff**2, axis=1)
    c = 0.00054 * math.sqrt(diff.shape[1]) if huber_c is None else huber_c
    return jnp.sqrt(jnp.sum(diff**2, axis=1) + c**2) - c


def consistency_loss_fn(denoise, teacher_step, sde: SDE, n_points: int, eps: float, kind: str = "l2",
                        huber_c: float | None = None):
    """loss_fn(params, batch, keys, frozen) -> scalar (module docstring).

    Args:
      denoise: denoise(params, x, t) -> f(x, t) (`Student` kind "consistency").
      teacher_step: step(frozen_teacher, x, t, s) -> x at s (`teacher.teacher_step`).
      n_points: N, the number of discretisation times (18 in the paper for CIFAR-10): the step du = 1 / (N - 1).
      eps: the boundary time t_1.
      kind: the distance, "l2" or "pseudo_huber" (`huber_c`: its c; None = 0.00054 sqrt(D)).

    `frozen` is {"teacher": the teacher's arrays, "target": the EMA target's params} (the training
    step supplies the target from its EMA: `train.make_train_step(..., frozen_of=...)`).
    """
    check_choice(kind, DISTANCES, "distance")
    n = int(n_points)

    def loss_fn(params, batch, keys, frozen):
        x0, cond = split_batch(batch)
        if cond:
            raise ValueError("distillation of a conditional teacher is not built yet (labels / guidance); "
                             "distil an unconditional model")
        u, z = draw_time_and_noise(keys, x0, lambda k: jax.random.uniform(k, (), x0.dtype, 0.0, 1.0 - 1.0 / (n - 1)))
        t_hi, t_lo = consistency_pair(sde, u, n, eps)
        mean, std = sde.marginal_prob(x0, t_hi)
        x_hi = mean + expand_to(std, x0) * z
        x_lo = teacher_step(frozen["teacher"], x_hi, t_hi, t_lo)
        target = jax.lax.stop_gradient(denoise(frozen["target"], x_lo, t_lo))
        return jnp.mean(distance(denoise(params, x_hi, t_hi), target, kind, huber_c))

    return loss_fn


__all__ = ["DISTANCES", "consistency_times", "consistency_pair", "distance", "consistency_loss_fn"]
