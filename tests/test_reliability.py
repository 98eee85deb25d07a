"""Reliability (issue 15): invalid values rejected up front, corrupt checkpoints, the workdir lock,
divergence, and the library's own checks. In-process through `score_sde.drivers.cli.run` where possible;
the signal and lock-contention checks share one subprocess pair (test_reliability_cli.py).

One tiny digits run (an MLP, 4 steps, checkpoints at 2 and 4) is trained once per module and copied
for each test that damages it.
"""

import glob
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from configs.default import get_default_configs
from score_sde.drivers import cli, evaluate, train
from score_sde.plumbing import checkpoint, schema


def tiny_config():
    c = get_default_configs()  # digits, 8x8x1
    c.model.name, c.model.hidden, c.model.ema_rate = "mlp", (32, 32), 0.5
    c.training.update(batch_size=8, n_iters=4, snapshot_freq=2, log_freq=2)
    c.optim.update(lr=1e-2, warmup=3)
    c.sampling.method = "ode"
    c.sampling.ode.update(solver="euler", n_steps=3)
    c.sampling.update(num_samples=4, batch_size=4)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("reliability") / "run")
    train.train(tiny_config(), workdir)
    return workdir


def copy_of(trained, tmp_path, name="run"):
    dest = str(tmp_path / name)
    shutil.copytree(trained, dest)
    return dest


def tree(path):
    if not os.path.exists(path):
        return None
    return {os.path.relpath(os.path.join(d, f), path): os.path.getsize(os.path.join(d, f))
            for d, _, files in os.walk(path) for f in files}


def one_error_line(capsys):
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and "WARNING:absl" not in line and not line.startswith(("train:", "sampling"))]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "Traceback" not in err[0]
    return err[0]


