"""Closed-form Gaussian mixtures: densities, exact scores and flows under any linear SDE.

p_0 = sum_k w_k N(mu_k, s_k^2 I) with isotropic components. Under an SDE with
perturbation kernel N(alpha(t) x0, std(t)^2 I) the marginal stays a mixture,

    p_t = sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + std^2) I),

so its log-density, score (sum_k r_k (-(x - m_k) / v_k), r = posterior
responsibilities) and Hessian trace are exact. These are the oracles the tests
and benchmarks measure solvers against. A single Gaussian is the K = 1 case,
for which the probability-flow map is also closed form (`gaussian_flow_map`).
Taking the component id as a class label y, p_t(x | y) = N(alpha mu_y, v_y I) and the posterior
p_t(y | x) = r_y are exact as well (`conditional_score_fn`, `class_log_prob_fn`, `sample_labeled`):
the oracles for `score_sde.guidance`.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from score_sde.sde import SDE, Array, batch_times, expand_to


class GaussianMixture(eqx.Module):
    """A mixture of K isotropic Gaussians over data of shape `event_shape`.

    Args:
      weights: (K,) non-negative mixture weights (normalised here).
      means: (K, *event_shape) component means.
      stds: (K,) component standard deviations (> 0), or a scalar for all.
    """

    weights: Array
    means: Array  # (K, D), flattened
    stds: Array  # (K,)
    event_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, weights, means, stds):
        means = jnp.asarray(means)
        if means.ndim < 2:
            raise ValueError(f"means must have shape (K, *event_shape), got {means.shape}")
        k = means.shape[0]
        weights = jnp.asarray(weights, dtype=means.dtype)
        stds = jnp.broadcast_to(jnp.asarray(stds, dtype=means.dtype), (k,))
        if weights.shape != (k,):
            raise ValueError(f"weights must have shape ({k},) to match means, got {weights.shape}")
        if not isinstance(weights, jax.core.Tracer):  # traced values (built inside jit) cannot be checked
            w = weights
            if not bool(jnp.all(jnp.isfinite(w))) or bool(jnp.any(w < 0)) or not bool(jnp.sum(w) > 0):
                raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
        if not isinstance(stds, jax.core.Tracer):
            sd = stds
            if not bool(jnp.all(jnp.isfinite(sd))) or bool(jnp.any(sd <= 0)):
                raise ValueError(f"stds must be finite and > 0, got {sd.tolist()}")
        self.weights = weights / jnp.sum(weights)
        self.means = means.reshape(k, -1)
        self.stds = stds
        self.event_shape = tuple(means.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def _flat(self, x: Array) -> Array:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x must have shape (B, *{self.event_shape}), got {x.shape}")
        return x.reshape(x.shape[0], -1)

    # --- t = 0 ----------------------------------------------------------------------
    def sample(self, key: Array, n: int) -> Array:
        """Draws n samples, shape (n, *event_shape) (the x of `sample_labeled(key, n)`)."""
        return self.sample_labeled(key, n)[0]

    def sample_labeled(self, key: Array, n: int) -> tuple[Array, Array]:
        """n samples and the component each came from: (x (n, *event_shape), y (n,) int32).

        The same draw as `sample`: sample_labeled(key, n)[0] == sample(key, n).
        """
        kc, kz = jax.random.split(key)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        z = jax.random.normal(kz, (n, self.dim), self.means.dtype)
        x = self.means[comp] + self.stds[comp, None] * z
        return x.reshape((n,) + self.event_shape), comp.astype(jnp.int32)

    def log_prob(self, x: Array) -> Array:
        """log p_0(x) in nats, (B,)."""
        xf = self._flat(x)
        m = jnp.broadcast_to(self.means, (xf.shape[0],) + self.means.shape)
        v = jnp.broadcast_to(self.stds**2, (xf.shape[0], self.stds.shape[0]))
        return jax.nn.logsumexp(self._component_logp(xf, m, v), axis=1)

    # --- time t under an SDE --------------------------------------------------------
    def marginal_params(self, sde: SDE, t, batch: int, dtype=None) -> tuple[Array, Array]:
        """Component means (B, K, D) and variances (B, K) of p_t."""
        t = batch_times(t, batch, dtype or self.means.dtype)
        a, s = sde.alpha(t), sde.std(t)
        means = a[:, None, None] * self.means[None]
        var = a[:, None] ** 2 * self.stds[None] ** 2 + s[:, None] ** 2
        return means, var

    def _component_logp(self, xf, means, var):
        d = xf.shape[1]
        sq = jnp.sum((xf[:, None, :] - means) ** 2, axis=-1)
        return jnp.log(self.weights)[None] - 0.5 * d * jnp.log(2 * jnp.pi * var) - 0.5 * sq / var

    def marginal_log_prob(self, sde: SDE, x: Array, t) -> Array:
        """Exact log p_t(x) in nats, (B,)."""
        xf = self._flat(x)
        means, var = self.marginal_params(sde, t, xf.shape[0], xf.dtype)
        return jax.nn.logsumexp(self._component_logp(xf, means, var), axis=1)

    def _score_parts(self, sde, x, t):
        xf = self._flat(x)
        means, var = self.marginal_params(sde, t, xf.shape[0], xf.dtype)
        r = jax.nn.softmax(self._component_logp(xf, means, var), axis=1)  # (B, K)
        s_k = -(xf[:, None, :] - means) / var[..., None]  # (B, K, D)
        return r, s_k, var

    def marginal_score(self, sde: SDE, x: Array, t) -> Array:
        """Exact score grad_x log p_t(x), like x."""
        r, s_k, _ = self._score_parts(sde, x, t)
        return jnp.einsum("bk,bkd->bd", r, s_k).reshape(x.shape)

    def score_laplacian(self, sde: SDE, x: Array, t) -> Array:
        """Exact trace of the Hessian of log p_t at x, (B,).

        tr H = sum_k r_k (|s_k|^2 - D / v_k) - |s|^2, with s = sum_k r_k s_k.
        """
        r, s_k, var = self._score_parts(sde, x, t)
        s = jnp.einsum("bk,bkd->bd", r, s_k)
        d = s_k.shape[-1]
        per_k = jnp.sum(s_k**2, axis=-1) - d / var
        return jnp.sum(r * per_k, axis=1) - jnp.sum(s**2, axis=1)

    def flow_divergence(self, sde: SDE, x: Array, t) -> Array:
        """Exact divergence of the probability-flow drift f - g^2 s / 2, (B,)."""
        t = batch_times(t, x.shape[0], x.dtype)
        return self.dim * sde.drift_coef(t) - 0.5 * sde.diffusion_sq(t) * self.score_laplacian(sde, x, t)

    def posterior(self, A, y, noise_std: float = 0.0) -> "LinearGaussianConditional":
        """The exact p(x | A x + noise_std n = y), n ~ N(0, I): a full-covariance Gaussian mixture.

        Args:
          A: (M, D) observation matrix on the flattened x.
          y: (M,) one observation.
          noise_std: observation noise std >= 0.

        Returns:
          A `LinearGaussianConditional` (weights, means, covs, mean, cov, sample, log_prob).
        """
        return linear_conditional(self, A, y, noise_std)

    def posterior_samples(self, key: Array, A, ys, noise_std: float = 0.0) -> Array:
        """One exact draw of x | y for each row of ys (B, M): (B, *event_shape) (draw b uses fold_in(key, b))."""
        ys = jnp.asarray(ys, self.means.dtype)
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(ys.shape[0]))
        return jax.vmap(lambda k, y: self.posterior(A, y, noise_std).sample(k, 1)[0])(keys, ys)

    def score_fn(self, sde: SDE) -> "MixtureScore":
        """The exact score of p_t as a callable score_fn(x, t) (a pytree, safe to pass to jit).

        An SDE with its own kernel (CLD) gives its own oracle (`sde.mixture_score_fn`)."""
        custom = sde.mixture_score_fn(self)
        return MixtureScore(self, sde) if custom is None else custom

    # --- labels: the component id as a class ------------------------------------------
    def _check_labels(self, y, batch: int) -> Array:
        y = jnp.asarray(y)
        if not jnp.issubdtype(y.dtype, jnp.integer) or y.shape != (batch,):
            raise ValueError(f"y must be integer component ids of shape ({batch},) (one per example), "
                             f"got {y.dtype} {y.shape}")
        k = self.weights.shape[0]
        if not isinstance(y, jax.core.Tracer) and y.size and not bool(jnp.all((y >= 0) & (y < k))):
            raise ValueError(f"y must lie in [0, {k}) (the mixture's components), got values in "
                             f"[{int(jnp.min(y))}, {int(jnp.max(y))}]")
        return y

    def joint_log_prob(self, sde: SDE, x: Array, t) -> Array:
        """log p_t(x, y = k) = log w_k + log N(x; alpha mu_k, v_k I) for every k, (B, K) nats."""
        xf = self._flat(x)
        means, var = self.marginal_params(sde, t, xf.shape[0], xf.dtype)
        return self._component_logp(xf, means, var)

    def conditional_score(self, sde: SDE, x: Array, t, y) -> Array:
        """Exact grad_x log p_t(x | y) = -(x - alpha mu_y) / v_y, like x; y (B,) ints.

        y = None gives the unconditional score grad_x log p_t(x) (`marginal_score`).
        """
        if y is None:
            return self.marginal_score(sde, x, t)
        xf = self._flat(x)
        y = self._check_labels(y, xf.shape[0])
        means, var = self.marginal_params(sde, t, xf.shape[0], xf.dtype)
        m_y = jnp.take_along_axis(means, y[:, None, None], axis=1)[:, 0]  # (B, D)
        v_y = jnp.take_along_axis(var, y[:, None], axis=1)  # (B, 1)
        return (-(xf - m_y) / v_y).reshape(x.shape)

    def class_log_prob(self, sde: SDE, x: Array, t, y) -> Array:
        """Exact log p_t(y | x), (B,): the log posterior responsibility of component y_b at x_b,
        log_softmax_k(log w_k + log N(x; alpha mu_k, v_k I)) taken at k = y_b (Bayes' rule)."""
        if y is None:
            raise ValueError("class_log_prob needs labels y of shape (B,), got None")
        log_post = jax.nn.log_softmax(self.joint_log_prob(sde, x, t), axis=1)  # (B, K)
        y = self._check_labels(y, log_post.shape[0])
        return jnp.take_along_axis(log_post, y[:, None], axis=1)[:, 0]

    def conditional_score_fn(self, sde: SDE) -> "MixtureConditionalScore":
        """The exact class-conditional score as cond_score_fn(x, t, y) (y (B,) ints or None), a pytree.

        p_t(x | y) is component y's perturbed marginal N(alpha mu_y, v_y I); y = None gives the
        mixture's score, like `score_fn(sde)`. The oracle for `score_sde.guidance.classifier_free`.
        """
        return MixtureConditionalScore(self, sde)

    def class_log_prob_fn(self, sde: SDE) -> "MixtureClassLogProb":
        """The exact noisy classifier as log_prob_fn(x, t, y) -> (B,) log p_t(y | x), a pytree.

        The oracle for `score_sde.guidance.classifier`.
        """
        return MixtureClassLogProb(self, sde)


class MixtureScore(eqx.Module):
    """score_fn(x, t) -> grad log p_t(x) for a Gaussian mixture under an SDE."""

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: Array, t) -> Array:
        return self.mixture.marginal_score(self.sde, x, t)


