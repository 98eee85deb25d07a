"""Training driver: pmap equivalence, loss decrease, exact resume, NaN handling, config errors.

A tiny MLP on 2-D Gaussian data, on the two CPU devices forced by conftest.py.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_default_configs
from score_sde import config_utils
from score_sde.drivers import train
from score_sde.plumbing import checkpoint

from helpers import assert_sgd_step_averages


class GaussIter:
    """The score_sde.data iterator protocol over N([1, -0.5], 0.5^2 I) in 2-D.

    Batch i is a pure function of (seed, i). `nan_from`: batches from that index on are NaN;
    `fail_at`: raises at that batch index (a simulated crash).
    """

    data_shape = (2,)

    def __init__(self, batch, seed=0, nan_from=None, fail_at=None):
        self.batch, self.seed, self.i, self.nan_from, self.fail_at = batch, seed, 0, nan_from, fail_at

    def __next__(self):
        if self.fail_at is not None and self.i >= self.fail_at:
            raise RuntimeError("simulated crash")
        x = np.random.default_rng([self.seed, self.i]).normal(size=(self.batch, 2)) * 0.5 + [1.0, -0.5]
        if self.nan_from is not None and self.i >= self.nan_from:
            x[:] = np.nan
        self.i += 1
        return x.astype(np.float32)

    def get_state(self):
        return {"index": self.i}

    def set_state(self, state):
        self.i = int(state["index"])


def tiny_config(**training):
    c = get_default_configs()
    c.model.name, c.model.hidden, c.model.ema_rate = "mlp", (32, 32), 0.9
    c.training.update({**dict(batch_size=16, n_iters=8, snapshot_freq=4, log_freq=2, keep_checkpoints=3), **training})
    c.optim.update(lr=3e-3, warmup=5)
    return c


@functools.cache
def jitted_step():
    """The single-device step of tiny_config() without warmup, compiled once for the module."""
    c = tiny_config()
    c.optim.warmup = 0
    model, loss_fn, opt = parts(c)
    return c, model, opt, jax.jit(train.make_train_step(loss_fn, opt, c.model.ema_rate)), loss_fn


def parts(c):
    model = config_utils.model_from_config(c.model)
    sde = config_utils.sde_from_config(c.sde)
    return model, train.loss_fn_from_config(c, model, sde), train.make_optimizer(c.optim)


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_pmapped_step_matches_single_device_step():
    """One pmapped step on 2 devices (8 examples each) equals the jitted single-device step on the
    global batch of 16: same per-example randomness, so only float32 summation order differs
    (tolerance rtol 1e-5, atol 1e-6 on params, EMA, loss); with Adam and with SGD, whose update shows
    the gradient's scale (helpers.assert_sgd_step_averages: a psum instead of the pmean fails)."""
    assert jax.local_device_count() == 2
    c, model, opt, step, loss_fn = jitted_step()  # no warmup: its schedule starts at lr = 0
    state = train.create_train_state(jax.random.PRNGKey(0), model, opt, (2,))
    batch = next(GaussIter(16))
    single, m1 = step(state, batch)
    p_step = train.make_pmapped_step(loss_fn, opt, c.model.ema_rate)
    pstate, m2 = p_step(train.replicate(state), batch.reshape(2, 1, 8, 2))
    multi = train.unreplicate(pstate)
    np.testing.assert_allclose(float(m1["loss"]), train.unreplicate(m2)["loss"][0], rtol=1e-5)
    pairs = zip(jax.tree.leaves((single.params, single.ema_params)), jax.tree.leaves((multi.params, multi.ema_params)))
    for a, b in pairs:
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-6)
    # The step really moved the parameters (the comparison is not between two initial states).
    moved = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))), single.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-4
    assert int(multi.step) == int(single.step) == 1
    # Adam's first step from zero moments sees only the gradient's sign (a psum of the device gradients
    # instead of their mean gives the same update), so the averaging is checked with SGD (update = -g).
    assert_sgd_step_averages(loss_fn, c.model.ema_rate, state, batch)


def test_loss_decreases_and_logs(tmp_path):
    """120 steps (2 per pmap call): the mean loss of the last 20 steps is < 0.6 x that of the first 20.
    metrics.jsonl, TensorBoard events and keep-N checkpoints are written."""
    c = tiny_config(n_iters=120, snapshot_freq=20, log_freq=20, steps_per_call=2)
    state = train.train(c, str(tmp_path), train_iter=GaussIter(16))
    assert int(state.step) == 120
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in rows] == list(range(20, 121, 20))
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"], rows
    assert all(r["steps_per_sec"] > 0 and r["images_per_sec"] == pytest.approx(16 * r["steps_per_sec"]) for r in rows)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    assert sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")) == [80, 100, 120]


