"""Mixed precision (`training.precision=bf16`), rematerialisation (`model.remat`) and compiled memory.

Tolerances: bf16 keeps 8 mantissa bits (relative rounding 2^-8 = 0.4 %); on these tiny networks the
loss agrees with float32 within 1 % and the gradient within 3 % (relative L2), cosine > 0.999.
Remat changes where activations are computed, not what: outputs and gradients agree to float32
rounding (1e-6 relative).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import memory
from configs import default
from score_sde import config_utils, models
from score_sde.drivers import train
from score_sde.likelihood import log_likelihood
from score_sde.plumbing import schema
from score_sde.sde import VPSDE

X = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1))
C = jnp.linspace(-3.0, 3.0, 4)


def _unet(**kw):
    return models.UNet(nf=8, ch_mult=(1, 2), num_res_blocks=1, init_scale=1.0, **kw)


def _ddpmpp(**kw):
    return models.ddpmpp(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                         init_scale=1.0, **kw)


# LLVM's level 0: the same program, about half the XLA:CPU compile time (tests check values, not speed)
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _flat(tree):
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(tree)])


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


# --------------------------------------------------------------------------- remat
@pytest.mark.parametrize("make", [_unet, _ddpmpp], ids=["unet", "ddpmpp"])
def test_remat_keeps_the_parameter_tree(make):
    """Same names, shapes and initial values with remat (eval_shape / a traced init: no compile), so
    checkpoints interchange."""
    plain, remat = (jax.eval_shape(make(remat=r).init, jax.random.PRNGKey(1), X, C)["params"] for r in (False, True))
    assert jax.tree.structure(plain) == jax.tree.structure(remat)
    assert jax.tree.map(lambda a: a.shape, plain) == jax.tree.map(lambda a: a.shape, remat)


@pytest.mark.parametrize("make", [_unet, _ddpmpp], ids=["unet", "ddpmpp"])
def test_remat_saves_fewer_activation_bytes(make):
    """The residuals the backward pass keeps (the leaves of jax.vjp's closure, by eval_shape: tracing only):
    with remat each block's inputs, without it every intermediate (measured 0.30 / 0.32 of the bytes).
    XLA:CPU's compiled temp bytes do not show this (README: its schedule keeps them), so the direction
    is asserted on the residuals."""
    params = jax.eval_shape(make().init, jax.random.PRNGKey(1), X, C)["params"]

    def saved(net):
        f = lambda q: jnp.mean(net.apply({"params": q}, X, C) ** 2)  # noqa: E731
        res = jax.eval_shape(lambda p: jax.vjp(f, p)[1], params)
        return sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(res))

    plain, remat = saved(make()), saved(make(remat=True))
    assert remat < 0.6 * plain, (remat, plain)


# --------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("make", [_unet, _ddpmpp], ids=["unet", "ddpmpp"])
def test_bf16_network_computes_in_bfloat16_returns_float32(make):
    net = make(dtype=jnp.bfloat16)
    params = jax.eval_shape(net.init, jax.random.PRNGKey(1), X, C)["params"]
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(params))  # parameters stay float32
    jaxpr = jax.make_jaxpr(lambda p: net.apply({"params": p}, X, C))(params)
    heavy = [line.split("=")[0] for line in str(jaxpr).splitlines()
             if "= conv_general_dilated" in line or "= dot_general" in line]
    assert len(heavy) > 20 and all("bf16[" in out for out in heavy)  # every conv and matmul yields bfloat16
    assert jaxpr.out_avals[0].dtype == jnp.float32  # the output (the score's source) is float32
    score = models.ScoreModel(net, {"params": params}, VPSDE())
    assert jax.eval_shape(lambda s, x: s(x, jnp.full((4,), 0.5)), score, X).dtype == jnp.float32


def _step_config(precision="fp32", remat=False):
    config = default.get_default_configs()
    config.model.update(nf=8, ch_mult=(1,), num_res_blocks=1, init_scale=1.0, remat=remat)
    config.training.precision = precision
    return config


def test_train_loss_and_gradient_fp32_vs_bf16_vs_remat():
    """The training loss (loss_fn_from_config, the one make_train_step differentiates) and its gradient,
    on one batch with the same keys, in one compiled program: float32, bf16 (training.precision) and
    model.remat. A step of SGD at lr 1 is params - gradient, so one step agrees as the gradient does.
    Remat: equal to float32 rounding (1e-6); bf16: loss within 1 %, gradient 3 % (relative L2), cosine > 0.999."""
    configs = {"fp32": _step_config(), "bf16": _step_config("bf16"), "remat": _step_config(remat=True)}
    sde = config_utils.objects(configs["fp32"]).sde
    losses = {k: train.loss_fn_from_config(c, models.with_precision(config_utils.objects(c).net,
                                                                    c.training.precision), sde)
              for k, c in configs.items()}
    net = config_utils.objects(configs["fp32"]).net
    params = jax.jit(net.init)(jax.random.PRNGKey(3), X[:, :4, :4], C)["params"]
    batch = jax.random.uniform(jax.random.PRNGKey(4), (8, 4, 4, 1), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.PRNGKey(5), 8)
    both = jax.jit(lambda p: {k: jax.value_and_grad(f)(p, batch, keys) for k, f in losses.items()})
    out = both.lower(params).compile(compiler_options=_FAST_COMPILE)(params)
    (l32, g32), (l16, g16), (lre, gre) = out["fp32"], out["bf16"], out["remat"]
    assert l16.dtype == jnp.float32 and {a.dtype for a in jax.tree.leaves(g16)} == {np.dtype("float32")}
    assert abs(float(lre / l32) - 1) < 1e-6 and _rel(_flat(gre), _flat(g32)) < 1e-6
    assert abs(float(l16 / l32) - 1) < 1e-2
    assert _rel(_flat(g16), _flat(g32)) < 3e-2
    assert float(_flat(g16) @ _flat(g32) / jnp.linalg.norm(_flat(g16)) / jnp.linalg.norm(_flat(g32))) > 0.999


def test_bf16_train_state_stays_float32():
    """One bf16 step (make_train_step with the AdamW optimizer of the config), traced by eval_shape:
    params, EMA and optimizer state are float32, as is the loss."""
    config = _step_config("bf16")
    net, sde = config_utils.objects(config).net, config_utils.objects(config).sde
    opt = train.make_optimizer(config.optim)
    state = jax.eval_shape(lambda k: train.create_train_state(k, net, opt, (4, 4, 1)), jax.random.PRNGKey(3))
    loss = train.loss_fn_from_config(config, models.with_precision(net, "bf16"), sde)
    new, metrics = jax.eval_shape(train.make_train_step(loss, opt, 0.999),
                                  state, jax.ShapeDtypeStruct((8, 4, 4, 1), jnp.float32))
    floats = {a.dtype for a in jax.tree.leaves((new.params, new.ema_params, new.opt_state))
              if jnp.issubdtype(a.dtype, jnp.floating)}
    assert floats == {np.dtype("float32")} and metrics["loss"].dtype == jnp.float32


def test_bf16_training_leaves_sampling_and_likelihood_float32(monkeypatch, tmp_path):
    """The training driver hands the loss a bfloat16 network; the config's own network (sampling,
    likelihood, the snapshot sampler) stays float32, and so does a likelihood through it."""
    config = _step_config("bf16")
    config.model.ch_mult = (1, 2)
    config.training.batch_size = 2
    seen = {}

    def fake_step_for_config(cfg, model, sde):
        seen["model"] = model
        raise KeyboardInterrupt  # stop before anything compiles

    monkeypatch.setattr(train, "step_for_config", fake_step_for_config)
    with pytest.raises(KeyboardInterrupt):
        train.train(config, str(tmp_path))
    assert seen["model"].dtype == jnp.bfloat16
    objects = config_utils.objects(config)
    assert objects.net.dtype is None
    params = jax.eval_shape(objects.net.init, jax.random.PRNGKey(1), X, C)["params"]
    score = models.ScoreModel(objects.net, {"params": params}, objects.sde)
    assert jax.eval_shape(lambda s, x: s(x, jnp.full((4,), 0.5)), score, X).dtype == jnp.float32
    res = jax.eval_shape(lambda s, x: log_likelihood(jax.random.PRNGKey(0), objects.sde, s, x,
                                                     divergence="hutchinson"), score, X)
    assert res.logp.dtype == jnp.float32


def test_precision_bad_values_one_line_errors():
    with pytest.raises(ValueError, match="unknown training.precision 'fp16'; valid precisions: fp32, bf16"):
        models.with_precision(_unet(), "fp16")
    with pytest.raises(ValueError, match="has none: use training.precision=fp32"):
        models.with_precision(models.MLP(), "bf16")
    config = default.get_default_configs()
    config.training.precision = "half"
    assert "training.precision must be one of fp32, bf16, got 'half'" in schema.check(config)


# --------------------------------------------------------------------------- compiled memory
def test_compiled_memory_grows_with_batch():
    """benchmarks.memory's figures move the right way: the sampler step at batch 8 needs more argument,
    output and total bytes than at batch 2, and the parameters (the argument's constant part) are the same."""
    config = memory.make_config("ddpmpp", 4, smoke=True)
    config.model.ch_mult = (1,)
    small, large = (memory.compiled_bytes(*_prog(memory.programs(config, b)["sample"])) for b in (2, 8))
    assert large["total"] > small["total"]
    assert large["output"] == 4 * small["output"]  # the drift is like x
    params = memory.programs(config, 2)["sample"][1][0]
    param_bytes = sum(int(np.prod(a.shape)) * 4 for a in jax.tree.leaves(params))
    assert large["argument"] - small["argument"] == 6 * 4 * 4 * 3 * 4  # x grows; params and t do not
    assert small["argument"] >= param_bytes


def _prog(entry):
    fn, args = entry
    return (fn, *args)


def test_largest_batch_from_the_line():
    """bytes = 1001 + 10 B: 16 GB fits floor((16e9 - 1001) / 10); the fit error at a third batch is read back."""
    by_batch = {1: {"total": 1011}, 2: {"total": 1021}, 4: {"total": 1045}}
    b_max, fit = memory.largest_batch(by_batch, 16e9)
    assert b_max == (16 * 10**9 - 1001) // 10
    assert fit["per_example"] == 10 and fit["constant"] == 1001
    assert fit["max_rel_error"] == pytest.approx(4 / 1045)
    assert memory.largest_batch({1: {"total": 1011}, 2: {"total": 1000}}, 16e9)[0] is None  # no growth: no fit


def test_batch_limit_fit_moves_the_right_way(monkeypatch):
    """The table's largest batch from compiled bytes (one-level DDPM++ sampler step, batches 2 and 4): more
    memory fits more examples, a larger image fewer (its activations per example are larger), the line
    through two batches has a positive slope; rows merge into the markdown table by their key."""
    make_config = memory.make_config
    monkeypatch.setattr(memory, "make_config", lambda *a, **k: _one_level(make_config(*a, **k)))
    rows = []
    memory.run(["ddpmpp"], [4, 8], [2, 4], ["sample"], [False], smoke=True, write=lambda r: rows.append(r))
    small, large = rows[-1]
    assert (small["image_size"], large["image_size"]) == (4, 8)
    for r in (small, large):  # per example: more than the input and its drift (the activations count too)
        assert r["fit"]["per_example"] > 2 * r["image_size"] ** 2 * 3 * 4
        assert r["max_batch_16GB"] < r["max_batch_40GB"] < r["max_batch_80GB"]
    assert large["fit"]["per_example"] > small["fit"]["per_example"]
    assert large["max_batch_16GB"] < small["max_batch_16GB"]
    text = memory.table(memory.merged(rows[-1], [dict(small, remat=True)]))
    assert text.count("| ddpmpp | 4² |") == 2 and text.count("| ddpmpp | 8² |") == 1


def _one_level(config):
    config.model.ch_mult = (1,)
    return config