class MixtureConditionalScore(eqx.Module):
    """cond_score_fn(x, t, y) -> grad log p_t(x | y) for a Gaussian mixture's components (y None: p_t)."""

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: Array, t, y) -> Array:
        return self.mixture.conditional_score(self.sde, x, t, y)


class MixtureClassLogProb(eqx.Module):
    """log_prob_fn(x, t, y) -> log p_t(y | x), (B,), for a Gaussian mixture's components."""

    mixture: GaussianMixture
    sde: SDE

    def __call__(self, x: Array, t, y) -> Array:
        return self.mixture.class_log_prob(self.sde, x, t, y)


def gaussian_flow_map(gaussian: GaussianMixture, sde: SDE, x_t: Array, t, s) -> Array:
    """Exact probability-flow map x_t -> x_s for a single Gaussian (K = 1).

    p_t = N(alpha(t) mu, v(t) I) with v = alpha^2 s0^2 + std^2; the flow is the
    affine map x_s = alpha(s) mu + sqrt(v(s) / v(t)) (x_t - alpha(t) mu).
    """
    if gaussian.means.shape[0] != 1:
        raise ValueError(f"gaussian_flow_map needs a single Gaussian (K = 1), got K = {gaussian.means.shape[0]}")
    b = x_t.shape[0]
    m_t, v_t = gaussian.marginal_params(sde, t, b, x_t.dtype)
    m_s, v_s = gaussian.marginal_params(sde, s, b, x_t.dtype)
    xf = gaussian._flat(x_t)
    out = m_s[:, 0] + jnp.sqrt(v_s / v_t) * (xf - m_t[:, 0])
    return out.reshape(x_t.shape)