def test_exact_resume_bit_for_bit(tmp_path):
    """8 steps straight == 8 steps crashed during step 6 (data iterator raises) and resumed from
    the step-4 checkpoint: params, EMA, optimizer state, rng, step and data position identical."""
    c = tiny_config(steps_per_call=2)
    ref = train.train(c, str(tmp_path / "a"), train_iter=GaussIter(16))
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train(c, str(tmp_path / "b"), train_iter=GaussIter(16, fail_at=5))
    resumed_iter = GaussIter(16)
    got = train.train(c, str(tmp_path / "b"), train_iter=resumed_iter)
    assert resumed_iter.i >= 8  # resumed at batch 4; the prefetcher may have read a few batches ahead
    assert_trees_equal(ref, got)
    manager = checkpoint.make_manager(str(tmp_path / "b"), 3)
    _, data_state, step = checkpoint.restore_latest(manager, ref)
    assert (step, data_state) == (8, {"index": 8})


def test_ema_warmup_decay_values():
    """train.ema_decay is min(rate, (1 + n) / (10 + n)): 1/10 at step 0, then the rate; constant without warm-up."""
    for n, want in [(0, 0.1), (1, 2 / 11), (10, 11 / 20), (100, 101 / 110), (8988, 8989 / 8998), (10_000, 0.999)]:
        np.testing.assert_allclose(float(train.ema_decay(0.999, jnp.int32(n))), want, rtol=1e-6)
    assert float(train.ema_decay(0.9, jnp.int32(100))) == pytest.approx(0.9)
    assert float(train.ema_decay(0.999, jnp.int32(0), warmup=False)) == pytest.approx(0.999)


def test_ema_starts_at_the_raw_weights_and_follows_the_warmup_recursion():
    """At step 0 the EMA is the initial params exactly; after 5 steps it equals the written-out
    recursion e_{n+1} = d_n e_n + (1 - d_n) p_{n+1}, d_n = min(0.9, (1 + n) / (10 + n)) (rtol 1e-6),
    and not the constant-rate one."""
    c, model, opt, step, _ = jitted_step()
    state = train.create_train_state(jax.random.PRNGKey(0), model, opt, (2,))
    assert_trees_equal(state.ema_params, state.params)
    flat = lambda tree: np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(tree)])
    warm = const = flat(state.params)
    for n in range(5):
        state, _ = step(state, next(GaussIter(16, seed=n)))
        d = min(c.model.ema_rate, (1 + n) / (10 + n))
        warm = d * warm + (1 - d) * flat(state.params)
        const = c.model.ema_rate * const + (1 - c.model.ema_rate) * flat(state.params)
    np.testing.assert_allclose(flat(state.ema_params), warm, rtol=1e-6, atol=1e-7)
    assert np.abs(flat(state.ema_params) - const).max() > 1e-3


@pytest.mark.slow
def test_short_digits_cond_run_samples_in_range(tmp_path):
    """configs/digits_cond.py trained 300 steps (a small UNet, nf 8, one level; lr warm-up 20 steps) samples
    digits in range from its EMA params: 99 % of the pixel values within +-4, the median within +-1 (the
    data lie in [-1, 1]). Without the EMA warm-up (model.ema_warmup=False) the EMA still holds
    0.999^300 = 74 % of the random initial weights and the same samples reach |x| ~ 100."""
    from configs import digits_cond
    from score_sde import data
    from score_sde.drivers import evaluate

    c = digits_cond.get_config()
    c.model.update(nf=8, ch_mult=(1,))
    c.optim.warmup = 20
    c.training.update(n_iters=300, snapshot_freq=300, log_freq=300, batch_size=64)
    c.sampling.update(method="pc", num_samples=20, batch_size=20, class_label=-1)
    c.sampling.pc.n_steps = 20
    split = data.load_split(c, "train")
    train.train(c, str(tmp_path), train_iter=data.get_dataset(c, "train", loaded=split))
    result = evaluate.sample(c, str(tmp_path), split.data_shape, progress=False)
    x = np.abs(np.load(result["npz"])["samples"])
    assert np.median(x) < 1.0 and np.percentile(x, 99) < 4.0, np.percentile(x, [50, 90, 99, 100])


