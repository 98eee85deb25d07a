"""SIGINT / SIGTERM during `--mode=sample` through `python main.py` (issue 31): the solve stops after the
steps in flight (chunks of `evaluate.CHUNK_STEPS`), with a line saying so, then the one `stopped by`
line; exit 130 / 143, no traceback or crash, no output file, within seconds. A subprocess test: the
crash it guards against (a host callback into a finalising interpreter) cannot happen in-process.
One tiny training run (2 steps) serves both signals."""

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
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=mlp", "--config.model.hidden=(16,16)", "--config.training.batch_size=8"]
# 100000 pc steps of the tiny MLP take ~30 s: the signal always lands mid-solve.
SAMPLE = ["--mode=sample", "--config.sampling.method=pc", "--config.sampling.pc.n_steps=100000",
          "--config.sampling.num_samples=64", *TINY]


def env():
    e = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    e.pop("SCORE_SDE_DEBUG", None)
    return e


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    w = tmp_path_factory.mktemp("signals") / "run"
    subprocess.run([sys.executable, "main.py", f"--workdir={w}", "--mode=train", *TINY,
                    "--config.training.n_iters=2", "--config.training.snapshot_freq=2"],
                   cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=True)
    return w


def _read(stream, into):
    for chunk in iter(lambda: stream.read(1), ""):
        into.append(chunk)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_solve_stops_within_seconds(workdir, sig, code):
    proc = subprocess.Popen([sys.executable, "main.py", f"--workdir={workdir}", *SAMPLE], cwd=ROOT, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    reader = threading.Thread(target=_read, args=(proc.stderr, err), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 240
        while "batch 0.01/1" not in "".join(err):  # the bar after 1 % of the steps: compiled, solving
            assert proc.poll() is None and time.time() < deadline, "".join(err)[-2000:]
            time.sleep(0.05)
        sent = time.time()
        proc.send_signal(sig)
        proc.wait(timeout=60)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=10)
    text = "".join(err)
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines()
             if line.strip() and not line.strip().startswith("sampling (pc)") and "WARNING:absl" not in line]
    name = sig.name
    assert proc.returncode == code, text[-2000:]
    assert "Traceback" not in text and "Fatal Python error" not in text and "Segmentation" not in text, text[-2000:]
    assert lines[-1].startswith(f"stopped by {name} during --mode=sample;"), lines
    assert lines[-2] == (f"{name}: finishing the PCSampler steps in flight (at most 16 of 100000), then stopping "
                         "(send it again to stop at once)"), lines
    assert took < 10, took  # measured ~2 s on 2 shared CPU cores, interpreter exit included
    samples = workdir / "samples"
    assert not samples.exists() or not any(samples.iterdir()), list(samples.iterdir())
    assert not (workdir / "results.jsonl").exists() or "sample" not in (workdir / "results.jsonl").read_text()


# --- the other modes (issue 28): likelihood, eval, edit, train_classifier, distill ------------------------
# Each run is signalled once it is mid-work (a likelihood shard, an edit solve, a training checkpoint on
# disk), then rerun with the same command, which resumes or completes. The five runs, and then the five
# reruns, go side by side: each `python main.py` start costs seconds of imports and compilation.
LIKELIHOOD = [*TINY, "--config.likelihood.num_examples=200", "--config.likelihood.batch_size=4"]  # 50 batches
TOY_TRAIN = ["--config=configs/toy_vp.py", "--config.training.batch_size=8", "--config.training.steps_per_call=1",
             "--config.training.n_iters=400", "--config.training.snapshot_freq=20", "--config.training.log_freq=20"]
MODES = {  # mode: (signal, arguments, the folder holding what it writes)
    "likelihood": (signal.SIGTERM, ["--mode=likelihood", *LIKELIHOOD], "likelihood"),
    "eval": (signal.SIGINT, ["--mode=eval", *LIKELIHOOD, "--config.sampling.num_samples=8",
                             "--config.sampling.batch_size=8", "--config.sampling.method=euler_maruyama",
                             "--config.sampling.euler_maruyama.n_steps=20"], "eval"),
    "edit": (signal.SIGTERM, ["--mode=edit", *TINY, "--config.edit.num_examples=2", "--config.edit.n_particles=8",
                              "--config.edit.n_steps=200"], "edit"),
    "train_classifier": (signal.SIGINT, ["--mode=train_classifier", "--config=configs/toy_vp.py",
                                         "--config.data.num_classes=8", "--config.classifier.nf=2",
                                         "--config.classifier.batch_size=8", "--config.classifier.n_iters=400",
                                         "--config.classifier.snapshot_freq=20", "--config.classifier.log_freq=20",
                                         "--config.classifier.warmup=0"], "classifier"),
    "distill": (signal.SIGTERM, ["--mode=distill", "--config=configs/toy_distill.py", "--config.model.hidden=(16,)",
                                 "--config.distill.teacher_steps=2", *TOY_TRAIN[1:]], "progressive/1"),
}


