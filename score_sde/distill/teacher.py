"""A frozen teacher: its arrays travel as the training step's `frozen` argument, its step is a
solver's `single_step`.

    step = teacher_step(sde, lambda v: model.with_variables(v), solvers.get("ddim"))
    x_s = step(model.variables, x_t, t, s)            # (B,) times; s = 0: the teacher's x0 prediction
    frozen, build = split_teacher(score_fn)           # any pytree score_fn: its arrays | a rebuilder

`build(frozen)` turns the frozen arrays (the step's `frozen` argument, never constants compiled
into it) back into the teacher: a `ScoreModel` from its variables, a previous round's `Student`,
or any pytree score function (an analytic `MixtureScore`) through `split_teacher`.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax.numpy as jnp
from jax import lax

from score_sde.sde import SDE, Array, expand_to
from score_sde.solvers.base import StepSampler
from score_sde.solvers.data_prediction import data_prediction

TeacherStep = Callable[[Any, Array, Array, Array], Array]


def split_teacher(score_fn) -> tuple[Any, Callable]:
    """(frozen arrays, build) of a pytree score function: build(frozen) = the score function again
    (`eqx.partition` / `eqx.combine`)."""
    frozen, static = eqx.partition(score_fn, eqx.is_array)
    return frozen, lambda f: eqx.combine(f, static)


def teacher_step(sde: SDE, build: Callable, sampler: StepSampler) -> TeacherStep:
    """step(frozen, x, t, s) -> x at s: one step of `sampler` (its `single_step`: DDIM, EDM's Heun, ...)
    with the teacher build(frozen), per-example times t, s (B,), 0 <= s < t. A step to s = 0 is the
    teacher's data prediction x0_hat(x, t) (the DDIM step to clean data). A constant for autodiff."""

    def step(frozen, x, t, s):
        score_fn = build(frozen)
        to_clean = s <= 0
        s_safe = jnp.where(to_clean, 0.5 * t, s)  # the unused branch stays finite
        moved = sampler.single_step(sde, score_fn, x, t, s_safe)
        clean = data_prediction(sde, score_fn, x, t)
        return lax.stop_gradient(jnp.where(expand_to(to_clean, x), clean, moved).astype(x.dtype))

    return step


__all__ = ["TeacherStep", "split_teacher", "teacher_step"]