# --- library-level checks ----------------------------------------------------------------------
@pytest.mark.parametrize("make,text", [
    (lambda: ss.VPSDE(beta_min=-0.1), "beta_min"),
    (lambda: ss.SubVPSDE(beta_min=0.1, beta_max=float("nan")), "beta_max=nan"),
    (lambda: ss.VESDE(sigma_min=0.0), "sigma_min"),
    (lambda: ss.VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min < sigma_max"),
    (lambda: ss.analytic.GaussianMixture([1.0, -1.0], np.zeros((2, 2)), 1.0), "weights"),
    (lambda: ss.analytic.GaussianMixture([0.0, 0.0], np.zeros((2, 2)), 1.0), "not all 0"),
    (lambda: ss.analytic.GaussianMixture([1.0, 1.0], np.zeros((2, 2)), 0.0), "stds"),
])
def test_invalid_sde_and_mixture_parameters_raise(make, text):
    with pytest.raises(ValueError, match=text):
        make()


def test_parameters_traced_inside_jit_are_not_checked():
    beta = jax.jit(lambda b: ss.VPSDE(beta_min=b).beta(jnp.asarray(0.5)))(0.1)
    weights = jax.jit(lambda w: ss.analytic.GaussianMixture(w, jnp.zeros((2, 2)), 1.0).weights)(jnp.ones(2))
    assert np.isclose(beta, 10.05) and np.allclose(weights, 0.5)


@pytest.mark.parametrize("name", ["euler_maruyama", "ode"])
def test_score_of_the_wrong_shape_is_an_error_at_trace_time(name):
    sampler = ss.solvers.get(name, n_steps=2)
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for x of shape \(4, 2\)"):
        sampler(jax.random.PRNGKey(0), ss.VPSDE(), lambda x, t: x[:, :1], (4, 2))


def test_likelihood_checks_score_shape_batch_and_non_finite_data():
    sde = ss.VPSDE()
    gmm = ss.analytic.GaussianMixture([1.0, 1.0], jnp.array([[1.0, 1.0], [-1.0, -1.0]]), 0.5)
    x = gmm.sample(jax.random.PRNGKey(0), 4)
    with pytest.raises(ValueError, match=r"returned shape \(4, 1\) for x of shape \(4, 2\)"):
        ss.likelihood.log_likelihood(None, sde, lambda y, t: y[:, :1], x)
    with pytest.raises(ValueError, match=r"example\(s\) \[1, 3\] of 4"):
        ss.likelihood.log_likelihood(None, sde, gmm.score_fn(sde), x.at[1, 0].set(jnp.nan).at[3, 1].set(jnp.inf))
    with pytest.raises(ValueError, match="batch size 0"):
        ss.likelihood.log_likelihood(None, sde, gmm.score_fn(sde), x[:0])
    with pytest.raises(ValueError, match="batch size is 0"):
        ss.solvers.get("euler_maruyama", n_steps=2)(jax.random.PRNGKey(0), sde, gmm.score_fn(sde), (0, 2))
    with pytest.raises(ValueError, match="rtol must be >= 0"):
        ss.likelihood.log_likelihood(None, sde, gmm.score_fn(sde), x, rtol=-1.0)


# --- bad values rejected before any work ----------------------------------------------------------
BAD_VALUES = [
    ("training.keep_checkpoints", 0, "training.keep_checkpoints must be >= 1"),
    ("training.snapshot_freq", 0, "training.snapshot_freq must be >= 1"),
    ("training.log_freq", 0, "training.log_freq must be >= 1"),
    ("training.n_iters", -5, "training.n_iters must be >= 1"),
    ("training.batch_size", 0, "training.batch_size must be >= 1"),
    ("model.ema_rate", 1.0, "model.ema_rate must be in [0, 1)"),
    ("model.ema_rate", -0.1, "model.ema_rate must be in [0, 1)"),
    ("optim.lr", -1e-3, "optim.lr must be > 0"),
    ("training.eps", 0.0, "training.eps must be a time in (0, T=1.0)"),
    ("training.eps", 1.5, "training.eps must be a time in (0, T=1.0)"),
    ("sampling.ode.eps", 2.0, "sampling.ode.eps must be a time in (0, T=1.0)"),
    ("sampling.ode.rtol", -1e-3, "sampling.ode.rtol must be >= 0"),
    ("likelihood.rtol", -1.0, "likelihood.rtol must be >= 0"),
    ("likelihood.atol", -1.0, "likelihood.atol must be >= 0"),
    ("likelihood.num_examples", 0, "likelihood.num_examples must be >= 1"),
    ("model.hidden", ("abc",), "model.hidden must be a tuple of positive ints"),
    ("training.divergence_factor", 0.5, "training.divergence_factor must be 0 (off) or > 1"),
]


@pytest.mark.parametrize("key,value,text", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_schema_names_each_bad_value(key, value, text):
    c = tiny_config()
    section, name = key.rsplit(".", 1)
    node = c
    for part in section.split("."):
        node = node[part]
    with node.ignore_type():
        node[name] = value
    problems = schema.check(c, sde_T=1.0)
    assert any(text in p for p in problems), problems
    assert schema.check(tiny_config(), sde_T=1.0) == []


@pytest.mark.parametrize("mode", ["train", "sample"])
def test_bad_values_exit_2_with_one_line_before_the_workdir_exists(mode, tmp_path, capsys):
    c = tiny_config()
    c.training.keep_checkpoints, c.training.snapshot_freq, c.sde.name = 0, 0, "vpsde"
    workdir = str(tmp_path / "new")
    assert cli.run(c, workdir, mode) == 2
    line = one_error_line(capsys)
    assert "training.keep_checkpoints must be >= 1" in line and "training.snapshot_freq must be >= 1" in line
    assert not os.path.exists(workdir)
    c = tiny_config()
    c.sde.update(name="vesde", sigma_min=0.0)
    assert cli.run(c, workdir, mode) == 2
    assert "VESDE needs finite 0 < sigma_min < sigma_max" in one_error_line(capsys)
    assert not os.path.exists(workdir)


def test_blocked_paths_are_reported_before_any_work(tmp_path, capsys):
    c = tiny_config()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert cli.run(c, str(afile), "train") == 2
    assert "is a file, not a directory" in one_error_line(capsys)
    assert cli.run(c, str(afile / "run"), "train") == 2
    assert "cannot be created" in one_error_line(capsys)
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "samples").write_text("in the way")
    before = tree(str(workdir))
    assert cli.run(c, str(workdir), "sample") == 2
    assert "samples is a file, but --mode=sample writes a dir there" in one_error_line(capsys)
    assert tree(str(workdir)) == before


def test_damaged_datasets_are_named(tmp_path, capsys):
    import io
    import pickle
    import tarfile

    c = tiny_config()
    c.data.update(dataset="cifar10", image_size=32, num_channels=3, num_levels=256, data_dir=str(tmp_path))
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"garbage" * 100)
    assert cli.run(c, str(tmp_path / "w"), "train") == 2
    assert "CIFAR-10 archive" in one_error_line(capsys)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in [("data_batch_1", pickle.dumps({b"data": np.zeros((4, 3072), np.uint8)})),
                              ("data_batch_2", b"not a pickle")]:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive.write_bytes(buf.getvalue())
    assert cli.run(c, str(tmp_path / "w"), "train") == 2
    assert "CIFAR-10 batch data_batch_2" in one_error_line(capsys)
    archive.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert cli.run(c, str(tmp_path / "w"), "train") == 2
    assert "damaged or incomplete" in one_error_line(capsys)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):  # one of them lands in the test split, the rest in train
        (images / f"a{i}.png").write_bytes(b"not a png")
    c.data.update(dataset="image_folder", image_size=8, num_channels=1, num_levels=256, data_dir=str(images))
    assert cli.run(c, str(tmp_path / "w"), "train") == 2
    assert ".png is not a readable image" in one_error_line(capsys)
    assert not (tmp_path / "w").exists()


