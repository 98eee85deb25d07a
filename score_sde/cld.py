"""Critically-damped Langevin diffusion (CLD; Dockhorn, Vahdat & Kreis, ICLR 2022).

The data x is coupled with a velocity v and noise enters only through v:

    dx = beta M^-1 v dt
    dv = -beta x dt - beta Gamma M^-1 v dt + sqrt(2 Gamma beta) dw,      Gamma^2 = 4 M (critical damping)

with constant beta, mass M = 1 / m_inv and v0 ~ N(0, gamma M). The equilibrium (the prior) is
N(0, I) for x and N(0, M I) for v.

State layout: one array u of shape (B, 2, *dims) with u[:, 0] = x and u[:, 1] = v (an array, not a
tuple, so the shared driver loop, diffrax and the divergence code take it unchanged). A CLD score
function returns grad_v log p_t(u), shape (B, *dims): G G^T is zero on x, so the reverse SDE and
the probability-flow ODE need only this part (the paper's hybrid score).

Closed forms, per data dimension, with a = sqrt(m_inv) = 2 / Gamma, tau = beta (t - s) and y = 2 a tau:

    transition  Phi(tau) = e^{-a tau} [[1 + a tau, a^2 tau], [-tau, 1 - a tau]]   (u_t mean = Phi u_s)
    noise cov   Sxx = E2,  Sxv = y^2 e^{-y} / (2 a),  Svv = M (E2 + 2 y e^{-y}),
                E2 = 1 - e^{-y} (1 + y + y^2 / 2)

(the drift matrix is beta (-a I + K) with K nilpotent, so exp is e^{-a tau} (I + K tau), and the
noise covariance int_0^tau Phi(s) diag(0, 2 Gamma) Phi(s)^T ds integrates in closed form). Given x0
alone (v0 ~ N(0, gamma M)) the covariance adds gamma M w w^T with w = (Phi_xv, Phi_vv).
"""

from __future__ import annotations

import math
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from score_sde.sde import Array, ForwardSDE, _concrete, batch_times, expand_to


def _e2(y: Array) -> Array:
    """E2(y) = 1 - e^{-y} (1 + y + y^2 / 2) = e^{-y} sum_{k >= 3} y^k / k!, accurate for small y too."""
    direct = 1.0 - jnp.exp(-y) * (1.0 + y + 0.5 * y**2)
    ys = jnp.minimum(y, 0.5)  # the series branch, only used below 0.5 (12 terms: relative error < 1e-14)
    series, term = jnp.zeros_like(ys), jnp.ones_like(ys)
    for k in range(4, 16):
        series = series + term
        term = term * ys / k
    series = jnp.exp(-ys) * ys**3 / 6.0 * series
    return jnp.where(y < 0.5, series, direct)


