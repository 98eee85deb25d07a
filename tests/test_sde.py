"""Forward SDEs against the closed forms of DESIGN.md and against simulation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss

from helpers import SDES

TIMES = np.array([1e-5, 1e-3, 0.1, 0.37, 0.8, 1.0])


def reference(name, t, b0=0.1, b1=20.0, smin=0.01, smax=50.0):
    """DESIGN.md's formulas in numpy float64: (alpha, std, drift coef, g^2, prior std)."""
    if name == "ve":
        sigma = smin * (smax / smin) ** t
        return np.ones_like(t), sigma, np.zeros_like(t), sigma**2 * 2 * np.log(smax / smin), smax
    beta = b0 + t * (b1 - b0)
    alpha = np.exp(-(t**2) * (b1 - b0) / 4 - t * b0 / 2)
    if name == "vp":
        return alpha, np.sqrt(1 - alpha**2), -beta / 2, beta, 1.0
    g2 = beta * (1 - np.exp(-2 * b0 * t - (b1 - b0) * t**2))
    return alpha, 1 - alpha**2, -beta / 2, g2, 1.0


@pytest.mark.parametrize("name", SDES)
def test_formulas_match_design_float64(name, x64):
    sde = SDES[name]
    alpha, std, c, g2, prior_std = reference(name, TIMES)
    x0 = np.random.default_rng(0).normal(size=(len(TIMES), 3, 2))
    t = jnp.asarray(TIMES)
    mean, s = sde.marginal_prob(jnp.asarray(x0), t)
    f, g = sde.sde(jnp.asarray(x0), t)
    assert mean.dtype == jnp.float64 and s.shape == (len(TIMES),) and g.shape == (len(TIMES),)
    np.testing.assert_allclose(mean, alpha[:, None, None] * x0, rtol=1e-6)
    np.testing.assert_allclose(s, std, rtol=1e-6)
    np.testing.assert_allclose(f, c[:, None, None] * x0, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(g, np.sqrt(g2), rtol=1e-6)
    z = np.random.default_rng(1).normal(size=(4, 5, 5, 3)) * prior_std
    want = -0.5 * 75 * np.log(2 * np.pi * prior_std**2) - 0.5 * np.sum(z.reshape(4, -1) ** 2, 1) / prior_std**2
    np.testing.assert_allclose(sde.prior_logp(jnp.asarray(z)), want, rtol=1e-6)


@pytest.mark.parametrize("name", SDES)
def test_scalar_time_broadcasts_and_float32_stays_float32(name):
    sde = SDES[name]
    x = jnp.ones((3, 4, 4, 1), jnp.float32)
    f, g = sde.sde(x, 0.5)
    mean, std = sde.marginal_prob(x, jnp.float32(0.5))
    assert f.shape == x.shape and g.shape == (3,) and std.shape == (3,)
    assert f.dtype == g.dtype == mean.dtype == std.dtype == jnp.float32
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(3,\)"):
        sde.marginal_prob(x, jnp.ones(5))


@pytest.mark.parametrize("name", SDES)
def test_prior_sampling_matches_prior(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.PRNGKey(0), (20000, 2))
    # std of the sample std is ~ prior_std / sqrt(2 n) = 0.5 %; allow 3 %.
    np.testing.assert_allclose(np.std(z), sde.prior_std, rtol=0.03)
    assert abs(float(np.mean(z))) < 0.05 * sde.prior_std


@pytest.mark.parametrize("name", SDES)
def test_simulated_forward_sde_matches_marginal(name):
    """Euler-Maruyama on dx = f dt + g dw from a fixed x0 against marginal_prob.

    n = 20000 paths, 1000 steps with g and f evaluated at the step midpoint (O(dt^2) variance
    bias). Tolerances: mean within 5 standard errors + 1 % of |x0|, std within 3 %.
    """
    sde = SDES[name]
    n, steps = 20000, 1000
    x0 = jnp.array([1.5, -0.7])
    dt = 1.0 / steps
    checkpoints = {250: 0.25, 500: 0.5, 1000: 1.0}

    def step(x, inp):
        i, key = inp
        tm = jnp.full((n,), (i + 0.5) * dt)
        f, g = sde.sde(x, tm)
        # Exponential integrator for the linear drift: exact mean evolution.
        decay = jnp.exp(sde.drift_coef(tm) * dt)[:, None]
        x = decay * x + g[:, None] * jnp.sqrt(dt) * jax.random.normal(key, x.shape)
        return x, x

    keys = jax.random.split(jax.random.PRNGKey(1), steps)
    x = jnp.broadcast_to(x0, (n, 2))
    _, path = jax.jit(lambda x: jax.lax.scan(step, x, (jnp.arange(steps), keys)))(x)
    for i, t in checkpoints.items():
        xt = np.asarray(path[i - 1])
        mean, std = sde.marginal_prob(x0[None], t)
        se = float(std[0]) / math.sqrt(n)
        np.testing.assert_allclose(xt.mean(0), mean[0], atol=5 * se + 0.01 * 1.5)
        np.testing.assert_allclose(xt.std(0), float(std[0]), rtol=0.03)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("n_steps", [1, 2, 5, 10, 1000])
def test_discrete_coefficients_valid_for_any_step_count(name, n_steps):
    sde = SDES[name]
    eps = ss.default_eps(sde)
    grid = jnp.linspace(eps, sde.T, n_steps + 1)
    r, v = sde.transition(grid[:-1], grid[1:])
    inv_r, v_over_r, post_std = sde.ancestral_coeffs(grid[:-1], grid[1:])
    for a in (r, v, inv_r, v_over_r, post_std):
        assert np.all(np.isfinite(a))
    assert np.all(r > 0) and np.all(r <= 1) and np.all(v >= 0)
    # Composed transitions give the marginal: x_T | x_eps has scale prod r and variance that
    # accumulates as v_total <- r^2 v_total + v.
    r_tot, v_tot = 1.0, 0.0
    for ri, vi in zip(np.asarray(r, np.float64), np.asarray(v, np.float64)):
        r_tot, v_tot = r_tot * ri, ri**2 * v_tot + vi
    r_direct, v_direct = sde.transition(eps, sde.T)
    np.testing.assert_allclose(r_tot, r_direct, rtol=1e-4)
    np.testing.assert_allclose(v_tot, v_direct, rtol=1e-4)


def test_ddpm_coefficients_match_vp_discretisation(x64):
    """With N steps of size 1/N, VP's r^2 = 1 - beta_i approaches DDPM's beta_i = beta(t) / N."""
    sde = SDES["vp"]
    n = 1000
    grid = jnp.arange(n + 1) / n
    r, v = sde.transition(grid[:-1], grid[1:])
    np.testing.assert_allclose(v, 1 - r**2, rtol=1e-10)  # VP: v = 1 - r^2 exactly
    mid_beta = sde.beta((grid[:-1] + grid[1:]) / 2) / n
    np.testing.assert_allclose(v, mid_beta, rtol=1e-2)


@pytest.mark.parametrize("name", SDES)
def test_ancestral_mean_is_exact_posterior_mean(name, x64):
    """For Gaussian data N(mu, s0^2), E[x_s | x_t] is linear in x_t and known in closed form."""
    sde = SDES[name]
    mu, s0 = 0.8, 0.6
    g = ss.GaussianMixture(jnp.ones(1), jnp.full((1, 1), mu), s0)
    s, t = 0.3, 0.45
    x_t = jnp.linspace(-3, 3, 7)[:, None]
    a_s, a_t = sde.alpha(jnp.asarray(s)), sde.alpha(jnp.asarray(t))
    var_s = a_s**2 * s0**2 + sde.std(jnp.asarray(s)) ** 2
    r, v = sde.transition(s, t)
    var_t = r**2 * var_s + v
    want = a_s * mu + r * var_s / var_t * (x_t - a_t * mu)
    inv_r, v_over_r, _ = sde.ancestral_coeffs(s, t)
    got = inv_r * x_t + v_over_r * g.marginal_score(sde, x_t, t)
    np.testing.assert_allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("name", SDES)
def test_transforms_jit_vmap_grad(name):
    sde = SDES[name]
    # grad of the std through t, against a central finite difference.
    d_std = jax.grad(lambda t: sde.std(t))(0.4)
    fd = (sde.std(0.4 + 1e-3) - sde.std(0.4 - 1e-3)) / 2e-3
    np.testing.assert_allclose(d_std, fd, rtol=1e-3)
    # vmap over single examples equals the batched call.
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 3))
    t = jnp.linspace(0.1, 0.9, 5)
    batched = sde.marginal_prob(x, t)[0]
    single = jax.vmap(lambda xi, ti: sde.marginal_prob(xi[None], ti[None])[0][0])(x, t)
    np.testing.assert_allclose(batched, single, rtol=1e-6)


