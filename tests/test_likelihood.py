"""Log-likelihood through the probability-flow ODE, divergences and bits/dim, against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import bpd, divergence
from score_sde.likelihood import log_likelihood

from helpers import SDES, CountingScore


def mixture(dtype, event_shape=(2,)):
    """A two-component mixture in [-1.5, 1.5]^D, over data of shape event_shape."""
    d = math.prod(event_shape)
    means = np.stack([np.linspace(-1, 1, d), np.linspace(1, -1, d) * 0.5]).reshape((2,) + event_shape)
    return ss.GaussianMixture(jnp.asarray([0.3, 0.7], dtype), jnp.asarray(means, dtype), jnp.asarray([0.2, 0.35], dtype))


def solver_error(gmm, sde, x, res):
    """|log p_eps(x) - (log p_T(z) + delta)| with the exact marginals: the ODE solve's own error.

    The model's logp also carries log prior(z) - log p_T(z) (the prior is not exactly p_T);
    the exact p_T at the returned latent removes that term. Computed in x's dtype.
    """
    true = gmm.marginal_log_prob(sde, x, 1e-5)
    ident = gmm.marginal_log_prob(sde, res.z, sde.T) + res.delta_logp
    return np.asarray(jnp.abs(ident - true)), np.asarray(true)


@pytest.mark.parametrize("name", SDES)
def test_exact_logp_matches_closed_form_float64(name, x64):
    """Exact trace, tol 1e-7: the solve error is below 2e-6 nats (measured ~3e-7)."""
    sde, gmm = SDES[name], mixture(jnp.float64)
    x = gmm.sample(jax.random.key(0), 6)
    res = log_likelihood(None, sde, gmm.score_fn(sde), x, rtol=1e-7, atol=1e-7)
    err, true = solver_error(gmm, sde, x, res)
    assert res.logp.shape == (6,) and res.z.shape == x.shape and res.logp.dtype == jnp.float64
    assert np.max(err) < 2e-6, err
    np.testing.assert_allclose(res.logp, res.prior_logp + res.delta_logp, rtol=1e-12)
    np.testing.assert_allclose(res.prior_logp, sde.prior_logp(res.z), rtol=1e-12)
    # The prior/p_T mismatch is the only other error: a few 1e-2 nats at most here.
    assert np.max(np.abs(np.asarray(res.logp) - true)) < 0.05


@pytest.mark.parametrize("name", SDES)
def test_exact_logp_float32_image_shaped(name):
    """float32, tol 1e-5, x of shape (B, 2, 2, 1): solve error below 1e-3 nats (measured ~1e-4)."""
    sde, gmm = SDES[name], mixture(jnp.float32, (2, 2, 1))
    x = gmm.sample(jax.random.key(1), 5)
    res = log_likelihood(None, sde, gmm.score_fn(sde), x)
    err, _ = solver_error(gmm, sde, x, res)
    assert res.logp.dtype == jnp.float32 and res.z.shape == (5, 2, 2, 1)
    assert np.max(err) < 1e-3, err


def test_hutchinson_divergence_unbiased():
    """Mean over 20000 probes within 4 standard errors of the closed-form trace, both probes."""
    sde, gmm = SDES["vp"], mixture(jnp.float32, (3,))
    x = gmm.sample(jax.random.key(2), 1)
    t = jnp.full((1,), 0.3)
    exact = float(gmm.flow_divergence(sde, x, t)[0])

    def drift(y):
        return ss.probability_flow_drift(sde, gmm.score_fn(sde), y, t)

    _, ours = jax.jit(divergence.exact_divergence, static_argnums=0)(drift, x)
    np.testing.assert_allclose(ours[0], exact, rtol=1e-5)
    estimate = jax.jit(jax.vmap(lambda e: divergence.hutchinson_divergence(drift, x, e)[1][0]))
    for kind in divergence.PROBES:
        probes = divergence.sample_probe(jax.random.key(3), (20000, 1, 3), jnp.float32, kind)
        est = estimate(probes)
        se = float(jnp.std(est)) / math.sqrt(est.shape[0])
        assert se > 0 and abs(float(jnp.mean(est)) - exact) < 4 * se, (kind, float(jnp.mean(est)), exact, se)


@pytest.mark.parametrize("probe", divergence.PROBES)
def test_hutchinson_logp_unbiased_through_the_solve(probe, x64):
    """One probe per example and the trajectory does not depend on it: 256 copies of x give
    256 independent estimates of delta; their mean is within 4 standard errors of the exact one."""
    sde, gmm = SDES["vp"], mixture(jnp.float64)
    x = jnp.broadcast_to(gmm.sample(jax.random.key(4), 1), (256, 2))
    exact = log_likelihood(None, sde, gmm.score_fn(sde), x[:1], rtol=1e-7, atol=1e-7).delta_logp[0]
    res = log_likelihood(jax.random.key(5), sde, gmm.score_fn(sde), x, divergence="hutchinson",
                         probe=probe, rtol=1e-7, atol=1e-7)
    se = float(jnp.std(res.delta_logp)) / 16.0
    assert se > 1e-3 and abs(float(jnp.mean(res.delta_logp) - exact)) < 4 * se
    np.testing.assert_allclose(res.z, jnp.broadcast_to(res.z[0], res.z.shape), atol=1e-6)


def test_fused_equals_unfused(x64):
    sde, gmm = SDES["ve"], mixture(jnp.float64, (2, 2))
    x = gmm.sample(jax.random.key(6), 3)
    t = jnp.full((3,), 0.2)

    def drift(y):
        return ss.probability_flow_drift(sde, gmm.score_fn(sde), y, t)

    e = divergence.sample_probe(jax.random.key(7), x.shape, x.dtype, "gaussian")

    @jax.jit
    def both(x):
        out = {}
        for fused in (True, False):
            out["exact", fused] = divergence.exact_divergence(drift, x, fused=fused)
            out["hutchinson", fused] = divergence.hutchinson_divergence(drift, x, e, fused=fused)
        return out

    out = both(x)
    for kind in ("exact", "hutchinson"):
        np.testing.assert_allclose(out[kind, True][0], out[kind, False][0], rtol=1e-12)
        np.testing.assert_allclose(out[kind, True][1], out[kind, False][1], rtol=1e-12)
    np.testing.assert_allclose(out["exact", True][1], gmm.flow_divergence(sde, x, t), rtol=1e-10)


def test_no_recompilation_and_nfe_counts_evaluations():
    sde, gmm = SDES["subvp"], mixture(jnp.float32)
    score = CountingScore(gmm.score_fn(sde))
    kw = dict(divergence="hutchinson", probe="gaussian")
    log_likelihood(jax.random.key(0), sde, score, gmm.sample(jax.random.key(1), 4), **kw)
    traces, evals = score.traces, score.evals
    res = log_likelihood(jax.random.key(2), sde, score, gmm.sample(jax.random.key(3), 4), rtol=2e-5, **kw)
    jax.block_until_ready(res)
    assert traces > 0 and score.traces == traces  # new data, key and rtol: no new trace
    assert int(res.nfe) == score.evals - evals > 10
    log_likelihood(jax.random.key(2), sde, score, gmm.sample(jax.random.key(3), 5), **kw)
    assert score.traces > traces  # a new batch size does trace again


def test_clear_errors():
    sde, gmm = SDES["vp"], mixture(jnp.float32)
    x = gmm.sample(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="valid divergences: exact, hutchinson"):
        log_likelihood(None, sde, gmm.score_fn(sde), x, divergence="trace")
    with pytest.raises(ValueError, match="valid probes: rademacher, gaussian"):
        log_likelihood(jax.random.key(0), sde, gmm.score_fn(sde), x, divergence="hutchinson", probe="normal")
    with pytest.raises(ValueError, match="valid solvers: .*tsit5"):
        log_likelihood(None, sde, gmm.score_fn(sde), x, solver="rk45")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        log_likelihood(None, sde, gmm.score_fn(sde), x, divergence="hutchinson")
    with pytest.raises(ValueError, match="dequantise"):
        log_likelihood(None, sde, gmm.score_fn(sde), jnp.ones((2, 2), jnp.int32))
    with pytest.raises(Exception, match="max_steps=3"):
        jax.block_until_ready(log_likelihood(None, sde, gmm.score_fn(sde), x, max_steps=3))


def test_under_jit_and_solver_instance():
    """Inside a user's jit, with a diffrax solver instance: the same logp as the default tsit5 (tol 1e-5)."""
    import diffrax

    sde, gmm = SDES["vp"], mixture(jnp.float32)
    x = gmm.sample(jax.random.key(0), 3)
    f = jax.jit(lambda x: log_likelihood(None, sde, gmm.score_fn(sde), x, solver=diffrax.Dopri5()).logp)
    np.testing.assert_allclose(f(x), log_likelihood(None, sde, gmm.score_fn(sde), x).logp, atol=1e-3)


