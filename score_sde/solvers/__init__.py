"""Samplers: every solver is called as `x, info = sampler(key, sde, score_fn, shape)`.

    sampler = score_sde.solvers.get("pc", predictor="reverse_diffusion", corrector="langevin")
    score_sde.solvers.names()

The name -> class table is one read-only mapping (`registry.SAMPLERS`), used by the CLI.
"""

from score_sde.solvers.base import SampleInfo, Sampler
from score_sde.solvers.registry import SAMPLERS, get, names

__all__ = ["SAMPLERS", "SampleInfo", "Sampler", "get", "names"]