def test_nonfinite_step_is_skipped_and_counted():
    """A NaN batch leaves params, Adam moments and EMA bit-identical, advances the step and counts 1;
    the next finite batch updates again and resets the consecutive count."""
    c, model, opt, step, _ = jitted_step()
    state = train.create_train_state(jax.random.PRNGKey(0), model, opt, (2,))
    state, _ = step(state, next(GaussIter(16)))
    bad, m = step(state, jnp.full((16, 2), jnp.nan))
    assert not np.isfinite(float(m["loss"]))
    assert_trees_equal((bad.params, bad.ema_params, bad.opt_state.inner_state),
                       (state.params, state.ema_params, state.opt_state.inner_state))
    assert (int(bad.step), int(m["nonfinite_run"]), int(m["nonfinite_total"])) == (2, 1, 1)
    good, m = step(bad, next(GaussIter(16, seed=1)))
    assert (int(m["nonfinite_run"]), int(m["nonfinite_total"])) == (0, 1)
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(good.params), jax.tree.leaves(bad.params)))


def test_too_many_nonfinite_steps_stop_with_intact_checkpoint(tmp_path):
    """NaN data from step 5 on, max_nonfinite=3: training raises NonFiniteLossError; the checkpoints
    (steps 4 and 6; step 6 = step 4 plus 2 skipped updates) hold finite, identical params."""
    c = tiny_config(n_iters=20, snapshot_freq=2, max_nonfinite=3)
    with pytest.raises(train.NonFiniteLossError, match="3 consecutive steps with a non-finite loss"):
        train.train(c, str(tmp_path), train_iter=GaussIter(16, nan_from=4))
    manager = checkpoint.make_manager(str(tmp_path), 3)
    assert manager.all_steps() == [2, 4, 6]
    template = train.create_train_state(jax.random.PRNGKey(0), *parts(c)[::2], (2,))
    at4, _, _ = checkpoint.restore_latest(manager, template, step=4)
    at6, _, step = checkpoint.restore_latest(manager, template)
    assert step == 6 and int(at6.opt_state.total_notfinite) == 2
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(at6.params))
    assert_trees_equal((at4.params, at4.ema_params), (at6.params, at6.ema_params))


def test_batch_not_divisible_by_devices_is_a_clear_error(tmp_path):
    """batch 15 on 2 devices -> ValueError naming both numbers, before anything is written."""
    c = tiny_config(batch_size=15)
    with pytest.raises(ValueError, match=r"batch_size=15 is not divisible by the 2 devices"):
        train.train(c, str(tmp_path / "w"), train_iter=GaussIter(15))
    assert not (tmp_path / "w").exists()
    with pytest.raises(ValueError, match="steps_per_call=3"):
        train.train(tiny_config(steps_per_call=3), str(tmp_path / "w"), train_iter=GaussIter(16))


def test_discrete_losses_from_config():
    """training.continuous=False: DDPM for vpsde, SMLD for vesde (finite losses); sub-VP is rejected."""
    for name in ("vpsde", "vesde"):
        c = tiny_config(continuous=False)
        c.sde.name = name
        model, loss_fn, _ = parts(c)
        params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
        x = next(GaussIter(16))
        assert np.isfinite(float(loss_fn(params, x, jax.vmap(jax.random.PRNGKey)(jnp.arange(16)))))
    c = tiny_config(continuous=False)
    c.sde.name = "subvpsde"
    with pytest.raises(ValueError, match="continuous=True"):
        parts(c)


