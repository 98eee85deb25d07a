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

A conditional network (a `cond_spec` of named parts, or num_classes > 0: one label part) also takes
`cond`, a dict of parts (`score_sde.models.conditions`); None is the null condition, i.e. the
unconditional score the same network learned through condition dropout. `ScoreModel` bundles
(net, variables, sde, cond_spec): model(x, t, cond), and model.bind(cond) the plain score_fn(x, t).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp

from score_sde.models.conditions import as_cond, merge_label, network_spec
from score_sde.sde import SDE, Array, batch_times, expand_to


def noise_conditioning(sde: SDE, t: Array) -> Array:
    """c_noise(t) = log(std(t) / alpha(t)), the value fed to the network, (B,) (`sde.noise_conditioning`)."""
    return sde.noise_conditioning(t)


def model_score(model: nn.Module, variables: Any, sde: SDE, x: Array, t, *, train: bool = False,
                rngs: dict | None = None, y: Array | None = None, cond: dict | None = None) -> Array:
    """score(x, t[, cond]) = -net(x, c_noise(t)[, cond]) / std(t), like x.

    Args:
      cond: dict of condition parts (`score_sde.models.conditions`), or None (null parts).
      y: (B,) class labels, the legacy spelling of cond={"label": y}.
    """
    t = batch_times(t, x.shape[0], x.dtype)
    cond = merge_label(cond, y)
    extra = {} if cond is None else {"cond": cond}  # unconditional networks are called exactly as before
    out = model.apply(variables, sde.network_input(x), noise_conditioning(sde, t), train=train, rngs=rngs, **extra)
    return sde.score_from_network(out, x, t)


def network_input_shape(sde: SDE, data_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of one example as the network sees it (data_shape, or (*dims[:-1], 2 C) for CLD)."""
    state = jax.ShapeDtypeStruct(sde.state_shape((1, *data_shape)), jnp.float32)
    return tuple(jax.eval_shape(sde.network_input, state).shape[1:])


class ScoreModel(eqx.Module):
    """A network, its variables, its SDE and its condition spec: the one model object.

        s = model(x, t, cond)          # cond: {"label": (B,), "y": (B, 1), ...}, a bare array for a
                                       # one-part spec, or None (every part null: the unconditional score)
        score_fn = model.bind(cond)    # plain score_fn(x, t) for every sampler and the likelihood

    Called with two arguments it is the null-condition score, so a conditional model is also a
    plain score_fn(x, t). The variables are pytree leaves (safe to pass through `jit` / `pmap`);
    the Flax module, the SDE's settings and the spec describe the function.

    Attributes:
      net: the Flax network (static).
      variables: its variables, {"params": ...}.
      sde: the forward SDE.
      cond_spec: tuple of `conditions.Part`s (static); () for an unconditional model.
    """

    net: nn.Module = eqx.field(static=True)
    variables: Any
    sde: SDE
    cond_spec: tuple = eqx.field(static=True, default=())

    def __call__(self, x: Array, t, cond=None, *, train: bool = False, rngs: dict | None = None) -> Array:
        cond = as_cond(self.cond_spec, cond)
        if cond and not self.cond_spec:
            raise ValueError(f"this ScoreModel is unconditional (cond_spec=()) but was given parts {sorted(cond)}")
        return model_score(self.net, self.variables, self.sde, x, t, train=train, rngs=rngs, cond=cond)

    def bind(self, cond) -> "BoundScore":
        """The plain score_fn(x, t) of this model under condition `cond` (a dict, bare array or None)."""
        return BoundScore(self, as_cond(self.cond_spec, cond))

    def with_variables(self, variables: Any) -> "ScoreModel":
        """The same model with other variables (e.g. the parameters being trained)."""
        return ScoreModel(self.net, variables, self.sde, self.cond_spec)

    @property
    def model(self) -> nn.Module:
        """The Flax network (the name older code used)."""
        return self.net


class BoundScore(eqx.Module):
    """score_fn(x, t) = model(x, t, cond): a model with its condition fixed (a pytree: the condition's
    arrays are leaves, so new conditions of the same shapes reuse a compiled solve)."""

    model: ScoreModel
    cond: dict | None

    def __call__(self, x: Array, t) -> Array:
        return self.model(x, t, self.cond)


def score_fn(model: nn.Module, variables: Any, sde: SDE) -> ScoreModel:
    """Wraps (model, variables) as an evaluation-mode score function of (x, t) (a `ScoreModel`)."""
    return ScoreModel(model, variables, sde, network_spec(getattr(model, "cond_spec", ()),
                                                          getattr(model, "num_classes", 0)))


def cond_score_fn(model: nn.Module, variables: Any, sde: SDE) -> ScoreModel:
    """A class-conditional (model, variables) as cond_score(x, t, y) (a `ScoreModel`; y None: the null class)."""
    return score_fn(model, variables, sde)


__all__ = ["noise_conditioning", "model_score", "network_input_shape", "ScoreModel", "BoundScore", "score_fn",
           "cond_score_fn"]
