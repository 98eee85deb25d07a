"""iPNDM, custom (optimised) time grids, the "edm" spacing and the samplers' eps check (issue 17)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
import score_sde.solvers as solvers
from score_sde.solvers import grid_opt
from score_sde.solvers.ipndm import AB_WEIGHTS, ab_weights
from score_sde.solvers.timesteps import EDM_RHO, fraction_steps, inverse_log_snr, time_steps

from helpers import SDES
from test_fast_solvers import MIX, slopes


@pytest.mark.parametrize("opts, order", [(dict(order=4, variable_step=True), 4), (dict(order=4), 2)])
def test_ipndm_convergence_order(opts, order, x64):
    """log2 error ratio on the exact single-Gaussian flow (VP, logSNR steps), 40 -> 80 steps.

    Measured: iPNDM-v order 2 1.87 (1.93 at 80 -> 160), order 3 2.71 (2.85), order 4 3.48 (3.73): the
    variable-step weights keep order k; iPNDM's uniform-step weights on this non-uniform grid are second
    order (2.05, 2.02). Asserted: within [order - 0.6, order + 0.5].
    """
    s, errs = slopes("ipndm", [40, 80], skip="logSNR", **opts)
    assert order - 0.6 < s[0] < order + 0.5, (s, errs)


def test_variable_step_weights_are_adams_bashforth_on_uniform_steps(x64):
    """On equal steps in sigma the variable-step weights equal the classical Adams-Bashforth ones."""
    for k in (1, 2, 3, 4):
        sig = jnp.asarray([5.0 + j for j in range(k)] + [4.0])  # sigma_i = 5, earlier 6, 7, ...; next 4
        np.testing.assert_allclose(ab_weights(list(sig[:k]) + [sig[-1]], k), AB_WEIGHTS[k], rtol=1e-12)


def test_custom_grid_reproduces_a_spacing_and_reads_files(tmp_path, x64):
    """A grid given as the logSNR fractions of a spacing gives that spacing's times (1e-10, time_quadratic
    and time_uniform) and samples (1e-8): time_uniform, no sampler's default spacing, with unipc (as
    fractions and as a grid file written by save_grid, read back by name), ipndm and dpm_solver, whose
    default grids differ from it (the control: a dropped custom_grid fails); bad grids are one-line errors."""
    sde = SDES["vp"]

    def fractions(skip):
        ts = time_steps(sde, skip, 1.0, 1e-3, 8, jnp.float64)
        lam = sde.log_snr(ts)
        u = tuple(float(v) for v in (lam - lam[0]) / (lam[-1] - lam[0]))
        return ts, (0.0,) + u[1:-1] + (1.0,)

    for skip in ("time_quadratic", "time_uniform"):
        ts, u = fractions(skip)
        np.testing.assert_allclose(fraction_steps(sde, u, 1.0, 1e-3, jnp.float64), ts, rtol=1e-10)
    key, score = jax.random.PRNGKey(0), MIX.score_fn(sde)
    path = grid_opt.save_grid(str(tmp_path / "grids" / "g.json"), u, note="test")
    assert json.load(open(path))["note"] == "test"
    for name in ("unipc", "ipndm", "dpm_solver"):
        default_grid, _ = solvers.get(name, n_steps=8).grid(sde, 1.0, 1e-3, jnp.float64)
        assert np.max(np.abs(np.asarray(default_grid) - np.asarray(ts))) > 0.01, name  # not the default
        ref, _ = solvers.get(name, n_steps=8, skip="time_uniform")(key, sde, score, (16, 2), jnp.float64)
        for grid in (u, path) if name == "unipc" else (u,):
            x, _ = solvers.get(name, n_steps=8, custom_grid=grid)(key, sde, score, (16, 2), jnp.float64)
            np.testing.assert_allclose(x, ref, rtol=1e-8, atol=1e-10, err_msg=name)
    with pytest.raises(ValueError, match="custom_grid has 8 steps but n_steps = 5"):
        solvers.get("ipndm", n_steps=5, custom_grid=path)
    with pytest.raises(ValueError, match="must increase strictly from 0 to 1"):
        solvers.get("dpm_solver", n_steps=2, custom_grid=(0.0, 0.7, 0.5, 1.0))
    with pytest.raises(ValueError, match="not a readable grid file"):
        solvers.get("unipc", custom_grid=str(tmp_path / "missing.json"))


def test_edm_spacing_and_time_derivative(x64):
    """"edm": sigma^(1/7) = exp(-lambda / 7) equally spaced, for VP and VE alike. inverse_log_snr's
    derivative is 1 / lambda'(t): for VE lambda = -log smin - t log(smax / smin), so dt/dlam = -1 / log(smax / smin)."""
    for sde in (SDES["vp"], SDES["ve"]):
        ts = time_steps(sde, "edm", 1.0, 1e-3, 6, jnp.float64)
        root = np.exp(-np.asarray(sde.log_snr(ts)) / EDM_RHO)
        np.testing.assert_allclose(np.diff(root), np.diff(root)[0], rtol=1e-8)
    ve = ss.VESDE(sigma_min=0.01, sigma_max=50.0)
    d = jax.grad(lambda lam: inverse_log_snr(ve, lam, 1.0))(jnp.asarray(0.5))
    np.testing.assert_allclose(d, -1.0 / np.log(50.0 / 0.01), rtol=1e-10)


@pytest.mark.slow
def test_optimised_grid_beats_the_spacing_on_new_noise(x64):
    """optimise_grid on 256 draws of x_T (2-D mixture, VP, UniPC-2 bh2, 10 steps) lowers the path error on 2000
    other draws. Measured: 0.0178 -> 0.0016 on the fit draws, 0.0294 (time_quadratic) -> 0.0131 on the new ones
    (grids fitted to 500 / 1000 other draws: 0.0103 / 0.0129; the mean is heavy-tailed: a few paths near the
    boundaries between modes dominate it). Asserted: the new-draw error falls by at least 1.8x."""
    sde = SDES["vp"]
    score = MIX.score_fn(sde)
    sampler = solvers.get("unipc", n_steps=10, order=2, variant="bh2")
    x_fit = sde.prior_sampling(jax.random.PRNGKey(11), (256, 2), jnp.float64)
    u, info = grid_opt.optimise_grid(sampler, sde, score, x_fit, n_iter=200, learning_rate=0.05)
    assert len(u) == 11 and info["loss_final"] < info["loss_initial"], info
    x_new = sde.prior_sampling(jax.random.PRNGKey(12), (2000, 2), jnp.float64)
    ref = grid_opt.reference_solve(sde, score, x_new, 1e-3)

    def err(s):
        x, _ = s(jax.random.PRNGKey(0), sde, score, x_init=x_new)
        return float(jnp.mean(jnp.linalg.norm(x - ref, axis=1)))

    before, after = err(sampler), err(solvers.get("unipc", n_steps=10, order=2, variant="bh2", custom_grid=u))
    assert 1.8 * after < before, (before, after, info)


@pytest.mark.parametrize("eps", [0.0, -1e-3, 1.0, 1.5])
def test_samplers_reject_eps_outside_the_sde_times(eps):
    """A concrete eps must lie in (0, T): the sampler call says so in one line."""
    sampler = solvers.get("ipndm", n_steps=4, eps=eps)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T\) = \(0, 1.0\) of the SDE"):
        sampler(jax.random.PRNGKey(0), SDES["vp"], MIX.score_fn(SDES["vp"]), (4, 2))
