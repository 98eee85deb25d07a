"""Score networks: shapes of every configuration family, dropout, parameter counts of the
paper's CIFAR-10 configurations, FIR resampling and embeddings against closed forms,
the parameterisation against exact Gaussian scores, and the name -> model table."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import score_sde as ss
from score_sde import models
from score_sde.models import embeddings, resample
from configs.default import get_default_configs

from helpers import SDES


def _variables(model, x, c, seed=0):
    """Deterministic variables without running the (slow to compile on CPU) random initialisers.

    Shapes come from `jax.eval_shape(model.init)`; kernels are N(0, 1/fan_in), biases 0,
    GroupNorm scales 1. The real initialisers are tested separately (`default_init`).
    """
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, c)
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            return jnp.asarray(rng.normal(size=s.shape) / math.sqrt(math.prod(s.shape[:-1])), s.dtype)
        return jnp.ones(s.shape, s.dtype) if name == "scale" else jnp.zeros(s.shape, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _init_and_apply(model, shape, key=0):
    x = jax.random.normal(jax.random.PRNGKey(key), shape)
    c = jnp.linspace(-7.0, 5.0, shape[0])
    variables = _variables(model, x, c)
    return x, c, model.apply(variables, x, c), variables


def _n_params(tree) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


TINY = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0, init_scale=1.0)
FAMILIES = {
    "ddpm_plain_positional": dict(resblock_type="ddpm", fir=False, progressive_input="none",
                                  embedding_type="positional"),
    "ddpm_fir_attn": dict(resblock_type="ddpm", fir=True, progressive_input="none", attn_resolutions=(8,)),
    "biggan_plain_fourier": dict(resblock_type="biggan", fir=False, progressive_input="none"),
    "biggan_fir_input_residual": dict(resblock_type="biggan", fir=True, progressive_input="residual"),
    "output_skip_input_skip_sum": dict(progressive="output_skip", progressive_input="input_skip", fir=True),
    "residual_input_skip_cat": dict(progressive="residual", progressive_input="input_skip",
                                    progressive_combine="cat", fir=False, attn_resolutions=(4,)),
    "unconditional_no_skip_rescale": dict(conditional=False, skip_rescale=False, resblock_type="ddpm"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_ncsnpp_families_output_shape_and_conditioning(family):
    model = models.NCSNpp(**{**TINY, **FAMILIES[family]})
    x, c, out, variables = _init_and_apply(model, (2, 8, 8, 1))
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    # The two examples differ in x and c; a conditional network must also react to c alone.
    out_swapped = model.apply(variables, x, c[::-1])
    changed = float(jnp.max(jnp.abs(out_swapped - out)))
    assert changed > 1e-6 if model.conditional else changed == 0.0


def test_ncsnpp_16x16_three_levels():
    model = models.ncsnpp(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0)
    x, _, out, _ = _init_and_apply(model, (2, 16, 16, 1))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_default_init_variance_scaling_and_init_scale_zero():
    """fan_avg uniform: Var = scale / ((fan_in + fan_out) / 2); 3x3x32x32 has fan_avg 288.
    Sampling tolerance 3% on the std of 9216 draws; init_scale 0 means 1e-10 (std ~6e-7)."""
    key, shape = jax.random.PRNGKey(0), (3, 3, 32, 32)
    w1 = models.layers.default_init(1.0)(key, shape)
    w0 = models.layers.default_init(0.0)(key, shape)
    np.testing.assert_allclose(float(jnp.std(w1)), math.sqrt(1.0 / 288.0), rtol=0.03)
    np.testing.assert_allclose(float(jnp.std(w0)), math.sqrt(1e-10 / 288.0), rtol=0.03)


def test_unet_shape_and_bad_shape_message():
    model = models.UNet(nf=16, ch_mult=(1, 2), attn_resolutions=(4,), init_scale=1.0)
    x, _, out, _ = _init_and_apply(model, (2, 8, 8, 1))
    assert out.shape == x.shape
    with pytest.raises(ValueError, match="divisible by 2"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 7, 1)), jnp.zeros(1))


def test_invalid_option_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"progressive must be one of \('none', 'output_skip', 'residual'\)"):
        model = models.NCSNpp(**{**TINY, "progressive": "skip"})
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))


@pytest.mark.parametrize("model", [models.UNet(nf=16, dropout=0.5, init_scale=1.0),
                                   models.ddpmpp(**{**TINY, "dropout": 0.5})], ids=["unet", "ddpmpp"])
def test_dropout_active_in_train_mode_only(model):
    x, c, _, variables = _init_and_apply(model, (2, 8, 8, 1))
    ev1, ev2 = model.apply(variables, x, c, train=False), model.apply(variables, x, c, train=False)
    tr1 = model.apply(variables, x, c, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    tr1b = model.apply(variables, x, c, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
    tr2 = model.apply(variables, x, c, train=True, rngs={"dropout": jax.random.PRNGKey(4)})
    np.testing.assert_array_equal(ev1, ev2)
    np.testing.assert_array_equal(tr1, tr1b)
    assert float(jnp.max(jnp.abs(tr1 - ev1))) > 1e-4
    assert float(jnp.max(jnp.abs(tr1 - tr2))) > 1e-4


# Paper (Song et al. 2021): DDPM++ cont. 62M, NCSN++ cont. 63M parameters on CIFAR-10.
# Tolerance: 1% of the rounded figure (ours: 61.80M and 62.76M, see the README).
@pytest.mark.parametrize("builder, paper", [(models.ddpmpp, 62e6), (models.ncsnpp, 63e6)], ids=["ddpmpp", "ncsnpp"])
def test_cifar10_parameter_counts_match_paper(builder, paper):
    model = builder()
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros(1)))
    n = _n_params(shapes["params"])
    assert abs(n - paper) / paper < 0.01, f"{n:,} parameters, paper {paper:,.0f}"


# --- FIR resampling and embeddings against closed forms --------------------------------
def _upfirdn_1d(x, k, up, down, pad0, pad1):
    """StyleGAN2's definition in numpy: zero after each sample, pad, convolve (valid), decimate."""
    z = np.zeros(len(x) * up)
    z[::up] = x
    z = np.concatenate([np.zeros(pad0), z, np.zeros(pad1)])
    return np.convolve(z, k, mode="valid")[::down]


