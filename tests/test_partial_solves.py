"""Partial solves (t_init -> t_end), one step of a StepSampler, chunked solves and the denoising default (issue 23).

Closed forms: the single-Gaussian probability-flow map (`gaussian_flow_map`) for deterministic samplers,
the exact marginal p_t of the 2-D mixture for a stochastic one (sliced W1 within 3x the two-exact-sample
distance + 0.03, as in tests/test_solvers.py).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import solvers
from score_sde.analytic import gaussian_flow_map
from score_sde.solvers.timesteps import time_steps

from helpers import SDES, CountingScore, sliced_w1

GAUSS = ss.GaussianMixture(jnp.ones(1), jnp.array([[1.0, -0.5]]), 0.5)
MIX2D = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))


def test_partial_solves_follow_the_exact_flow_to_t_end(x64):
    """From x_t at t_init = 0.8 to t_end = 0.3 (VP, float64) every deterministic sampler lands on the exact
    flow map. Measured max errors: ode (adaptive, 1e-8) 3.3e-9, dpm_solver(3S) 12 steps 5.8e-5, ipndm 12
    steps 3.7e-4, ddim logSNR 200 steps 2.1e-3, edm_heun 20 levels 4.3e-3, unipc 12 steps 5.5e-3;
    asserted about 3x those. NFE has no final denoising (edm: 2 N, Heun on every step)."""
    sde = SDES["vp"]
    x_t = 1.5 * jax.random.normal(jax.random.PRNGKey(3), (32, 2), jnp.float64)
    exact = gaussian_flow_map(GAUSS, sde, x_t, 0.8, 0.3)
    cases = [(solvers.get("ode", rtol=1e-8, atol=1e-8), 1e-8, None),
             (solvers.get("dpm_solver", n_steps=12, order=3, method="singlestep"), 2e-4, 36),
             (solvers.get("ipndm", n_steps=12), 1e-3, 12),
             (solvers.get("ddim", n_steps=200, skip="logSNR"), 6e-3, 200),
             (solvers.get("edm_heun", n_steps=20), 1.5e-2, 40),
             (solvers.get("unipc", n_steps=12), 1.5e-2, 12)]
    for sampler, tol, nfe in cases:
        x, info = sampler(jax.random.PRNGKey(0), sde, GAUSS.score_fn(sde), x_init=x_t, t_init=0.8, t_end=0.3)
        err = float(jnp.max(jnp.abs(x - exact)))
        assert err < tol, (sampler, err)
        assert nfe is None or int(info.nfe) == nfe, (sampler, int(info.nfe))


def test_two_partial_solves_compose_to_the_full_solve(x64):
    """T -> s -> eps in two partial solves of 8 + 12 steps equals one solve of 20 steps (s on the full
    grid), for one-step deterministic samplers on a time-uniform grid (float64: 1e-10)."""
    sde, eps = SDES["vp"], ss.default_eps(SDES["vp"])
    s = float(time_steps(sde, "time_uniform", sde.T, eps, 20, jnp.float64)[8])
    key, sf = jax.random.PRNGKey(5), MIX2D.score_fn(sde)
    for make in (lambda n: solvers.get("ddim", n_steps=n),
                 lambda n: solvers.get("ode", solver="heun", n_steps=n),
                 lambda n: solvers.get("edm_heun", n_steps=n, schedule="time_uniform"),
                 lambda n: solvers.get("dpm_solver", n_steps=n, order=2, method="singlestep", skip="time_uniform")):
        full, _ = make(20)(key, sde, sf, (16, 2), jnp.float64, t_end=eps)
        half, _ = make(8)(key, sde, sf, (16, 2), jnp.float64, t_end=s)
        both, _ = make(12)(key, sde, sf, x_init=half, t_init=s, t_end=eps)
        assert float(jnp.max(jnp.abs(both - full))) < 1e-10, make(20)
        assert float(jnp.max(jnp.abs(half - full))) > 0.1  # the halves are not trivially the full solve


def test_stochastic_partial_solve_samples_the_exact_marginal_at_t_end():
    """Euler-Maruyama (300 steps) and pc (100 steps) from the prior to t_end = 0.2 sample the mixture's
    exact p_t at t = 0.2 (VP, n = 2000), not p_0 (the data, which is far in W1), with no denoising step."""
    sde, n, t_end = SDES["vp"], 2000, 0.2
    sf = MIX2D.score_fn(sde)
    x0 = MIX2D.sample(jax.random.PRNGKey(21), 2 * n)
    mean, std = sde.marginal_prob(x0, jnp.full((2 * n,), t_end))
    p_t = mean + std[:, None] * jax.random.normal(jax.random.PRNGKey(22), x0.shape)
    a, b = np.asarray(p_t[:n]), np.asarray(p_t[n:])
    floor = sliced_w1(a, b, seed=9)
    for sampler, nfe in ((solvers.get("euler_maruyama", n_steps=300), 300), (solvers.get("pc", n_steps=100), 200)):
        x, info = sampler(jax.random.PRNGKey(1), sde, sf, (n, 2), t_end=t_end)
        assert int(info.nfe) == nfe  # no final denoising
        w1 = sliced_w1(np.asarray(x), a, seed=9)
        assert w1 < 3 * floor + 0.03, (sampler, w1, floor)
        assert sliced_w1(np.asarray(x), np.asarray(x0[:n]), seed=9) > w1 + 0.05


def _local_order(sampler, sde, x, t, hs):
    errs = [float(jnp.max(jnp.abs(sampler.single_step(sde, GAUSS.score_fn(sde), x, t, t - h)
                                  - gaussian_flow_map(GAUSS, sde, x, t, t - h)))) for h in hs]
    return np.log2(errs[0] / errs[1])


def test_single_step_matches_the_exact_flow_to_its_order(x64):
    """One step t -> t - h on the single Gaussian: the local error of DDIM (first order) falls as h^2 and
    of EDM's Heun step as h^3 (measured exponents 2.2 and 3.2 at h = 0.05, 0.025; asserted within 0.45)."""
    sde = SDES["vp"]
    x = 1.5 * jax.random.normal(jax.random.PRNGKey(3), (32, 2), jnp.float64)
    assert abs(_local_order(solvers.get("ddim"), sde, x, 0.5, (0.05, 0.025)) - 2.0) < 0.45
    assert abs(_local_order(solvers.get("edm_heun"), sde, x, 0.5, (0.05, 0.025)) - 3.0) < 0.45


