"""Critically-damped Langevin diffusion: closed-form kernel, mixture oracle, samplers, likelihood.

Tolerances: the closed-form moments match the matrix-exponential solution of the moment ODE to
1e-10 (float64); against a simulated forward process (Euler-Maruyama, 20000 paths) within 5
Monte-Carlo standard errors plus 1% (the O(dt) bias); samples match the mixture through the
sliced-W1 statistic of test_solvers.py (SW <= 3 SW_ref + 0.03, SW_ref the MC floor of two exact
samples), which rejects a wrong score (so it can fail).
"""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import score_sde as ss
from score_sde import losses, solvers

from helpers import sliced_w1

MIX2D = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [1.5, 1.0]]), jnp.array([0.3, 0.5]))
CLD = ss.CLD(beta=4.0, m_inv=4.0, gamma=0.04)


def moment_ode_solution(cld, t, s0):
    """(mean map Phi, covariance) at t of du = F u dt + G dw from Cov u0 = s0, by the matrix exponential
    of the vectorised moment ODE d vec(S)/dt = (I (x) F + F (x) I) vec(S) + vec(G G^T)."""
    b, m, gam = cld.beta, cld.m_inv, 2.0 / np.sqrt(cld.m_inv)
    f = b * np.array([[0.0, m], [-1.0, -gam * m]])
    q = np.diag([0.0, 2.0 * gam * b])
    k = np.zeros((5, 5))
    k[:4, :4] = np.kron(np.eye(2), f) + np.kron(f, np.eye(2))
    k[:4, 4] = q.ravel()
    e = scipy.linalg.expm(k * t)
    cov = (e[:4, :4] @ np.asarray(s0).ravel() + e[:4, 4]).reshape(2, 2)
    return scipy.linalg.expm(f * t), cov


def test_critical_damping_and_prior():
    assert CLD.damping == pytest.approx(1.0) and CLD.damping**2 == pytest.approx(4 * CLD.mass)
    u = CLD.prior_sampling(jax.random.PRNGKey(0), (20000, 3))
    assert u.shape == (20000, 2, 3)
    np.testing.assert_allclose(np.var(np.asarray(u[:, 0])), 1.0, rtol=0.03)
    np.testing.assert_allclose(np.var(np.asarray(u[:, 1])), CLD.mass, rtol=0.03)
    ref = (scipy.stats.norm.logpdf(np.asarray(u[:5, 0]), 0, 1).sum(1)
           + scipy.stats.norm.logpdf(np.asarray(u[:5, 1]), 0, np.sqrt(CLD.mass)).sum(1))
    np.testing.assert_allclose(CLD.prior_logp(u[:5]), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="m_inv"):
        ss.CLD(m_inv=-1.0)


@pytest.mark.parametrize("t", [1e-5, 1e-3, 0.05, 0.3, 1.0])
def test_kernel_matches_matrix_exponential_float64(t, x64):
    phi, cov = moment_ode_solution(CLD, t, np.diag([0.0, CLD.gamma * CLD.mass]))
    _, noise = moment_ode_solution(CLD, t, np.zeros((2, 2)))
    tau = jnp.asarray(CLD.beta * t, jnp.float64)
    np.testing.assert_allclose(CLD.transition_matrix(tau), phi.ravel(), atol=1e-10, rtol=1e-10)
    sxx, sxv, svv, det = CLD.marginal_cov(jnp.asarray(t, jnp.float64))
    np.testing.assert_allclose([sxx, sxv, svv], [cov[0, 0], cov[0, 1], cov[1, 1]], atol=1e-10, rtol=1e-10)
    np.testing.assert_allclose(det, np.linalg.det(cov), rtol=1e-9, atol=1e-14)
    nxx, nxv, nvv, _ = CLD.noise_cov(tau)
    np.testing.assert_allclose([nxx, nxv, nvv], [noise[0, 0], noise[0, 1], noise[1, 1]], atol=1e-10, rtol=1e-10)
    # the kernel given (x0, v0) and given x0 alone, on a batch
    u0 = jnp.asarray([[[0.7], [-0.3]]], jnp.float64)
    mean, covs = CLD.kernel(u0, t)
    np.testing.assert_allclose(np.asarray(mean).ravel(), phi @ np.array([0.7, -0.3]), atol=1e-12)
    np.testing.assert_allclose(np.asarray(covs).ravel(), [noise[0, 0], noise[0, 1], noise[1, 1]], atol=1e-10)
    mean, _ = CLD.marginal_prob(u0[:, 0], t)
    np.testing.assert_allclose(np.asarray(mean).ravel(), phi[:, 0] * 0.7, atol=1e-12)


