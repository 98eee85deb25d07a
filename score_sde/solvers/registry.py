"""The one read-only table from sampler names to sampler classes, and each sampler's options."""

from __future__ import annotations

import inspect
import types
import typing

from score_sde.lookup import lookup
from score_sde.solvers.base import Sampler, check_n_steps
from score_sde.solvers.ddim import DDIMSampler
from score_sde.solvers.dpm_solver import DPMSolverSampler
from score_sde.solvers.edm import EDMHeunSampler
from score_sde.solvers.ipndm import IPNDMSampler
from score_sde.solvers.ode import ODESampler
from score_sde.solvers.pc import EulerMaruyamaSampler, PCSampler
from score_sde.solvers.sscs import SSCSSampler
from score_sde.solvers.student import StudentSampler
from score_sde.solvers.unipc import UniPCSampler

# name -> Sampler subclass, sorted by name. Add a row here when a sampler lands; nothing registers itself.
SAMPLERS: types.MappingProxyType = types.MappingProxyType({
    "ddim": DDIMSampler,
    "dpm_solver": DPMSolverSampler,
    "edm_heun": EDMHeunSampler,
    "euler_maruyama": EulerMaruyamaSampler,
    "ipndm": IPNDMSampler,
    "ode": ODESampler,
    "pc": PCSampler,
    "sscs": SSCSSampler,
    "student": StudentSampler,
    "unipc": UniPCSampler,
})


def names() -> list[str]:
    """Every registered sampler name, sorted."""
    return sorted(SAMPLERS)


def _lookup(name: str) -> type[Sampler]:
    return lookup(SAMPLERS, name, "sampler")


def options(name: str) -> list[str]:
    """The option names accepted by sampler `name`, in the order of its constructor."""
    return list(inspect.signature(_lookup(name)).parameters)


def option_defaults(name: str) -> dict[str, tuple[object, type]]:
    """option -> (default, type) for sampler `name`, read from its constructor.

    The type is the default's type, or for a None default (e.g. `eps`, "the convention") the
    non-None type of its annotation (`int | None` -> int). The CLI builds its config from this.
    """
    cls = _lookup(name)
    init = cls.__init__
    hints = typing.get_type_hints(init)
    out = {}
    for option, param in inspect.signature(cls).parameters.items():
        default = param.default
        if default is not None:
            out[option] = (default, type(default))
            continue
        kinds = [a for a in typing.get_args(hints.get(option)) if a is not type(None)]
        out[option] = (None, kinds[0] if kinds else str)
    return out


def budget_names() -> list[str]:
    """The samplers that pick their own best settings for a budget: `get(name, nfe=B)`."""
    return [n for n in names() if hasattr(SAMPLERS[n], "for_budget")]


def get(name: str, **opts) -> Sampler:
    """Builds sampler `name` with its options; unknown names or options raise ValueError.

    `get(name, nfe=B)` with no other option asks a deterministic fast sampler (`budget_names()`)
    for its best settings at a budget of B score evaluations (its `for_budget`, chosen with
    `benchmarks/path_error.py`); with other options, `nfe` is an ordinary option where the sampler
    has one (dpm_solver) and an error where it does not.
    """
    cls = _lookup(name)
    if set(opts) == {"nfe"} and hasattr(cls, "for_budget"):
        check_n_steps(opts["nfe"], "nfe")
        return cls(**cls.for_budget(opts["nfe"]))
    valid = options(name)
    bad = sorted(set(opts) - set(valid))
    if bad == ["nfe"] and hasattr(cls, "for_budget"):
        raise ValueError(f"nfe alone picks {name}'s best settings for a budget (get({name!r}, nfe=B)); "
                         f"with other options set n_steps instead; valid options: {', '.join(valid)}")
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(bad)} for sampler {name!r}; valid options: {', '.join(valid)}")
    return cls(**opts)


__all__ = ["SAMPLERS", "budget_names", "get", "names", "options", "option_defaults"]
