"""The Gaussian-mixture oracle against autodiff, quadrature and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde.analytic import gaussian_flow_map

from helpers import SDES


def mixture_2d(dtype=jnp.float32):
    return ss.GaussianMixture(
        jnp.array([0.2, 0.5, 0.3]),
        jnp.array([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]], dtype),
        jnp.array([0.3, 0.5, 0.4], dtype),
    )


@pytest.mark.parametrize("name", SDES)
def test_score_is_grad_of_marginal_log_prob(name, x64):
    sde, gmm = SDES[name], mixture_2d(jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2), jnp.float64) * 2
    for t in (1e-4, 0.2, 0.7):
        autodiff = jax.grad(lambda x: gmm.marginal_log_prob(sde, x, t).sum())(x)
        np.testing.assert_allclose(gmm.score_fn(sde)(x, jnp.full((16,), t)), autodiff, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", SDES)
def test_laplacian_and_flow_divergence_match_autodiff(name, x64):
    sde, gmm = SDES[name], mixture_2d(jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(1), (6, 2), jnp.float64)
    t = jnp.full((6,), 0.15)
    hess = jax.vmap(jax.hessian(lambda xi, ti: gmm.marginal_log_prob(sde, xi[None], ti[None])[0]))(x, t)
    np.testing.assert_allclose(gmm.score_laplacian(sde, x, t), jnp.trace(hess, axis1=1, axis2=2), rtol=1e-8)
    drift = lambda xi, ti: ss.probability_flow_drift(sde, gmm.score_fn(sde), xi[None], ti[None])[0]  # noqa: E731
    jac = jax.vmap(jax.jacfwd(drift))(x, t)
    np.testing.assert_allclose(gmm.flow_divergence(sde, x, t), jnp.trace(jac, axis1=1, axis2=2), rtol=1e-8)


@pytest.mark.parametrize("t", [0.0, 0.05, 0.5])
def test_marginal_density_integrates_to_one(t, x64):
    """Trapezoid rule on a 400 x 400 grid over [-8, 8]^2 (VP): |integral - 1| < 1e-4."""
    sde, gmm = SDES["vp"], mixture_2d(jnp.float64)
    g = jnp.linspace(-8, 8, 400)
    xx, yy = jnp.meshgrid(g, g, indexing="ij")
    pts = jnp.stack([xx.ravel(), yy.ravel()], 1)
    p = jnp.exp(gmm.marginal_log_prob(sde, pts, t)).reshape(400, 400)
    total = np.trapezoid(np.trapezoid(np.asarray(p), np.asarray(g), axis=1), np.asarray(g))
    assert abs(total - 1) < 1e-4


def test_t0_marginal_equals_data_density_for_vp(x64):
    gmm = mixture_2d(jnp.float64)
    x = jax.random.normal(jax.random.PRNGKey(2), (10, 2), jnp.float64)
    np.testing.assert_allclose(gmm.marginal_log_prob(SDES["vp"], x, 0.0), gmm.log_prob(x), rtol=1e-12)


def test_sampling_matches_moments():
    """n = 200000: mean within 5 standard errors; covariance within 2 %."""
    gmm = mixture_2d()
    x = np.asarray(gmm.sample(jax.random.PRNGKey(3), 200_000), np.float64)
    w, m, s = (np.asarray(a, np.float64) for a in (gmm.weights, gmm.means, gmm.stds))
    mean = w @ m
    cov = sum(wk * (np.outer(mk, mk) + sk**2 * np.eye(2)) for wk, mk, sk in zip(w, m, s)) - np.outer(mean, mean)
    se = np.sqrt(np.diag(cov) / len(x))
    np.testing.assert_array_less(np.abs(x.mean(0) - mean), 5 * se)
    np.testing.assert_allclose(np.cov(x.T), cov, rtol=0.02, atol=0.02)


def test_image_shaped_data():
    key = jax.random.PRNGKey(4)
    means = jax.random.normal(key, (2, 4, 4, 1))
    gmm = ss.GaussianMixture(jnp.array([0.5, 0.5]), means, 0.2)
    x = gmm.sample(key, 7)
    assert x.shape == (7, 4, 4, 1)
    s = gmm.score_fn(SDES["vp"])(x, jnp.full((7,), 0.3))
    assert s.shape == x.shape and np.all(np.isfinite(s))
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*\(4, 4, 1\)\)"):
        gmm.log_prob(jnp.ones((3, 16)))


def test_bad_weights_shape_is_a_clear_error():
    with pytest.raises(ValueError, match=r"weights must have shape \(2,\)"):
        ss.GaussianMixture(jnp.ones(3), jnp.zeros((2, 2)), 1.0)


@pytest.mark.parametrize("name", SDES)
def test_gaussian_flow_map_solves_probability_flow_ode(name, x64):
    """d/ds of the closed-form map equals the probability-flow drift with the exact score."""
    sde = SDES[name]
    gauss = ss.GaussianMixture(jnp.ones(1), jnp.array([[0.7, -1.2]]), 0.4)
    x_t = jax.random.normal(jax.random.PRNGKey(5), (5, 2), jnp.float64)
    t, s = 0.9, 0.4
    phi = lambda s: gaussian_flow_map(gauss, sde, x_t, t, s)  # noqa: E731
    x_s, dx_ds = jax.jvp(phi, (jnp.float64(s),), (jnp.float64(1.0),))
    drift = ss.probability_flow_drift(sde, gauss.score_fn(sde), x_s, s)
    np.testing.assert_allclose(dx_ds, drift, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gaussian_flow_map(gauss, sde, x_t, t, t), x_t, rtol=1e-12)
