"""Config -> objects, for the drivers (train.py, evaluate.py, main.py); library code takes objects.

One read-only name table per family (no registries filled by imports).
"""

from __future__ import annotations

import flax.linen as nn

from score_sde import models
from score_sde.sde import SDE, VESDE, VPSDE, SubVPSDE

_SDES = {
    "vpsde": lambda c: VPSDE(beta_min=c.beta_min, beta_max=c.beta_max),
    "subvpsde": lambda c: SubVPSDE(beta_min=c.beta_min, beta_max=c.beta_max),
    "vesde": lambda c: VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max),
}

# Discrete training objective for each SDE (training.continuous = False).
DISCRETE_LOSS = {"vpsde": "ddpm", "vesde": "smld"}


def sde_from_config(sde_config) -> SDE:
    """`config.sde` -> an SDE: name in {vpsde, subvpsde, vesde} with its schedule parameters."""
    name = sde_config.name.lower()
    if name not in _SDES:
        raise ValueError(f"unknown sde {sde_config.name!r}; valid: {sorted(_SDES)}")
    return _SDES[name](sde_config)


def model_from_config(model_config) -> nn.Module:
    """`config.model` -> a Flax network, through `score_sde.models.get_model` when it exists.

    Without it, only the small MLP (model.name = "mlp", widths `model.hidden`) is available.
    """
    get_model = getattr(models, "get_model", None)
    if get_model is not None:
        return get_model(model_config)
    if model_config.name != "mlp":
        raise ValueError(f"model {model_config.name!r} is not available in this build; use model.name='mlp'")
    return models.MLP(hidden=tuple(model_config.hidden))


def discrete_loss_name(sde_config) -> str:
    """The discrete loss for `config.sde` (DDPM for VP, SMLD for VE); error for other SDEs."""
    name = sde_config.name.lower()
    if name not in DISCRETE_LOSS:
        raise ValueError(f"discrete training (training.continuous=False) supports {sorted(DISCRETE_LOSS)}, "
                         f"got sde.name={sde_config.name!r}; use training.continuous=True")
    return DISCRETE_LOSS[name]


__all__ = ["sde_from_config", "model_from_config", "discrete_loss_name"]
