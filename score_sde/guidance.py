"""Guidance: class-conditional sampling as score wrappers that any sampler consumes.

Both wrappers turn a conditional model into an ordinary score_fn(x, t) -> like x, so every sampler
in `score_sde.solvers` (and `inverse`, `edit`) samples with guidance unchanged.

* Classifier-free guidance (Ho & Salimans 2021), with guidance weight w = `scale`:

      s_w(x, t) = (1 + w) s(x, t, y) - w s(x, t, None),

  s(x, t, y) the conditional score, s(x, t, None) the unconditional one (one network trained with
  label dropout provides both). w = 0 is the conditional score, w = -1 the unconditional one,
  w > 0 sharpens towards the class, w < -1 pushes away from it.
* Classifier guidance (Song et al. 2021, sec. I; Dhariwal & Nichol 2021):

      s_w(x, t) = s(x, t) + w grad_x log p_t(y | x),

  with a noise-conditional classifier log p_t(y | x). With the exact classifier, w = 1 gives the
  exact conditional score grad_x log p_t(x | y) (Bayes' rule); w = 0 the unconditional score.

Scale. Any finite real number, or an array: a scalar or (B,) (one weight per example); negative
values are accepted (the meanings above). It is stored as an array leaf of the wrapper, traced
under jit, so one compiled solve serves every value (a traced scale, e.g. under `jax.vmap`, works
too). The one exception is a Python 0 (int, float or numpy scalar), which is static and takes the
shortcut: `classifier_free(f, y, 0.0)` is f(x, t, y) alone and `classifier(s, c, y, 0.0)` is s
alone. An array 0 evaluates both terms (its value is unknown at trace time) and gives the same
result, at twice the cost.

Cost per call of the wrapper (samplers' `info.nfe` counts wrapper calls):
* `classifier_free`: 2 calls of cond_score_fn (labelled, then y=None), 1 when scale is a Python 0.
* `classifier`: 1 call of score_fn plus 1 forward and 1 backward pass of log_prob_fn
  (0 of them when scale is a Python 0).

Labels y are integer arrays of shape (B,), one per example, fixed when the wrapper is built
(traced: new labels of the same shape reuse the compiled solve); the wrappers check at trace time
that x has the same batch size B. The wrappers are equinox Modules (pytrees), usable under
`jax.jit` and `jax.vmap`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sde import Array, ScoreFn, expand_to

# cond_score_fn(x, t, y) -> like x, y (B,) ints or None (unconditional).
CondScoreFn = Callable[[Array, Array, Array | None], Array]
# log_prob_fn(x, t, y) -> (B,) log p_t(y | x).
LogProbFn = Callable[[Array, Array, Array], Array]


def _check_labels(y) -> Array:
    """y as an integer (B,) array, or a one-line ValueError."""
    if y is None:
        raise ValueError("y must be integer class labels of shape (B,), got None "
                         "(for the unconditional score call cond_score_fn(x, t, None) directly)")
    y = jnp.asarray(y)
    if not jnp.issubdtype(y.dtype, jnp.integer) or y.ndim != 1:
        raise ValueError(f"y must be integer class labels of shape (B,), got {y.dtype} of shape {y.shape} "
                         "(one label for all: jnp.full((B,), label))")
    return y


def _check_scale(scale):
    """(scale as an array leaf, or None for a Python 0; whether it is a Python 0)."""
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.generic, np.ndarray, jax.Array)):
        raise ValueError(f"scale must be a finite real number or array, got {scale!r}")
    if isinstance(scale, np.generic) and not isinstance(scale, (np.floating, np.integer)):
        raise ValueError(f"scale must be a finite real number or array, got {scale!r}")
    if isinstance(scale, (int, float, np.generic)):  # a number: 0 is the static shortcut
        if not np.isfinite(scale):
            raise ValueError(f"scale must be a finite real number, got {scale}")
        return (None, True) if scale == 0 else (np.asarray(float(scale)), False)
    if not isinstance(scale, jax.core.Tracer):
        scale = np.asarray(scale)
    if not (jnp.issubdtype(scale.dtype, jnp.floating) or jnp.issubdtype(scale.dtype, jnp.integer)):
        raise ValueError(f"scale must be real, got dtype {scale.dtype}")
    if scale.ndim > 1:
        raise ValueError(f"scale must be a scalar or (B,) (one per example), got shape {scale.shape}")
    if not isinstance(scale, jax.core.Tracer) and not np.all(np.isfinite(scale)):
        raise ValueError(f"scale must be finite, got {scale}")
    return scale, False


def _check_batch(name: str, y: Array, scale, x: Array) -> None:
    """y (and an array scale of shape (B,)) must match x's batch; checked at trace time."""
    b = x.shape[0]
    if y.shape != (b,):
        raise ValueError(f"y has shape {y.shape} but x has batch size {b}: y must be ({b},), one label per example")
    if scale is not None and jnp.ndim(scale) == 1 and jnp.shape(scale) != (b,):
        raise ValueError(f"{name} scale has shape {jnp.shape(scale)} but x has batch size {b}: "
                         f"scale must be a scalar or ({b},)")