class CLD(ForwardSDE):
    """Critically-damped Langevin diffusion on the state u = (x, v), shape (B, 2, *dims).

    Attributes:
      beta: the constant time scale beta (the paper: 4).
      m_inv: the inverse mass M^-1 (the paper: 4); Gamma = 2 / sqrt(m_inv) (critical damping).
      gamma: v0 ~ N(0, gamma M) (the paper: 0.04).
      T: end time (1).
    """

    beta: float = 4.0
    m_inv: float = 4.0
    gamma: float = 0.04
    T: float = eqx.field(default=1.0, static=True, kw_only=True)
    sampling_eps: ClassVar[float] = 1e-3
    capabilities: ClassVar[frozenset] = frozenset({"reverse_sde", "sscs_split"})
    training_objective: ClassVar[str] = "hsm"

    def __check_init__(self):
        v = _concrete(beta=self.beta, m_inv=self.m_inv, gamma=self.gamma, T=self.T)
        if not all(math.isfinite(x) and x > 0 for x in v.values()):
            raise ValueError(f"CLD needs finite beta > 0, m_inv > 0, gamma > 0 and T > 0; got beta={self.beta}, "
                             f"m_inv={self.m_inv}, gamma={self.gamma}, T={self.T}")

    # --- constants ----------------------------------------------------------------
    @property
    def a(self):
        """a = sqrt(m_inv) = 2 / Gamma: the double eigenvalue of the drift is -beta a."""
        return self.m_inv**0.5

    @property
    def damping(self):
        """Gamma = 2 sqrt(M) (critical damping)."""
        return 2.0 / self.a

    @property
    def mass(self):
        return 1.0 / self.m_inv

    def diffusion_sq(self, t: Array) -> Array:
        """2 Gamma beta, the noise variance rate of v (like t)."""
        return jnp.full_like(jnp.asarray(t), 2.0 * self.damping * self.beta)

    # --- the state ------------------------------------------------------------------
    def state_shape(self, shape):
        shape = tuple(shape)
        return shape[:1] + (2,) + shape[1:]

    def data_shape(self, state_shape):
        state_shape = tuple(state_shape)
        if len(state_shape) < 3 or state_shape[1] != 2:
            raise ValueError(f"a CLD state has shape (B, 2, *dims) (x = u[:, 0], v = u[:, 1]), got {state_shape}")
        return state_shape[:1] + state_shape[2:]

    def score_shape(self, state_shape):
        return self.data_shape(state_shape)

    def data_part(self, u):
        return u[:, 0]

    def velocity_part(self, u):
        return u[:, 1]

    @staticmethod
    def join(x: Array, v: Array) -> Array:
        """The state (B, 2, *dims) from x and v (B, *dims)."""
        return jnp.stack([x, v], axis=1)

    def augment(self, key, x0):
        """(u0, log N(v0; 0, gamma M)) with v0 ~ N(0, gamma M): the initial state for data x0."""
        var = self.gamma * self.mass
        v0 = math.sqrt(var) * jax.random.normal(key, x0.shape, x0.dtype)
        return self.join(x0, v0), _gauss_logp(v0, var)

    # --- the process ----------------------------------------------------------------
    def sde(self, u, t):
        """Drift (like u) and the diffusion coefficient sqrt(2 Gamma beta) of v (B,); x has none."""
        t = batch_times(t, u.shape[0], u.dtype)
        x, v = u[:, 0], u[:, 1]
        fx = self.beta * self.m_inv * v
        fv = -self.beta * x - self.beta * self.damping * self.m_inv * v
        return self.join(fx, fv), jnp.sqrt(self.diffusion_sq(t))

    def score_drift(self, u, score, t):
        """G G^T grad log p = (0, 2 Gamma beta grad_v log p), like u."""
        return self.join(jnp.zeros_like(score), expand_to(self.diffusion_sq(t), score) * score)

    def noise(self, u, z, t):
        """G z = (0, sqrt(2 Gamma beta) z_v), like u."""
        zv = z[:, 1]
        return self.join(jnp.zeros_like(zv), expand_to(jnp.sqrt(self.diffusion_sq(t)), zv) * zv)

    def prior_sampling(self, key, shape, dtype=jnp.float32):
        """(x, v) ~ N(0, I) x N(0, M I) for data shape `shape` = (B, *dims); returns (B, 2, *dims)."""
        z = jax.random.normal(key, self.state_shape(shape), dtype)
        return self.join(z[:, 0], math.sqrt(self.mass) * z[:, 1])

    def prior_logp(self, u):
        """log N(x; 0, I) + log N(v; 0, M I), (B,) nats."""
        return _gauss_logp(u[:, 0], 1.0) + _gauss_logp(u[:, 1], self.mass)

    # --- closed forms ---------------------------------------------------------------
    def transition_matrix(self, tau: Array) -> tuple[Array, Array, Array, Array]:
        """(Phi_xx, Phi_xv, Phi_vx, Phi_vv) = exp of the drift over tau = beta dt, each like tau."""
        a = self.a
        e = jnp.exp(-a * tau)
        return e * (1.0 + a * tau), e * a**2 * tau, -e * tau, e * (1.0 - a * tau)

    def noise_cov(self, tau: Array) -> tuple[Array, Array, Array, Array]:
        """(Sxx, Sxv, Svv, det): the covariance the noise adds over tau = beta dt, and its determinant."""
        a = self.a
        y = 2.0 * a * tau
        e2, ey = _e2(y), jnp.exp(-y)
        sxx = e2
        sxv = y**2 * ey / (2.0 * a)
        svv = self.mass * (e2 + 2.0 * y * ey)
        det = (e2**2 + 2.0 * y * e2 * ey - 0.25 * y**4 * ey**2) / a**2
        return sxx, sxv, svv, det

    def marginal_cov(self, t: Array) -> tuple[Array, Array, Array, Array]:
        """(Sxx, Sxv, Svv, det) of p_t(u | x0) with v0 ~ N(0, gamma M), each like t."""
        tau = self.beta * jnp.asarray(t)
        _, pxv, _, pvv = self.transition_matrix(tau)
        nxx, nxv, nvv, ndet = self.noise_cov(tau)
        g = self.gamma * self.mass
        # det(N + g w w^T) = det N + g w^T adj(N) w, w = (Phi_xv, Phi_vv): no cancellation near t = 0.
        det = ndet + g * (nvv * pxv**2 - 2.0 * nxv * pxv * pvv + nxx * pvv**2)
        return nxx + g * pxv**2, nxv + g * pxv * pvv, nvv + g * pvv**2, det

    def kernel(self, u0: Array, t) -> tuple[Array, tuple[Array, Array, Array]]:
        """p_t(u | x0, v0) for a given state u0 (B, 2, *dims): mean (like u0) and (Sxx, Sxv, Svv) (B,)."""
        t = batch_times(t, u0.shape[0], u0.dtype)
        pxx, pxv, pvx, pvv = (expand_to(c, u0[:, 0]) for c in self.transition_matrix(self.beta * t))
        mean = self.join(pxx * u0[:, 0] + pxv * u0[:, 1], pvx * u0[:, 0] + pvv * u0[:, 1])
        return mean, self.noise_cov(self.beta * t)[:3]

    def marginal_prob(self, x0: Array, t) -> tuple[Array, tuple[Array, Array, Array]]:
        """p_t(u | x0) with v0 ~ N(0, gamma M): mean (B, 2, *dims) and (Sxx, Sxv, Svv) (B,)."""
        mean, _ = self.kernel(self.join(x0, jnp.zeros_like(x0)), t)
        t = batch_times(t, x0.shape[0], x0.dtype)
        return mean, self.marginal_cov(t)[:3]

    def hsm_scale(self, t: Array) -> Array:
        """l_t = sqrt(Sxx / det) = 1 / L_vv: grad_v log p_t(u_t | x0) = -l_t eps_v for u_t = mean + L eps."""
        sxx, _, _, det = self.marginal_cov(t)
        return jnp.sqrt(sxx / det)

    def perturb(self, x0: Array, t: Array, eps: Array) -> Array:
        """u_t = mean + L eps (L the Cholesky factor of the marginal covariance), eps like the state."""
        mean, _ = self.marginal_prob(x0, t)
        sxx, sxv, _, det = (expand_to(c, x0) for c in self.marginal_cov(t))
        lxx = jnp.sqrt(sxx)
        lvx, lvv = sxv / lxx, jnp.sqrt(det / sxx)
        return mean + self.join(lxx * eps[:, 0], lvx * eps[:, 0] + lvv * eps[:, 1])

    # --- the symmetric splitting (SSCS) -------------------------------------------
    def split_flow(self, u: Array, dt, key: Array) -> Array:
        """An exact draw of the reverse process's linear part over a time dt > 0 (Dockhorn et al., Sec. 3.3).

        The reverse drift -f + G G^T s splits into A u = (-beta M^-1 v, beta x - beta Gamma M^-1 v)
        with the noise G dw, an Ornstein-Uhlenbeck process, and the score part
        (0, 2 Gamma beta (s + M^-1 v)) (`split_score_drift`). A = P F P with P = diag(-1, 1) and F the
        forward drift, so the OU flow is the forward kernel with x's sign flipped.
        """
        tau = self.beta * jnp.asarray(dt, u.dtype)
        pxx, pxv, pvx, pvv = self.transition_matrix(tau)
        sxx, sxv, _, det = self.noise_cov(tau)
        x, v = u[:, 0], u[:, 1]
        lxx = jnp.sqrt(sxx)
        lvx, lvv = -sxv / lxx, jnp.sqrt(jnp.maximum(det, 0.0) / sxx)
        z = jax.random.normal(key, u.shape, u.dtype)
        xn = pxx * x - pxv * v + lxx * z[:, 0]
        vn = -pvx * x + pvv * v + lvx * z[:, 0] + lvv * z[:, 1]
        return self.join(xn, vn)

    def split_score_drift(self, u: Array, score: Array, t: Array) -> Array:
        """The score part of the split reverse drift, (0, 2 Gamma beta (s + M^-1 v)), like u; t: (B,)."""
        g2 = expand_to(self.diffusion_sq(t), score)
        return self.join(jnp.zeros_like(score), g2 * (score + self.m_inv * u[:, 1]))

    # --- networks (the hybrid-score parameterisation) --------------------------------
    def network_input(self, u: Array) -> Array:
        """x and v concatenated along the last (channel) axis: (B, *dims[:-1], 2 C)."""
        w = jnp.moveaxis(u, 1, -2)
        return w.reshape(w.shape[:-2] + (2 * w.shape[-1],))

    def noise_conditioning(self, t: Array) -> Array:
        """c_noise(t) = log(sqrt(Sxx) / Phi_xx): the log noise level of x (about [-6, 6] on [1e-3, 1])."""
        pxx = self.transition_matrix(self.beta * t)[0]
        return 0.5 * jnp.log(self.marginal_cov(t)[0]) - jnp.log(pxx)

    def score_from_network(self, out: Array, u: Array, t: Array) -> Array:
        """The mixed score -v / Svv(t) - l_t alpha, alpha = the v half of the network output (B, *dims).

        The network predicts eps_v of u_t = mean + L eps (Dockhorn et al., Sec. 3.2 and App. C: the
        hybrid score with l_t and the mixed score of an x0 = 0 data point)."""
        c = out.shape[-1] // 2
        alpha = out.reshape(out.shape[:-1] + (2, c))[..., 1, :]
        v = u[:, 1]
        _, _, svv, _ = self.marginal_cov(t)
        return -v / expand_to(svv, v) - expand_to(self.hsm_scale(t), v) * alpha.reshape(v.shape)

    # --- analytic oracle --------------------------------------------------------------
    def mixture_score_fn(self, mixture) -> "CLDMixtureScore":
        """The exact grad_v log p_t of a `GaussianMixture` data distribution (a score_fn(u, t))."""
        return CLDMixtureScore(mixture, self)