# --- conditionals under a linear observation y = A x + noise_std n ------------------------------------
class LinearGaussianConditional(eqx.Module):
    """p(x | y) for x ~ a `GaussianMixture` observed through y = A x + noise_std n, n ~ N(0, I_M).

    Again a Gaussian mixture, with reweighted components whose covariances are no longer isotropic.
    For prior component k, N(mu_k, s_k^2 I), with S_k = s_k^2 A A^T + noise_std^2 I (M x M) and the
    gain G_k = s_k^2 A^T S_k^{-1} (D x M):

        weight  w'_k ∝ w_k N(y; A mu_k, S_k)
        mean    m_k  = mu_k + G_k (y - A mu_k)
        cov     C_k  = s_k^2 (I - G_k A)

    Noiseless (noise_std = 0; A needs full row rank) C_k = s_k^2 P with P = I - A^T (A A^T)^{-1} A the
    projector onto null(A): the conditional lives on the plane A x = y. For a mask (A = rows of the
    identity) the unobserved coordinates keep the prior's isotropic component std s_k and are
    conditionally independent of the observed ones within a component. Samples are exact
    (Matheron's rule: x = x0 + G_k (y - A x0 - noise_std e), x0 ~ N(mu_k, s_k^2 I)), so noiseless
    samples satisfy A x = y to rounding.

    Attributes:
      weights: (K,) posterior component weights.
      means: (K, D) posterior component means (flattened data).
      prior_means: (K, D), prior_stds: (K,) the prior components.
      gains: (K, D, M) the gains G_k.
      A: (M, D) the observation matrix; y: (M,) the observation.
      noise_std: observation noise std (a Python float, static).
      event_shape: the data shape.
    """

    weights: Array
    means: Array
    prior_means: Array
    prior_stds: Array
    gains: Array
    A: Array
    y: Array
    noise_std: float = eqx.field(static=True)
    event_shape: tuple[int, ...] = eqx.field(static=True)

    @property
    def covs(self) -> Array:
        """(K, D, D) component covariances C_k = s_k^2 (I - G_k A)."""
        d = self.A.shape[1]
        s2 = self.prior_stds[:, None, None] ** 2
        return s2 * (jnp.eye(d, dtype=self.A.dtype) - self.gains @ self.A)

    def mean(self) -> Array:
        """E[x | y], shape event_shape."""
        return (self.weights @ self.means).reshape(self.event_shape)

    def cov(self) -> Array:
        """Cov[x | y], (D, D): sum_k w_k (C_k + m_k m_k^T) - m m^T."""
        m = self.weights @ self.means
        second = jnp.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - jnp.outer(m, m)

    def sample(self, key: Array, n: int) -> Array:
        """n exact draws of x | y, shape (n, *event_shape)."""
        kc, kz, ke = jax.random.split(key, 3)
        comp = jax.random.choice(kc, self.weights.shape[0], (n,), p=self.weights)
        d, m = self.A.shape[1], self.A.shape[0]
        x0 = self.prior_means[comp] + self.prior_stds[comp, None] * jax.random.normal(kz, (n, d), self.A.dtype)
        resid = self.y[None] - x0 @ self.A.T - self.noise_std * jax.random.normal(ke, (n, m), self.A.dtype)
        x = x0 + jnp.einsum("ndm,nm->nd", self.gains[comp], resid)
        return x.reshape((n,) + self.event_shape)

    def log_prob(self, x: Array) -> Array:
        """log p(x | y) in nats, (B,).

        With noise: the density of the full-covariance mixture. Noiseless: the density on the plane
        A x = y with respect to its (D - M)-dimensional Lebesgue measure, evaluated at the orthogonal
        projection of x onto the plane.
        """
        xf = x.reshape(x.shape[0], -1)
        diff = xf[:, None, :] - self.means[None]  # (B, K, D)
        d, m = self.A.shape[1], self.A.shape[0]
        if self.noise_std == 0:
            proj = jnp.eye(d, dtype=self.A.dtype) - self.A.T @ jnp.linalg.solve(self.A @ self.A.T, self.A)
            v = self.prior_stds**2
            sq = jnp.sum((diff @ proj) ** 2, axis=-1)
            comp = -0.5 * (d - m) * jnp.log(2 * jnp.pi * v)[None] - 0.5 * sq / v[None]
        else:
            chol = jnp.linalg.cholesky(self.covs)  # (K, D, D)
            sol = jax.vmap(lambda c, r: jax.scipy.linalg.solve_triangular(c, r.T, lower=True).T,
                           in_axes=(0, 1), out_axes=1)(chol, diff)
            logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=-1)
            comp = -0.5 * d * jnp.log(2 * jnp.pi) - 0.5 * logdet[None] - 0.5 * jnp.sum(sol**2, axis=-1)
        return jax.nn.logsumexp(jnp.log(self.weights)[None] + comp, axis=1)