def test_no_recompilation_on_second_call():
    traces = []

    @jax.jit
    def perturb(sde, x, t, key):
        traces.append(1)
        mean, std = sde.marginal_prob(x, t)
        return mean + std[:, None] * jax.random.normal(key, x.shape)

    x = jnp.ones((8, 2))
    for seed in range(3):
        perturb(SDES["vp"], x, jnp.full((8,), 0.1 * (seed + 1)), jax.random.PRNGKey(seed))
    assert len(traces) == 1
    # A differently parameterised SDE of the same type reuses the trace too (parameters are data).
    perturb(ss.VPSDE(beta_min=0.2, beta_max=10.0), x, jnp.full((8,), 0.5), jax.random.PRNGKey(9))
    assert len(traces) == 1


@pytest.mark.parametrize("name", SDES)
def test_reverse_and_flow_drifts(name):
    sde = SDES[name]
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
    score = lambda x, t: -x  # noqa: E731
    f, g = sde.sde(x, 0.3)
    np.testing.assert_allclose(ss.reverse_drift(sde, score, x, 0.3), f + g[:, None] ** 2 * x, rtol=1e-6)
    np.testing.assert_allclose(ss.probability_flow_drift(sde, score, x, 0.3), f + 0.5 * g[:, None] ** 2 * x, rtol=1e-6)