def test_kernel_matches_simulated_forward_process():
    """Euler-Maruyama of the forward SDE from x0 = 1, v0 ~ N(0, gamma M): 20000 paths, 600 steps to t = 0.3."""
    rng = np.random.default_rng(0)
    n, t, steps = 20000, 0.3, 600
    u = np.zeros((n, 2, 1))
    u[:, 0] = 1.0
    u[:, 1] = np.sqrt(CLD.gamma * CLD.mass) * rng.normal(size=(n, 1))
    dt = t / steps
    for _ in range(steps):
        f, g = CLD.sde(jnp.asarray(u), 0.0)
        u = u + np.asarray(f) * dt + float(g[0]) * np.sqrt(dt) * np.stack([np.zeros((n, 1)), rng.normal(size=(n, 1))], 1)
    mean, (sxx, sxv, svv) = CLD.marginal_prob(jnp.ones((1, 1)), t)
    xs, vs = u[:, 0, 0], u[:, 1, 0]
    emp = [xs.mean(), vs.mean(), xs.var(), np.cov(xs, vs)[0, 1], vs.var()]
    exact = [float(mean[0, 0, 0]), float(mean[0, 1, 0]), float(sxx[0]), float(sxv[0]), float(svv[0])]
    se = [np.sqrt(exact[2] / n), np.sqrt(exact[4] / n), exact[2] * np.sqrt(2 / n),
          np.sqrt((exact[2] * exact[4] + exact[3] ** 2) / n), exact[4] * np.sqrt(2 / n)]
    for e, x, s in zip(emp, exact, se):
        assert abs(e - x) <= 5 * s + 0.01 * abs(x), (e, x, s)


def test_hsm_target_and_perturbation():
    """u_t = mean + L eps has the marginal covariance, and grad_v log N(u_t; mean, S) = -l_t eps_v."""
    t = jnp.array([1e-3, 0.1, 0.7])
    x0 = jnp.array([[0.5], [-1.0], [2.0]])
    eps = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 1))
    u = CLD.perturb(x0, t, eps)
    mean, (sxx, sxv, svv) = CLD.marginal_prob(x0, t)
    for i in range(3):
        cov = np.array([[sxx[i], sxv[i]], [sxv[i], svv[i]]], np.float64)
        d = np.asarray(u[i, :, 0] - mean[i, :, 0], np.float64)
        score_v = -np.linalg.solve(cov, d)[1]
        np.testing.assert_allclose(score_v, -CLD.hsm_scale(t)[i] * eps[i, 1, 0], rtol=2e-3)