def linear_conditional(mixture: GaussianMixture, A, y, noise_std: float = 0.0) -> LinearGaussianConditional:
    """The exact conditional p(x | y) of a Gaussian mixture observed as y = A x + noise_std n.

    Args:
      mixture: the prior p(x), K isotropic components over event_shape (D values).
      A: (M, D) observation matrix acting on the flattened x (full row rank when noise_std = 0).
      y: (M,) one observation.
      noise_std: observation noise std >= 0 (a Python float); 0 for a noiseless observation.

    Returns:
      A `LinearGaussianConditional` (weights, means, covs, sample, log_prob).
    """
    noise_std = float(noise_std)
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    A = jnp.asarray(A, mixture.means.dtype)
    y = jnp.asarray(y, mixture.means.dtype).reshape(-1)
    if A.ndim != 2 or A.shape[1] != mixture.dim or y.shape != (A.shape[0],):
        raise ValueError(f"A must be (M, {mixture.dim}) and y (M,), got A {A.shape} and y {y.shape}")
    s2 = mixture.stds**2  # (K,)
    m = A.shape[0]
    S = s2[:, None, None] * (A @ A.T)[None] + noise_std**2 * jnp.eye(m, dtype=A.dtype)[None]  # (K, M, M)
    resid = y[None] - mixture.means @ A.T  # (K, M)
    chol = jnp.linalg.cholesky(S)
    white = jax.vmap(lambda c, r: jax.scipy.linalg.solve_triangular(c, r, lower=True))(chol, resid)
    log_lik = (-0.5 * m * jnp.log(2 * jnp.pi) - jnp.sum(jnp.log(jnp.diagonal(chol, axis1=1, axis2=2)), axis=-1)
               - 0.5 * jnp.sum(white**2, axis=-1))
    weights = jax.nn.softmax(jnp.log(mixture.weights) + log_lik)
    gains = s2[:, None, None] * jnp.einsum("md,kmn->kdn", A, jnp.linalg.inv(S))  # (K, D, M)
    means = mixture.means + jnp.einsum("kdm,km->kd", gains, resid)
    return LinearGaussianConditional(weights, means, mixture.means, mixture.stds, gains, A, y, noise_std,
                                     mixture.event_shape)