# --- bits/dim ---------------------------------------------------------------------------------

def test_bpd_offset_is_computed_from_levels_and_range():
    assert bpd.bpd_offset(256, (-1.0, 1.0)) == 7.0
    assert bpd.bpd_offset(256, (0.0, 1.0)) == 8.0
    assert abs(bpd.bpd_offset(17, (-1.0, 1.0)) - (math.log2(17) - 1)) < 1e-12
    np.testing.assert_allclose(bpd.bits_per_dim(jnp.zeros(2), (3, 4, 4)), [7.0, 7.0])
    with pytest.raises(ValueError, match="hi > lo"):
        bpd.bpd_offset(256, (1.0, -1.0))


@pytest.mark.parametrize("levels,data_range", [(256, (-1.0, 1.0)), (17, (-1.0, 1.0)), (256, (0.0, 1.0))])
def test_uniform_density_gives_log2_levels(levels, data_range):
    """The uniform density on the data range puts 1/L on every level: exactly log2(L) bits/dim."""
    d, w = 12, data_range[1] - data_range[0]
    logp = jnp.full((3,), -d * math.log(w))
    np.testing.assert_allclose(bpd.bits_per_dim(logp, (d,), num_levels=levels, data_range=data_range),
                               math.log2(levels), rtol=1e-6)