def test_mixture_oracle_is_gradient_of_its_density():
    sf = MIX2D.score_fn(CLD)
    u = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2))
    parts = jax.jit(lambda u, t: (jax.grad(lambda w: sf.log_prob(w, t).sum())(u), sf(u, t), sf.joint_score(u, t)))
    for t in (1e-3, 0.2, 1.0):
        grad, score_v, joint = parts(u, jnp.full((8,), t))
        np.testing.assert_allclose(score_v, grad[:, 1], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(joint, grad, rtol=1e-4, atol=1e-4)
    # t = 0: the data density times N(v; 0, gamma M)
    v_logp = scipy.stats.norm.logpdf(np.asarray(u[:, 1]), 0, np.sqrt(CLD.gamma * CLD.mass)).sum(1)
    np.testing.assert_allclose(sf.log_prob(u, 0.0), MIX2D.log_prob(u[:, 0]) + v_logp, rtol=1e-5)
    # long after T: the equilibrium
    long = ss.CLD(T=5.0)
    np.testing.assert_allclose(MIX2D.score_fn(long).log_prob(u, 5.0), long.prior_logp(u), rtol=1e-4)


@eqx.filter_jit
def _draw_all(key, score_fns):
    samplers = [solvers.get("sscs", n_steps=100), solvers.get("euler_maruyama", n_steps=200, denoise=False),
                solvers.get("ode", denoise=False)]
    out = []
    for s, f in zip(samplers, score_fns):
        u, info = s.sample(key, CLD, f, (2000, 2), jnp.float32)
        out.append((CLD.data_part(u), info.nfe))
    return out


def test_sscs_em_ode_match_mixture():
    """SSCS (100 steps), EM (200) and the adaptive probability-flow ODE on the 2-D mixture, in one compile."""
    outs = _draw_all(jax.random.PRNGKey(0), [MIX2D.score_fn(CLD)] * 3)
    a, b = (np.asarray(MIX2D.sample(jax.random.PRNGKey(k), 2000)) for k in (101, 102))
    sw_ref = sliced_w1(a, b)
    sws = [sliced_w1(np.asarray(x), a) for x, _ in outs]
    for label, sw, (x, nfe) in zip(["sscs", "em", "ode"], sws, outs):
        assert np.all(np.isfinite(np.asarray(x))) and int(nfe) > 0, label
        np.testing.assert_allclose(np.asarray(x).mean(0), a.mean(0), atol=0.15, err_msg=label)
        assert sw <= 3 * sw_ref + 0.03, f"{label}: SW {sw:.4f} > 3 x {sw_ref:.4f} + 0.03"
    # the statistic rejects the SSCS samples against a mixture shifted by 0.2 (so it can fail)
    assert sliced_w1(np.asarray(outs[0][0]), a + 0.2) > 3 * sw_ref + 0.03


def test_sampler_call_returns_data_and_velocity_and_refuses_scalar_kernel_samplers():
    sf = MIX2D.score_fn(CLD)
    sampler = solvers.get("sscs", n_steps=4)
    x, info = sampler(jax.random.PRNGKey(0), CLD, sf, (5, 2))
    assert x.shape == (5, 2) and info.velocity.shape == (5, 2) and int(info.nfe) == 4
    u0 = CLD.join(x, info.velocity)
    x2, info2 = sampler(jax.random.PRNGKey(1), CLD, sf, x_init=u0, t_init=0.5)
    assert x2.shape == (5, 2) and np.all(np.isfinite(np.asarray(x2)))
    for name in ("ddim", "dpm_solver", "edm_heun", "unipc", "pc", "euler_maruyama"):
        with pytest.raises(ValueError, match="samplers that can run CLD: .*sscs"):
            solvers.get(name)(jax.random.PRNGKey(0), CLD, sf, (4, 2))
    with pytest.raises(ValueError, match="needs sscs_split"):
        sampler(jax.random.PRNGKey(0), ss.VPSDE(), MIX2D.score_fn(ss.VPSDE()), (4, 2))
    with pytest.raises(ValueError, match=r"this SDE's score has shape \(4, 2\)"):
        sampler(jax.random.PRNGKey(0), CLD, lambda u, t: u, (4, 2))



def test_inverse_and_edit_refuse_cld_in_one_line():
    """inpainting, colourisation, linear inverse problems and the editing tools use alpha(t) / std(t):
    with CLD they fail before any work with the capability they need."""
    from score_sde import edit, inverse

    sf, key, x = MIX2D.score_fn(CLD), jax.random.PRNGKey(0), jnp.zeros((4, 2))
    calls = {
        "inverse.inpaint": lambda: inverse.inpaint(key, CLD, sf, x, jnp.ones(2)),
        "inverse.colorize": lambda: inverse.colorize(key, CLD, sf, jnp.zeros((1, 2, 2, 1))),
        "inverse.linear": lambda: inverse.linear(key, CLD, sf, jnp.zeros((4, 1)), jnp.ones((1, 2)), (4, 2)),
        "edit.sdedit": lambda: edit.sdedit(key, solvers.get("sscs", n_steps=4), CLD, sf, x, 0.5),
        "edit.encode": lambda: edit.encode(CLD, sf, x),
        "edit.decode": lambda: edit.decode(CLD, sf, x),
        "edit.interpolate": lambda: edit.interpolate(CLD, sf, x, x, 3),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"{name} needs scalar_kernel .* which CLD does not offer"):
            call()

def test_likelihood_of_joint_state_and_velocity_elbo():
    """ODE log p(x, v) with the exact score equals the oracle's density; the ELBO over v0 lies below
    log p(x0) (exact for this Gaussian) and above it minus a stated gap."""
    gauss = ss.GaussianMixture(jnp.ones(1), jnp.array([[0.5, -0.5]]), jnp.array([0.6]))
    sf = gauss.score_fn(CLD)
    x0 = gauss.sample(jax.random.PRNGKey(3), 16)
    key = jax.random.PRNGKey(4)
    u0, log_q = CLD.augment(jax.random.fold_in(key, ss.likelihood.AUX_STREAM), x0)  # augmented_elbo's draw 0
    eps = 1e-3
    res = ss.likelihood.log_likelihood(None, CLD, sf, u0, eps=eps)
    np.testing.assert_allclose(res.logp, sf.log_prob(u0, eps), atol=2e-2)
    bound, nfe = ss.likelihood.augmented_elbo(key, CLD, sf, x0, eps=eps)
    np.testing.assert_allclose(bound, res.logp - log_q, atol=1e-4)  # the same v0 draw
    # E_v0[log p(x0, v0) - log q(v0)] = log p(x0) - KL(q || p(v0 | x0)) <= log p(x0), averaged over examples
    logp_x = np.asarray(gauss.log_prob(x0))
    assert np.mean(np.asarray(bound)) <= np.mean(logp_x) + 0.1
    assert np.mean(np.asarray(bound)) >= np.mean(logp_x) - 1.0


def test_hsm_loss_differences_equal_explicit_score_matching():
    """HSM(s1) - HSM(s2) = ESM(s1) - ESM(s2) for any s1, s2 (the constant cancels), ESM measured with the
    exact velocity score; per example with common random numbers, within 4 standard errors; and the
    exact score has the lower loss. A wrong target (sign or l_t) breaks the identity."""
    gauss = ss.GaussianMixture(jnp.array([0.4, 0.6]), jnp.array([[-1.0], [1.0]]), jnp.array([0.3, 0.4]))
    exact = gauss.score_fn(CLD)
    wrong = lambda u, t: exact(u, t) + 0.5 * u[:, 1]  # noqa: E731
    n = 8000
    x0 = gauss.sample(jax.random.PRNGKey(0), n)
    keys = losses.example_keys(jax.random.PRNGKey(1), n)
    state = jax.ShapeDtypeStruct(CLD.state_shape(x0.shape), x0.dtype)
    t, z = losses.draw_time_and_noise(keys, state, lambda k: jax.random.uniform(k, (), jnp.float32, 1e-3, 1.0))

    @jax.jit
    def parts(x0, t, z):
        def per(s):
            return losses.hsm_per_example(lambda p, u, t, r: s(u, t), CLD, None, x0, t, z, None, reduce_mean=False)

        u = CLD.perturb(x0, t, z)
        ell = CLD.hsm_scale(t)[:, None]
        return per(exact), per(wrong), jnp.sum(((wrong(u, t) - exact(u, t)) / ell) ** 2, axis=1)

    hsm_exact, hsm_wrong, esm_wrong = (np.asarray(a, np.float64) for a in parts(x0, t, z))
    diff = hsm_exact - hsm_wrong + esm_wrong
    assert abs(diff.mean()) <= 4 * diff.std() / np.sqrt(n), (diff.mean(), diff.std() / np.sqrt(n))
    assert hsm_exact.mean() < hsm_wrong.mean()
    loss = losses.get_loss_fn(lambda p, u, t, r: exact(u, t), CLD)(None, x0[:64], keys[:64])
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="continuous"):
        losses.get_loss_fn(lambda p, u, t, r: exact(u, t), CLD, continuous=False)


