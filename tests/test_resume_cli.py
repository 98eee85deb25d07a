"""Resumable sampling and the CLI's runtime-check handling through `python main.py` (issue 28).

One tiny toy run (an MLP, 2 steps) is trained once. A sharded `--mode=sample` (6 batches, each
written as a shard when done) is stopped by SIGTERM, then killed with SIGKILL, then run to the end:
the result is bit-identical to an uninterrupted run in another workdir, and nothing with a final
name was half-written on the way. An adaptive solve out of steps (a failed `eqx.error_if` on both
devices) ends in one line, with no traceback from JAX's exit hooks (cli.py uses public JAX API only).
Subprocesses run in pairs where they are independent, to keep the time down.
"""

import glob
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOY = ["--config=configs/toy_vp.py", "--config.model.hidden=(16,16)", "--config.training.batch_size=8",
       "--config.training.steps_per_call=1"]
# 6 batches of 2 x 4 samples, 2000 pc steps each (~0.2-0.5 s a batch here): the signals land between shards.
SAMPLE = [*TOY, "--mode=sample", "--config.sampling.num_samples=48", "--config.sampling.batch_size=8",
          "--config.sampling.pc.n_steps=2000"]
OUT_OF_STEPS = [*TOY, "--mode=sample", "--config.sampling.method=ode", "--config.sampling.ode.solver=tsit5",
                "--config.sampling.ode.max_steps=2", "--config.sampling.num_samples=8"]


def env():
    e = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    e.pop("SCORE_SDE_DEBUG", None)
    return e


def start(workdir, args):
    proc = subprocess.Popen([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    proc.err = []
    proc.reader = threading.Thread(target=lambda: proc.err.extend(iter(lambda: proc.stderr.read(1), "")),
                                   daemon=True)
    proc.reader.start()
    return proc


def finish(proc, timeout=240):
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc.reader.join(timeout=10)
    return "".join(proc.err)


def lines_of(text):
    return [line.strip() for line in text.replace("\r", "\n").splitlines()
            if line.strip() and not line.strip().startswith("sampling (") and "WARNING:absl" not in line]


def shards(workdir):
    return sorted(glob.glob(str(workdir / "samples" / ".partial" / "*" / "shard_*.npz")))


def finals(workdir):
    return sorted(glob.glob(str(workdir / "samples" / "samples_*")))


def sample_rows(workdir):
    path = workdir / "results.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line parses
    return [r for r in rows if r["mode"] == "sample"]


def stop_after(proc, workdir, n_shards, sig):
    deadline = time.time() + 240
    while len(shards(workdir)) < n_shards:
        assert proc.poll() is None and time.time() < deadline, "".join(proc.err)[-3000:]
        time.sleep(0.005)
    proc.send_signal(sig)
    return finish(proc)


def test_sharded_sample_survives_sigterm_and_kill_9_bit_identical(tmp_path):
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, "main.py", f"--workdir={ref}", *TOY, "--mode=train",
                    "--config.training.n_iters=2", "--config.training.snapshot_freq=2"],
                   cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=True)
    shutil.copytree(ref / "checkpoints", run / "checkpoints")

    # The uninterrupted reference, and a runtime-check failure, side by side.
    reference, failing = start(ref, SAMPLE), start(run, OUT_OF_STEPS)
    text = finish(failing)
    assert failing.returncode == 2, text[-3000:]
    assert lines_of(text) == [lines_of(text)[-1]] and lines_of(text)[0].startswith("error: probability-flow ODE "
                                                                                    "solve stopped after max_steps=2")
    for bad in ("Traceback", "Exception ignored", "callback failed", "EquinoxRuntimeError"):
        assert bad not in text, text[-3000:]
    assert not (run / "samples").exists() or not os.listdir(run / "samples")

    # SIGTERM after 2 shards: exit 143, the kept shards named, no final output, no results row.
    text = stop_after(start(run, SAMPLE), run, 2, signal.SIGTERM)
    kept = len(shards(run))
    assert "Traceback" not in text, text[-3000:]
    lines = lines_of(text)
    assert lines[-1].startswith("stopped by SIGTERM during --mode=sample;"), lines
    assert f"kept {kept} of 6 shards in" in text and "the same command continues from them" in text, lines
    assert finals(run) == [] and sample_rows(run) == []

    # SIGKILL two shards later: the shards stay, nothing with a final name, results.jsonl intact.
    killed = start(run, SAMPLE)
    text = stop_after(killed, run, kept + 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert f"resuming: {kept} of 6 shards already done" in text, text[-3000:]
    done = len(shards(run))
    assert kept + 2 <= done < 6 and finals(run) == [] and sample_rows(run) == []

    text = finish(start(run, SAMPLE))
    reference_text = finish(reference)
    assert reference.returncode == 0, reference_text[-3000:]
    assert f"resuming: {done} of 6 shards already done" in text, text[-3000:]
    assert "done: --mode=sample" in lines_of(text)[-1]
    names = [os.path.basename(p) for p in finals(run)]
    assert names == [os.path.basename(p) for p in finals(ref)]  # the same options hash, no _2
    npz = [p for p in finals(run) if p.endswith(".npz")][0]
    with np.load(npz) as a, np.load(npz.replace(str(run), str(ref))) as b:
        assert a["samples"].shape == (48, 2) and np.array_equal(a["samples"], b["samples"])
    assert not (run / "samples" / ".partial").exists()  # removed once the output is written
    rows = sample_rows(run)
    assert len(rows) == 1 and rows[0]["options_hash"] == sample_rows(ref)[0]["options_hash"]