def _weight(scale, x: Array) -> Array:
    """The scale in x's dtype, shaped to broadcast against x."""
    return expand_to(jnp.asarray(scale, x.dtype), x)


class ClassifierFreeScore(eqx.Module):
    """score_fn(x, t) = (1 + scale) cond_score_fn(x, t, y) - scale cond_score_fn(x, t, None).

    Attributes:
      cond_score_fn: cond_score_fn(x, t, y) -> like x; y (B,) ints, or None for unconditional.
      y: (B,) integer labels.
      scale: the guidance weight w, an array (scalar or (B,)) traced under jit; None for a Python 0.
      conditional_only: True when scale is a Python 0 (one evaluation per call).
    """

    cond_score_fn: CondScoreFn
    y: Array
    scale: Array | None
    conditional_only: bool = eqx.field(static=True)

    def __call__(self, x: Array, t: Array) -> Array:
        _check_batch("classifier_free", self.y, self.scale, x)
        cond = self.cond_score_fn(x, t, self.y)
        if self.conditional_only:
            return cond
        w = _weight(self.scale, x)
        return (1 + w) * cond - w * self.cond_score_fn(x, t, None)


class ClassifierScore(eqx.Module):
    """score_fn(x, t) = score_fn(x, t) + scale grad_x log_prob_fn(x, t, y).

    Attributes:
      score_fn: the unconditional score, score_fn(x, t) -> like x.
      log_prob_fn: log_prob_fn(x, t, y) -> (B,) log p_t(y | x), a noise-conditional classifier.
      y: (B,) integer labels.
      scale: the guidance weight, an array (scalar or (B,)) traced under jit; None for a Python 0.
      score_only: True when scale is a Python 0 (the classifier is not evaluated).
    """

    score_fn: ScoreFn
    log_prob_fn: LogProbFn
    y: Array
    scale: Array | None
    score_only: bool = eqx.field(static=True)

    def __call__(self, x: Array, t: Array) -> Array:
        _check_batch("classifier", self.y, self.scale, x)
        score = self.score_fn(x, t)
        if self.score_only:
            return score
        return score + _weight(self.scale, x) * self.log_prob_grad(x, t)

    def log_prob_grad(self, x: Array, t: Array) -> Array:
        """grad_x log p_t(y | x), like x: the gradient of the batch sum (examples are independent,
        so row b of the gradient is the gradient of example b's log-probability)."""
        b = x.shape[0]

        def total(x_):
            logp = self.log_prob_fn(x_, t, self.y)
            if jnp.shape(logp) != (b,):
                raise ValueError(f"log_prob_fn(x, t, y) must return ({b},) log-probabilities, "
                                 f"got shape {jnp.shape(logp)}")
            return jnp.sum(logp)

        return jax.grad(total)(x)


def classifier_free(cond_score_fn: CondScoreFn, y, scale) -> ClassifierFreeScore:
    """Classifier-free guidance: (1 + scale) s(x, t, y) - scale s(x, t, None) as a score_fn(x, t).

    Args:
      cond_score_fn: cond_score_fn(x, t, y) -> like x, with y (B,) ints, or None for the
        unconditional score (e.g. a label-dropout network's null class).
      y: (B,) integer labels, one per example of the batch the sampler will draw.
      scale: guidance weight w, any finite real (0: conditional, -1: unconditional), or an array
        (scalar or (B,)). Traced, so new values do not recompile, except a Python 0, which skips
        the unconditional evaluation.

    Returns:
      A `ClassifierFreeScore` (an equinox Module): score_fn(x, t) -> like x, making 2 calls of
      cond_score_fn per call (1 when scale is a Python 0).
    """
    if not callable(cond_score_fn):
        raise ValueError(f"cond_score_fn must be callable as cond_score_fn(x, t, y), got {cond_score_fn!r}")
    y = _check_labels(y)
    scale, zero = _check_scale(scale)
    return ClassifierFreeScore(cond_score_fn, y, scale, zero)


