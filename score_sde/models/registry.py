"""Model names -> Flax modules, built from an ml_collections `config.model`.

The one read-only table the CLI and the training driver use; library code takes module
instances, never configs. Fields missing from the config fall back to each network's
own defaults (for 'ddpmpp' / 'ncsnpp': the paper's CIFAR-10 settings of that family);
list values (e.g. from command-line overrides) become tuples so modules stay hashable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax.numpy as jnp

from score_sde.lookup import lookup
from score_sde.models.ddpmpp import DDPMPP_SETTINGS, NCSNPP_SETTINGS
from score_sde.models.mlp import MLP
from score_sde.models.ncsnpp import NCSNpp
from score_sde.models.unet import UNet

# The MLP keeps its own log-spaced embedding: the image networks' fourier_scale (16) is a
# random-feature scale that does not transfer to it.
_MLP_FIELDS = ("hidden", "embed_dim", "num_classes", "cond_spec")


def _fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name"))


def _pick(config: Mapping[str, Any], names, defaults: Mapping[str, Any] | None = None) -> dict:
    kwargs = dict(defaults or {})
    for key in names:
        if key in config:
            value = config[key]
            kwargs[key] = tuple(value) if isinstance(value, list) else value
    return kwargs


def _mlp(config) -> nn.Module:
    return MLP(**_pick(config, _MLP_FIELDS))


def _unet(config) -> nn.Module:
    return UNet(**_pick(config, _fields(UNet)))


def _ddpmpp(config) -> nn.Module:
    return NCSNpp(**_pick(config, _fields(NCSNpp), DDPMPP_SETTINGS))


def _ncsnpp(config) -> nn.Module:
    return NCSNpp(**_pick(config, _fields(NCSNpp), NCSNPP_SETTINGS))


MODELS: Mapping[str, Callable[[Any], nn.Module]] = {
    "mlp": _mlp,
    "unet": _unet,
    "ddpmpp": _ddpmpp,
    "ncsnpp": _ncsnpp,
}


# training.precision -> the network's compute dtype (None: float32 throughout)
PRECISIONS: Mapping[str, Any] = {"fp32": None, "bf16": jnp.bfloat16}


def with_precision(net: nn.Module, precision: str) -> nn.Module:
    """`net` computing in the dtype of `precision` ('fp32' | 'bf16'); parameters stay float32.

    Raises:
      ValueError: an unknown precision, or 'bf16' for a network without a `dtype` field (mlp).
    """
    dtype = lookup(PRECISIONS, str(precision).lower(), "training.precision", "precisions")
    if dtype is None:
        return net
    if "dtype" not in _fields(type(net)):
        raise ValueError(f"training.precision={precision} needs a network with a compute dtype "
                         f"(unet, ddpmpp, ncsnpp); {type(net).__name__} has none: use training.precision=fp32")
    return net.clone(dtype=dtype)


def names() -> tuple[str, ...]:
    """Every model name `get_model` accepts."""
    return tuple(MODELS)


def get_model(config: Mapping[str, Any], num_classes: int | None = None, cond_spec: tuple = ()) -> nn.Module:
    """Builds the Flax network named by `config.name` from the fields of `config` (config.model).

    `num_classes` (config.data.num_classes) > 0 gives the network a class embedding; 0 / None
    leaves the parameter tree exactly as an unconditional network's. `cond_spec` (a tuple of
    `conditions.Part`) gives it those condition parts instead (their branches add parameters).

    Raises:
      ValueError: the name is unknown (the message lists the valid ones).
    """
    model = lookup(MODELS, str(config["name"]).lower(), "model name", "names")(config)
    if cond_spec:
        return model.clone(cond_spec=tuple(cond_spec))
    return model.clone(num_classes=int(num_classes)) if num_classes else model


__all__ = ["MODELS", "PRECISIONS", "names", "get_model", "with_precision"]