def test_single_step_jits_takes_per_example_times_and_stops_gradients():
    """Inside jit, with (B,) times (each example its own step, equal to the scalar-time step), a constant
    for autodiff by default; one score evaluation per DDIM step."""
    sde = SDES["vp"]
    counting = CountingScore(GAUSS.score_fn(sde))
    ddim = solvers.get("ddim")
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 2))
    t, s = jnp.array([0.9, 0.5, 0.3, 0.7]), jnp.array([0.8, 0.2, 0.25, 0.1])

    @eqx.filter_jit
    def teacher(x, t, s, score_fn):
        return ddim.single_step(sde, score_fn, x, t, s)

    out = teacher(x, t, s, counting)
    for i in range(4):
        one = ddim.single_step(sde, GAUSS.score_fn(sde), x[i:i + 1], t[i], s[i])
        np.testing.assert_allclose(out[i:i + 1], one, rtol=1e-5, atol=1e-6)
    assert counting.counts.evals == 1  # one call under vmap: one evaluation per example
    grad = jax.grad(lambda x: ddim.single_step(sde, GAUSS.score_fn(sde), x, 0.5, 0.4).sum())(x)
    assert not np.any(np.asarray(grad))
    grad = jax.grad(lambda x: ddim.single_step(sde, GAUSS.score_fn(sde), x, 0.5, 0.4, stop_gradient=False).sum())(x)
    assert np.all(np.asarray(grad) > 0)


