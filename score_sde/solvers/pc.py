"""The predictor-corrector sampler (Song et al. 2021, Algorithm 1) and Euler–Maruyama as its special case.

One `lax.scan` over the time grid T = t_0 > t_1 > ... > t_N = eps. At each grid time t_i
the corrector runs its Langevin steps targeting p_{t_i}, then the predictor moves x to
t_{i+1}. With `denoise`, Tweedie's formula (`data_prediction.data_prediction`) is applied at eps.

NFE = N (predictor.nfe + corrector.nfe_per_call) + denoise, known statically.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import lax

from score_sde.solvers.base import SampleInfo, Sampler, resolve_eps
from score_sde.solvers.correctors import CORRECTORS, Corrector, get_corrector
from score_sde.solvers.data_prediction import data_prediction
from score_sde.solvers.predictors import PREDICTORS, Predictor, get_predictor


def time_grid(T: float, eps: float, n_steps: int, dtype) -> jax.Array:
    """Uniform decreasing grid T = t_0 > ... > t_N = eps, shape (N + 1,)."""
    return jnp.linspace(T, eps, n_steps + 1, dtype=dtype)


def pc_loop(key, sde, score_fn, x, ts, predictor: Predictor, corrector: Corrector):
    """Runs corrector-then-predictor over each step (t_i, t_{i+1}) of the grid ts; returns x at ts[-1].

    Per-step randomness is fold_in(key, i), split between corrector and predictor.
    """

    def body(x, inp):
        i, t, s = inp
        kc, kp = jax.random.split(jax.random.fold_in(key, i))
        x = corrector.correct(kc, sde, score_fn, x, t, s)
        return predictor.step(kp, sde, score_fn, x, t, s), None

    steps = jnp.arange(ts.shape[0] - 1)
    x, _ = lax.scan(body, x, (steps, ts[:-1], ts[1:]))
    return x


class PCSampler(Sampler):
    """Predictor-corrector sampler: any predictor with any corrector, for every SDE.

    Attributes:
      predictor: one of `predictors.PREDICTORS` (euler_maruyama, reverse_diffusion,
        ancestral_sampling, none).
      corrector: one of `correctors.CORRECTORS` (langevin, ald, none).
      snr: corrector signal-to-noise ratio.
      n_steps: number of grid steps N from T to eps.
      n_corrector_steps: corrector steps per grid time.
      eps: smallest time; None -> the SDE's convention (1e-3 VP/sub-VP, 1e-5 VE).
      denoise: apply Tweedie denoising at eps (one more evaluation).
    """

    predictor: str = eqx.field(default="reverse_diffusion", static=True)
    corrector: str = eqx.field(default="langevin", static=True)
    snr: float = eqx.field(default=0.16, static=True)
    n_steps: int = eqx.field(default=1000, static=True)
    n_corrector_steps: int = eqx.field(default=1, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise: bool = eqx.field(default=True, static=True)

    def __check_init__(self):
        get_predictor(self.predictor)
        get_corrector(self.corrector)
        if not isinstance(self.n_steps, int) or self.n_steps < 1:
            raise ValueError(f"n_steps must be a positive int, got {self.n_steps!r}")
        if not isinstance(self.n_corrector_steps, int) or self.n_corrector_steps < 0:
            raise ValueError(f"n_corrector_steps must be a non-negative int, got {self.n_corrector_steps!r}")
        if not self.snr > 0:
            raise ValueError(f"snr must be positive, got {self.snr!r}")

    def parts(self) -> tuple[Predictor, Corrector]:
        """The predictor and corrector objects named by the options."""
        return (get_predictor(self.predictor),
                get_corrector(self.corrector, snr=self.snr, n_steps=self.n_corrector_steps))

    def nfe(self) -> int:
        """Score evaluations per call (static)."""
        predictor, corrector = self.parts()
        return self.n_steps * (predictor.nfe + corrector.nfe_per_call) + int(self.denoise)

    def sample(self, key, sde, score_fn, shape, dtype):
        predictor, corrector = self.parts()
        eps = resolve_eps(self.eps, sde)
        k_prior, k_loop = jax.random.split(key)
        x = sde.prior_sampling(k_prior, shape, dtype)
        x = pc_loop(k_loop, sde, score_fn, x, time_grid(sde.T, eps, self.n_steps, dtype), predictor, corrector)
        if self.denoise:
            x = data_prediction(sde, score_fn, x, jnp.asarray(eps, dtype))
        return x, SampleInfo(nfe=jnp.asarray(self.nfe(), jnp.int32))


class EulerMaruyamaSampler(Sampler):
    """Euler–Maruyama on the reverse SDE: the PC loop with predictor "euler_maruyama", corrector "none".

    Attributes:
      n_steps: number of steps N from T to eps.
      eps: smallest time; None -> the SDE's convention.
      denoise: apply Tweedie denoising at eps.
    """

    n_steps: int = eqx.field(default=1000, static=True)
    eps: float | None = eqx.field(default=None, static=True)
    denoise: bool = eqx.field(default=True, static=True)

    def as_pc(self) -> PCSampler:
        return PCSampler(predictor="euler_maruyama", corrector="none", n_steps=self.n_steps, eps=self.eps,
                         denoise=self.denoise)

    def __check_init__(self):
        self.as_pc()

    def sample(self, key, sde, score_fn, shape, dtype):
        return self.as_pc().sample(key, sde, score_fn, shape, dtype)


__all__ = ["PCSampler", "EulerMaruyamaSampler", "pc_loop", "time_grid", "PREDICTORS", "CORRECTORS"]
