"""The one read-only table from sampler names to sampler classes."""

from __future__ import annotations

import dataclasses
import types

from score_sde.solvers.base import Sampler
from score_sde.solvers.ddim import DDIMSampler
from score_sde.solvers.dpm_solver import DPMSolverSampler
from score_sde.solvers.edm import EDMHeunSampler
from score_sde.solvers.ode import ODESampler
from score_sde.solvers.pc import EulerMaruyamaSampler, PCSampler

# name -> Sampler subclass. Add an entry here when a sampler lands; nothing registers itself.
SAMPLERS: types.MappingProxyType = types.MappingProxyType({
    "euler_maruyama": EulerMaruyamaSampler,
    "pc": PCSampler,
    "ode": ODESampler,
    "ddim": DDIMSampler,
    "dpm_solver": DPMSolverSampler,
    "edm_heun": EDMHeunSampler,
})


def names() -> list[str]:
    """Every registered sampler name, sorted."""
    return sorted(SAMPLERS)


def options(name: str) -> list[str]:
    """The option names accepted by sampler `name`."""
    return [f.name for f in dataclasses.fields(_lookup(name)) if f.init]


def _lookup(name: str) -> type[Sampler]:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; valid samplers: {', '.join(names())}")
    return SAMPLERS[name]


def get(name: str, **opts) -> Sampler:
    """Builds sampler `name` with its options; unknown names or options raise ValueError."""
    cls = _lookup(name)
    valid = options(name)
    bad = sorted(set(opts) - set(valid))
    if bad:
        raise ValueError(f"unknown option(s) {', '.join(bad)} for sampler {name!r}; valid options: {', '.join(valid)}")
    return cls(**opts)