def _launch(workdir, args, name):
    out, err = (open(workdir.parent / f"{name}.{s}", "w+") for s in ("out", "err"))
    proc = subprocess.Popen([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=ROOT, env=env(),
                            stdout=out, stderr=err, text=True)
    proc.files = (out, err)
    return proc


def _text(proc, which=1):
    f = proc.files[which]
    f.seek(0)
    return f.read()


def _complete_checkpoints(folder):
    return [d for d in folder.glob("checkpoints/*") if d.name.isdigit() and (d / "commit_success.txt").exists()]


def _mid_work(mode, workdir, proc):
    """Whether the run of `mode` is in the middle of its work (so a signal lands there)."""
    if mode in ("likelihood", "eval"):
        return any((workdir / mode / ".partial").glob("*/shard_*.npz"))
    if mode == "edit":
        return "edit: inpaint of 2 examples" in _text(proc)
    return bool(_complete_checkpoints(workdir / MODES[mode][2]))


def _lines(text):
    return [line.strip() for line in text.replace("\r", "\n").splitlines()
            if line.strip() and "WARNING:absl" not in line
            and not line.strip().startswith(("likelihood:", "sampling (", "train:", "compil"))]


@pytest.mark.slow
def test_a_signal_in_every_other_mode_then_the_same_command_resumes(workdir, tmp_path):
    """SIGTERM to likelihood / edit / distill, SIGINT to eval / train_classifier, each mid-work through
    `python main.py`: one line, exit 143 / 130, no traceback, no output under its final name (a training
    mode's checkpoints all complete); the same command again resumes (likelihood / eval: `resuming: k of
    50 shards`; the training modes: from the last checkpoint, metrics rows not doubled) or completes (edit)."""
    dirs = {}
    for mode in MODES:
        dirs[mode] = tmp_path / mode / "run"
        dirs[mode].parent.mkdir()
        if mode in ("likelihood", "eval", "edit"):
            shutil.copytree(workdir, dirs[mode])
    procs = {mode: _launch(dirs[mode], args, "first") for mode, (_, args, _) in MODES.items()}
    try:
        waiting, deadline = set(MODES), time.time() + 400
        while waiting:
            for mode in list(waiting):
                assert procs[mode].poll() is None, (mode, _text(procs[mode])[-3000:])
                if _mid_work(mode, dirs[mode], procs[mode]):
                    procs[mode].send_signal(MODES[mode][0])
                    waiting.discard(mode)
            assert time.time() < deadline, waiting
            time.sleep(0.02)
        for proc in procs.values():
            proc.wait(timeout=300)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    for mode, (sig, _, folder) in MODES.items():
        text, run = _text(procs[mode]), dirs[mode]
        assert procs[mode].returncode == 128 + sig, (mode, text[-3000:])
        for bad in ("Traceback", "Fatal Python error", "Segmentation", "Exception ignored"):
            assert bad not in text, (mode, text[-3000:])
        last = _lines(text)[-1]
        if mode in ("train_classifier", "distill"):
            assert last.startswith("stopped at step ") and last.endswith("run the same command to resume"), last
            ckpts = run / folder / "checkpoints"
            assert sorted(_complete_checkpoints(run / folder)) == sorted(d for d in ckpts.iterdir() if d.name.isdigit())
        else:
            assert last == (f"stopped by {sig.name} during --mode={mode}; the outputs finished before it are kept in "
                            f"{run} (none is half-written); run the same command again"), (mode, _lines(text))
            written = [p.name for p in (run / folder).glob("*")] if (run / folder).exists() else []
            assert written in ([], [".partial"]), (mode, written)
            assert not (run / "results.jsonl").exists() or mode not in (run / "results.jsonl").read_text()
    assert _lines(_text(procs["edit"]))[-2] == ("SIGTERM: finishing the inpaint solve in flight (an edit solve cannot "
                                                "stop mid-solve), then stopping (send it again to stop at once)")

    reruns = {mode: _launch(dirs[mode], args, "again") for mode, (_, args, _) in MODES.items()}
    try:
        for proc in reruns.values():
            proc.wait(timeout=400)
    finally:
        for proc in reruns.values():
            if proc.poll() is None:
                proc.kill()
    for mode, (_, _, folder) in MODES.items():
        text, run = _text(reruns[mode]), dirs[mode]
        assert reruns[mode].returncode == 0, (mode, text[-3000:])
        if mode in ("likelihood", "eval"):
            assert any(line.startswith("resuming: ") and " of 50 shards already done in " in line
                       for line in _lines(text)), (mode, _lines(text))
            assert not (run / folder / ".partial").exists()
            result = json.loads(next((run / folder).glob(f"{mode}_2_*.json")).read_text())
            bpd = result["bits_per_dim"] if mode == "likelihood" else result["likelihood"]["bits_per_dim"]
            assert np.isfinite(bpd)
        elif mode == "edit":
            assert len(list((run / folder).glob("edit_2_inpaint_*.npz"))) == 1
        else:
            assert "Resumed from checkpoint at step " in _text(reruns[mode], 0), (mode, _text(reruns[mode], 0)[-2000:])
            assert (run / folder / "checkpoints" / "400").is_dir()
            steps = [json.loads(r)["step"] for r in (run / folder / "metrics.jsonl").read_text().splitlines()]
            assert steps == sorted(set(steps)) and steps[-1] == 400, steps


@pytest.mark.slow
def test_sigterm_mid_cascade_is_one_line_and_writes_nothing(tmp_path):
    """`--mode=cascade` (two tiny 2-step runs: an MLP base at 4x4, an nf=8 SR UNet at 8x8) signalled while
    its base stage solves: exit 143, the one stop line last, no traceback, nothing under cascade/ and no
    results row."""
    (tmp_path / "base_cfg.py").write_text(
        "from configs import digits_base4\n\n\ndef get_config():\n    c = digits_base4.get_config()\n"
        "    c.model.name = 'mlp'\n    c.model.hidden = (16, 16)\n    return c\n")
    short = ["--config.training.batch_size=8", "--config.training.n_iters=2", "--config.training.snapshot_freq=2"]
    for cfg, name, extra in ((str(tmp_path / "base_cfg.py"), "base", []),
                             ("configs/digits_sr.py", "sr", ["--config.model.nf=8"])):
        subprocess.run([sys.executable, "main.py", f"--config={cfg}", f"--workdir={tmp_path / name}", "--mode=train",
                        *extra, *short], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=True)
    run = tmp_path / "cascade_run"
    proc = _launch(run, ["--config=configs/digits_cascade.py", "--mode=cascade", "--config.model.nf=8",
                         f"--config.cascade.base_config={tmp_path / 'base_cfg.py'}",
                         f"--config.cascade.base_workdir={tmp_path / 'base'}",
                         f"--config.cascade.sr_workdir={tmp_path / 'sr'}",
                         "--config.sampling.method=euler_maruyama", "--config.sampling.euler_maruyama.n_steps=200000",
                         "--config.sampling.num_samples=16", "--config.sampling.batch_size=8"], "cascade")
    try:
        deadline = time.time() + 300
        while "cascade base (" not in _text(proc):  # the base stage's progress bar: mid-solve
            assert proc.poll() is None, _text(proc)[-3000:]
            assert time.time() < deadline, _text(proc)[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = _text(proc)
    assert proc.returncode == 143, text[-3000:]
    for bad in ("Traceback", "Fatal Python error", "Segmentation", "Exception ignored"):
        assert bad not in text, text[-3000:]
    assert _lines(text)[-1] == (f"stopped by SIGTERM during --mode=cascade; the outputs finished before it are kept "
                                f"in {run} (none is half-written); run the same command again"), _lines(text)
    assert not (run / "cascade").exists() or not any((run / "cascade").iterdir())
    assert not (run / "results.jsonl").exists() or "cascade" not in (run / "results.jsonl").read_text()
