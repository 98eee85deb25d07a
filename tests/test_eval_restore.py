"""Evaluation drivers: checkpoints restore without an optimizer; a command reads each data split once.

One tiny digits run (an MLP, 4 steps, checkpoints at 2 and 4) on the two CPU devices of conftest.py,
shared by the tests of this module.
"""

import collections
import glob
import json

import jax
import numpy as np
import pytest

from configs.default import get_default_configs
from score_sde import data
from score_sde.drivers import cli, evaluate, train


def tiny_digits_config():
    c = get_default_configs()  # digits, 8x8x1
    c.model.name, c.model.hidden, c.model.ema_rate = "mlp", (32, 32), 0.5
    c.training.update(batch_size=8, n_iters=4, snapshot_freq=2, log_freq=2)
    c.optim.update(lr=1e-2, warmup=3)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir, final TrainState) of the tiny run."""
    c = tiny_digits_config()
    workdir = str(tmp_path_factory.mktemp("eval_restore") / "run")
    return c, workdir, train.train(c, workdir)


def opt_state_structure(optim, params):
    return jax.tree.structure(train.make_optimizer(optim).init(params))


def test_checkpoint_loads_under_other_optimizer_settings(trained):
    """warmup 0 (constant lr: no schedule counter), no clipping and weight decay give an optimizer
    state of another structure, so a full TrainState template could not be restored; sampling still
    loads the checkpoint, and its params equal the trained EMA params bit for bit."""
    c, workdir, state = trained
    other = tiny_digits_config()
    other.optim.update(warmup=0, grad_clip=0.0, weight_decay=0.1, lr=5e-4)
    assert opt_state_structure(other.optim, state.params) != opt_state_structure(c.optim, state.params)
    loaded = evaluate.load_score_fn(other, workdir, (8, 8, 1))
    assert loaded.step == 4 and loaded.data_shape == (8, 8, 1)
    got, want = loaded.score_fn.variables["params"], state.ema_params
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the EMA params, not the raw params (EMA rate 0.5: they differ after 4 steps)
    assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(state.params)))
    earlier = evaluate.load_score_fn(other, workdir, (8, 8, 1), step=2)
    assert earlier.step == 2


def test_checkpoint_of_another_network_is_a_clear_error(trained):
    c, workdir, _ = trained
    other = tiny_digits_config()
    other.model.hidden = (16, 16)
    with pytest.raises(ValueError, match="another network than config.model"):
        evaluate.load_score_fn(other, workdir, (8, 8, 1))


@pytest.mark.slow
def test_eval_reads_each_split_once(trained, monkeypatch):
    """`--mode=eval --checkpoints=all` (2 checkpoints: test loss, bits/dim, samples, digits quality):
    data.load_split is called once per split, and scikit-learn's digits are read only by it."""
    workdir = trained[1]
    c = tiny_digits_config()
    c.sampling.update(method="ode", num_samples=8, batch_size=8)
    c.sampling.ode.update(solver="euler", n_steps=5)
    c.likelihood.update(num_examples=4, batch_size=2, rtol=1e-2, atol=1e-2)
    calls, digits_reads = collections.Counter(), collections.Counter()
    load_split = data.load_split

    def counting_load_split(config, split="train"):
        calls[split] += 1
        return load_split(config, split)

    import sklearn.datasets

    load_digits = sklearn.datasets.load_digits

    def counting_load_digits(*args, **kwargs):
        digits_reads["load_digits"] += 1
        return load_digits(*args, **kwargs)

    monkeypatch.setattr(data, "load_split", counting_load_split)
    monkeypatch.setattr(sklearn.datasets, "load_digits", counting_load_digits)
    monkeypatch.setenv("SCORE_SDE_DEBUG", "1")  # a failure shows its traceback
    assert cli.run(c, workdir, "eval", "all") == 0
    assert calls == {"test": 1, "train": 1}
    assert digits_reads["load_digits"] == 2
    for step in (2, 4):
        (path,) = glob.glob(f"{workdir}/eval/eval_{step}_*.json")  # named <step>_<options hash>
        with open(path) as f:
            result = json.load(f)
        assert result["step"] == step and np.isfinite(result["likelihood"]["bits_per_dim"])
        assert result["quality"]["num_samples"] == 8
    from tensorboardX.proto import event_pb2  # eval figures are TensorBoard scalars at each checkpoint's step

    tags = set()
    for path in glob.glob(f"{workdir}/tensorboard/events.*"):
        raw, i = open(path, "rb").read(), 0
        while i < len(raw):
            n = int.from_bytes(raw[i:i + 8], "little")
            ev = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
            tags |= {(v.tag, ev.step) for v in ev.summary.value}
            i += 12 + n + 4
    for step in (2, 4):
        assert {("eval/test_loss", step), ("eval/bits_per_dim", step), ("eval/quality/frechet_distance", step)} <= tags
