"""Reliability through `python main.py` (issue 15): SIGTERM stops training with one line and exit 143,
a second training run on a locked workdir exits 2, and broken config files are one line. Subprocesses
are slow (a few seconds each), so one training run serves several checks; Ctrl-C (SIGINT, 130) and the
resume are tested in-process in test_reliability.py."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=mlp", "--config.model.hidden=(16,16)", "--config.training.batch_size=8",
        "--config.training.n_iters=100000", "--config.training.snapshot_freq=4", "--config.training.log_freq=2"]


def env():
    e = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    e.pop("SCORE_SDE_DEBUG", None)
    return e


def start(workdir):
    cmd = [sys.executable, "main.py", f"--workdir={workdir}", "--mode=train", *TINY]
    # stderr to a file, not a pipe nobody reads while training runs: a full pipe (progress bar, warnings)
    # blocks the child before step 4 (seen once in a whole-suite run)
    err = open(workdir.parent / f"{workdir.name}.stderr", "w+")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=err, text=True)
    proc.err_file = err
    return proc


def _stderr(proc) -> str:
    proc.err_file.seek(0)
    return proc.err_file.read()


def wait_for_step(workdir, step, proc, timeout=400):
    """Waits until metrics.jsonl logs `step` and a checkpoint at `step` or later is complete (or the process ends).

    Any later one counts: on an idle machine the tiny run passes step 4 within a poll interval, and the
    checkpoint manager's retention may already have deleted checkpoint 4 (the cause of a failed CI run)."""
    deadline = time.time() + timeout
    metrics, ckpts = workdir / "metrics.jsonl", workdir / "checkpoints"

    def complete():
        return ckpts.is_dir() and any(d.name.isdigit() and int(d.name) >= step and (d / "commit_success.txt").exists()
                                      for d in ckpts.iterdir())

    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and complete() and any(
                json.loads(line).get("step", 0) >= step for line in metrics.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.2)
    raise AssertionError(f"step {step} not reached; stderr:\n{_stderr(proc) if proc.poll() is not None else ''}")


def stop(proc, sig):
    proc.send_signal(sig)
    proc.wait(timeout=60)
    err = _stderr(proc)
    lines = [line for line in err.splitlines() if line.strip() and "WARNING:absl" not in line and "train:" not in line]
    return proc.returncode, lines, err


def test_sigterm_and_a_second_run_on_a_locked_workdir(tmp_path):
    workdir = tmp_path / "run"
    first = start(workdir)
    try:
        wait_for_step(workdir, 4, first)
        first.send_signal(signal.SIGSTOP)  # paused (lock still held), so the second run gets the CPU
        second = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", "--mode=train", *TINY],
                                cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        err = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and err[0].startswith("error: another training run (pid ") and "--workdir" in err[0], err
        first.send_signal(signal.SIGCONT)
        rc, lines, err = stop(first, signal.SIGTERM)
    finally:
        if first.poll() is None:
            first.kill()
    assert rc == 143, err
    assert "Traceback" not in err
    assert lines[-1].startswith("stopped at step ") and lines[-1].endswith("run the same command to resume"), err
    stopped = int(lines[-1].split()[3].rstrip(";"))
    last = int(lines[-1].split("the last checkpoint is step ")[1].split(";")[0])
    assert last <= stopped and last % 4 == 0 and (workdir / "checkpoints" / str(last)).is_dir()

    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert steps == sorted(set(steps)), steps


def test_broken_config_files_are_one_line(tmp_path):
    cases = {"syntax.py": ("def get_config(:\n", "line 1: syntax error"),
             "noget.py": ("x = 1\n", "defines no get_config()"),
             "raises.py": ("def get_config():\n    return 1 / 0\n", "ZeroDivisionError")}
    for name, (source, text) in cases.items():
        (tmp_path / name).write_text(source)
        proc = subprocess.run([sys.executable, "main.py", f"--config={tmp_path / name}", f"--workdir={tmp_path / 'w'}"],
                              cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines
    assert not (tmp_path / "w").exists()