def _gauss_logp(z: Array, var) -> Array:
    """log N(z; 0, var I) summed over the non-batch dims, (B,)."""
    d = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.reshape(z, (z.shape[0], -1)) ** 2, axis=1)
    return -0.5 * d * jnp.log(2 * math.pi * var) - 0.5 * sq / var


class CLDMixtureScore(eqx.Module):
    """Exact scores and log-density of p_t(x, v) for x0 ~ a `GaussianMixture` under CLD.

    Component k, N(mu_k, s_k^2 I), stays Gaussian and independent across data dimensions: per
    dimension (x_t, v_t) has mean (Phi_xx, Phi_vx) mu_k and covariance C_k = S(t) + s_k^2 p p^T,
    p = (Phi_xx, Phi_vx), S(t) the marginal covariance given x0. The score is
    sum_k r_k (-C_k^-1 (u - m_k)), r the responsibilities.
    """

    mixture: object
    sde: CLD

    def _parts(self, u, t):
        x = self.mixture._flat(u[:, 0])
        v = u[:, 1].reshape(x.shape)
        t = batch_times(t, u.shape[0], u.dtype)
        pxx, _, pvx, _ = self.sde.transition_matrix(self.sde.beta * t)
        sxx, sxv, svv, _ = self.sde.marginal_cov(t)
        s2 = self.mixture.stds[None] ** 2  # (1, K)
        cxx = sxx[:, None] + s2 * pxx[:, None] ** 2  # (B, K)
        cxv = sxv[:, None] + s2 * (pxx * pvx)[:, None]
        cvv = svv[:, None] + s2 * pvx[:, None] ** 2
        det = cxx * cvv - cxv**2
        dx = x[:, None, :] - pxx[:, None, None] * self.mixture.means[None]  # (B, K, D)
        dv = v[:, None, :] - pvx[:, None, None] * self.mixture.means[None]
        # precision = [[cvv, -cxv], [-cxv, cxx]] / det; score_k = -precision (dx, dv)
        sx = -(cvv[..., None] * dx - cxv[..., None] * dv) / det[..., None]
        sv = -(cxx[..., None] * dv - cxv[..., None] * dx) / det[..., None]
        quad = -(dx * sx + dv * sv).sum(-1)  # (u - m)^T C^-1 (u - m)
        d = x.shape[1]
        logp = jnp.log(self.mixture.weights)[None] - d * math.log(2 * math.pi) - 0.5 * d * jnp.log(det) - 0.5 * quad
        return logp, sx, sv

    def log_prob(self, u: Array, t) -> Array:
        """log p_t(x, v), (B,) nats."""
        logp, _, _ = self._parts(u, t)
        return jax.nn.logsumexp(logp, axis=1)

    def joint_score(self, u: Array, t) -> Array:
        """(grad_x, grad_v) log p_t(u), like u."""
        logp, sx, sv = self._parts(u, t)
        r = jax.nn.softmax(logp, axis=1)
        gx, gv = jnp.einsum("bk,bkd->bd", r, sx), jnp.einsum("bk,bkd->bd", r, sv)
        return CLD.join(gx.reshape(u[:, 0].shape), gv.reshape(u[:, 1].shape))

    def __call__(self, u: Array, t) -> Array:
        """grad_v log p_t(u), (B, *dims)."""
        logp, _, sv = self._parts(u, t)
        r = jax.nn.softmax(logp, axis=1)
        return jnp.einsum("bk,bkd->bd", r, sv).reshape(u[:, 1].shape)


__all__ = ["CLD", "CLDMixtureScore"]