def start_two_processes(workdir, out_prefix, *extra, env_extra=None):
    """Starts tests/multihost_worker.py as processes 0 and 1 on 127.0.0.1 (one `extra` argv per process,
    e.g. a step that process alone cannot read; `env_extra`: more environment); returns the Popens."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(os.path.dirname(__file__), "multihost_worker.py")
    env = {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, **(env_extra or {})}
    return [subprocess.Popen([sys.executable, worker, str(p), str(port), str(workdir), f"{out_prefix}{p}.npz",
                              *([str(extra[p])] if extra and extra[p] is not None else [])],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in (0, 1)]


def run_two_processes(workdir, out_prefix, *extra):
    """Runs tests/multihost_worker.py as processes 0 and 1 on 127.0.0.1 (one `extra` argv per process,
    e.g. a step that process alone cannot read); returns their combined stdout + stderr texts."""
    procs = start_two_processes(workdir, out_prefix, *extra)
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    return outs


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """A two-process run of 4 steps (checkpoints at 2 and 4): its directory, with workdir mh/ and out{0,1}.npz."""
    tmp_path = tmp_path_factory.mktemp("two_process")
    run_two_processes(tmp_path / "mh", tmp_path / "out")
    return tmp_path


@pytest.mark.slow
def test_two_process_training(two_process_run, tmp_path):
    """Two processes on 127.0.0.1 (jax.distributed + gloo CPU collectives), one device each, each
    reading only its half of every global batch, train 4 steps (with orbax checkpoints written by
    both) and end with params identical (max abs diff <= 1e-6; bitwise in practice) to one
    process with 2 devices on the full global batch."""
    ref = train.train(tiny_config(n_iters=4, snapshot_freq=2), str(tmp_path / "ref"),
                                   train_iter=GaussIter(16))
    want = [np.asarray(x) for x in jax.tree.leaves(ref.params)]
    for p in (0, 1):
        got = np.load(two_process_run / f"out{p}.npz")
        assert int(got["step"]) == 4
        for i, w in enumerate(want):
            np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=0, atol=1e-6)
    assert sorted(os.listdir(two_process_run / "mh" / "checkpoints")) == ["2", "4"]


def assert_resumed_bit_identical(reference, again_prefix):
    """Each process of the rerun (`<again_prefix><p>.npz`) resumed from step 2, ended at step 4, and its
    arrays equal the uninterrupted run's (`reference/out<p>.npz`) bit for bit."""
    for p in (0, 1):
        first, again = np.load(reference / f"out{p}.npz"), np.load(f"{again_prefix}{p}.npz")
        assert int(again["resumed"]) == 2 and int(again["step"]) == 4
        for key in first.files:
            if key.startswith("arr_"):
                np.testing.assert_array_equal(again[key], first[key])


@pytest.mark.slow
def test_two_processes_agree_on_the_fallback_step(two_process_run, tmp_path):
    """Process 1 alone cannot read the latest checkpoint (step 4; injected by the worker) while
    process 0 can: on restart both resume from step 2 (not each its own newest), process 0 says
    which step the processes agreed on and why, step 4 is moved aside (kept), and both retrain
    steps 3..4 to params bit-identical to the uninterrupted two-process run."""
    workdir = tmp_path / "mh"
    shutil.copytree(two_process_run / "mh", workdir)
    outs = run_two_processes(workdir, tmp_path / "again", None, 4)
    agreed = [line for line in outs[0].splitlines() if "processes agree" in line]
    assert len(agreed) == 1 and "agree on step 2" in agreed[0], outs[0]
    assert "process 0: step 4, process 1: step 2" in agreed[0]
    assert "Resumed from checkpoint at step 2" in outs[0]
    assert_resumed_bit_identical(two_process_run, tmp_path / "again")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]  # step 4 saved again
    assert os.listdir(workdir / "checkpoints_corrupt") == ["4"]  # the one process 1 could not read, kept


@pytest.mark.slow
def test_kill_9_of_one_process_then_both_resume(two_process_run, tmp_path):
    """kill -9 of process 1 alone once checkpoint 2 is complete (its data reader stalls after step 3:
    the kill lands mid-training), then of process 0 (a job scheduler's restart), then both restarted:
    they resume from step 2 and end bit-identical to the uninterrupted two-process run (the module's
    fixture, shared with the two tests above). Costs one more two-process launch and its restart."""
    import signal
    import time

    workdir = tmp_path / "mh"
    procs = start_two_processes(workdir, tmp_path / "killed", env_extra={"MULTIHOST_STALL_AT": "3"})
    try:
        done, deadline = workdir / "checkpoints" / "2" / "commit_success.txt", time.time() + 120
        while not done.exists():
            assert all(p.poll() is None for p in procs) and time.time() < deadline, [p.poll() for p in procs]
            time.sleep(0.05)
        time.sleep(0.5)  # step 3 runs; the reader waits for batch 3
        assert all(p.poll() is None for p in procs)  # mid-training, both
        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(timeout=30)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=30)
    finally:
        for p in procs:
            p.kill()
            p.communicate()
    assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
    assert sorted(s for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == ["2"]
    outs = run_two_processes(workdir, tmp_path / "again")
    assert "Resumed from checkpoint at step 2" in outs[0], outs[0]
    assert_resumed_bit_identical(two_process_run, tmp_path / "again")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