def test_fir_resampling_matches_upfirdn_definition(x64):
    """A rank-one image u v^T resamples to (1-D result of u)(1-D result of v)^T; float64, atol 1e-12."""
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=8), rng.normal(size=8)
    img = jnp.asarray(np.outer(u, v)[None, :, :, None])
    k = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
    up = np.asarray(resample.upsample_fir(img, (1, 3, 3, 1)))[0, :, :, 0]
    want = np.outer(_upfirdn_1d(u, 2 * k, 2, 1, 2, 1), _upfirdn_1d(v, 2 * k, 2, 1, 2, 1))
    np.testing.assert_allclose(up, want, atol=1e-12)
    down = np.asarray(resample.downsample_fir(img, (1, 3, 3, 1)))[0, :, :, 0]
    want = np.outer(_upfirdn_1d(u, k, 1, 2, 1, 1), _upfirdn_1d(v, k, 1, 2, 1, 1))
    np.testing.assert_allclose(down, want, atol=1e-12)
    # Constant images stay constant away from the zero-padded borders.
    ones = jnp.ones((1, 8, 8, 2))
    np.testing.assert_allclose(resample.upsample_fir(ones)[0, 2:-2, 2:-2], 1.0, atol=1e-12)
    np.testing.assert_allclose(resample.downsample_fir(ones)[0, 1:-1, 1:-1], 1.0, atol=1e-12)


def test_positional_embedding_formula_on_real_inputs(x64):
    c = jnp.array([-6.3, -0.5, 0.0, 4.2])
    emb = embeddings.positional_embedding(c, 8)
    w = 10000.0 ** (-np.arange(4) / 3.0)
    ang = 100.0 * np.asarray(c)[:, None] * w[None]
    np.testing.assert_allclose(emb, np.concatenate([np.sin(ang), np.cos(ang)], 1), rtol=1e-12, atol=1e-12)
    assert embeddings.positional_embedding(c, 9).shape == (4, 9)


