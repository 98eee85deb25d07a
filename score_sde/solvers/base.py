"""The sampler interface shared by every solver.

A sampler is an immutable equinox Module holding its options (number of steps, eps,
tolerances...). It is called as

    x, info = sampler(key, sde, score_fn, shape)

and owns its time grid; the SDE only describes the process. The whole solve runs inside
one `eqx.filter_jit`: options that are Python ints/strings/bools are static, arrays
(and the arrays inside score_fn / sde pytrees) are traced, so a second call with the same
sampler and shape does not recompile.
"""

from __future__ import annotations

import abc
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp

from score_sde.sde import SDE, Array, ScoreFn


class SampleInfo(NamedTuple):
    """What a solve reports besides the samples.

    Attributes:
      nfe: number of score evaluations actually made (int32 scalar array); adaptive solvers
        report their real count.
    """

    nfe: Array


class Sampler(eqx.Module):
    """Base class: subclasses implement `sample` (traced inside jit)."""

    @abc.abstractmethod
    def sample(self, key: Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...],
               dtype) -> tuple[Array, SampleInfo]:
        """Draws samples of shape `shape` = (B, *dims) from the model p_eps."""

    def __call__(self, key: Array, sde: SDE, score_fn: ScoreFn, shape, dtype=jnp.float32):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"shape must be (B, *dims) with at least one data dim, got {shape}")
        return _sample_jit(self, key, sde, score_fn, shape, jnp.dtype(dtype))


@eqx.filter_jit
def _sample_jit(sampler, key, sde, score_fn, shape, dtype):
    return sampler.sample(key, sde, score_fn, shape, dtype)


def resolve_eps(eps: float | None, sde: SDE) -> float:
    """The sampler's smallest time: the option if given, else the SDE's convention."""
    return sde.sampling_eps if eps is None else float(eps)


__all__ = ["Sampler", "SampleInfo", "resolve_eps"]