def mask_conditional(mixture: GaussianMixture, x_known, mask, noise_std: float = 0.0) -> LinearGaussianConditional:
    """p(x | x_known on the mask): the inpainting posterior of one example.

    Args:
      mixture: the prior.
      x_known: event_shape array; only the entries where mask is 1 are read.
      mask: event_shape array of 0 / 1 (1 = observed), concrete (it fixes the number of observations).
      noise_std: std of Gaussian noise on the observed entries (0: observed exactly).
    """
    mask = np.asarray(mask)
    if mask.shape != mixture.event_shape or not np.all((mask == 0) | (mask == 1)):
        raise ValueError(f"mask must be 0/1 with the data shape {mixture.event_shape}, got shape {mask.shape}")
    idx = np.flatnonzero(mask.reshape(-1))
    A = np.eye(mixture.dim)[idx]
    y = jnp.asarray(x_known).reshape(-1)[idx]
    return linear_conditional(mixture, A, y, noise_std)


def pool_matrix(shape: tuple[int, int, int], factor: int) -> np.ndarray:
    """(M, D) matrix of the area downsampling of one (H, W, C) image by `factor` (the mean of each
    factor x factor block; `image_to_image.area_downsample`), acting on the flattened image, rows in
    the flattened (H / factor, W / factor, C) order."""
    h, w, c = shape
    if h % factor or w % factor:
        raise ValueError(f"area downsampling by {factor} needs H and W divisible by it; got {h}x{w}")
    rows = np.arange(h)[:, None, None] // factor * (w // factor) + np.arange(w)[None, :, None] // factor
    rows = rows * c + np.arange(c)[None, None, :]  # (H, W, C): the low-res entry each pixel averages into
    A = np.zeros(((h // factor) * (w // factor) * c, h * w * c))
    A[rows.reshape(-1), np.arange(h * w * c)] = 1.0 / factor**2
    return A


def pool_conditional(mixture: GaussianMixture, low_res, factor: int, noise_std: float = 0.0) -> LinearGaussianConditional:
    """p(x | low_res) for low_res = area_downsample(x, factor) + noise_std n: the exact posterior of
    super-resolution of one (H, W, C) example (low_res: (H / factor, W / factor, C))."""
    A = pool_matrix(mixture.event_shape, factor)
    return linear_conditional(mixture, A, jnp.asarray(low_res).reshape(-1), noise_std)
