"""Samplers against the exact Gaussian-mixture score (score_sde.analytic).

Distribution tests compare samples with an exact sample of the same size through the mean,
the covariance and a sliced-Wasserstein-1 statistic (SW, 64 fixed random directions). The
tolerance is calibrated on the Monte-Carlo error itself: SW_ref = SW between two independent
exact samples of the same size, and a sampler passes when SW <= 3 SW_ref + margin (margin
stated per test; it absorbs the O(step) discretisation bias). The same statistic rejects a
wrong score and a too-coarse solve (`test_statistic_rejects_*`), so it can fail.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import solvers
from score_sde.solvers.correctors import CORRECTORS
from score_sde.solvers.predictors import PREDICTORS

from helpers import SDES, CountingScore, sliced_w1

MIX2D = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))
MIXIMG = ss.GaussianMixture(jnp.array([0.5, 0.5]),
                            jnp.stack([jnp.full((4, 4, 1), -1.0), jnp.linspace(-1, 1, 16).reshape(4, 4, 1)]),
                            jnp.array([0.2, 0.3]))


@functools.lru_cache(maxsize=None)
def reference(mix_name, n):
    """(exact sample, SW between two independent exact samples of size n)."""
    mix = {"2d": MIX2D, "img": MIXIMG}[mix_name]
    a, b = (np.asarray(mix.sample(jax.random.PRNGKey(k), n)) for k in (101, 102))
    return a, sliced_w1(a, b)


def assert_close_to_data(x, mix_name, margin, mean_tol):
    """Mean within mean_tol (abs, per coordinate), covariance within 4 mean_tol, SW <= 3 SW_ref + margin."""
    exact, sw_ref = reference(mix_name, len(x))
    x = np.reshape(np.asarray(x, np.float64), (len(x), -1))
    exact = exact.reshape(len(exact), -1)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x.mean(0), exact.mean(0), atol=mean_tol)
    np.testing.assert_allclose(np.cov(x.T), np.cov(exact.T), atol=4 * mean_tol)
    sw = sliced_w1(x, exact)
    assert sw <= 3 * sw_ref + margin, f"SW {sw:.4f} > 3 x {sw_ref:.4f} + {margin}"
    return sw


def sample_many(samplers, key, sde, score_fns, shape):
    """Runs several samplers in ONE jitted program (one compile instead of one per sampler: the CPU
    budget of the test suite is dominated by XLA compile time). Returns [(x, nfe), ...]."""
    return _sample_many(tuple(samplers), key, sde, tuple(score_fns), tuple(shape))


@eqx.filter_jit
def _sample_many(samplers, key, sde, score_fns, shape):
    return [s.sample(key, sde, f, shape, jnp.float32) for s, f in zip(samplers, score_fns)]


# Main samplers x every SDE, 2-D mixture, n = 2000. SW_ref ~ 0.03, margin 0.03; mean tolerance 0.15
# (~4.5 standard errors of the x-mean: std 1.67 / sqrt(2000) = 0.037, doubled for the two samples).
MAIN = {
    "euler_maruyama": ("euler_maruyama", dict(n_steps=200)),
    "pc_reverse_diffusion_langevin": ("pc", dict(n_steps=200)),
    "ode_tsit5_adaptive": ("ode", dict()),
}


@pytest.mark.parametrize("sde_name", SDES)
def test_samplers_match_mixture_2d(sde_name):
    sde = SDES[sde_name]
    samplers = [solvers.get(name, **opts) for name, opts in MAIN.values()]
    outs = sample_many(samplers, jax.random.PRNGKey(0), sde, [MIX2D.score_fn(sde)] * len(samplers), (2000, 2))
    for label, (x, info) in zip(MAIN, outs):
        assert x.shape == (2000, 2) and x.dtype == jnp.float32 and int(info.nfe) > 0, label
        assert_close_to_data(x, "2d", margin=0.03, mean_tol=0.15)


# Every predictor x corrector x SDE on image-shaped data (B, 4, 4, 1), n = 500, 100 steps.
# SW_ref ~ 0.05; margin 0.05; mean tolerance 0.12 per pixel (pixel std <= 0.8: 0.8 / sqrt(500) = 0.036).
# Predictor "none" (the corrector alone = annealed Langevin dynamics) mixes slowly between the two
# components: it gets 5 corrector steps per level at snr 0.3 and looser tolerances (mean 0.25, SW
# margin 0.1); with 10 steps per level its mean error drops further (0.16 -> 0.13, measured).
COMBOS = [(p, c) for p in PREDICTORS for c in CORRECTORS if (p, c) != ("none", "none")]


def combo_sampler(predictor, corrector):
    if predictor == "none":
        return solvers.get("pc", predictor="none", corrector=corrector, n_steps=100, n_corrector_steps=5, snr=0.3)
    return solvers.get("pc", predictor=predictor, corrector=corrector, n_steps=100)


@pytest.mark.slow
@pytest.mark.parametrize("sde_name", SDES)
def test_every_predictor_corrector_pair_on_images(sde_name):
    """Also the fixed-step ODE (heun, 50 steps) on the same image-shaped data."""
    sde = SDES[sde_name]
    samplers = [combo_sampler(p, c) for p, c in COMBOS] + [solvers.get("ode", solver="heun", n_steps=50)]
    outs = sample_many(samplers, jax.random.PRNGKey(1), sde, [MIXIMG.score_fn(sde)] * len(samplers), (500, 4, 4, 1))
    x, info = outs.pop()
    assert int(info.nfe) == 101
    assert_close_to_data(x, "img", margin=0.05, mean_tol=0.12)
    for (p, c), sampler, (x, info) in zip(COMBOS, samplers, outs):
        assert x.shape == (500, 4, 4, 1)
        per_step = int(p != "none") + sampler.n_corrector_steps * int(c != "none")
        assert int(info.nfe) == 100 * per_step + 1, (p, c)
        loose = p == "none"
        try:
            assert_close_to_data(x, "img", margin=0.1 if loose else 0.05, mean_tol=0.25 if loose else 0.12)
        except AssertionError as e:
            raise AssertionError(f"predictor={p} corrector={c} sde={sde_name}: {e}") from e


def test_statistic_rejects_wrong_score_and_too_few_steps():
    """The distribution check used above fails for a wrong model, so it can discriminate."""
    sde = SDES["vp"]
    wrong = ss.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))
    samplers = [solvers.get("ode", solver="heun", n_steps=50), solvers.get("euler_maruyama", n_steps=3, denoise=False)]
    # mixture weights 0.5/0.5 instead of 0.3/0.7; then the right score with only 3 steps
    outs = sample_many(samplers, jax.random.PRNGKey(0), sde, [wrong.score_fn(sde), MIX2D.score_fn(sde)], (2000, 2))
    for x, _ in outs:
        with pytest.raises(AssertionError):
            assert_close_to_data(x, "2d", margin=0.03, mean_tol=0.15)


# --- NFE equals the evaluations made ------------------------------------------------------

NFE_CASES = [
    ("euler_maruyama", dict(n_steps=7)),
    ("pc", dict(n_steps=5, predictor="reverse_diffusion", corrector="langevin", n_corrector_steps=2)),
    ("pc", dict(n_steps=5, predictor="none", corrector="ald", denoise=False)),
    ("pc", dict(n_steps=6, predictor="ancestral_sampling", corrector="none")),
    ("ode", dict(solver="dopri8", rtol=1e-4, atol=1e-4)),
    ("ode", dict(solver="heun", rtol=1e-3, atol=1e-3)),
    ("ode", dict(solver="bosh3", n_steps=9)),
    ("ode", dict(solver="euler", n_steps=9)),
]


def test_reported_nfe_equals_evaluations_made():
    """Fixed and adaptive, FSAL (dopri8, bosh3; tsit5 below) and not (heun, euler), every PC part."""
    sde = SDES["vp"]
    samplers = [solvers.get(name, **opts) for name, opts in NFE_CASES]
    scores = [CountingScore(MIX2D.score_fn(sde)) for _ in NFE_CASES]
    outs = sample_many(samplers, jax.random.PRNGKey(3), sde, scores, (64, 2))
    jax.block_until_ready(outs)
    for case, score, (_, info) in zip(NFE_CASES, scores, outs):
        assert int(info.nfe) == score.evals, case


def test_adaptive_nfe_counts_rejected_steps():
    """An adaptive solve with rejected steps still reports exactly the evaluations made."""
    sde = SDES["vp"]
    score = CountingScore(MIX2D.score_fn(sde))
    sampler = solvers.get("ode", solver="tsit5", rtol=1e-3, atol=1e-3, denoise=False)
    x_T = sde.prior_sampling(jax.random.PRNGKey(0), (64, 2))
    _, nfe, stats = eqx.filter_jit(sampler.solve)(sde, score, x_T, 1e-3)
    assert int(stats["num_rejected_steps"]) > 0  # the premise: this solve rejects steps
    assert int(nfe) == score.evals == 1 + 6 * int(stats["num_steps"])  # tsit5: 7 stages, FSAL


# --- keys, recompilation, errors ----------------------------------------------------------

@pytest.mark.parametrize("name", ["euler_maruyama", "pc", "ode"])
def test_deterministic_given_key_and_no_recompile(name):
    sde = SDES["subvp"]
    score = CountingScore(MIX2D.score_fn(sde))
    sampler = solvers.get(name, n_steps=20)
    a, _ = sampler(jax.random.PRNGKey(5), sde, score, (16, 2))
    traces = score.traces
    b, _ = sampler(jax.random.PRNGKey(5), sde, score, (16, 2))
    c, _ = solvers.get(name, n_steps=20)(jax.random.PRNGKey(6), sde, score, (16, 2))  # equal sampler, new key
    assert score.traces == traces, "second call re-traced the score function"
    np.testing.assert_array_equal(a, b)
    assert np.min(np.abs(np.asarray(a) - np.asarray(c))) > 0


def test_unknown_names_and_options_list_valid_ones():
    with pytest.raises(ValueError, match="valid samplers: .*euler_maruyama.*ode.*pc"):
        solvers.get("heun_sde")
    with pytest.raises(ValueError, match="valid options: .*n_steps"):
        solvers.get("pc", n_step=10)
    with pytest.raises(ValueError,
                       match="valid predictors: euler_maruyama, reverse_diffusion, ancestral_sampling, none"):
        solvers.get("pc", predictor="ddim")
    with pytest.raises(ValueError, match="valid correctors: langevin, ald, none"):
        solvers.get("pc", corrector="hmc")
    with pytest.raises(ValueError, match="valid solvers: euler, heun, midpoint, ralston, bosh3, tsit5, dopri5, dopri8"):
        solvers.get("ode", solver="rk45")
    with pytest.raises(ValueError, match="cannot take adaptive steps"):
        solvers.get("ode", solver="euler")
    with pytest.raises(ValueError, match="n_steps must be"):
        solvers.get("euler_maruyama", n_steps=0)


def test_ode_accepts_solver_instance_and_max_steps_error_is_clear():
    import diffrax
    sde = SDES["vp"]
    sampler = solvers.get("ode", solver=diffrax.Tsit5(), max_steps=3)  # an instance, not a name
    with pytest.raises(Exception, match="max_steps=3 steps before reaching eps; pass a larger max_steps"):
        out, _ = sampler(jax.random.PRNGKey(0), sde, MIX2D.score_fn(sde), (8, 2))
        jax.block_until_ready(out)
