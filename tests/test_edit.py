"""Editing: SDEdit, probability-flow encode / decode, interpolation, with exact mixture scores.

Measured (float32, tsit5 at rtol = atol = 1e-6, 256 points of a 3-component 2-D mixture): the
round trip decode(encode(x)) has max relative error 9.1e-5 (VP) and 9.1e-5 (VE); the tests
require 1e-3. SDEdit at t0 = T is tested like the samplers in test_solvers.py (sliced W1 within
3 SW_ref + 0.03 of an exact data sample); at small t0 against the closed form for one Gaussian.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import edit

from helpers import SDES, sliced_w1

GMM3 = ss.GaussianMixture(jnp.array([0.4, 0.4, 0.2]), jnp.array([[-1.5, -2.0], [1.5, -2.0], [0.0, 2.0]]),
                          jnp.array([0.5, 0.5, 0.5]))
TIGHT = dict(rtol=1e-6, atol=1e-6)


def max_rel(a, b):
    a, b = np.asarray(a, np.float64).reshape(len(a), -1), np.asarray(b, np.float64).reshape(len(b), -1)
    return float(np.max(np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)))


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_decode_encode_round_trip(sde_name):
    """decode(encode(x)) = x to 1e-3 relative; z is close to the prior's scale (std within 15%)."""
    sde = SDES[sde_name]
    x = GMM3.sample(jax.random.PRNGKey(0), 256)
    z = edit.encode(sde, GMM3.score_fn(sde), x, **TIGHT)
    assert z.shape == x.shape and abs(float(jnp.std(z)) / sde.prior_std - 1) < 0.15
    err = max_rel(edit.decode(sde, GMM3.score_fn(sde), z, **TIGHT), x)
    assert err < 1e-3, err


def test_sdedit_from_T_samples_the_data():
    """t0 = T forgets the guide (all guides at (3, -3)): SW to an exact sample <= 3 SW_ref + 0.03."""
    sde, n = SDES["vp"], 2000
    guide = jnp.broadcast_to(jnp.array([3.0, -3.0]), (n, 2))
    x, info = edit.sdedit(jax.random.PRNGKey(1), ss.solvers.get("euler_maruyama", n_steps=200), sde,
                          GMM3.score_fn(sde), guide, sde.T)
    assert int(info.nfe) == 201
    a, b = (np.asarray(GMM3.sample(jax.random.PRNGKey(k), n)) for k in (2, 3))
    ref, sw = sliced_w1(a, b), sliced_w1(x, a)
    assert sw <= 3 * ref + 0.03, (sw, ref)


def test_sdedit_small_t0_stays_near_the_guide():
    """One Gaussian N(mu, s^2 I), guides from it, t0 = 0.05: x and the guide are two draws of x0 | x_t0,
    so E|x - x_guide|^2 = 2 D s^2 std^2 / (alpha^2 s^2 + std^2) (0.108 here; 1.0 for unrelated
    draws). Within 10% (~4.5 standard errors at n = 2000)."""
    sde, n, t0, s = SDES["vp"], 2000, 0.05, 0.5
    gauss = ss.GaussianMixture(jnp.ones(1), jnp.array([[1.0, -1.0]]), jnp.array([s]))
    guide = gauss.sample(jax.random.PRNGKey(4), n)
    x, _ = edit.sdedit(jax.random.PRNGKey(5), ss.solvers.get("euler_maruyama", n_steps=100), sde,
                       gauss.score_fn(sde), guide, t0)
    a, sd = float(sde.alpha(t0)), float(sde.std(t0))
    expected = 2 * 2 * s**2 * sd**2 / (a**2 * s**2 + sd**2)
    measured = float(np.mean(np.sum((np.asarray(x) - np.asarray(guide)) ** 2, axis=1)))
    assert abs(measured / expected - 1) < 0.10, (measured, expected)


def test_interpolation_endpoints_and_slerp():
    """Endpoints reproduce x_a and x_b to 1e-3 relative; slerp keeps the norm of equal-norm latents and
    equals its closed form on a right angle (1e-6); the path's latents (encoded again) are the slerp of
    the endpoints' latents to 1e-3 relative (measured 3e-6; linear interpolation of the latents: 0.89)."""
    sde = SDES["vp"]
    x = GMM3.sample(jax.random.PRNGKey(6), 8)
    path = edit.interpolate(sde, GMM3.score_fn(sde), x[:4], x[4:], 5, **TIGHT)
    assert path.shape == (4, 5, 2) and np.all(np.isfinite(np.asarray(path)))
    assert max_rel(path[:, 0], x[:4]) < 1e-3 and max_rel(path[:, -1], x[4:]) < 1e-3
    za = jnp.array([[3.0, 0.0], [1.0, 1.0]])
    zb = jnp.array([[0.0, 3.0], [1.0, 1.0]])  # the second pair is parallel: linear interpolation
    zs = edit.slerp(za, zb, jnp.linspace(0, 1, 7))
    np.testing.assert_allclose(jnp.linalg.norm(zs[0], axis=-1), 3.0, rtol=1e-6)
    np.testing.assert_allclose(zs[:, 0], za, atol=1e-6)
    np.testing.assert_allclose(zs[:, -1], zb, atol=1e-6)
    np.testing.assert_allclose(zs[1], jnp.ones((7, 2)), atol=1e-6)
    # unequal norms at a right angle: z(l) = cos(l pi / 2) z_a + sin(l pi / 2) z_b, written out
    lam = jnp.linspace(0, 1, 5)
    a, b = jnp.array([2.0, 0.0]), jnp.array([0.0, 0.5])
    want = jnp.cos(lam * jnp.pi / 2)[:, None] * a + jnp.sin(lam * jnp.pi / 2)[:, None] * b
    np.testing.assert_allclose(edit.slerp(a[None], b[None], lam)[0], want, atol=1e-6)
    # the path's latents are the slerp of the endpoints' latents (encode inverts decode to 1e-3 relative);
    # linear interpolation of the latents lands 0.89 away (relative)
    z = edit.encode(sde, GMM3.score_fn(sde), x, **TIGHT)
    z_path = edit.encode(sde, GMM3.score_fn(sde), path.reshape(20, 2), **TIGHT).reshape(4, 5, 2)
    z_slerp = edit.slerp(z[:4], z[4:], jnp.linspace(0, 1, 5))
    assert max_rel(z_path.reshape(20, 2), z_slerp.reshape(20, 2)) < 1e-3


def test_errors():
    sde, sf = SDES["vp"], GMM3.score_fn(SDES["vp"])
    x = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="n must be an int >= 2"):
        edit.interpolate(sde, sf, x, x, 1)
    with pytest.raises(ValueError, match="same shape"):
        edit.interpolate(sde, sf, x, jnp.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match=r"t_init must lie in \(eps, T\]"):
        edit.sdedit(jax.random.PRNGKey(0), ss.solvers.get("ddim", n_steps=5), sde, sf, x, 1.5)
    with pytest.raises(ValueError, match="unknown ODE solver 'rk9'"):
        edit.encode(sde, sf, x, solver="rk9")
    with pytest.raises(ValueError, match=r"x must be \(B, \*dims\)"):
        edit.encode(sde, sf, jnp.zeros(2))
