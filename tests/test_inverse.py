"""Inverse problems: the closed-form mixture conditional (analytic.py) and inpainting / colourisation (inverse.py).

The conditional is checked against brute force in 2-D (trapezoid quadrature of p(x) p(y | x) on a
grid, and along the line A x = y when noiseless). The samplers are checked against it with the
exact mixture score through the 1-D Wasserstein-1 distance (W1) of the unobserved coordinate.
Tolerance calibration: W1_ref = W1 between two independent exact samples of the same size (the
Monte-Carlo floor); the exact method passes at W1 <= 3 W1_ref, and the replacement method is
asserted biased at W1 >= 10 W1_ref. Measured (VP, 200 steps, 600 observations, 64 particles):
two-mode case W1_ref 0.059, smc 0.042, replace (euler_maruyama) 2.87; easy case (VE, 100 steps,
300 observations, 16 particles) W1_ref 0.052, smc 0.056, replace 0.128, unconditional 0.55.
Each statistical check has a control or a planted bug that fails it (benchmarks/mutants.py). The smc bias shrinks with
the particle count (benchmarks/inverse_edit.py: 0.31 / 0.087 / 0.053 at 16 / 64 / 256 particles,
4000 observations, floor 0.030).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import inverse
from score_sde.analytic import linear_conditional, mask_conditional

from helpers import SDES, CountingScore, sliced_w1

# Two big modes at x1 = -1.5 and 1.5 (x2 = -2) and a small one at (0, 2). Observing x1 = 0, between
# the big modes, the exact conditional puts 96% of its mass on the small mode (x2 ~ N(2, 0.25)).
GMM3 = ss.GaussianMixture(jnp.array([0.4, 0.4, 0.2]), jnp.array([[-1.5, -2.0], [1.5, -2.0], [0.0, 2.0]]),
                          jnp.array([0.5, 0.5, 0.5]))
# Easy case: two equally likely modes, told apart by x1 (at -2 and 2), with x2 ~ N(0.5, 0.25) and
# N(-0.5, 0.25): observing x1 = 2 picks the second (the other mode's posterior weight is 1e-14), so a
# method that ignores the observation samples both (W1 0.55 away), and no mode lacks prior mass.
GMM_EASY = ss.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.5], [2.0, -0.5]]), jnp.array([0.5, 0.5]))
MASK_X1 = np.array([1.0, 0.0])


def w1(a, b):
    """1-D Wasserstein-1 distance between two equal-size samples."""
    a, b = (np.sort(np.asarray(v, np.float64).ravel()) for v in (a, b))
    return float(np.mean(np.abs(a - b)))


def exact_x2(gmm, y1, n):
    """(exact sample of x2 | x1 = y1 of size n, W1 between two such samples)."""
    cond = mask_conditional(gmm, jnp.array([y1, 0.0]), MASK_X1)
    a, b = (np.asarray(cond.sample(jax.random.PRNGKey(k), n))[:, 1] for k in (11, 12))
    return a, w1(a, b)


# --- the closed-form conditional ------------------------------------------------------------------------
def _grid(lo=-7.0, hi=7.0, n=561):
    g = np.linspace(lo, hi, n)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return g, np.stack([xx.ravel(), yy.ravel()], 1)


@pytest.mark.parametrize("y1", [0.0, -1.2, 0.8])
def test_mask_conditional_matches_quadrature(y1, x64):
    """p(x2 | x1 = y1) = p(y1, x2) / integral: the closed form to 1e-8 (trapezoid on 2001 points)."""
    gmm = ss.GaussianMixture(GMM3.weights, GMM3.means.astype(jnp.float64), GMM3.stds.astype(jnp.float64))
    cond = mask_conditional(gmm, jnp.array([y1, 123.0]), MASK_X1)  # the unobserved value is ignored
    x2 = np.linspace(-8, 8, 2001)
    pts = np.stack([np.full_like(x2, y1), x2], 1)
    joint = np.exp(np.asarray(gmm.log_prob(jnp.asarray(pts))))
    brute = joint / np.trapezoid(joint, x2)
    np.testing.assert_allclose(np.exp(np.asarray(cond.log_prob(jnp.asarray(pts)))), brute, atol=1e-8)
    np.testing.assert_allclose(float(jnp.sum(cond.weights)), 1.0, rtol=1e-12)
    assert np.allclose(cond.covs[:, 0, 0], 0) and np.allclose(cond.covs[:, 1, 1], 0.25)  # known / isotropic


def test_linear_conditional_with_noise_matches_quadrature(x64):
    """y = (x1 + 2 x2) + 0.4 n: density, mean and covariance against quadrature of p(x) N(y; A x, 0.16)
    on a 561^2 grid (1e-6 / 1e-6 / 1e-5), and 200k exact samples' moments (5 standard errors)."""
    gmm = ss.GaussianMixture(GMM3.weights, GMM3.means.astype(jnp.float64), GMM3.stds.astype(jnp.float64))
    A, y, noise = np.array([[1.0, 2.0]]), np.array([0.7]), 0.4
    cond = linear_conditional(gmm, A, y, noise)
    g, pts = _grid()
    lik = np.exp(-0.5 * ((pts @ A.T)[:, 0] - y[0]) ** 2 / noise**2)
    post = np.exp(np.asarray(gmm.log_prob(jnp.asarray(pts)))) * lik
    integrate = lambda f: np.trapezoid(np.trapezoid(f.reshape(len(g), len(g)), g, axis=1), g)  # noqa: E731
    post /= integrate(post)
    np.testing.assert_allclose(np.exp(np.asarray(cond.log_prob(jnp.asarray(pts)))), post, atol=1e-6)
    mean = np.array([integrate(post * pts[:, i]) for i in range(2)])
    cov = np.array([[integrate(post * (pts[:, i] - mean[i]) * (pts[:, j] - mean[j])) for j in range(2)]
                    for i in range(2)])
    np.testing.assert_allclose(cond.mean(), mean, atol=1e-6)
    np.testing.assert_allclose(cond.cov(), cov, atol=1e-5)
    xs = np.asarray(cond.sample(jax.random.PRNGKey(0), 200_000))
    se = np.sqrt(np.diag(cov) / 200_000)
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(np.cov(xs.T), cov, rtol=0.02)