def test_chunked_solve_equals_the_one_call_solve_without_recompiling():
    """begin / advance per piece of chunks(n, k) / finish, each a jitted call: the one-call samples to float32
    rounding (5e-7 measured: different programs), bit-identical across chunk sizes, and one trace of the
    piece program per (kind, length) however many pieces (iPNDM: warm-up orders 1-3 then order 4)."""
    sde = SDES["vp"]
    counting = CountingScore(MIX2D.score_fn(sde))
    key = jax.random.PRNGKey(4)
    for sampler in (solvers.get("pc", n_steps=40), solvers.get("ipndm", n_steps=40)):
        ref, info = sampler(key, sde, MIX2D.score_fn(sde), (8, 2))
        outs, seen = [], set()  # the (kind, length, masked) programs compiled so far
        for k in (5, 7):
            solve = eqx.filter_jit(sampler.begin)(key, sde, MIX2D.score_fn(sde), (8, 2), jnp.float32)
            pieces = sampler.chunks(40, k)
            for p in pieces:
                before = counting.counts.traces
                solve = _advance(sampler, solve, sde, counting, jnp.int32(p.start), jnp.int32(p.stop), p.length,
                                 p.kind, p.masked)
                new = (p.kind, p.length, p.masked) not in seen
                assert (counting.counts.traces > before) == new, (sampler, p)  # traced once per program
                seen.add((p.kind, p.length, p.masked))
            assert len(seen) < len(pieces) and pieces[-1].stop == 40
            x, info_c = eqx.filter_jit(sampler.finish)(solve, sde, MIX2D.score_fn(sde))
            assert int(info_c.nfe) == int(info.nfe)
            outs.append(np.asarray(x))
        np.testing.assert_allclose(outs[0], ref, atol=5e-6)
        np.testing.assert_array_equal(outs[0], outs[1])


@eqx.filter_jit
def _advance(sampler, solve, sde, score_fn, start, stop, length, kind, masked):
    return sampler.advance(solve, sde, score_fn, start, length, kind, stop=stop if masked else None)


def test_denoising_defaults_to_on_with_a_scalar_kernel_and_off_for_cld():
    """euler_maruyama, ode and pc (EM predictor, no corrector) run CLD with their defaults (no Tweedie
    step: NFE = steps) and denoise on VP (NFE = steps + 1); denoise=True on CLD is refused in one line."""
    cld = ss.CLD()
    for name, opts, steps in (("euler_maruyama", dict(n_steps=5), 5), ("ode", dict(solver="euler", n_steps=5), 5),
                              ("pc", dict(n_steps=5, predictor="euler_maruyama", corrector="none"), 5)):
        sampler = solvers.get(name, **opts)
        x, info = sampler(jax.random.PRNGKey(0), cld, MIX2D.score_fn(cld), (4, 2))
        assert int(info.nfe) == steps and x.shape == (4, 2) and np.all(np.isfinite(np.asarray(x)))
        _, info = sampler(jax.random.PRNGKey(0), SDES["vp"], MIX2D.score_fn(SDES["vp"]), (4, 2))
        assert int(info.nfe) == steps + 1
        with pytest.raises(ValueError, match="needs scalar_kernel"):
            solvers.get(name, denoise=True, **opts)(jax.random.PRNGKey(0), cld, MIX2D.score_fn(cld), (4, 2))
    x, info = solvers.get("ode")(jax.random.PRNGKey(0), cld, MIX2D.score_fn(cld), (4, 2))  # adaptive
    assert np.all(np.isfinite(np.asarray(x)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(t_end=1.0), r"t_end must lie in \(0, t_init\)"),
    (dict(t_end=0.0), r"t_end must lie in \(0, t_init\)"),
    (dict(x_init=jnp.zeros((4, 2)), t_init=0.3, t_end=0.5), r"t_end must lie in \(0, t_init\) = \(0, 0.3"),
    (dict(t_end=jnp.array([0.1, 0.2])), "t_end must be a scalar"),
])
def test_bad_t_end_is_a_clear_error(kwargs, match):
    sde = SDES["vp"]
    shape = None if "x_init" in kwargs else (4, 2)
    with pytest.raises(ValueError, match=match):
        solvers.get("ddim", n_steps=3)(jax.random.PRNGKey(0), sde, MIX2D.score_fn(sde), shape, **kwargs)
