"""Samplers: every solver is called as `x, info = sampler(key, sde, score_fn, shape)`.

    sampler = score_sde.solvers.get("pc", predictor="reverse_diffusion", corrector="langevin")
    x, info = sampler(key, sde, score_fn, (64, 2))
    x, info = sampler(key, sde, score_fn, x_init=x_t, t_init=0.5)   # start anywhere
    x_s, info = sampler(key, sde, score_fn, x_init=x_t, t_init=0.5, t_end=0.2)   # stop anywhere
    x_s = sampler.single_step(sde, score_fn, x_t, 0.5, 0.2)           # one step (a distillation teacher)
    score_sde.solvers.names()

Fixed-grid samplers are `StepSampler`s (grid / init / step) run by one driver loop,
`base.run_steps`. The name -> class table is one read-only mapping (`registry.SAMPLERS`).
"""

from score_sde.solvers.base import (Chunk, Hook, SampleInfo, Sampler, Solve, StepSampler, checked_score, data_and_info,
                                   run_steps)
from score_sde.solvers.registry import SAMPLERS, budget_names, get, names, option_defaults, options

__all__ = ["SAMPLERS", "Chunk", "Hook", "budget_names", "SampleInfo", "Sampler", "Solve", "StepSampler", "checked_score",
           "data_and_info", "get", "names", "option_defaults", "options", "run_steps"]