def test_noiseless_linear_conditional_on_the_line(x64):
    """A x = y exactly for every sample; log_prob = density along the line x1 + 2 x2 = 0.5 by quadrature."""
    gmm = ss.GaussianMixture(GMM3.weights, GMM3.means.astype(jnp.float64), GMM3.stds.astype(jnp.float64))
    A, y = np.array([[1.0, 2.0]]), 0.5
    cond = linear_conditional(gmm, A, [y])
    xs = np.asarray(cond.sample(jax.random.PRNGKey(1), 1000))
    np.testing.assert_allclose(xs @ A[0], y, atol=1e-12)
    direction = np.array([2.0, -1.0]) / np.sqrt(5.0)  # unit vector along the line
    base = A[0] * y / 5.0  # the point of the line nearest 0
    u = np.linspace(-10, 10, 4001)
    pts = base[None] + u[:, None] * direction[None]
    p = np.exp(np.asarray(gmm.log_prob(jnp.asarray(pts))))
    np.testing.assert_allclose(np.exp(np.asarray(cond.log_prob(jnp.asarray(pts)))), p / np.trapezoid(p, u),
                               atol=1e-8)


# --- inpainting -------------------------------------------------------------------------------------------
def test_smc_exact_and_replacement_biased_between_two_modes():
    """x1 = 0 observed between the two big modes: smc within 3 W1_ref of the exact conditional and its
    share of the small mode (x2 > 0) within 3 SE of the exact one (measured 0.947 vs 0.953, 3 SE 0.037),
    the paper's replacement >= 10 W1_ref away (it keeps most samples in the prior's big modes). Without
    the -log g_t term of the incremental weight: W1 0.177 (= 3 W1_ref: passes the W1 bound by a hair)
    and mass 0.908 (fails); test_noisy_mask_and_general_linear_observations catches it by far."""
    sde, n = SDES["vp"], 600
    y = jnp.zeros((n, 2))
    exact, ref = exact_x2(GMM3, 0.0, n)
    x, info = inverse.inpaint(jax.random.PRNGKey(0), sde, GMM3.score_fn(sde), y, MASK_X1, n_particles=64, n_steps=200)
    assert np.all(np.asarray(x[:, 0]) == 0.0) and int(info.nfe) == 201
    assert info.particles.shape == (n, 64, 2) and info.ess.shape == (n, 200)
    d_smc = w1(x[:, 1], exact)
    assert d_smc <= 3 * ref, f"smc W1 {d_smc:.3f} > 3 x {ref:.3f}"
    # the small mode's mass (x2 > 0) within 3 standard errors of the difference of two samples' shares
    p_exact, p_smc = float(np.mean(exact > 0)), float(np.mean(np.asarray(x[:, 1]) > 0))
    se = np.sqrt(2 * p_exact * (1 - p_exact) / n)
    assert abs(p_smc - p_exact) <= 3 * se, f"small-mode mass {p_smc:.3f} vs exact {p_exact:.3f} (3 SE {3 * se:.3f})"
    xr, info_r = inverse.inpaint(jax.random.PRNGKey(0), sde, GMM3.score_fn(sde), y, MASK_X1, method="replace",
                                 sampler=ss.solvers.get("euler_maruyama", n_steps=200))
    assert np.all(np.asarray(xr[:, 0]) == 0.0) and int(info_r.nfe) == 201
    d_rep = w1(xr[:, 1], exact)
    assert d_rep >= 10 * ref, f"replacement W1 {d_rep:.3f} < 10 x {ref:.3f}: no longer biased?"


