"""Guidance (score_sde.guidance) and the mixture's class-conditional oracle, against closed forms.

Oracle: for a Gaussian mixture with the component id as the class, p_t(x | y) is component y's
perturbed marginal N(alpha mu_y, v_y I) (the K = 1 mixture with that component), and
log p_t(y | x) = log w_y + log p_t(x | y) - log p_t(x) (Bayes). Hence, exactly,
grad_x log p_t(y | x) = cond score(y) - unconditional score: classifier guidance at scale 1 with the
exact classifier and classifier-free guidance at scale 0 with the exact conditional score are both
the exact conditional score, and every sampler must then sample component y. Samples are compared
with an exact sample of the component as in tests/test_solvers.py (sliced W1 within 3x the
two-exact-sample distance + margin), plus the fraction of samples nearest to their label's mean.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde import guidance, solvers
from score_sde.sde import batch_times

from helpers import SDES, CountingScore, sliced_w1

# Three well-separated components (>= 3.8 std between any mean and the midpoint to another),
# one of them rare (weight 0.1), so guidance has to do the work.
MIX3 = ss.GaussianMixture(jnp.array([0.6, 0.3, 0.1]), jnp.array([[-3.0, 0.0], [3.0, 0.0], [0.0, 3.5]]),
                          jnp.array([0.5, 0.4, 0.6]))

# Cheap settings for every registered sampler (test_every_sampler_has_cheap_settings keeps this complete;
# a name not registered yet is unused).
CHEAP = {
    "ddim": dict(n_steps=20),
    "dpm_solver": dict(n_steps=10),
    "edm_heun": dict(n_steps=10),
    "euler_maruyama": dict(n_steps=100),
    "ipndm": dict(n_steps=10),
    "ode": dict(rtol=1e-3, atol=1e-3),
    "pc": dict(n_steps=50),
    "student": dict(n_steps=20),
    "unipc": dict(n_steps=10),
}


def component(k):
    """Component k of MIX3 as its own (K = 1) mixture: the closed form of p_t(x | y = k)."""
    return ss.GaussianMixture(jnp.ones(1), MIX3.means[k:k + 1], MIX3.stds[k:k + 1])


def points(b=12, dtype=jnp.float64):
    """x spread over the three components and between them, times from near 0 to T, labels 0..2."""
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(5), (b, 2), dtype)
    t = jnp.linspace(1e-3, 1.0, b, dtype=dtype)
    return x, t, jnp.arange(b) % 3


class _Unpack(eqx.Module):
    fn: Callable

    def __call__(self, x, ty):
        return self.fn(x, *ty)


class Counted(eqx.Module):
    """fn(x, t, y) counted by a CountingScore (which takes (x, t): here t carries (t, y))."""

    counter: CountingScore

    def __call__(self, x, t, y):
        return self.counter(x, (t, y))


def counted(fn):
    c = Counted(CountingScore(_Unpack(fn)))
    return c, c.counter


# --- the oracle ---------------------------------------------------------------------------------

def test_sample_labeled_is_sample_with_its_component_ids():
    """sample_labeled(key, n)[0] is sample(key, n) exactly; y int32 with frequencies = weights (5 SE);
    (x - mu_y) / s_y standard normal (mean 5 SE, variance 5 %)."""
    key, n = jax.random.PRNGKey(3), 20000
    x, y = MIX3.sample_labeled(key, n)
    np.testing.assert_array_equal(x, MIX3.sample(key, n))
    assert y.dtype == jnp.int32 and y.shape == (n,)
    w = np.asarray(MIX3.weights)
    freq = np.bincount(np.asarray(y), minlength=3) / n
    np.testing.assert_allclose(freq, w, atol=5 * np.sqrt(w * (1 - w) / n).max())
    z = np.asarray((x - MIX3.means[y]) / MIX3.stds[y, None])
    np.testing.assert_allclose(z.mean(0), 0.0, atol=5 / np.sqrt(n))
    np.testing.assert_allclose(z.var(0), 1.0, rtol=0.05)


@pytest.mark.parametrize("sde_name", SDES)
def test_conditional_score_is_the_component_score(sde_name, x64):
    """cond_score_fn(x, t, y) = jax.grad of the K = 1 component's log p_t (rel 1e-10), per example
    with mixed labels; y = None is the mixture's score exactly."""
    sde = SDES[sde_name]
    x, t, y = points()
    cond = MIX3.conditional_score_fn(sde)
    got = cond(x, t, y)
    for k in range(3):
        grad = jax.grad(lambda x_: jnp.sum(component(k).marginal_log_prob(sde, x_, t)))(x)
        rows = np.asarray(y) == k
        np.testing.assert_allclose(got[rows], grad[rows], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(cond(x, t, jnp.full_like(y, k)), grad, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(cond(x, t, None), MIX3.score_fn(sde)(x, t))


@pytest.mark.parametrize("sde_name", SDES)
def test_class_log_prob_is_bayes_rule(sde_name, x64):
    """log p_t(y | x) = log w_y + log p_t(x | y) - log p_t(x) (1e-10); sum_y p_t(y | x) = 1 (1e-12);
    grad_x log p_t(y | x) = cond score(y) - unconditional score (autodiff, 1e-10)."""
    sde = SDES[sde_name]
    x, t, y = points()
    log_prob = MIX3.class_log_prob_fn(sde)
    cond = MIX3.conditional_score_fn(sde)
    all_k = jnp.stack([log_prob(x, t, jnp.full_like(y, k)) for k in range(3)], axis=1)  # (B, K)
    bayes = jnp.stack([jnp.log(MIX3.weights[k]) + component(k).marginal_log_prob(sde, x, t) for k in range(3)], 1)
    bayes = bayes - MIX3.marginal_log_prob(sde, x, t)[:, None]
    np.testing.assert_allclose(all_k, bayes, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(jnp.sum(jnp.exp(all_k), axis=1), 1.0, atol=1e-12)
    got = log_prob(x, t, y)
    assert got.shape == (x.shape[0],)
    np.testing.assert_allclose(got, jnp.take_along_axis(all_k, y[:, None], 1)[:, 0], rtol=1e-12)
    grad = jax.grad(lambda x_: jnp.sum(log_prob(x_, t, y)))(x)
    np.testing.assert_allclose(grad, cond(x, t, y) - cond(x, t, None), rtol=1e-10, atol=1e-10)


# --- the wrappers: formulas, cost, compilation ----------------------------------------------------

def test_classifier_free_is_the_formula(x64):
    """(1 + w) s(y) - w s(None) with exact pieces (1e-12) for a Python, an array and a per-example
    scale; w = 0 (Python or array) is the conditional score, w = -1 the unconditional one."""
    sde = SDES["vp"]
    x, t, y = points()
    cond = MIX3.conditional_score_fn(sde)
    c, u = cond(x, t, y), cond(x, t, None)
    per_example = jnp.linspace(-1.5, 3.0, x.shape[0])
    for scale, w in [(0.7, 0.7), (jnp.asarray(2.5), 2.5), (per_example, per_example[:, None]),
                     (0.0, 0.0), (jnp.asarray(0.0), 0.0), (-1, -1.0)]:
        got = guidance.classifier_free(cond, y, scale)(x, t)
        np.testing.assert_allclose(got, (1 + w) * c - w * u, rtol=1e-12, atol=1e-12, err_msg=str(scale))
    np.testing.assert_array_equal(guidance.classifier_free(cond, y, 0.0)(x, t), c)
    np.testing.assert_allclose(guidance.classifier_free(cond, y, -1.0)(x, t), MIX3.score_fn(sde)(x, t),
                               rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(c - u))) > 1.0  # the pieces differ, so the weights matter


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_classifier_guidance_is_the_formula(sde_name, x64):
    """With the exact classifier: scale 1 = the exact conditional score (Bayes, 1e-10); scale w =
    s + w (cond - s) (1e-10), per example too; a Python 0 is the score exactly."""
    sde = SDES[sde_name]
    x, t, y = points()
    score, log_prob, cond = MIX3.score_fn(sde), MIX3.class_log_prob_fn(sde), MIX3.conditional_score_fn(sde)
    s, c = score(x, t), cond(x, t, y)
    np.testing.assert_allclose(guidance.classifier(score, log_prob, y)(x, t), c, rtol=1e-10, atol=1e-10)
    per_example = jnp.linspace(-1.0, 4.0, x.shape[0])
    for scale, w in [(2.5, 2.5), (jnp.asarray(-0.5), -0.5), (per_example, per_example[:, None])]:
        got = guidance.classifier(score, log_prob, y, scale)(x, t)
        np.testing.assert_allclose(got, s + w * (c - s), rtol=1e-10, atol=1e-10, err_msg=str(scale))
    np.testing.assert_array_equal(guidance.classifier(score, log_prob, y, 0)(x, t), s)


def test_nfe_accounting():
    """classifier_free: 2 cond_score_fn evaluations per call, 1 at a Python 0 (an array 0: 2);
    classifier: 1 score and 1 classifier evaluation per call, no classifier at a Python 0. Counted
    at run time, through a sampler (whose info.nfe counts calls of the wrapper) and per direct call."""
    sde, shape = SDES["vp"], (8, 2)
    x, t, y = jnp.zeros(shape), jnp.full((8,), 0.5), jnp.arange(8) % 3
    sampler = solvers.get("ddim", n_steps=5)
    cond, cond_count = counted(MIX3.conditional_score_fn(sde))
    _, info = sampler(jax.random.PRNGKey(0), sde, guidance.classifier_free(cond, y, 2.0), shape)
    assert cond_count.evals == 2 * int(info.nfe) == 2 * 5
    score = CountingScore(MIX3.score_fn(sde))
    log_prob, log_prob_count = counted(MIX3.class_log_prob_fn(sde))
    _, info = sampler(jax.random.PRNGKey(0), sde, guidance.classifier(score, log_prob, y, 1.0), shape)
    assert score.evals == log_prob_count.evals == int(info.nfe) == 5

    for scale, per_call in [(0.0, 1), (0, 1), (np.float32(0), 1), (jnp.asarray(0.0), 2), (-1.0, 2)]:
        before = cond_count.evals
        guidance.classifier_free(cond, y, scale)(x, t)
        assert cond_count.evals - before == per_call, scale
    for scale, per_call in [(0.0, 0), (jnp.asarray(0.0), 1), (2.0, 1)]:
        before = (score.evals, log_prob_count.evals)
        guidance.classifier(score, log_prob, y, scale)(x, t)
        assert (score.evals - before[0], log_prob_count.evals - before[1]) == (1, per_call), scale


def test_new_scales_and_labels_do_not_recompile():
    """A scale (Python number or array) and the labels are traced leaves: new values reuse the
    compiled solve (one trace), and change the samples. A traced scale works under vmap."""
    sde, shape = SDES["ve"], (6, 2)
    cond, counter = counted(MIX3.conditional_score_fn(sde))
    sampler = solvers.get("ddim", n_steps=3)
    y = jnp.zeros(6, jnp.int32)
    a, _ = sampler(jax.random.PRNGKey(0), sde, guidance.classifier_free(cond, y, 1.0), shape)
    traces = counter.traces
    b, _ = sampler(jax.random.PRNGKey(0), sde, guidance.classifier_free(cond, y, jnp.asarray(3.0)), shape)
    c, _ = sampler(jax.random.PRNGKey(0), sde, guidance.classifier_free(cond, y + 1, 2.0), shape)
    assert counter.traces == traces
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3 and float(jnp.max(jnp.abs(a - c))) > 1.0

    x, t, y = points(dtype=jnp.float32)
    plain = MIX3.conditional_score_fn(sde)
    scales = jnp.array([-1.0, 0.0, 0.5, 2.0])
    mapped = jax.vmap(lambda s: guidance.classifier_free(plain, y, s)(x, t))(scales)
    for s, m in zip(scales, mapped):
        np.testing.assert_allclose(m, guidance.classifier_free(plain, y, float(s))(x, t), rtol=1e-5, atol=1e-5)


# --- every sampler, guided, samples the chosen component --------------------------------------------

class Halves(eqx.Module):
    """A score on a batch of 2N: rows [:N] through `first`, rows [N:] through `second` (so one
    compiled solve per sampler checks both guidance paths; the samplers treat rows independently)."""

    first: Callable
    second: Callable

    def __call__(self, x, t):
        n, t = x.shape[0] // 2, batch_times(t, x.shape[0], x.dtype)
        return jnp.concatenate([self.first(x[:n], t[:n]), self.second(x[n:], t[n:])])


@eqx.filter_jit
def _sample_all(samplers, key, sde, score_fn, shape):
    return [s.sample(key, sde, score_fn, shape, jnp.float32) for s in samplers]


def check_component_samples(x, y, margin=0.03, min_mass=0.97):
    """Per label k: sliced W1 to an exact sample of component k within 3 SW_ref + margin; the
    fraction of samples nearest to their label's mean >= min_mass."""
    x, y = np.asarray(x, np.float64), np.asarray(y)
    assert np.all(np.isfinite(x))
    nearest = np.argmin(np.sum((x[:, None] - np.asarray(MIX3.means)[None]) ** 2, -1), axis=1)
    mass = float(np.mean(nearest == y))
    assert mass >= min_mass, f"only {mass:.3f} of the samples lie nearest to their label's mean"
    for k in range(3):
        rows = y == k
        a, b = (np.asarray(component(k).sample(jax.random.PRNGKey(s), int(rows.sum()))) for s in (101, 102))
        sw, sw_ref = sliced_w1(x[rows], a), sliced_w1(a, b)
        assert sw <= 3 * sw_ref + margin, f"class {k}: SW {sw:.4f} > 3 x {sw_ref:.4f} + {margin}"


def scalar_kernel_samplers():
    """Every registered sampler that runs on the scalar-kernel SDEs (VP, sub-VP, VE): all but those
    made for a velocity SDE (sscs, for CLD), which have no class-conditional oracle here."""
    vp = SDES["vp"]
    return [name for name in solvers.names() if type(solvers.get(name)).requires <= vp.capabilities]


def test_every_sampler_has_cheap_settings():
    missing = sorted(set(scalar_kernel_samplers()) - set(CHEAP))
    assert not missing, f"add cheap settings for {missing} to CHEAP"


# VP: every sampler. VE (the other schedule family; compile time is the cost): the stochastic
# predictor-corrector, the adaptive probability-flow ODE and the sigma-space Heun sampler.
@pytest.mark.parametrize("sde_name, names", [("vp", None), ("ve", ("edm_heun", "ode", "pc"))])
def test_guided_samplers_sample_the_chosen_component(sde_name, names):
    """Every sampler with classifier guidance (scale 1, exact classifier; first half of the batch)
    and classifier-free guidance (scale 0, exact conditional score; second half) samples component
    y_b for each example b: labels 0, 1, 2 in turn (200 per label and path), including the rare
    component (weight 0.1). Measured (float32): nearest-mean fraction >= 0.998 (1.000 but for
    edm_heun); SW at most 0.149 (edm_heun, 10 steps; the others <= 0.12) against SW_ref
    0.054 / 0.054 / 0.082 for the three labels; asserted SW <= 3 SW_ref + 0.03 and >= 0.97."""
    sde, n = SDES[sde_name], 600
    y = jnp.arange(n) % 3
    score = Halves(guidance.classifier(MIX3.score_fn(sde), MIX3.class_log_prob_fn(sde), y, 1.0),
                   guidance.classifier_free(MIX3.conditional_score_fn(sde), y, 0.0))
    samplers = tuple(solvers.get(name, **CHEAP[name]) for name in names or scalar_kernel_samplers())
    outs = _sample_all(samplers, jax.random.PRNGKey(0), sde, score, (2 * n, 2))
    for sampler, (x, info) in zip(samplers, outs):
        assert int(info.nfe) > 0
        for half in (x[:n], x[n:]):
            try:
                check_component_samples(half, y)
            except AssertionError as err:
                raise AssertionError(f"{type(sampler).__name__}: {err}") from None


def test_unguided_samples_fail_the_check():
    """The premise: exact mixture samples (what no guidance gives) put ~1/3 of the round-robin labels
    nearest their mean (0.6/3 + 0.3/3 + 0.1/3), so the mass check above can fail."""
    x = MIX3.sample(jax.random.PRNGKey(0), 600)
    with pytest.raises(AssertionError, match="nearest to their label's mean"):
        check_component_samples(x, jnp.arange(600) % 3)


# --- errors -----------------------------------------------------------------------------------------

def _wrappers(y=None, scale=1.0, **kw):
    sde = SDES["vp"]
    y = jnp.arange(4) % 3 if y is None else y
    return (guidance.classifier_free(MIX3.conditional_score_fn(sde), y, scale),
            guidance.classifier(MIX3.score_fn(sde), MIX3.class_log_prob_fn(sde), y, scale))


@pytest.mark.parametrize("kwargs, match", [
    (dict(y=jnp.array([0.0, 1.0, 2.0, 0.0])), r"y must be integer class labels of shape \(B,\), got float32"),
    (dict(y=jnp.zeros((4, 1), jnp.int32)), r"y must be integer class labels of shape \(B,\), got int32 of shape \(4, 1\)"),
    (dict(scale=float("nan")), "scale must be a finite real number, got nan"),
    (dict(scale=jnp.array([1.0, jnp.inf])), "scale must be finite"),
    (dict(scale=jnp.ones((2, 2))), r"scale must be a scalar or \(B,\)"),
    (dict(scale="2"), "scale must be a finite real number or array"),
    (dict(scale=True), "scale must be a finite real number or array"),
])
def test_bad_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _wrappers(**kwargs)


def test_bad_calls_are_clear_errors():
    sde = SDES["vp"]
    x, t = jnp.zeros((8, 2)), jnp.full((8,), 0.5)
    for wrapper in _wrappers():  # labels for 4 examples, called on 8
        with pytest.raises(ValueError, match=r"y has shape \(4,\) but x has batch size 8: y must be \(8,\)"):
            wrapper(x, t)
        with pytest.raises(ValueError, match=r"y has shape \(4,\) but x has batch size 8"):
            solvers.get("ddim", n_steps=2)(jax.random.PRNGKey(0), sde, wrapper, (8, 2))
    for wrapper in _wrappers(y=jnp.arange(8) % 3, scale=jnp.ones(4)):
        with pytest.raises(ValueError, match=r"scale has shape \(4,\) but x has batch size 8"):
            wrapper(x, t)
    with pytest.raises(ValueError, match="y must be integer class labels of shape \\(B,\\), got None"):
        guidance.classifier_free(MIX3.conditional_score_fn(sde), None, 1.0)
    with pytest.raises(ValueError, match="cond_score_fn must be callable"):
        guidance.classifier_free(None, jnp.zeros(8, jnp.int32), 1.0)
    per_class = lambda x, t, y: jnp.zeros((x.shape[0], 3))  # noqa: E731  (B, K), not (B,)
    with pytest.raises(ValueError, match=r"log_prob_fn\(x, t, y\) must return \(8,\) log-probabilities, got shape \(8, 3\)"):
        guidance.classifier(MIX3.score_fn(sde), per_class, jnp.zeros(8, jnp.int32))(x, t)
    cond = MIX3.conditional_score_fn(sde)
    with pytest.raises(ValueError, match=r"y must lie in \[0, 3\) \(the mixture's components\), got values in \[0, 5\]"):
        cond(x, t, jnp.array([0, 1, 2, 5, 0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"y must be integer component ids of shape \(8,\)"):
        MIX3.class_log_prob(sde, x, t, jnp.zeros(8))
    with pytest.raises(ValueError, match="class_log_prob needs labels"):
        MIX3.class_log_prob(sde, x, t, None)