def test_network_parameterisation_shapes():
    """The network sees (x, v) on 2x channels; its v half becomes the mixed score (B, *dims)."""
    from score_sde import models

    assert models.network_input_shape(CLD, (8, 8, 1)) == (8, 8, 2)
    assert models.network_input_shape(CLD, (5,)) == (10,)
    assert models.network_input_shape(ss.VPSDE(), (8, 8, 1)) == (8, 8, 1)
    u = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 4, 4, 2))
    inp = CLD.network_input(u)
    np.testing.assert_array_equal(inp[..., :2], u[:, 0])
    np.testing.assert_array_equal(inp[..., 2:], u[:, 1])
    t = jnp.array([0.01, 0.5, 1.0])
    out = CLD.score_from_network(inp, u, t)  # a "network" that returns its input: alpha = v
    _, _, svv, _ = CLD.marginal_cov(t)
    expect = -u[:, 1] / svv[:, None, None, None] - CLD.hsm_scale(t)[:, None, None, None] * u[:, 1]
    np.testing.assert_allclose(out, expect, rtol=1e-6)
    c = CLD.noise_conditioning(jnp.array([1e-3, 1.0]))
    assert -8 < float(c[0]) < -4 and 4 < float(c[1]) < 8


def test_cli_train_sample_likelihood(tmp_path):
    """configs/digits_cld.py with a tiny MLP: train 2 steps, sample with SSCS, ELBO bits/dim (in process)."""
    from configs import digits_cld
    from score_sde.drivers import cli

    c = digits_cld.get_config()
    c.model.name, c.model.hidden = "mlp", (32, 32)
    c.training.update(n_iters=1, snapshot_freq=1, log_freq=1, batch_size=8)
    c.sampling.update(num_samples=4, batch_size=4)
    c.sampling.sscs.n_steps = 3
    c.likelihood.update(num_examples=2, batch_size=2, rtol=1e-2, atol=1e-2)
    work = str(tmp_path / "run")
    for mode in ("train", "sample", "likelihood"):
        assert cli.run(c, work, mode) == 0, mode
    (npz,) = (tmp_path / "run" / "samples").glob("samples_1_sscs_*.npz")  # named by options hash (issue 16)
    samples = np.load(npz)["samples"]
    assert samples.shape == (4, 8, 8, 1) and np.all(np.isfinite(samples))
    (lik,) = (tmp_path / "run" / "likelihood").glob("likelihood_1_*.json")
    with open(lik) as f:
        res = json.load(f)
    assert res["num_examples"] == 2 and np.isfinite(res["bits_per_dim"]) and res["bits_per_dim"] > 0
