"""What a user sees (issue 16) and the signal / blocked-output leftovers of issue 15, in-process.

Outputs named by what produced them and never overwritten, the `results.jsonl` index, compile time
apart from run time, the likelihood batch clamp, per-step sample progress, TensorBoard sample grids
and eval scalars (no empty event files), SIGINT / SIGTERM in every mode (one line, 130 / 143,
nothing half-written, a restorable workdir when it lands during a checkpoint save), and blocked
output paths refused before any work. One tiny digits run (an MLP, 4 steps) serves the module.
"""

import glob
import json
import os
import shutil
import signal
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import score_sde as ss
from score_sde.drivers import cli, evaluate, train
from score_sde.plumbing import checkpoint, outputs, timing
from score_sde.plumbing.logging_utils import MetricLogger, sample_image
from test_reliability import one_error_line, tiny_config, tree


def small_config():
    c = tiny_config()
    c.likelihood.update(num_examples=3, rtol=1e-2, atol=1e-2)
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-step run with a TensorBoard sample grid every 2 steps."""
    workdir = str(tmp_path_factory.mktemp("user_facing") / "run")
    c = small_config()
    c.training.sample_freq = 2
    train.train(c, workdir)
    return workdir


def copy_of(trained, tmp_path):
    dest = str(tmp_path / "run")
    shutil.copytree(trained, dest)
    return dest


def events(workdir):
    """[(tag, step, kind)] of every record in workdir/tensorboard's event files (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(workdir, "tensorboard", "events.*"))):
        with open(path, "rb") as f:
            raw = f.read()
        i = 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i:i + 8])
            ev = event_pb2.Event.FromString(raw[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                out.append((v.tag, ev.step, "image" if v.HasField("image") else "scalar"))
    return out


# --- timings -----------------------------------------------------------------------------------------
def test_timer_keeps_compilation_apart():
    """A first call compiles (compile > 0), a second does not (compile == 0); compile + run = wall."""
    f = jax.jit(lambda x: jnp.sin(x) @ x.T + 1.0)
    x = jnp.ones((64, 64))
    with timing.Timer() as first:
        f(x).block_until_ready()
    with timing.Timer() as second:
        f(x).block_until_ready()
    assert first.compile_seconds > 0 and second.compile_seconds == 0.0
    for t in (first, second):
        assert t.run_seconds > 0
        assert abs(t.compile_seconds + t.run_seconds - t.total_seconds) < 1e-9
    assert set(first.fields()) == {"compile_seconds", "run_seconds"}


# --- progress ----------------------------------------------------------------------------------------
def test_sampler_progress_callback_reports_every_step_and_changes_nothing():
    sde = ss.VPSDE(0.1, 20.0)
    gmm = ss.GaussianMixture(jnp.array([0.3, 0.7]), jnp.array([[-2.0, 0.0], [2.0, 1.0]]), jnp.array([0.4, 0.6]))
    sampler = ss.solvers.get("ddim", n_steps=7)
    seen = []
    plain, _ = sampler(jax.random.PRNGKey(0), sde, gmm.score_fn(sde), (16, 2))
    tracked, _ = sampler(jax.random.PRNGKey(0), sde, gmm.score_fn(sde), (16, 2),
                         progress=lambda i, n: seen.append((i, n)))
    jax.effects_barrier()
    assert seen == [(i, 7) for i in range(1, 8)]
    np.testing.assert_array_equal(np.asarray(plain), np.asarray(tracked))


def test_sample_bar_moves_per_step():
    bar = evaluate.SampleProgress(2, "t", enabled=False)
    bar.step(1, 4)
    assert bar.position == pytest.approx(0.25)
    bar.step(1, 4)  # the other device's copy of the same step: no double count
    assert bar.position == pytest.approx(0.25)
    bar.batch_done()
    bar.step(2, 4)
    assert bar.position == pytest.approx(1.5)
    bar.close()


def test_training_bar_shows_one_rate_and_is_quiet_off_a_terminal(tmp_path, monkeypatch):
    import io
    import sys

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a notebook or a log file: not a terminal
    logger = MetricLogger(str(tmp_path), total=10)
    logger.write(5, {"loss": 1.0, "steps_per_sec": 3.0, "images_per_sec": 300.0, "nonfinite_total": 0.0})
    assert "loss" in logger._bar.postfix and "per_sec" not in logger._bar.postfix
    assert logger._bar.mininterval == 30.0  # a line every 30 s, not ~60 lines for a short run
    logger.close()


# --- likelihood batch --------------------------------------------------------------------------------
def test_likelihood_batch_is_clamped_to_the_examples():
    assert evaluate.likelihood_batch(150, 8, 2) == 4      # not 75 padded examples per device
    assert evaluate.likelihood_batch(150, 300, 2) == 75
    assert evaluate.likelihood_batch(5, 8, 1) == 5
    assert evaluate.likelihood_batch(150, 3, 2) == 2      # 3 examples on 2 devices: 2 + 1 (one pad)
    assert evaluate.exact_cost_line((8, 8, 1), 8).startswith("exact divergence: 64 network evaluations")


# --- naming, no overwrite, results.jsonl -------------------------------------------------------------
def test_new_stem_never_reuses_a_name(tmp_path):
    assert outputs.new_stem(str(tmp_path), "a_1") == str(tmp_path / "a_1")
    (tmp_path / "a_1.json").write_text("{}")
    assert outputs.new_stem(str(tmp_path), "a_1") == str(tmp_path / "a_1_2")
    (tmp_path / "a_1_2.npz").write_text("")
    assert outputs.new_stem(str(tmp_path), "a_1") == str(tmp_path / "a_1_3")
    assert outputs.options_hash({"a": 1, "b": [2]}) == outputs.options_hash({"b": (2,), "a": 1})
    assert outputs.options_hash({"a": 1}) != outputs.options_hash({"a": 2})


def test_outputs_are_named_by_options_never_overwritten_and_indexed(trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    c = small_config()
    assert cli.run(c, workdir, "sample") == 0
    assert cli.run(c, workdir, "sample") == 0            # the same command again: a second set
    c.likelihood.batch_size = 150                         # clamped to the 3 examples
    c.likelihood.divergence = "exact"
    assert cli.run(c, workdir, "likelihood") == 0
    err = capsys.readouterr().err
    assert "exact divergence: 64 network evaluations" in err
    done = [line for line in err.splitlines() if line.startswith("done: ")]
    assert len(done) == 3 and done[0].startswith("done: --mode=sample step 4: 4 samples (ode")

    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, "samples", "*.npz")))
    h4 = outputs.options_hash(outputs.sampling_options(small_config()))
    assert names[:2] == [f"samples_4_ode_{h4}.npz", f"samples_4_ode_{h4}_2.npz"]
    assert len(names) == 2

    rows = outputs.read_results(workdir)
    assert [r["mode"] for r in rows] == ["sample", "sample", "likelihood"]
    for r in rows:
        assert tuple(r) == outputs.ROW_KEYS and r["step"] == 4
        assert all(os.path.isfile(f) for f in r["files"])
        assert r["compile_seconds"] >= 0 and r["run_seconds"] >= 0
        assert r["options_hash"] == outputs.options_hash(r["options"])
    assert rows[0]["compile_seconds"] > 0 and rows[0]["figures"] == {"nfe": 4, "num_samples": 4}
    lik = json.loads(open(rows[2]["files"][0]).read())
    assert lik["num_examples"] == 3 and lik["batch_per_device"] == 2 and lik["divergence"] == "exact"
    assert rows[2]["figures"]["bits_per_dim"] == lik["bits_per_dim"] and np.isfinite(lik["bits_per_dim"])
    assert "seconds" not in lik and lik["compile_seconds"] > 0 and lik["run_seconds"] > 0
    assert not glob.glob(os.path.join(workdir, "**", "*.tmp*"), recursive=True)