def test_easy_case_both_methods_right_ve():
    """Equal-mass modes told apart by the observed x1: both methods within 3 W1_ref + 0.02 (VE SDE,
    100 steps, 300 observations; measured smc 0.056, replace 0.128, W1_ref 0.052); ignoring the
    observation (unconditional samples) is 0.55 away and fails."""
    sde, n = SDES["ve"], 300
    y = jnp.zeros((n, 2)).at[:, 0].set(2.0)
    exact, ref = exact_x2(GMM_EASY, 2.0, n)
    for method, opts in (("smc", dict(n_particles=16, n_steps=100)),
                         ("replace", dict(sampler=ss.solvers.get("euler_maruyama", n_steps=100)))):
        x, _ = inverse.inpaint(jax.random.PRNGKey(1), sde, GMM_EASY.score_fn(sde), y, MASK_X1, method=method, **opts)
        assert np.all(np.asarray(x[:, 0]) == 2.0)
        d = w1(x[:, 1], exact)
        assert d <= 3 * ref + 0.02, f"{method}: W1 {d:.3f} > 3 x {ref:.3f} + 0.02"
    unconditional = np.asarray(GMM_EASY.sample(jax.random.PRNGKey(3), n))[:, 1]
    assert w1(unconditional, exact) > 3 * ref + 0.02  # the control: the statistic rejects ignoring y


def test_repaint_resampling_samples_the_conditional():
    """RePaint (replacement, euler_maruyama 50 steps, n_resample = 4) on the easy case (VE, 1000
    observations) within 3 W1_ref of the exact conditional (measured 0.032, W1_ref 0.028); without the
    re-noising between rounds (each repeat then steps from x_s as if it were x_t) x2's spread falls from
    0.50 to 0.37 and W1 is 0.104 (fails)."""
    sde, n = SDES["ve"], 1000
    y = jnp.zeros((n, 2)).at[:, 0].set(2.0)
    exact, ref = exact_x2(GMM_EASY, 2.0, n)
    x, info = inverse.inpaint(jax.random.PRNGKey(3), sde, GMM_EASY.score_fn(sde), y, MASK_X1, method="replace",
                              sampler=ss.solvers.get("euler_maruyama", n_steps=50), n_resample=4)
    assert int(info.nfe) == 4 * 50 + 1 and np.all(np.asarray(x[:, 0]) == 2.0)
    d = w1(x[:, 1], exact)
    assert d <= 3 * ref, f"RePaint: W1 {d:.3f} > 3 x {ref:.3f} (x2 spread {np.std(x[:, 1]):.3f})"


