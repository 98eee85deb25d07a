"""The one place where a network's output becomes a score, for any SDE.

Every network in `score_sde.models` is a Flax module called as

    net.apply(variables, x, c_noise, train=..., rngs=...)  ->  array like x

with x the noisy data (B, *dims) and c_noise (B,) the noise level it is conditioned on.
The network predicts the normalised noise z in x_t = alpha(t) x_0 + std(t) z, so

    score(x, t) = -net(x, c_noise(t)) / std(t)

for VP, sub-VP and VE alike (for VE this is the paper's "output / sigma" with the sign
absorbed into the prediction). The conditioning is

    c_noise(t) = log(std(t) / alpha(t)) = -lambda(t),

minus the log signal-to-noise ratio: the log of the noise level of the equivalent VE
process. It spans roughly [-7, 5] for the default VP and [-4.6, 3.9] for the default VE,
so one network design serves every SDE and no `t * 999` constant appears anywhere.

The SDE supplies these three pieces (`sde.network_input`, `sde.noise_conditioning`,
`sde.score_from_network`), so an SDE with another state needs no branch here: CLD feeds the
network x and v concatenated along the channel axis and turns its output into the hybrid
(mixed) velocity score (`score_sde.cld`).

A class-conditional network (built with num_classes > 0) also takes labels y (B,) ints; y = None
is the null class, i.e. the unconditional score the same network learned through label dropout.
`cond_score_fn` wraps it as cond_score(x, t, y), the form `score_sde.guidance` consumes.
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.sde import SDE, Array, batch_times, expand_to


def noise_conditioning(sde: SDE, t: Array) -> Array:
    """c_noise(t) = log(std(t) / alpha(t)), the value fed to the network, (B,) (`sde.noise_conditioning`)."""
    return sde.noise_conditioning(t)


def model_score(model: nn.Module, variables: Any, sde: SDE, x: Array, t, *, train: bool = False,
                rngs: dict | None = None, y: Array | None = None) -> Array:
    """score(x, t[, y]) = -net(x, c_noise(t)[, y]) / std(t), like x; y (B,) class labels or None."""
    t = batch_times(t, x.shape[0], x.dtype)
    extra = {} if y is None else {"y": y}  # unconditional networks are called exactly as before
    out = model.apply(variables, sde.network_input(x), noise_conditioning(sde, t), train=train, rngs=rngs, **extra)
    return sde.score_from_network(out, x, t)


def network_input_shape(sde: SDE, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one example as the network sees it (data_shape, or (*dims[:-1], 2 C) for CLD)."""
    state = jax.ShapeDtypeStruct(sde.state_shape((1, *data_shape)), jnp.float32)
    return tuple(jax.eval_shape(sde.network_input, state).shape[1:])


class ModelScore(eqx.Module):
    """A trained network as a score_fn(x, t) that any sampler and the likelihood accept.

    The variables are pytree leaves (safe to pass through `jit`); the Flax module and the
    SDE describe the function.
    """

    model: nn.Module = eqx.field(static=True)
    variables: Any
    sde: SDE

    def __call__(self, x: Array, t) -> Array:
        return model_score(self.model, self.variables, self.sde, x, t, train=False)


def score_fn(model: nn.Module, variables: Any, sde: SDE) -> ModelScore:
    """Wraps (model, variables) as an evaluation-mode score function of (x, t)."""
    return ModelScore(model, variables, sde)


class ConditionalModelScore(eqx.Module):
    """A class-conditional network as cond_score(x, t, y): y (B,) ints, or None for the null class.

    Called with two arguments it is the null-class (unconditional) score, so it is also a plain
    score_fn(x, t) for every sampler, the likelihood and the edit tasks.
    """

    model: nn.Module = eqx.field(static=True)
    variables: Any
    sde: SDE

    def __call__(self, x: Array, t, y: Array | None = None) -> Array:
        return model_score(self.model, self.variables, self.sde, x, t, train=False, y=y)


def cond_score_fn(model: nn.Module, variables: Any, sde: SDE) -> ConditionalModelScore:
    """Wraps a class-conditional (model, variables) as an evaluation-mode cond_score(x, t, y)."""
    return ConditionalModelScore(model, variables, sde)


__all__ = ["noise_conditioning", "model_score", "network_input_shape", "ModelScore", "score_fn", "ConditionalModelScore",
           "cond_score_fn"]
