"""Progressive distillation (Salimans & Ho, ICLR 2022, Algorithm 2): a student of N steps learns
one step that matches two deterministic DDIM steps of its teacher (2N steps).

On the student's grid t_i = i T / N (uniform in t, ending at t = 0, clean data), per example:

    i ~ U{1..N},  t = t_i,  t' = t - T / (2N),  t'' = t - T / N,   x_t = alpha(t) x0 + std(t) z
    x_t'  = teacher(x_t,  t -> t'),   x_t'' = teacher(x_t', t' -> t'')        (two DDIM steps)
    x~    = (x_t'' - (std''/std) x_t) / (alpha'' - (std''/std) alpha)          (eq. 8: the x0 whose
            single DDIM step from t lands on x_t''; at t'' = 0 it is x_t'' itself)
    loss  = w(t) mean_d (x0_hat(x_t, t) - x~)^2

with the paper's weightings (Sec. 4): "snr_plus_one", w = 1 + SNR(t) = 1 + alpha^2 / std^2 (the
v-prediction MSE), or "truncated_snr", w = max(SNR(t), 1). SNR+1 keeps the weight of the
high-noise steps that a few-step student is made of (w -> 1 as SNR -> 0); the plain eps-loss
weight SNR would give them none.

Rounds: the student starts from its teacher's weights, N halves each round (e.g. 16 -> 8 -> 4 -> 2
-> 1) and each round's student is the next round's teacher (`score_sde.drivers.distill`).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from score_sde.lookup import check_choice
from score_sde.losses import draw_time_and_noise, split_batch
from score_sde.sde import SDE, Array, expand_to
from score_sde.solvers.student import clean_coeffs

WEIGHTINGS = ("snr_plus_one", "truncated_snr")

Denoise = Callable[[object, Array, Array], Array]  # denoise(params, x, t) -> x0_hat


def weight(sde: SDE, t: Array, weighting: str) -> Array:
    """The loss weight w(t) (B,) of a weighting in WEIGHTINGS."""
    snr = jnp.exp(2.0 * sde.log_snr(t))
    return 1.0 + snr if weighting == "snr_plus_one" else jnp.maximum(snr, 1.0)


def progressive_target(sde: SDE, x_t: Array, x_next: Array, t: Array, t_next: Array) -> Array:
    """x~ (like x_t): the data prediction whose one DDIM step from t reaches x_next at t_next (0: clean)."""
    a, s = clean_coeffs(sde, t)
    a_n, s_n = clean_coeffs(sde, t_next)
    ratio = s_n / s
    return (x_next - expand_to(ratio, x_t) * x_t) / expand_to(a_n - ratio * a, x_t)


def progressive_loss_fn(denoise: Denoise, teacher_step, sde: SDE, n_student: int,
                        weighting: str = "snr_plus_one"):
    """loss_fn(params, batch, keys, frozen) -> scalar, the round's loss (module docstring).

    Args:
      denoise: denoise(params, x, t) -> the student's x0_hat (e.g. `Student.with_variables(...).denoise`).
      teacher_step: step(frozen, x, t, s) -> x at s (`teacher.teacher_step`: DDIM; s = 0: clean).
      sde: the forward SDE (a scalar kernel).
      n_student: N, the student's number of steps; the teacher takes 2N on the halved grid.
      weighting: "snr_plus_one" or "truncated_snr".

    The `frozen` argument holds the teacher's arrays (`teacher.split_teacher`).
    """
    check_choice(weighting, WEIGHTINGS, "weighting")
    n, big_t = int(n_student), float(sde.T)

    def loss_fn(params, batch, keys, frozen=None):
        x0, cond = split_batch(batch)
        if cond:
            raise ValueError("distillation of a conditional teacher is not built yet (labels / guidance); "
                             "distil an unconditional model")
        # i ~ U{1..N} as a float (an exact small integer), each example from its own key
        i, z = draw_time_and_noise(keys, x0, lambda k: jax.random.randint(k, (), 1, n + 1).astype(x0.dtype))
        t, t_mid, t_next = big_t * i / n, big_t * (2 * i - 1) / (2 * n), big_t * (i - 1) / n
        mean, std = sde.marginal_prob(x0, t)
        x_t = mean + expand_to(std, x0) * z
        x_mid = teacher_step(frozen, x_t, t, t_mid)
        x_next = teacher_step(frozen, x_mid, t_mid, t_next)
        target = progressive_target(sde, x_t, x_next, t, t_next)
        err = (denoise(params, x_t, t) - target) ** 2
        per = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
        return jnp.mean(weight(sde, t, weighting) * per)

    return loss_fn


__all__ = ["WEIGHTINGS", "weight", "progressive_target", "progressive_loss_fn"]