def test_noisy_mask_and_general_linear_observations():
    """Noisy inpainting (x1 = 0 observed with noise std 0.3; smc, 64 particles, 200 steps, 1000
    observations) within 3 sliced-W1 floors of linear_conditional (measured 0.070 vs floor 0.028), and
    the observed coordinate x1 itself within 3 of its 1-D W1 floors (measured 0.015 vs 0.011; its
    spread 0.287 vs the exact 0.300). Dropping the -log g_t term of the incremental weight makes the
    potentials pile up (an observation far sharper than noise std 0.3): x1's spread falls to 0.107 and
    its W1 to 0.150 (fails). The general entry `linear` (SVD basis; A = (1, 2), y = 0.5, noiseless,
    500 observations, 16 particles, 50 steps) keeps A x = y exactly and lands within 3 floors + 0.2 of
    the exact conditional (measured sliced W1 0.165, floor 0.029; the 0.2 is the smc bias at 16
    particles: benchmarks-size runs, 1000 observations, 200 steps, give 0.13 / 0.11 / 0.026 at 16 / 64 /
    256 particles, floor 0.025). Controls: the unconditional data lie 1.33 from it, and `linear` with
    the score ignored (only A x = y enforced) 102."""
    sde, n = SDES["vp"], 1000
    cond = linear_conditional(GMM3, [[1.0, 0.0]], [0.0], 0.3)
    a, b = (np.asarray(cond.sample(jax.random.PRNGKey(k), n)) for k in (21, 22))
    x, _ = inverse.inpaint(jax.random.PRNGKey(5), sde, GMM3.score_fn(sde), jnp.zeros((n, 2)), MASK_X1,
                           noise_std=0.3, n_particles=64, n_steps=200)
    ref, sw = sliced_w1(a, b), sliced_w1(x, a)
    assert sw <= 3 * ref, (sw, ref)
    ref1, d1 = w1(a[:, 0], b[:, 0]), w1(x[:, 0], a[:, 0])
    assert d1 <= 3 * ref1, f"observed coordinate: W1 {d1:.3f} > 3 x {ref1:.3f} (spread {np.std(x[:, 0]):.3f})"
    A, m = np.array([[1.0, 2.0]]), 500
    cond = linear_conditional(GMM3, A, [0.5])
    a, b = (np.asarray(cond.sample(jax.random.PRNGKey(k), m)) for k in (21, 22))
    x, info = inverse.linear(jax.random.PRNGKey(6), sde, GMM3.score_fn(sde), jnp.full((m, 1), 0.5), A, (2,),
                             n_particles=16, n_steps=50)
    np.testing.assert_allclose(np.asarray(x) @ A[0], 0.5, atol=1e-5)
    assert info.particles.shape == (m, 16, 2)
    ref, sw = sliced_w1(a, b), sliced_w1(x, a)
    assert sw <= 3 * ref + 0.2, f"linear: sliced W1 {sw:.3f} > 3 x {ref:.3f} + 0.2"
    with pytest.raises(ValueError, match="'replace' assumes a noiseless observation"):
        inverse.linear(jax.random.PRNGKey(6), sde, GMM3.score_fn(sde), jnp.zeros((8, 1)), A, (2,), method="replace",
                       noise_std=0.1)


MIXIMG = ss.GaussianMixture(jnp.array([0.5, 0.5]),
                            jnp.stack([jnp.full((4, 4, 1), -1.0), jnp.linspace(-1, 1, 16).reshape(4, 4, 1)]),
                            jnp.array([0.2, 0.3]))


def test_mask_broadcasting_and_resampling():
    """A one-example mask equals the same mask repeated over the batch (same key, both methods), and
    the second call does not recompile; the known half is returned exactly; RePaint resampling
    (n_resample = 2) costs 2 evaluations a step."""
    sde = SDES["vp"]
    x_known = MIXIMG.sample(jax.random.PRNGKey(0), 3)
    mask = np.zeros((4, 4, 1), np.float32)
    mask[:2] = 1.0  # top half known
    full = np.broadcast_to(mask, x_known.shape)
    sf = CountingScore(MIXIMG.score_fn(sde))
    for method, opts in (("smc", dict(n_particles=4, n_steps=20)), ("replace", dict(n_steps=20))):
        a, _ = inverse.inpaint(jax.random.PRNGKey(2), sde, sf, x_known, mask, method=method, **opts)
        traces = sf.traces
        b, _ = inverse.inpaint(jax.random.PRNGKey(2), sde, sf, x_known, full, method=method, **opts)
        assert sf.traces == traces, f"{method}: the second call re-traced (recompiled)"
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a[:, :2], x_known[:, :2])
        assert np.all(np.isfinite(np.asarray(a)))
    em = ss.solvers.get("euler_maruyama", n_steps=20)
    x, info = inverse.inpaint(jax.random.PRNGKey(3), sde, sf.score_fn, x_known, mask, method="replace",
                              sampler=em, n_resample=2)
    assert int(info.nfe) == 2 * 20 + 1 and np.all(np.isfinite(np.asarray(x)))
    np.testing.assert_array_equal(x[:, :2], x_known[:, :2])


