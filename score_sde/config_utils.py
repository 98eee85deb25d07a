"""Config -> objects, for the drivers (train.py, evaluate.py, main.py); library code takes objects.

One read-only name table per family (no registries filled by imports).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import flax.linen as nn
import ml_collections
from ml_collections import config_dict

from score_sde import image_to_image, models, solvers
from score_sde.models import conditions
from score_sde.lookup import lookup
from score_sde.cld import CLD
from score_sde.sde import SDE, VESDE, VPSDE, SubVPSDE

_SDES = {
    "vpsde": lambda c: VPSDE(beta_min=c.beta_min, beta_max=c.beta_max),
    "subvpsde": lambda c: SubVPSDE(beta_min=c.beta_min, beta_max=c.beta_max),
    "vesde": lambda c: VESDE(sigma_min=c.sigma_min, sigma_max=c.sigma_max),
    "cld": lambda c: CLD(beta=c.beta, m_inv=c.m_inv, gamma=c.gamma),
}

# Discrete training objective for each SDE (training.continuous = False).
DISCRETE_LOSS = {"vpsde": "ddpm", "vesde": "smld"}


def sde_from_config(sde_config) -> SDE:
    """`config.sde` -> an SDE: name in {vpsde, subvpsde, vesde, cld} with its schedule parameters."""
    return lookup(_SDES, sde_config.name.lower(), "sde", "sdes")(sde_config)


def model_from_config(model_config, num_classes: int = 0) -> nn.Module:
    """`config.model` -> a Flax network, through `score_sde.models.get_model` when it exists.

    `num_classes`: `config.data.num_classes`; > 0 adds the class embedding (class-conditional model).

    Without it, only the small MLP (model.name = "mlp", widths `model.hidden`) is available.
    """
    get_model = getattr(models, "get_model", None)
    if get_model is not None:
        return get_model(model_config, num_classes)
    if model_config.name != "mlp":
        raise ValueError(f"model {model_config.name!r} is not available in this build; use model.name='mlp'")
    return models.MLP(hidden=tuple(model_config.hidden))


def cond_spec_from_config(config) -> tuple:
    """The condition parts of `config`: one `conditions.Part` per entry of `config.data.cond`
    ({name: {kind, dropout, ...the kind's fields}}), or for `config.data.num_classes` > 0 the one
    label part "label" with dropout `training.label_dropout`; () for an unconditional model.

    Raises:
      ValueError: an unknown kind (the message lists the valid ones), or both num_classes and a
        "label" entry in data.cond.
    """
    parts = []
    task = image_to_image.task_from_config(config.data.get("task", None))
    for name, fields in sorted((config.data.get("cond", None) or {}).items()):
        fields = dict(fields)
        if "kind" not in fields:
            raise ValueError(f"config.data.cond.{name} needs a 'kind'; valid kinds: {', '.join(conditions.KINDS)}")
        if isinstance(task, image_to_image.SuperResolution) and name == "low_res" and not fields.get("size"):
            fields["size"] = int(config.data.image_size) // task.factor  # size 0: the low-res side of the task
        dropout = float(fields.get("dropout", 0.0))
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"config.data.cond.{name}.dropout must be in [0, 1), got {dropout}")
        parts.append(conditions.Part(name, conditions.kind_from_config(fields), dropout))
    num_classes = int(config.data.get("num_classes", 0) or 0)
    if num_classes:
        if any(p.name == "label" for p in parts):
            raise ValueError("config.data.num_classes and config.data.cond.label both define the 'label' part; "
                             "keep one of them")
        parts = list(conditions.label_spec(num_classes, config.training.get("label_dropout", 0.0))) + parts
    return tuple(parts)


def task_from_config(config):
    """The image-to-image task of `config.data.task` (`score_sde.image_to_image`), or None.

    Raises:
      ValueError: an unknown task name, or data.cond lacks one of the parts the task derives (or
        gives it another kind): the message names the entries to add.
    """
    task = image_to_image.task_from_config(config.data.get("task", None))
    if task is None:
        return None
    if hasattr(task, "centered"):  # a task that works in uint8 levels (JPEG) needs the data's scale
        task = dataclasses.replace(task, centered=bool(config.data.centered))
    cond = config.data.get("cond", None) or {}
    for name, kind in zip(task.names, task.kinds):
        if name not in cond or cond[name].get("kind") != kind:
            need = ", ".join(f'data.cond.{n} = {{"kind": "{k}", ...}}' for n, k in zip(task.names, task.kinds))
            raise ValueError(f"data.task {config.data.task.name!r} derives the condition parts "
                             f"{', '.join(task.names)}; the config needs {need}")
    return task


def net_from_config(config) -> nn.Module:
    """The Flax network of `config` (config.model) with the condition parts of `config.data`.

    A config with only `data.num_classes` builds the network exactly as before (the same
    parameter tree as every existing class-conditional checkpoint)."""
    spec = cond_spec_from_config(config)
    legacy = len(spec) == 1 and spec[0].name == "label" and not config.data.get("cond", None)
    if legacy or not spec:
        return model_from_config(config.model, int(config.data.get("num_classes", 0) or 0))
    return models.get_model(config.model, cond_spec=tuple(conditions.Part(p.name, p.kind) for p in spec))


def score_model_from_config(config, variables) -> models.ScoreModel:
    """`ScoreModel(net, variables, sde, cond_spec)` of `config` with the given variables ({"params": ...})."""
    return models.ScoreModel(net_from_config(config), variables, sde_from_config(config.sde),
                             cond_spec_from_config(config))


class Objects(NamedTuple):
    """What a config describes, built once (`objects`): the SDE, the network, the condition parts and
    the sampler of `config.sampling`."""

    sde: SDE
    net: nn.Module
    cond_spec: tuple
    sampler: solvers.Sampler

    def score_model(self, variables) -> models.ScoreModel:
        """The `ScoreModel` of these objects with the given variables ({"params": ...})."""
        return models.ScoreModel(self.net, variables, self.sde, self.cond_spec)


_OBJECTS: dict[str, Objects] = {}  # config JSON -> its objects (a bounded cache, newest last)


def objects(config) -> Objects:
    """Config -> objects in one place: the SDE, network, condition spec and sampler of `config`.

    Built on the first call for a config's contents and returned again for equal contents (the CLI's
    validation builds them and the drivers use the same objects: nothing is built and thrown away).

    Raises:
      ValueError: an unknown name (SDE, model, sampler, condition kind) or a bad option, naming it.
    """
    key = config.to_json_best_effort(sort_keys=True) if hasattr(config, "to_json_best_effort") else None
    if key is not None and key in _OBJECTS:
        return _OBJECTS[key]
    task_from_config(config)  # a bad data.task fails here, before anything runs
    built = Objects(sde_from_config(config.sde), net_from_config(config), cond_spec_from_config(config),
                    sampler_from_config(config.sampling))
    if key is not None:
        _OBJECTS[key] = built
        while len(_OBJECTS) > 16:
            _OBJECTS.pop(next(iter(_OBJECTS)))
    return built


class FrozenSection(tuple):
    """A hashable snapshot of a ConfigDict section (sorted items) with attribute access (a cache key)."""

    def __getattr__(self, name):
        for key, value in tuple.__iter__(self):
            if key == name:
                return value
        raise AttributeError(name)

    def get(self, name, default=None):
        return getattr(self, name, default)


def freeze(section) -> FrozenSection:
    """`section` (a ConfigDict or dict) as a `FrozenSection`: hashable, so usable as an lru_cache key."""
    return FrozenSection(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in section.items()))


def discrete_loss_name(sde_config) -> str:
    """The discrete loss for `config.sde` (DDPM for VP, SMLD for VE); error for other SDEs."""
    name = sde_config.name.lower()
    if name not in DISCRETE_LOSS:
        raise ValueError(f"discrete training (training.continuous=False) supports {sorted(DISCRETE_LOSS)}, "
                         f"got sde.name={sde_config.name!r}; use training.continuous=True")
    return DISCRETE_LOSS[name]


def sampler_options_config() -> ml_collections.ConfigDict:
    """`config.sampling.<name>`: one sub-dict per sampler holding every option of its constructor.

    Derived from the samplers themselves (`solvers.option_defaults`), so a new option or sampler
    appears on the command line without a hand-kept list. An option whose default is None (e.g.
    `eps`: the SDE's convention, or ode's `n_steps`: adaptive) is a typed placeholder, settable as
    `--config.sampling.ode.n_steps=50`. Every sampler with an `nfe=` preset (`solvers.budget_names()`)
    also has `nfe` (None: unset): `--config.sampling.unipc.nfe=10` is `solvers.get("unipc", nfe=10)`.
    """
    out = ml_collections.ConfigDict()
    for name in solvers.names():
        opts = {option: config_dict.placeholder(kind) if default is None else default
                for option, (default, kind) in solvers.option_defaults(name).items()}
        if name in solvers.budget_names():
            opts.setdefault("nfe", config_dict.placeholder(int))
        out[name] = ml_collections.ConfigDict(opts)
    return out


def sampler_from_config(sampling) -> solvers.Sampler:
    """`config.sampling` -> the sampler named by `sampling.method`, with the options in
    `sampling.<method>` (unknown names raise ValueError listing the valid samplers).

    `sampling.<method>.nfe = K` with every other option at the sampler's default is the tuned
    preset `solvers.get(method, nfe=K)` (`sampler_opts`)."""
    name = sampling.method
    solvers.options(name)  # raises ValueError listing the samplers if the name is unknown
    opts = {k: tuple(v) if isinstance(v, list) else v for k, v in sampling[name].items()}
    return solvers.get(name, **sampler_opts(name, opts))


def sampler_opts(name: str, opts: dict) -> dict:
    """The keyword arguments of `solvers.get(name, ...)` for the config's options of sampler `name`.

    Without `nfe` (or `nfe` None): the options as they are. With `nfe = K` and every other option at
    the sampler's default: `{"nfe": K}`, the preset of `solvers.get(name, nfe=K)`. With `nfe` and other
    options changed: all of them for dpm_solver (its own `nfe` budget option, as in `solvers.get`),
    a ValueError for the other samplers (a preset fixes their options).
    """
    nfe = opts.get("nfe")
    own = solvers.options(name)
    if nfe is None:
        return {k: v for k, v in opts.items() if k in own}
    defaults = {k: d for k, (d, _) in solvers.option_defaults(name).items()}
    changed = sorted(k for k, v in opts.items() if k != "nfe" and v != defaults.get(k))
    if not changed:
        return {"nfe": nfe}
    if "nfe" in own:
        return opts
    raise ValueError(f"sampling.{name}.nfe={nfe} picks {name}'s preset for {nfe} score evaluations, which sets its "
                     f"other options; it cannot be combined with sampling.{name}.{', '.join(changed)}: drop "
                     f"{'them' if len(changed) > 1 else 'it'}, or set sampling.{name}.n_steps instead of nfe")


def sampler_overrides_for_other_samplers(argv: list[str], method: str) -> list[str]:
    """The `--config.sampling.<name>.<option>` flags in argv that set an option of a sampler other
    than `method` (they would be ignored: the chosen sampler reads only its own sub-dict)."""
    bad = []
    for arg in argv:
        parts = arg.lstrip("-").split("=", 1)[0].split(".")
        if len(parts) == 4 and parts[:2] == ["config", "sampling"] and parts[2] in solvers.SAMPLERS \
                and parts[2] != method:
            bad.append(arg.split("=", 1)[0])
    return bad


__all__ = ["Objects", "objects", "cond_spec_from_config", "task_from_config", "net_from_config", "score_model_from_config", "FrozenSection",
           "freeze", "sampler_from_config", "sampler_opts", "sampler_options_config",
           "sampler_overrides_for_other_samplers", "sde_from_config", "model_from_config", "discrete_loss_name"]
