"""The step interface: one driver loop, the same x_T for every sampler, starting anywhere, hooks.

Closed forms: for a single Gaussian the probability-flow map is exact (`gaussian_flow_map`), so
deterministic samplers started from a known x_T or x_t must land on it; for a mixture, x_t drawn
from the exact marginal p_t and run back with the exact score must give samples of p_0 (checked
like tests/test_solvers.py: sliced W1 within 3x the two-exact-sample distance + margin).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import solvers
from score_sde.analytic import gaussian_flow_map
from score_sde.solvers.base import StepSampler, check_n_steps
from score_sde.solvers.correctors import LangevinCorrector
from score_sde.solvers.predictors import ReverseDiffusionPredictor
from score_sde.solvers.timesteps import time_steps

from helpers import SDES, CountingScore, sliced_w1

GAUSS = ss.GaussianMixture(jnp.ones(1), jnp.array([[1.0, -0.5]]), 0.5)
MIX2D = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))


@eqx.filter_jit
def _run_all(samplers, key, sde, score_fn, shape, x_init, t_init):
    """Several samplers in one jitted program (one compile), through the public entry's traced body."""
    return [s.sample(key, sde, score_fn, shape, x_init.dtype, x_init, t_init) for s in samplers]


def test_every_sampler_starts_from_the_same_x_T(x64):
    """ode and dpm_solver (and ddim) called with one key solve the flow from the same x_T.

    Each lands on the exact flow map of x_T = prior(split(key)[0]) (single Gaussian, VP, float64):
    measured max errors ode (tsit5, 1e-8) 2e-9, dpm_solver++(3S) 30 steps 4.4e-5, ddim logSNR 200
    steps 0.020; asserted 1e-6, 2e-4 and 0.05. Another key's x_T ends 1.8 away.
    """
    sde, key, shape = SDES["vp"], jax.random.PRNGKey(7), (64, 2)
    score = GAUSS.score_fn(sde)
    x_T = sde.prior_sampling(jax.random.split(key)[0], shape, jnp.float64)
    exact = gaussian_flow_map(GAUSS, sde, x_T, sde.T, ss.default_eps(sde))
    cases = [(solvers.get("ode", rtol=1e-8, atol=1e-8, denoise=False), 1e-6),
             (solvers.get("dpm_solver", n_steps=30, order=3, method="singlestep"), 2e-4),
             (solvers.get("ddim", n_steps=200, skip="logSNR"), 0.05)]
    for sampler, tol in cases:
        x, _ = sampler(key, sde, score, shape, jnp.float64)
        err = float(jnp.max(jnp.abs(x - exact)))
        assert err < tol, (sampler, err)
    other, _ = cases[0][0](jax.random.PRNGKey(8), sde, score, shape, jnp.float64)
    assert float(jnp.max(jnp.abs(other - exact))) > 0.5


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_t_init_follows_the_exact_flow_from_x_t(sde_name, x64):
    """From arbitrary x_t at t_init = 0.4 the deterministic samplers follow the exact flow map to eps.

    Measured max errors (VP / VE): ode 1.2e-9 / 2.6e-9, dpm_solver(3S) 12 steps 3.1e-4 / 9.3e-5;
    asserted 1e-6 and 1e-3.
    """
    sde = SDES[sde_name]
    x_t = 1.5 * jax.random.normal(jax.random.PRNGKey(3), (32, 2), jnp.float64)
    exact = gaussian_flow_map(GAUSS, sde, x_t, 0.4, ss.default_eps(sde))
    samplers = (solvers.get("ode", rtol=1e-8, atol=1e-8, denoise=False),
                solvers.get("dpm_solver", n_steps=12, order=3, method="singlestep", algorithm="dpmsolver"))
    outs = _run_all(samplers, jax.random.PRNGKey(0), sde, GAUSS.score_fn(sde), x_t.shape, x_t, jnp.float64(0.4))
    for (x, _), tol in zip(outs, (1e-6, 1e-3)):
        assert float(jnp.max(jnp.abs(x - exact))) < tol


