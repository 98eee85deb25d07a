"""Config -> objects, for the drivers (train.py, evaluate.py, main.py); library code takes objects.

One read-only name table per family (no registries filled by imports).
"""

from __future__ import annotations

import flax.linen as nn

from score_sde import models, solvers
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


# config.sampling keys that are not sampler options.
_NOT_SAMPLER_OPTIONS = {"method", "num_samples", "batch_size"}
# config.sampling keys whose sampler option has another name (the config's "method" is the sampler).
_ALIASES = {"dpm_method": "method"}


def sampler_from_config(sampling) -> solvers.Sampler:
    """`config.sampling` -> a sampler: `method` names it, matching keys become its options.

    Keys the sampler does not take are ignored (e.g. `snr` for "ode"); `n_steps = 0`,
    `eps = 0` and `skip = ""` mean the sampler's own default (e.g. adaptive steps for "ode").
    """
    name = sampling.method
    valid = set(solvers.registry.options(name))  # raises ValueError listing samplers if unknown
    opts = {}
    for key, value in sampling.items():
        option = _ALIASES.get(key, key)
        if key in _NOT_SAMPLER_OPTIONS or option not in valid:
            continue
        if key in ("n_steps", "eps", "skip") and not value:
            continue  # 0 / "": the sampler's own default
        opts[option] = tuple(value) if isinstance(value, list) else value
    return solvers.get(name, **opts)


__all__ = ["sampler_from_config", "sde_from_config", "model_from_config", "discrete_loss_name"]