def classifier(score_fn: ScoreFn, log_prob_fn: LogProbFn, y, scale=1.0) -> ClassifierScore:
    """Classifier guidance: score_fn(x, t) + scale grad_x log p_t(y | x) as a score_fn(x, t).

    Args:
      score_fn: the unconditional score, score_fn(x, t) -> like x.
      log_prob_fn: log_prob_fn(x, t, y) -> (B,) log p_t(y | x) (a classifier trained on x_t).
        Its gradient is taken of the sum over the batch, so examples must not interact (no
        batch statistics).
      y: (B,) integer labels.
      scale: guidance weight, any finite real (1 with the exact classifier: the exact
        conditional score), or an array (scalar or (B,)). Traced, except a Python 0, which skips
        the classifier.

    Returns:
      A `ClassifierScore` (an equinox Module): score_fn(x, t) -> like x, making 1 call of
      score_fn and one forward + backward pass of log_prob_fn per call.
    """
    for name, fn in (("score_fn", score_fn), ("log_prob_fn", log_prob_fn)):
        if not callable(fn):
            raise ValueError(f"{name} must be callable, got {fn!r}")
    y = _check_labels(y)
    scale, zero = _check_scale(scale)
    return ClassifierScore(score_fn, log_prob_fn, y, scale, zero)


class PartsFreeScore(eqx.Module):
    """Classifier-free guidance on named condition parts, one weight each:

        s_w(x, t) = s(x, t, c) + sum_k w_k (s(x, t, c) - s(x, t, c without part k)),

    c without part k holding part k's null value. One part: (1 + w) s(x, t, c) - w s(x, t, c_null),
    `classifier_free`'s rule; all weights 0: the conditional score s(x, t, c).

    Attributes:
      cond_score_fn: cond_score_fn(x, t, cond) with cond a dict of parts (e.g. a `ScoreModel`).
      cond: dict of part values (B, ...).
      scales: {part name: weight (array scalar or (B,))}; parts with a Python 0 are left out.
    """

    cond_score_fn: Callable
    cond: dict
    scales: dict

    def __call__(self, x: Array, t: Array) -> Array:
        s = self.cond_score_fn(x, t, self.cond)
        out = s
        for name, w in self.scales.items():
            without = {k: v for k, v in self.cond.items() if k != name}
            out = out + _weight(w, x) * (s - self.cond_score_fn(x, t, without))
        return out


def classifier_free_parts(cond_score_fn: Callable, cond: dict, scales: dict | None = None) -> PartsFreeScore:
    """Classifier-free guidance with a weight per condition part, as a score_fn(x, t) (`PartsFreeScore`).

    Args:
      cond_score_fn: cond_score_fn(x, t, cond) -> like x, cond a dict of parts (missing parts: null).
      cond: {part name: (B, ...) values}.
      scales: {part name: weight}, each any finite real or array (scalar or (B,)); a Python 0 (or a
        part left out) costs nothing. Names must be parts of `cond`.

    Returns:
      A `PartsFreeScore`: 1 + (number of guided parts) calls of cond_score_fn per call.
    """
    if not callable(cond_score_fn):
        raise ValueError(f"cond_score_fn must be callable as cond_score_fn(x, t, cond), got {cond_score_fn!r}")
    cond = dict(cond)
    guided = {}
    for name, scale in (scales or {}).items():
        if name not in cond:
            raise ValueError(f"guidance scale for {name!r}, which is not a part of the condition; parts: {sorted(cond)}")
        w, zero = _check_scale(scale)
        if not zero:
            guided[name] = w
    return PartsFreeScore(cond_score_fn, cond, guided)


__all__ = ["ClassifierFreeScore", "ClassifierScore", "PartsFreeScore", "classifier", "classifier_free",
           "classifier_free_parts"]