def test_gaussian_fourier_projection_is_a_fixed_constant_not_a_parameter():
    c = jnp.array([-2.0, 1.5])
    a = embeddings.gaussian_fourier_projection(c, 16, scale=16.0)
    b = jax.jit(lambda c: embeddings.gaussian_fourier_projection(c, 16, scale=16.0))(c)
    assert a.shape == (2, 32)
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(a[:, :16] ** 2 + a[:, 16:] ** 2, 1.0, rtol=1e-5)  # sin^2 + cos^2
    # NCSN++'s parameter tree holds no projection matrix: only Dense/Conv/GroupNorm leaves.
    shapes = jax.eval_shape(lambda: models.ncsnpp(**TINY).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)),
                                                              jnp.zeros(1)))
    assert all(p[-1].key in ("kernel", "bias", "scale") for p, _ in jax.tree_util.tree_leaves_with_path(shapes))


# --- parameterisation -----------------------------------------------------------------
class ExactGaussianEps(nn.Module):
    """The exact noise prediction for data N(mu, s0^2 I), computed from c_noise alone.

    With r = exp(c) = std / alpha, the SDE family fixes alpha(r): VP alpha = 1 / sqrt(1 + r^2),
    sub-VP alpha = (sqrt(r^2 + 4) - r) / 2 (from std = 1 - alpha^2), VE alpha = 1. Then
    eps_hat = -std * score = std (x - alpha mu) / (alpha^2 s0^2 + std^2).
    """

    mu: float
    s0: float
    family: str

    def __call__(self, x, c_noise, train=False):
        r = jnp.exp(c_noise)
        alpha = {"vp": 1.0 / jnp.sqrt(1.0 + r**2), "subvp": 0.5 * (jnp.sqrt(r**2 + 4.0) - r),
                 "ve": jnp.ones_like(r)}[self.family]
        alpha, std = alpha[:, None, None, None], (r * alpha)[:, None, None, None]
        return std * (x - alpha * self.mu) / (alpha**2 * self.s0**2 + std**2)


@pytest.mark.parametrize("family, sde", list(SDES.items()))
def test_exact_noise_prediction_gives_exact_score(family, sde, x64):
    """float64; rtol 1e-8 (the only error is rounding in exp/log of the conditioning)."""
    mu, s0 = 0.7, 0.3
    gauss = ss.analytic.GaussianMixture(jnp.ones(1), jnp.full((1, 4, 4, 1), mu), s0)
    t = jnp.array([1e-3, 0.05, 0.3, 0.7, 1.0])
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4, 4, 1), jnp.float64) * 2.0
    net = ExactGaussianEps(mu, s0, family)
    got = models.model_score(net, {}, sde, x, t)
    want = gauss.marginal_score(sde, x, t)
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(models.score_fn(net, {}, sde)(x, 0.3), gauss.marginal_score(sde, x, 0.3), rtol=1e-8)


# --- name -> model table ----------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("mlp", models.MLP), ("unet", models.UNet), ("ddpmpp", models.NCSNpp),
                                       ("ncsnpp", models.NCSNpp)])
def test_get_model_builds_each_name_from_config(name, cls):
    config = get_default_configs().model
    config.name = name.upper() if name == "unet" else name
    config.fir_kernel = [1, 3, 3, 1]  # a list, as a command-line override gives it
    model = models.get_model(config)
    assert type(model) is cls
    hash(model)  # modules are static arguments of jit (ModelScore): they must hash
    shape = (2, 2) if name == "mlp" else (2, 8, 8, 1)
    x, _, out, _ = _init_and_apply(model, shape)
    assert out.shape == x.shape
    if cls is models.NCSNpp:
        assert model.nf == config.nf and model.ch_mult == (1, 2) and model.fir_kernel == (1, 3, 3, 1)


def test_get_model_fills_missing_fields_with_family_settings():
    model = models.get_model(ml_collections.ConfigDict({"name": "ncsnpp", "nf": 64}))
    assert model == models.ncsnpp(nf=64)
    assert models.get_model({"name": "ddpmpp"}) == models.ddpmpp()


def test_get_model_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model name 'resnet'; valid names: mlp, unet, ddpmpp, ncsnpp"):
        models.get_model({"name": "resnet"})