# --- checkpoints ------------------------------------------------------------------------------------
def corrupt(workdir, kind, step=4):
    d = os.path.join(workdir, "checkpoints", str(step))
    if kind == "truncated":
        for f in glob.glob(d + "/state/**/d/*", recursive=True):  # every array data file, cut short
            with open(f, "r+b") as fh:
                fh.truncate(os.path.getsize(f) // 2)
    elif kind == "no_manifest":
        os.remove(os.path.join(d, "state", "manifest.ocdbt"))
    else:
        shutil.rmtree(d)
        os.makedirs(d)
    return d


@pytest.mark.parametrize("kind", ["truncated", "no_manifest", "empty"])
def test_corrupt_latest_checkpoint_falls_back_and_is_kept(kind, trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    bad = corrupt(workdir, kind)
    loaded = evaluate.load_score_fn(tiny_config(), workdir, (8, 8, 1))  # sample / likelihood / eval all load so
    assert loaded.step == 2
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and "checkpoint at step 4" in warnings[0] and "using step 2 instead" in warnings[0]
    assert os.path.isdir(bad)  # never deleted
    assert cli.run(tiny_config(), workdir, "sample", "4") == 2  # picked by hand: a clear error
    line = one_error_line(capsys)
    assert "the checkpoint at step 4" in line and "is unreadable" in line and "--checkpoints=<step>" in line
    assert os.path.isdir(bad)


def test_checkpoints_all_skips_a_corrupt_one(trained, tmp_path, monkeypatch, capsys):
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir, "empty")

    def light_eval(config, workdir, step, test, train_split=None):  # the restore of --mode=eval, nothing more
        return {"step": evaluate.load_score_fn(config, workdir, test.data_shape, step).step}

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", light_eval)
    assert cli.run(tiny_config(), workdir, "eval", "all") == 0
    out = capsys.readouterr()
    assert json.loads(out.out) == {"step": 2}  # step 2 evaluated, step 4 skipped
    assert "skipped: the checkpoint at step 4" in out.err and "Traceback" not in out.err


def test_sample_falls_back_through_the_cli(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir, "truncated")
    assert cli.run(tiny_config(), workdir, "sample") == 0
    out = capsys.readouterr()
    assert "using step 2 instead" in out.err and "Traceback" not in out.err
    assert json.loads(out.out)["step"] == 2


def test_training_resumes_from_the_newest_readable_checkpoint(trained, tmp_path, capsys):
    """The corrupt step 4 is moved to checkpoints_corrupt/4 (kept), training resumes at 2, logs from 3 on
    without repeating step 4 in metrics.jsonl (the old row goes to metrics_dropped.jsonl)."""
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir, "truncated")
    c = tiny_config()
    c.training.n_iters = 6
    assert cli.run(c, workdir, "train") == 0
    err = capsys.readouterr().err
    assert "moved to" in err and "resuming from step 2" in err
    assert os.path.isdir(os.path.join(workdir, "checkpoints_corrupt", "4", "state"))
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4, 6]
    steps = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert steps == [2, 4, 6]
    dropped = [json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics_dropped.jsonl"))]
    assert dropped == [4]


def test_an_adaptive_solve_out_of_steps_is_one_line(trained, capsys):
    c = tiny_config()
    c.sampling.ode.update(solver="tsit5", n_steps=None, max_steps=2)
    before = tree(trained)
    assert cli.run(c, trained, "sample") == 2
    line = one_error_line(capsys)
    assert "max_steps=2" in line and "--config.sampling.ode.max_steps" in line
    assert tree(trained) == before


def test_no_readable_checkpoint_says_so(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    corrupt(workdir, "empty", 4)
    corrupt(workdir, "empty", 2)
    assert cli.run(tiny_config(), workdir, "likelihood") == 2
    assert "no readable checkpoint" in one_error_line(capsys)
    assert cli.run(tiny_config(), workdir, "train") == 0  # train: both moved aside, a fresh start
    err = capsys.readouterr().err
    assert err.count("starting from step 0") == 2
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints_corrupt"))) == ["2", "4"]
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4]
    monitor_text = train._last_checkpoint(checkpoint.make_manager(str(tmp_path / "empty_run"), 1))
    assert "no checkpoint was saved yet" in monitor_text and "None" not in monitor_text


def test_extra_checkpoints_are_pruned_at_start(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    c = tiny_config()
    c.training.keep_checkpoints = 1  # e.g. a kill right after a save left one more than kept
    assert cli.run(c, workdir, "train") == 0  # n_iters reached: nothing to train, only the prune
    assert os.listdir(os.path.join(workdir, "checkpoints")) == ["4"]


def test_drop_metrics_after(tmp_path):
    rows = [{"step": s, "loss": 1.0} for s in (2, 4, 6)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 8, "lo')
    assert train.drop_metrics_after(str(tmp_path), 4) == 1
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in kept[:2]] == [2, 4] and kept[2].startswith('{"step": 8')
    assert json.loads((tmp_path / "metrics_dropped.jsonl").read_text())["step"] == 6


# --- concurrency ------------------------------------------------------------------------------------
def test_workdir_lock_refuses_a_second_run_and_survives_a_dead_holder(trained, tmp_path, capsys):
    import subprocess
    import sys

    workdir = copy_of(trained, tmp_path)
    with checkpoint.workdir_lock(workdir):
        assert cli.run(tiny_config(), workdir, "train") == 2
        assert "another training run" in one_error_line(capsys)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), os.path.join(workdir, ".lock")],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(checkpoint.WorkdirLockedError):
        checkpoint.workdir_lock(workdir).__enter__()
    holder.kill()  # like kill -9: the OS drops the lock, the stale .lock file stays
    holder.wait()
    assert os.path.exists(os.path.join(workdir, ".lock"))
    with checkpoint.workdir_lock(workdir):
        pass