def test_colorize_keeps_the_gray_level_and_matches_the_conditional():
    """Colourised 1x2 RGB images: channel mean = gray (1e-5); the smc sample mean and the spread (std)
    of each colour channel match the exact conditional (linear_conditional with A = per-pixel channel
    means) within 5 standard errors (300 observations, 16 particles, 200 steps; the std's SE from the
    exact law's 4th moment, 200k exact samples). Measured std z-scores 0.11 / 0.24 / -0.81 / 0.03 / 0.84
    / -0.40 (at 50 steps the ancestral grid is too coarse: down to -3.9 with 500 observations); with the
    unknown coordinates' noise halved in the reverse step, -4.6 to -9.5 (fails)."""
    sde, n = SDES["vp"], 300
    means = jnp.array([[[[0.8, -0.5, 0.2], [0.0, 0.6, -0.6]]], [[[-0.4, 0.4, 0.6], [0.5, 0.5, -0.7]]]])
    gmm = ss.GaussianMixture(jnp.array([0.5, 0.5]), means, jnp.array([0.2, 0.3]))  # event shape (1, 2, 3)
    gray = jnp.broadcast_to(jnp.array([[0.1, 0.0]]), (n, 1, 2))
    x, _ = inverse.colorize(jax.random.PRNGKey(4), sde, gmm.score_fn(sde), gray, n_particles=16, n_steps=200)
    assert x.shape == (n, 1, 2, 3)
    np.testing.assert_allclose(x.mean(-1), gray, atol=1e-5)
    A = np.zeros((2, 6))
    A[0, :3] = A[1, 3:] = 1.0 / 3.0
    cond = linear_conditional(gmm, A, np.array([0.1, 0.0]))
    sd = np.sqrt(np.diag(np.asarray(cond.cov())))
    xs = np.asarray(x, np.float64).reshape(n, 6)
    err = np.abs(xs.mean(0) - np.asarray(cond.mean()).ravel())
    assert np.all(err <= 5 * sd / np.sqrt(n) + 1e-3), (err, sd / np.sqrt(n))
    big = np.asarray(cond.sample(jax.random.PRNGKey(7), 200_000), np.float64).reshape(-1, 6)
    m4 = np.mean((big - big.mean(0)) ** 4, axis=0)
    se_sd = np.sqrt((m4 - sd**4) / n) / (2 * sd)  # delta method: SE of a sample std of n draws
    z = (xs.std(0) - sd) / se_sd
    assert np.all(np.abs(z) <= 5), f"colour spread z-scores {np.round(z, 2)} (std {xs.std(0)} vs {sd})"


def test_errors_name_the_problem():
    sde, sf = SDES["vp"], GMM3.score_fn(SDES["vp"])
    y = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"mask must have x_known's shape \(4, 2\) or one example's shape \(2,\)"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, np.ones((3,)))
    with pytest.raises(ValueError, match="only 0 .* and 1"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"x_known must be \(B, \*dims\)"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, jnp.zeros(2), MASK_X1)
    with pytest.raises(ValueError, match="unknown inpainting method 'nope'; valid methods: smc, replace"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, MASK_X1, method="nope")
    with pytest.raises(ValueError, match="unknown option.* n_resample for method 'smc'; valid options: n_particles"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, MASK_X1, n_resample=2)
    with pytest.raises(ValueError, match="n_particles must be a positive int"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, MASK_X1, n_particles=0)
    with pytest.raises(ValueError, match="fixed-grid sampler"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, MASK_X1, method="replace", sampler=object())
    with pytest.raises(ValueError, match=r"gray must be \(B, H, W\)"):
        inverse.colorize(jax.random.PRNGKey(0), sde, sf, jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="mask must be 0/1 with the data shape"):
        mask_conditional(GMM3, jnp.zeros(2), np.ones(3))
    with pytest.raises(ValueError, match=r"A must be \(M, 2\)"):
        linear_conditional(GMM3, np.ones((1, 3)), [0.0])
    with pytest.raises(ValueError, match=r"A must be \(M, 2\) for examples of shape \(2,\)"):
        inverse.linear(jax.random.PRNGKey(0), sde, sf, jnp.zeros((4, 1)), np.ones((1, 3)), (2,))
    with pytest.raises(ValueError, match="noise_std must be a scalar or shaped like x_known"):
        inverse.inpaint(jax.random.PRNGKey(0), sde, sf, y, MASK_X1, noise_std=np.ones(3))