def test_start_from_forward_noised_data_returns_the_data():
    """Data pushed forward to t_init = 0.5 by the exact kernel and run back with the exact score is
    again a sample of the data (mixture, VP, n = 2000): sliced W1 <= 3 SW_ref + 0.03, mean within
    0.15 (as in test_solvers.py), for every sampler family."""
    sde, n, t0 = SDES["vp"], 2000, 0.5
    x0 = MIX2D.sample(jax.random.PRNGKey(11), n)
    mean, std = sde.marginal_prob(x0, jnp.full((n,), t0))
    x_t = mean + std[:, None] * jax.random.normal(jax.random.PRNGKey(12), x0.shape)
    samplers = (solvers.get("euler_maruyama", n_steps=100), solvers.get("pc", n_steps=100),
                solvers.get("ode"), solvers.get("ddim", n_steps=50, eta=1.0),
                solvers.get("dpm_solver", n_steps=20), solvers.get("edm_heun", n_steps=18))
    outs = _run_all(samplers, jax.random.PRNGKey(13), sde, MIX2D.score_fn(sde), x_t.shape, x_t, jnp.float32(t0))
    exact_a, exact_b = (np.asarray(MIX2D.sample(jax.random.PRNGKey(k), n)) for k in (101, 102))
    sw_ref = sliced_w1(exact_a, exact_b)
    for sampler, (x, info) in zip(samplers, outs):
        x = np.asarray(x, np.float64)
        assert np.all(np.isfinite(x)) and int(info.nfe) > 0
        np.testing.assert_allclose(x.mean(0), exact_a.mean(0), atol=0.15, err_msg=repr(sampler))
        sw = sliced_w1(x, exact_a)
        assert sw <= 3 * sw_ref + 0.03, (sampler, sw, sw_ref)
    # the premise: x_t itself is far from the data
    assert sliced_w1(np.asarray(x_t), exact_a) > 3 * sw_ref + 0.1


class PinFirstCoordinate(eqx.Module):
    """A hook that sets x[:, 0] to a constant (the shape of an inpainting projection)."""

    value: float = 0.25

    def __call__(self, x, t_next, key):
        return x.at[:, 0].set(self.value)


def test_hook_runs_after_every_step_at_the_grid_times():
    """The hook sees each step's t_next (the sampler's own grid) and its result is the carried state."""
    sde, times = SDES["vp"], []

    def record(x, t_next, key):
        jax.debug.callback(lambda t: times.append(float(t)), t_next)
        return x

    sampler = solvers.get("pc", n_steps=4, denoise=False)
    sampler(jax.random.PRNGKey(0), sde, MIX2D.score_fn(sde), (8, 2), hook=record)
    jax.effects_barrier()
    np.testing.assert_allclose(times, np.linspace(1.0, 1e-3, 5)[1:], rtol=1e-6)

    score = MIX2D.score_fn(sde)
    for sampler in (solvers.get("ddim", n_steps=10), solvers.get("dpm_solver", n_steps=10),
                    solvers.get("edm_heun", n_steps=6), solvers.get("ode", solver="heun", n_steps=10, denoise=False),
                    solvers.get("pc", n_steps=10, denoise=False)):
        x, _ = sampler(jax.random.PRNGKey(1), sde, score, (16, 2), hook=PinFirstCoordinate())
        assert bool(jnp.all(x[:, 0] == 0.25)) and bool(jnp.all(jnp.isfinite(x))), sampler


def test_identity_hook_changes_nothing_but_cached_stages(x64):
    """With a hook that returns x unchanged the deterministic samplers give the same result, and the
    reported NFE is still the evaluations made (an FSAL ODE solver stops reusing its last stage)."""
    sde, key, shape = SDES["vp"], jax.random.PRNGKey(2), (16, 2)
    identity = lambda x, t, k: x  # noqa: E731
    for name, opts, nfe_hooked in [("ode", dict(solver="bosh3", n_steps=9), 9 * 4 + 1),
                                   ("dpm_solver", dict(n_steps=8, order=3, method="multistep"), 8),
                                   ("edm_heun", dict(n_steps=5), 9)]:
        score = CountingScore(MIX2D.score_fn(sde))
        sampler = solvers.get(name, **opts)
        plain, _ = sampler(key, sde, score, shape, jnp.float64)
        evals = score.evals
        hooked, info = sampler(key, sde, score, shape, jnp.float64, hook=identity)
        np.testing.assert_allclose(hooked, plain, rtol=1e-12, atol=1e-12)
        assert int(info.nfe) == nfe_hooked == score.evals - evals, name


def test_new_start_values_do_not_recompile():
    """x_init and t_init are traced: new values reuse the compiled solve."""
    sde = SDES["subvp"]
    score = CountingScore(MIX2D.score_fn(sde))
    sampler = solvers.get("dpm_solver", n_steps=5)
    x = jnp.ones((8, 2))
    a, _ = sampler(jax.random.PRNGKey(0), sde, score, x_init=x, t_init=0.5)
    traces = score.traces
    b, _ = sampler(jax.random.PRNGKey(0), sde, score, x_init=2 * x, t_init=0.3)
    assert score.traces == traces
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_pc_takes_predictor_and_corrector_objects():
    """Objects and names with the same options are the same sampler (identical samples)."""
    sde, score = SDES["ve"], MIX2D.score_fn(SDES["ve"])
    by_name = solvers.get("pc", predictor="reverse_diffusion", corrector="langevin", snr=0.2,
                          n_corrector_steps=2, n_steps=10)
    by_object = solvers.get("pc", predictor=ReverseDiffusionPredictor(),
                            corrector=LangevinCorrector(snr=0.2, n_steps=2), n_steps=10)
    assert by_name == by_object and by_object.snr == 0.2 and by_object.n_corrector_steps == 2
    a, info = by_name(jax.random.PRNGKey(0), sde, score, (8, 2))
    b, _ = by_object(jax.random.PRNGKey(0), sde, score, (8, 2))
    np.testing.assert_array_equal(a, b)
    assert int(info.nfe) == 10 * 3 + 1
    with pytest.raises(ValueError, match="carries its own"):
        solvers.get("pc", corrector=LangevinCorrector(), snr=0.3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(t_init=0.5), "t_init needs x_init"),
    (dict(x_init=jnp.zeros((4, 2)), t_init=1.5), r"t_init must lie in \(eps, T\]"),
    (dict(x_init=jnp.zeros((4, 2)), t_init=1e-4), r"t_init must lie in \(eps, T\]"),
    (dict(x_init=jnp.zeros((4, 2)), shape=(8, 2)), "differs from x_init's shape"),
    (dict(), "give the sample shape"),
])
def test_bad_starts_are_clear_errors(kwargs, match):
    sde = SDES["vp"]
    with pytest.raises(ValueError, match=match):
        solvers.get("ddim", n_steps=3)(jax.random.PRNGKey(0), sde, MIX2D.score_fn(sde), **kwargs)


