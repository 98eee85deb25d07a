"""Forward SDEs dx = f(x, t) dt + g(t) dw of Song et al. (ICLR 2021).

All three processes are linear: f(x, t) = c(t) x. Their perturbation kernels are
Gaussian, p_0t(x_t | x_0) = N(alpha(t) x_0, std(t)^2 I), and every quantity a
solver needs (discrete DDPM/SMLD coefficients, log-SNR, the reverse and
probability-flow drifts) is derived here from alpha(t) and std(t), so any
number of steps works for any SDE.

Shapes: x is (B, *dims) of any rank; t is (B,) or a scalar (broadcast to B).
Per-example coefficients come back with shape (B,).
"""

from __future__ import annotations

import abc
import math
from typing import Callable, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]


def batch_times(t, batch: int, dtype=None) -> Array:
    """Broadcasts a scalar or (B,) time to shape (B,)."""
    t = jnp.asarray(t, dtype=dtype)
    if t.ndim > 1 or (t.ndim == 1 and t.shape[0] not in (1, batch)):
        raise ValueError(f"t must be a scalar or have shape ({batch},), got shape {t.shape}")
    return jnp.broadcast_to(t, (batch,))


def _concrete(**values) -> dict[str, float]:
    """The values that are concrete numbers (Python / numpy scalars, concrete arrays) as floats.

    SDEs may be built inside `jit` from traced parameters; those cannot be checked and are skipped.
    """
    out = {}
    for name, v in values.items():
        if isinstance(v, jax.core.Tracer):
            continue
        try:
            out[name] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def expand_to(c: Array, x: Array) -> Array:
    """Reshapes a per-example coefficient (B,) so it broadcasts against x (B, *dims)."""
    c = jnp.asarray(c)
    return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


# What an SDE can offer a sampler (`ForwardSDE.capabilities`; samplers declare what they need):
CAPABILITIES = {
    "reverse_sde": "drift, diffusion and the score term of the reverse SDE / probability-flow ODE",
    "scalar_kernel": "a scalar Gaussian kernel N(alpha(t) x0, std(t)^2 I) (alpha, std, log-SNR, Tweedie)",
    "sscs_split": "an analytic flow of the linear part of the reverse SDE (CLD's symmetric splitting)",
}


class ForwardSDE(eqx.Module):
    """Any forward SDE du = f(u, t) dt + G(t) dw that samplers and the likelihood can run.

    The state u may carry more than the data: `state_shape` maps a data shape (B, *dims) to the
    state's shape (the identity for VP / sub-VP / VE; (B, 2, *dims) for CLD's (x, v)), and a score
    function returns `score_shape(state_shape)` (the gradient of log p_t with respect to the noised
    part of the state). `capabilities` names what the SDE offers (keys of `CAPABILITIES`); each
    sampler declares what it needs and `Sampler.__call__` checks it in one place.
    """

    capabilities: ClassVar[frozenset] = frozenset({"reverse_sde"})
    # The training objective `losses.get_loss_fn` builds: "dsm" (denoising score matching) or
    # "hsm" (CLD's hybrid score matching, `losses.hsm_loss`).
    training_objective: ClassVar[str] = "dsm"

    # --- the state -------------------------------------------------------------------
    def state_shape(self, shape) -> tuple[int, ...]:
        """The shape of the state u for data of shape (B, *dims)."""
        return tuple(shape)

    def data_shape(self, state_shape) -> tuple[int, ...]:
        """The data shape (B, *dims) of a state of shape `state_shape` (inverse of `state_shape`)."""
        return tuple(state_shape)

    def score_shape(self, state_shape) -> tuple[int, ...]:
        """The shape of score_fn(u, t) for a state u of shape `state_shape`."""
        return tuple(state_shape)

    def data_part(self, u: Array) -> Array:
        """The data x in the state u, (B, *dims)."""
        return u

    def velocity_part(self, u: Array) -> Array | None:
        """Auxiliary variables in the state u (None when the state is the data)."""
        return None

    def augment(self, key: Array, x0: Array) -> tuple[Array, Array]:
        """(u0, log q(aux)): the state at t = 0 for data x0, with auxiliary variables drawn from
        their initial distribution q and their log-density (B,) (0 when there are none)."""
        return x0, jnp.zeros(x0.shape[:1], x0.dtype)

    # --- the process -----------------------------------------------------------------
    @abc.abstractmethod
    def sde(self, u: Array, t) -> tuple[Array, Array]:
        """Drift f(u, t) (like u) and the diffusion coefficient (B,)."""

    @abc.abstractmethod
    def prior_sampling(self, key: Array, shape, dtype=jnp.float32) -> Array:
        """A draw of the state at T for data shape `shape` = (B, *dims)."""

    @abc.abstractmethod
    def prior_logp(self, u: Array) -> Array:
        """log density of the prior at the state u, (B,) nats."""

    # --- what the reverse SDE needs --------------------------------------------------
    @abc.abstractmethod
    def score_drift(self, u: Array, score: Array, t: Array) -> Array:
        """G G^T grad log p_t(u) (like u) from score = score_fn(u, t); t: (B,)."""

    @abc.abstractmethod
    def noise(self, u: Array, z: Array, t: Array) -> Array:
        """G(t) z for standard normal z like u; t: (B,)."""

    def mixture_score_fn(self, mixture):
        """The exact score of a `GaussianMixture` data distribution under this SDE, or None when the
        scalar-kernel oracle of `score_sde.analytic` applies."""
        return None