# --- TensorBoard --------------------------------------------------------------------------------------
def test_tensorboard_sample_grids_eval_scalars_and_no_empty_event_file(trained, tmp_path):
    """Grids at steps 2 and 4 (sample_freq = 2); a resume that trains nothing adds no event file;
    eval figures become `eval/<name>` scalars (`--mode=eval` end to end: test_eval_restore.py)."""
    workdir = copy_of(trained, tmp_path)
    images = [(tag, step) for tag, step, kind in events(workdir) if kind == "image"]
    assert images == [("samples/ode", 2), ("samples/ode", 4)]
    before = sorted(os.listdir(os.path.join(workdir, "tensorboard")))
    train.train(small_config(), workdir)                  # resumes at step 4 = n_iters: trains nothing
    assert sorted(os.listdir(os.path.join(workdir, "tensorboard"))) == before
    result = {"test_loss": 0.5, "likelihood": {"bits_per_dim": 3.0, "standard_error": 0.1}, "samples": {"nfe": 4},
              "quality": {"frechet_distance": 2.0, "num_samples": 4}}
    figures = evaluate.eval_figures(result)
    assert figures == {"test_loss": 0.5, "bits_per_dim": 3.0, "bits_per_dim_se": 0.1, "sample_nfe": 4,
                       "quality/frechet_distance": 2.0, "quality/num_samples": 4.0}
    evaluate.write_eval_scalars(workdir, 4, figures)
    scalars = sorted((tag, step) for tag, step, kind in events(workdir) if tag.startswith("eval/"))
    assert scalars == sorted((f"eval/{k}", 4) for k in figures)


