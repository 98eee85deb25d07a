"""The predictor-corrector sampler (Song et al. 2021, Algorithm 1) and Euler–Maruyama as its special case.

On the uniform grid T = t_0 > t_1 > ... > t_N = eps, step i runs the corrector's Langevin
steps targeting p_{t_i}, then the predictor moves x to t_{i+1}. With `denoise`, Tweedie's
formula (`data_prediction.data_prediction`) is applied at eps.

NFE = N (predictor.nfe + corrector.nfe_per_call) + denoise, known statically.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax

from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.correctors import CORRECTORS, Corrector, get_corrector
from score_sde.solvers.predictors import PREDICTORS, Predictor, get_predictor
from score_sde.solvers.timesteps import time_steps


class PCSampler(StepSampler):
    """Predictor-corrector sampler: any predictor with any corrector, for every SDE.

    Args:
      predictor: a name in `predictors.PREDICTORS` (euler_maruyama, reverse_diffusion,
        ancestral_sampling, none) or a `Predictor` object.
      corrector: a name in `correctors.CORRECTORS` (langevin, ald, none) or a `Corrector`
        object (which carries its own snr and number of steps).
      snr: signal-to-noise ratio of a corrector given by name (None: the corrector's 0.16).
      n_steps: number of grid steps N from T (or t_init) to eps.
      n_corrector_steps: corrector steps per grid time, for a corrector given by name
        (None: the corrector's 1).
      eps: smallest time; None -> the SDE's convention (1e-3 VP/sub-VP, 1e-5 VE).
      denoise: apply Tweedie denoising at eps (one more evaluation); None (default): on where the SDE
        has a scalar kernel (VP, sub-VP, VE), off otherwise (CLD).
    """

    predictor: Predictor
    corrector: Corrector
    n_steps: int = eqx.field(static=True)
    requires: ClassVar[frozenset] = frozenset({"reverse_sde"})
    requires_options: ClassVar[str] = "predictor='euler_maruyama', corrector='none'"
    eps: float | None = eqx.field(static=True)
    denoise: bool | None = eqx.field(static=True)

    def __init__(self, predictor: str | Predictor = "reverse_diffusion", corrector: str | Corrector = "langevin",
                 snr: float | None = None, n_steps: int = 1000, n_corrector_steps: int | None = None,
                 eps: float | None = None, denoise: bool | None = None):
        self.predictor = get_predictor(predictor)
        self.corrector = get_corrector(corrector, snr=snr, n_steps=n_corrector_steps)
        self.n_steps, self.eps, self.denoise = n_steps, eps, denoise

    def __check_init__(self):
        check_n_steps(self.n_steps)

    def required_capabilities(self) -> frozenset:
        """The predictor's and the corrector's needs (and a scalar kernel for denoising)."""
        return super().required_capabilities() | self.predictor.requires | self.corrector.requires

    @property
    def snr(self) -> float:
        return self.corrector.snr

    @property
    def n_corrector_steps(self) -> int:
        return self.corrector.n_steps

    @property
    def final_denoise(self) -> bool:
        return self.denoise is not False

    def explicit_denoise(self) -> bool:
        return self.denoise is True

    def total_nfe(self, hooked: bool = False) -> int:
        return self.n_steps * (self.predictor.nfe + self.corrector.nfe_per_call) + int(self.final_denoise)

    def grid(self, sde, t_start, t_end, dtype):
        return time_steps(sde, "time_uniform", t_start, t_end, self.n_steps, dtype), None

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        kc, kp = jax.random.split(key)
        x = self.corrector.correct(kc, sde, score_fn, x, t, t_next)
        return self.predictor.step(kp, sde, score_fn, x, t, t_next), state


class EulerMaruyamaSampler(StepSampler):
    """Euler–Maruyama on the reverse SDE: the PC sampler with predictor "euler_maruyama", corrector "none".

    Attributes:
      n_steps: number of steps N from T (or t_init) to eps.
      eps: smallest time; None -> the SDE's convention.
      denoise: apply Tweedie denoising at eps; None (default): on where the SDE has a scalar kernel,
        off otherwise (CLD).
    """

    n_steps: int = eqx.field(default=1000, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise: bool | None = eqx.field(default=None, static=True)
    requires: ClassVar[frozenset] = frozenset({"reverse_sde"})

    def __check_init__(self):
        check_n_steps(self.n_steps)

    def as_pc(self) -> PCSampler:
        return PCSampler(predictor="euler_maruyama", corrector="none", n_steps=self.n_steps, eps=self.eps,
                         denoise=self.denoise)

    @property
    def final_denoise(self) -> bool:
        return self.denoise is not False

    def explicit_denoise(self) -> bool:
        return self.denoise is True

    def total_nfe(self, hooked: bool = False) -> int:
        return self.as_pc().total_nfe(hooked)

    def grid(self, sde, t_start, t_end, dtype):
        return self.as_pc().grid(sde, t_start, t_end, dtype)

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        return self.as_pc().step(sde, score_fn, x, state, t, t_next, inputs, key, kind, hooked)


__all__ = ["PCSampler", "EulerMaruyamaSampler", "PREDICTORS", "CORRECTORS"]