def test_adaptive_ode_refuses_a_hook():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="pass n_steps=<int> to use a hook"):
        solvers.get("ode")(jax.random.PRNGKey(0), sde, MIX2D.score_fn(sde), (4, 2), hook=lambda x, t, k: x)


# --- adding a sampler: one class (the README's worked example) --------------------------------

class FlowEuler(StepSampler):
    """Euler's method on the probability-flow ODE, on a uniform grid."""

    n_steps: int = eqx.field(default=100, static=True)
    eps: float | None = eqx.field(default=None, static=True)

    def __check_init__(self):
        check_n_steps(self.n_steps)

    def total_nfe(self, hooked=False):
        return self.n_steps

    def grid(self, sde, t_start, t_end, dtype):
        return time_steps(sde, "time_uniform", t_start, t_end, self.n_steps, dtype), None

    def step(self, sde, score_fn, x, state, t, t_next, inputs, key, kind=None, hooked=False):
        return x + (t_next - t) * ss.probability_flow_drift(sde, score_fn, x, t), state


def test_a_new_step_sampler_gets_the_driver_for_free(x64):
    """The worked example equals the built-in fixed-step Euler ODE, from the prior and from x_t."""
    sde, key, score = SDES["vp"], jax.random.PRNGKey(4), MIX2D.score_fn(SDES["vp"])
    reference = solvers.get("ode", solver="euler", n_steps=20, denoise=False)
    x, info = FlowEuler(n_steps=20)(key, sde, score, (16, 2), jnp.float64)
    ref, _ = reference(key, sde, score, (16, 2), jnp.float64)
    np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-10)
    assert int(info.nfe) == 20
    x_t = jnp.ones((16, 2), jnp.float64)
    x, _ = FlowEuler(n_steps=20)(key, sde, score, x_init=x_t, t_init=0.3)
    ref, _ = reference(key, sde, score, x_init=x_t, t_init=0.3)
    np.testing.assert_allclose(x, ref, rtol=1e-10, atol=1e-10)


def test_dtype_from_argument_or_x_init(x64):
    """A numpy dtype object is honoured (it is falsy: len() of a dtype is 0); x_init's dtype is the default."""
    sde, sampler = SDES["vp"], solvers.get("ddim", n_steps=3)
    score = MIX2D.score_fn(sde)
    x, _ = sampler(jax.random.PRNGKey(0), sde, score, (4, 2), np.dtype("float64"))
    assert x.dtype == jnp.float64
    x, _ = sampler(jax.random.PRNGKey(0), sde, score, x_init=np.ones((4, 2), np.float64), t_init=0.5)
    assert x.dtype == jnp.float64
    x, _ = sampler(jax.random.PRNGKey(0), sde, score, (4, 2))
    assert x.dtype == jnp.float32


def test_float64_score_with_float32_sampling_is_cast(x64):
    """A score that returns float64 (e.g. a mixture built under x64) does not break float32 sampling."""
    sde = SDES["vp"]
    mix64 = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))
    for sampler in (solvers.get("dpm_solver", n_steps=4, denoise_to_zero=True), solvers.get("pc", n_steps=4)):
        x, _ = sampler(jax.random.PRNGKey(0), sde, mix64.score_fn(sde), (4, 2), jnp.float32)
        assert x.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(x)))


def test_unipc_with_a_hook_keeps_the_hooked_state():
    """UniPC's corrector would overwrite a hook's change; with a hook it is off, so the pin holds."""
    sde = SDES["vp"]
    x, info = solvers.get("unipc", n_steps=8)(jax.random.PRNGKey(1), sde, MIX2D.score_fn(sde), (16, 2),
                                              hook=PinFirstCoordinate())
    assert bool(jnp.all(x[:, 0] == 0.25)) and int(info.nfe) == 8