def test_sample_image_grid_and_histogram():
    grid = sample_image(np.zeros((5, 8, 8, 1)), centered=True)  # 2 rows x 3 columns of 8 x 8, 1-pixel borders
    assert grid.shape == (19, 28, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 128 and grid[0, 0, 0] == 255
    pts = np.random.default_rng(0).normal(size=(1000, 2))
    hist = sample_image(pts, centered=True)
    assert hist.shape == (64, 64, 1) and hist.max() == 255


# --- signals (issue 15) -------------------------------------------------------------------------------
def _signal_after_first(monkeypatch, module, name, sig):
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        out = original(*args, **kwargs)
        if hasattr(out, "__next__"):  # a generator: signal after its first item
            def gen():
                for i, item in enumerate(out):
                    yield item
                    if i == 0:
                        os.kill(os.getpid(), sig)
            return gen()
        os.kill(os.getpid(), sig)
        return out

    monkeypatch.setattr(module, name, wrapped)


@pytest.mark.parametrize("mode,sig", [("sample", signal.SIGTERM), ("likelihood", signal.SIGINT),
                                      ("eval", signal.SIGTERM)])
def test_a_signal_during_a_mode_is_one_line_and_leaves_no_partial_output(mode, sig, trained, tmp_path,
                                                                         monkeypatch, capsys):
    from score_sde import data

    workdir = copy_of(trained, tmp_path)
    c = small_config()
    c.sampling.update(num_samples=8, batch_size=4)        # two batches: the signal lands after the first
    c.likelihood.update(num_examples=4, batch_size=2)
    if mode == "likelihood":
        _signal_after_first(monkeypatch, data, "pad_batch", sig)
    elif mode == "eval":  # the first figure of an eval
        _signal_after_first(monkeypatch, evaluate, "test_loss", sig)
    else:
        _signal_after_first(monkeypatch, evaluate, "draw_batches", sig)
    capsys.readouterr()
    assert cli.run(c, workdir, mode) == 128 + sig
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert err == [f"stopped by {signal.Signals(sig).name} during --mode={mode}; the outputs finished before it "
                   f"are kept in {workdir} (none is half-written); run the same command again"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    out_dir = {"sample": "samples", "likelihood": "likelihood", "eval": "eval"}[mode]
    written = glob.glob(os.path.join(workdir, out_dir, "*"))
    assert not [p for p in written if ".tmp" in p or os.path.basename(p).startswith(("samples_", "eval_"))]
    assert not os.path.exists(os.path.join(workdir, outputs.RESULTS_INDEX))


def test_a_signal_while_an_output_is_written_waits_for_it(trained, tmp_path, monkeypatch, capsys):
    workdir = copy_of(trained, tmp_path)
    _signal_after_first(monkeypatch, outputs, "save_npz", signal.SIGTERM)  # between the .npz and the .png
    assert cli.run(small_config(), workdir, "sample") == 143
    (npz,) = glob.glob(os.path.join(workdir, "samples", "*.npz"))
    stem = npz[:-4]
    assert os.path.isfile(stem + ".png") and json.load(open(stem + ".json"))["npz"] == npz
    assert [r["files"][0] for r in outputs.read_results(workdir)] == [npz]  # and its index row
    assert not glob.glob(os.path.join(workdir, "samples", "*.tmp*"))


def test_a_signal_during_a_checkpoint_save_leaves_a_restorable_workdir(tmp_path, monkeypatch, capsys):
    """SIGTERM sent while the asynchronous save of step 2 is in flight: the save completes, training
    stops with 143's message, and the workdir resumes from step 2."""
    workdir = str(tmp_path / "run")
    c = small_config()
    c.training.n_iters = 6
    original = checkpoint.save

    def save_then_signal(manager, step, state, data_state):
        original(manager, step, state, data_state)
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(checkpoint, "save", save_then_signal)
    with pytest.raises(train.TrainingInterrupted) as stopped:
        train.train(c, workdir)
    assert stopped.value.signum == signal.SIGTERM and stopped.value.checkpoint == 2
    assert os.path.isfile(os.path.join(workdir, "checkpoints", "2", "commit_success.txt"))
    monkeypatch.setattr(checkpoint, "save", original)
    capsys.readouterr()
    state = train.train(c, workdir)
    assert "Resumed from checkpoint at step 2" in capsys.readouterr().out
    assert int(state.step) == 6


# --- blocked output paths (issue 15) -------------------------------------------------------------------
@pytest.mark.parametrize("mode,rel,kind", [
    ("sample", "results.jsonl", "dir"), ("likelihood", "likelihood", "file"), ("eval", "eval", "file"),
    ("eval", "tensorboard", "file"), ("edit", "edit", "file"), ("edit", "results.jsonl", "dir")])
def test_blocked_output_paths_exit_2_before_any_work(mode, rel, kind, trained, tmp_path, capsys):
    workdir = copy_of(trained, tmp_path)
    shutil.rmtree(os.path.join(workdir, rel), ignore_errors=True)
    if kind == "dir":
        os.makedirs(os.path.join(workdir, rel))
    else:
        open(os.path.join(workdir, rel), "w").close()
    before = tree(workdir)
    assert cli.run(small_config(), workdir, mode) == 2
    line = one_error_line(capsys)
    assert os.path.join(workdir, rel) in line and f"--mode={mode}" in line
    assert tree(workdir) == before


# --- benchmarks write outside the tracked files -------------------------------------------------------
def test_benchmarks_write_to_an_ignored_folder():
    from benchmarks import common

    root = os.path.dirname(os.path.dirname(os.path.abspath(common.__file__)))
    assert common.RESULTS.name == "out" and common.RESULTS.parent.name == "benchmarks"
    with open(os.path.join(root, ".gitignore")) as f:
        assert "benchmarks/out/" in f.read().split()


def test_a_long_solve_reports_progress_at_most_10_times():
    sde = ss.VPSDE(0.1, 20.0)
    seen = []
    x, _ = ss.solvers.get("euler_maruyama", n_steps=120)(jax.random.PRNGKey(0), sde, lambda x, t: -x, (4, 2),
                                                           progress=lambda i, n: seen.append(i))
    jax.effects_barrier()
    assert seen == list(range(12, 121, 12))  # stride ceil(120 / 10) = 12; 120 is a multiple, so it is the last


def test_sample_freq_is_checked_by_the_schema():
    from score_sde.plumbing import schema

    c = tiny_config()
    c.training.sample_freq = -1
    assert any("training.sample_freq" in p for p in schema.check(c, sde_T=1.0))
    c.training.sample_freq = 0  # off
    assert schema.check(c, sde_T=1.0) == []
    c.training.update(steps_per_call=2, sample_freq=3)  # grids only between calls of 2 steps
    with pytest.raises(ValueError, match="training.sample_freq=3 must be a multiple of training.steps_per_call=2"):
        train.check_batch_config(c.training)