class _SignalAt:
    """A data iterator (the get_dataset protocol) that sends `sig` to this process at its n-th batch."""

    def __init__(self, n, sig):
        self.i, self.n, self.sig, self.data_shape = 0, n, sig, (8, 8, 1)

    def __next__(self):
        self.i += 1
        if self.i == self.n:
            os.kill(os.getpid(), self.sig)
        return np.zeros((8, 8, 8, 1), np.float32)

    def get_state(self):
        return {"i": self.i}

    def set_state(self, state):
        self.i = state["i"]


def test_ctrl_c_stops_between_steps_after_the_save(tmp_path, monkeypatch, capsys):
    import signal

    c = tiny_config()
    c.training.n_iters = 1000
    workdir = str(tmp_path / "run")
    with pytest.raises(train.TrainingInterrupted) as stopped:
        train.train(c, workdir, train_iter=_SignalAt(7, signal.SIGINT))
    e = stopped.value
    assert e.signum == signal.SIGINT and e.checkpoint is not None and e.checkpoint <= e.step < 1000
    assert str(e) == f"stopped at step {e.step}; the last checkpoint is step {e.checkpoint}; run the same command to resume"
    assert os.path.isfile(os.path.join(workdir, "checkpoints", str(e.checkpoint), "commit_success.txt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    with checkpoint.workdir_lock(workdir):  # and the lock released
        pass

    def interrupted(*args, **kwargs):
        raise train.TrainingInterrupted(7, 6, signal.SIGINT)

    monkeypatch.setattr(train, "train", interrupted)
    assert cli.run(c, workdir, "train") == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "stopped at step 7; the last checkpoint is step 6; run the same command to resume")


# --- divergence -------------------------------------------------------------------------------------
class _FakeManager:
    directory = "ckpts"

    def latest_step(self):
        return 2

    def wait_until_finished(self):
        pass


def test_a_finite_exploding_loss_stops_training():
    tc = tiny_config().training
    monitor = train._Monitor(tc, logger=None, manager=_FakeManager())
    monitor._check_divergence([1.0, 0.8, 1.3, 0.9])  # ordinary noise passes
    with pytest.raises(train.LossDivergedError, match="the loss diverged .*6e\\+23.*step 2"):
        monitor._check_divergence([6e23])
    tc.divergence_factor = 0.0
    train._Monitor(tc, logger=None, manager=_FakeManager())._check_divergence([1.0, 6e23])  # off


def test_huge_learning_rate_is_stopped_with_one_line(tmp_path, capsys):
    c = tiny_config()
    c.optim.update(lr=1e10, warmup=0, grad_clip=0.0)
    c.training.update(n_iters=20, snapshot_freq=10, log_freq=2)
    assert cli.run(c, str(tmp_path / "run"), "train") == 2
    line = one_error_line(capsys)
    assert "the loss diverged" in line and "no checkpoint was saved yet" in line