class SDE(ForwardSDE):
    """A linear forward SDE with Gaussian perturbation kernels.

    Subclasses define the scalar schedule functions of t (arrays of any shape):
    `log_alpha`, `std`, `drift_coef` (c(t) in f = c x) and `diffusion_sq` (g^2),
    plus `prior_std`. Everything else is derived.
    """

    T: float = eqx.field(default=1.0, static=True, kw_only=True)
    # Conventional smallest sampling time (Song et al. 2021); likelihoods use 1e-5 for all.
    sampling_eps: ClassVar[float] = 1e-3
    capabilities: ClassVar[frozenset] = frozenset({"reverse_sde", "scalar_kernel"})

    # --- schedule, elementwise in t -------------------------------------------------
    @abc.abstractmethod
    def log_alpha(self, t: Array) -> Array:
        """log alpha(t), alpha(t) the mean scale of p_0t."""

    @abc.abstractmethod
    def std(self, t: Array) -> Array:
        """Standard deviation of p_0t."""

    @abc.abstractmethod
    def drift_coef(self, t: Array) -> Array:
        """c(t) with f(x, t) = c(t) x."""

    @abc.abstractmethod
    def diffusion_sq(self, t: Array) -> Array:
        """g(t)^2."""

    @property
    @abc.abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at t = T."""

    def alpha(self, t: Array) -> Array:
        return jnp.exp(self.log_alpha(t))

    def log_snr(self, t: Array) -> Array:
        """lambda(t) = log(alpha(t) / std(t)), decreasing in t (DPM-Solver's lambda)."""
        return self.log_alpha(t) - jnp.log(self.std(t))

    # --- the DESIGN.md public API -----------------------------------------------------
    def sde(self, x: Array, t) -> tuple[Array, Array]:
        """Drift f(x, t) (like x) and diffusion g(t) (shape (B,))."""
        t = batch_times(t, x.shape[0], x.dtype)
        f = expand_to(self.drift_coef(t), x) * x
        return f, jnp.sqrt(self.diffusion_sq(t))

    def marginal_prob(self, x0: Array, t) -> tuple[Array, Array]:
        """Mean alpha(t) x0 (like x0) and std (B,) of p_0t(x_t | x0)."""
        t = batch_times(t, x0.shape[0], x0.dtype)
        return expand_to(self.alpha(t), x0) * x0, self.std(t)

    def prior_sampling(self, key: Array, shape, dtype=jnp.float32) -> Array:
        """Draws x_T ~ N(0, prior_std^2 I) with shape (B, *dims)."""
        return self.prior_std * jax.random.normal(key, shape, dtype)

    def prior_logp(self, z: Array) -> Array:
        """log N(z; 0, prior_std^2 I) in nats, summed over all non-batch dims: (B,)."""
        d = math.prod(z.shape[1:])
        sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
        return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

    # --- the network parameterisation (used by `score_sde.models.parameterization`) ---
    def network_input(self, x: Array) -> Array:
        """What the network sees: x itself."""
        return x

    def noise_conditioning(self, t: Array) -> Array:
        """c_noise(t) = log(std(t) / alpha(t)) = -lambda(t), (B,)."""
        return -self.log_snr(t)

    def score_from_network(self, out: Array, x: Array, t: Array) -> Array:
        """The network predicts the noise z of x_t = alpha x0 + std z: score = -out / std(t)."""
        return -out / expand_to(self.std(t), x)

    def score_drift(self, x: Array, score: Array, t: Array) -> Array:
        """g(t)^2 score (like x); t: (B,)."""
        return expand_to(jnp.sqrt(self.diffusion_sq(t)) ** 2, x) * score

    def noise(self, x: Array, z: Array, t: Array) -> Array:
        """g(t) z (like x); t: (B,)."""
        return expand_to(jnp.sqrt(self.diffusion_sq(t)), x) * z

    # --- discrete transitions, derived from the continuous marginal -------------------
    def transition(self, s, t) -> tuple[Array, Array]:
        """Forward kernel x_t | x_s = N(r x_s, v I) for s < t.

        r = alpha(t) / alpha(s) and v = std(t)^2 - r^2 std(s)^2: the exact
        transition of the linear SDE. For VP this is DDPM's (sqrt(1 - beta_i), beta_i);
        for VE it is SMLD's (1, sigma_i^2 - sigma_{i-1}^2). Valid for any s < t,
        so any number of steps works: r in (0, 1] and v >= 0.
        """
        s, t = jnp.asarray(s), jnp.asarray(t)
        r = jnp.exp(self.log_alpha(t) - self.log_alpha(s))
        v = self.std(t) ** 2 - r**2 * self.std(s) ** 2
        return r, jnp.maximum(v, 0.0)

    def ancestral_coeffs(self, s, t) -> tuple[Array, Array, Array]:
        """Coefficients of the exact Gaussian posterior step x_t -> x_s (s < t).

        With the score estimate sc of p_t, the posterior q(x_s | x_t, x0_hat), x0_hat
        Tweedie's estimate, is N((x_t + v sc) / r, v std(s)^2 / std(t)^2 I).
        Returns (1 / r, v / r, posterior std). DDPM ancestral sampling (VP) and
        SMLD's reverse step (VE) are both this formula.
        """
        r, v = self.transition(s, t)
        post_var = v * self.std(s) ** 2 / self.std(t) ** 2
        return 1.0 / r, v / r, jnp.sqrt(post_var)


class VPSDE(SDE):
    """Variance-preserving SDE: beta(t) = b0 + t (b1 - b0), f = -beta x / 2, g = sqrt(beta)."""

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __check_init__(self):
        v = _concrete(beta_min=self.beta_min, beta_max=self.beta_max, T=self.T)
        bad = [f"{k}={x}" for k, x in v.items() if not math.isfinite(x) or x < 0]
        if bad or v.get("T", 1.0) == 0 or (len(v) == 3 and v["beta_min"] + v["beta_max"] == 0):
            raise ValueError(f"{type(self).__name__} needs finite beta_min >= 0, beta_max >= 0 (not both 0) and "
                             f"T > 0; got beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}")

    def beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def std(self, t):
        # sqrt(1 - alpha^2) written with expm1 so that it stays accurate near t = 0.
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def drift_coef(self, t):
        return -0.5 * self.beta(t)

    def diffusion_sq(self, t):
        return self.beta(t)

    @property
    def prior_std(self):
        return 1.0


class SubVPSDE(VPSDE):
    """Sub-VP SDE: VP drift, std = 1 - alpha^2, g^2 = beta (1 - exp(-2 b0 t - (b1 - b0) t^2))."""

    def std(self, t):
        return -jnp.expm1(2.0 * self.log_alpha(t))

    def diffusion_sq(self, t):
        return self.beta(t) * -jnp.expm1(4.0 * self.log_alpha(t))


class VESDE(SDE):
    """Variance-exploding SDE: sigma(t) = smin (smax/smin)^t, f = 0, g = sigma sqrt(2 ln(smax/smin))."""

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    sampling_eps: ClassVar[float] = 1e-5

    def __check_init__(self):
        v = _concrete(sigma_min=self.sigma_min, sigma_max=self.sigma_max, T=self.T)
        ok = all(math.isfinite(x) for x in v.values()) and v.get("sigma_min", 1.0) > 0 and v.get("T", 1.0) > 0
        if ok and len(v) == 3:
            ok = v["sigma_min"] < v["sigma_max"]
        if not ok:
            raise ValueError(f"VESDE needs finite 0 < sigma_min < sigma_max and T > 0; got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}, T={self.T}")

    def sigma(self, t):
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def log_alpha(self, t):
        return jnp.zeros_like(jnp.asarray(t))

    def std(self, t):
        return self.sigma(t)

    def drift_coef(self, t):
        return jnp.zeros_like(jnp.asarray(t))

    def diffusion_sq(self, t):
        return self.sigma(t) ** 2 * 2.0 * math.log(self.sigma_max / self.sigma_min)

    @property
    def prior_std(self):
        return self.sigma_max


def reverse_drift(sde: ForwardSDE, score_fn: ScoreFn, x: Array, t) -> Array:
    """Drift of the reverse-time SDE, f - g^2 s(x, t) (Song et al. 2021, eq. 6).

    For a general state, f - G G^T s (`ForwardSDE.score_drift`).
    """
    t = batch_times(t, x.shape[0], x.dtype)
    f, _ = sde.sde(x, t)
    return f - sde.score_drift(x, score_fn(x, t), t)


def probability_flow_drift(sde: ForwardSDE, score_fn: ScoreFn, x: Array, t) -> Array:
    """Drift of the probability-flow ODE, f - g^2 s(x, t) / 2 (Song et al. 2021, eq. 13)."""
    t = batch_times(t, x.shape[0], x.dtype)
    f, _ = sde.sde(x, t)
    return f - 0.5 * sde.score_drift(x, score_fn(x, t), t)


def default_eps(sde: SDE, purpose: str = "sampling") -> float:
    """Conventional smallest time: 1e-3 for VP/sub-VP sampling, 1e-5 for VE and all likelihoods."""
    if purpose not in ("sampling", "likelihood"):
        raise ValueError(f"purpose must be 'sampling' or 'likelihood', got {purpose!r}")
    return 1e-5 if purpose == "likelihood" else sde.sampling_eps