def test_dequantisation_maps_levels_to_their_cells():
    k = jnp.arange(17)[None].repeat(400, 0)
    x = bpd.uniform_dequantize(jax.random.key(0), k, 17, (-1.0, 1.0))
    lo, hi = -1 + 2 * k / 17, -1 + 2 * (k + 1) / 17
    assert bool(jnp.all((x >= lo) & (x < hi + 1e-6)))
    np.testing.assert_allclose(jnp.mean(x, 0), -1 + 2 * (jnp.arange(17) + 0.5) / 17, atol=0.01)
    scaled = bpd.scale_levels(k, 17, (-1.0, 1.0))
    np.testing.assert_allclose(scaled[0, [0, -1]], [-1.0, 1.0])
    x2 = bpd.dequantize_scaled(jax.random.key(0), scaled, 17, (-1.0, 1.0))
    np.testing.assert_allclose(x2, x, atol=1e-6)


@pytest.mark.parametrize("std", [0.02, 0.1, 1.0])
def test_dequantised_bpd_never_negative_for_a_proper_density(std, x64):
    """A Gaussian at each level's cell centre (as sharp as you like): E_u bpd >= -log2 P(k) / D >= 0.

    8-bit data in [-1, 1], D = 4, 4000 dequantisation draws per example (Monte Carlo error < 0.01 bits).
    """
    k = jax.random.randint(jax.random.key(0), (8, 4), 0, 256)
    centre = -1 + 2 * (k + 0.5) / 256
    x = jax.vmap(lambda key: bpd.uniform_dequantize(key, k, 256, dtype=jnp.float64))(
        jax.random.split(jax.random.key(1), 4000))
    logp = jnp.sum(-0.5 * ((x - centre) / (std * 2 / 256)) ** 2 - jnp.log(std * 2 / 256 * math.sqrt(2 * math.pi)), -1)
    mean_bpd = jnp.mean(bpd.bits_per_dim(logp.reshape(-1), (4,)).reshape(4000, 8), 0)
    assert bool(jnp.all(mean_bpd > 0.0)), mean_bpd
