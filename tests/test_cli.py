"""End-to-end command line: main.py train -> resume -> sample (ode, pc) -> likelihood -> eval, and user errors.

Every run is `python main.py ...` in a subprocess on 2 forced CPU devices, with the digits data and a
tiny MLP score network (compilation dominates the run time; the UNet path is covered by test_train).
One trained workdir is shared by the end-to-end tests (module-scoped fixture).
"""

import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from score_sde import solvers

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.model.name=mlp", "--config.model.hidden=(32,32)", "--config.training.n_iters=4",
        "--config.training.snapshot_freq=2", "--config.training.log_freq=2", "--config.training.batch_size=8"]
FEW_SAMPLES = ["--config.sampling.num_samples=16", "--config.sampling.batch_size=8"]
ODE = ["--config.sampling.method=ode", "--config.sampling.ode.solver=euler", "--config.sampling.ode.n_steps=5"]
PC = ["--config.sampling.method=pc", "--config.sampling.pc.n_steps=5"]
LIKELIHOOD = ["--config.likelihood.num_examples=10", "--config.likelihood.batch_size=4",
              "--config.likelihood.rtol=1e-2", "--config.likelihood.atol=1e-2"]


def run_cli(workdir, mode, *args, timeout=180):
    """`python main.py --workdir=... --mode=... TINY args` on 2 CPU devices; returns the CompletedProcess."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("SCORE_SDE_DEBUG", None)
    cmd = [sys.executable, "main.py", f"--workdir={workdir}", f"--mode={mode}", *TINY, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def steps_saved(workdir):
    return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def tree(path):
    """{relative path: (size, mtime_ns)} of everything under `path` (None if it does not exist)."""
    if not path.exists():
        return None
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A workdir trained for 4 steps, then resumed to 6 (checkpoints every 2 steps).

    Without the EMA warm-up: 6 steps at lr ~2e-6 leave the EMA at the (near-zero output) initial
    network, whose probability-flow round trip the edit test's 1e-2 tolerance assumes; the EMA
    warm-up is tested in test_train.py."""
    workdir = tmp_path_factory.mktemp("cli") / "run"
    first = ok(run_cli(workdir, "train", "--config.model.ema_warmup=False"))
    first_steps = steps_saved(workdir)
    second = ok(run_cli(workdir, "train", "--config.training.n_iters=6", "--config.model.ema_warmup=False"))
    return workdir, first, first_steps, second


@pytest.mark.slow
def test_train_then_resume(trained):
    workdir, first, first_steps, second = trained
    assert "Resumed" not in first.stdout
    assert first_steps == [2, 4]
    assert "Resumed from checkpoint at step 4" in second.stdout
    assert steps_saved(workdir) == [2, 4, 6]
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert logged and all(math.isfinite(m["loss"]) for m in logged if "loss" in m)


def one_file(folder, pattern):
    """The one file in `folder` matching `pattern` (outputs are named <kind>_<step>_<what>_<options hash>)."""
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, found
    return found[0]


README = (ROOT / "README.md").read_text()
# What each <placeholder> of a file name quoted in README stands for.
PLACEHOLDERS = {"step": r"\d+", "hash": r"[0-9a-f]{6}", "method": "|".join(solvers.names()),
                "divergence": "exact|hutchinson", "task": "inpaint|colorize|sdedit|interpolate"}


def readme_regex(quote, placeholders=PLACEHOLDERS):
    """A README quote as a regex: each <name> is its placeholder's pattern (an unknown name fails the
    test: add it above; with placeholders=None every <name> is literal), `...` is anything, the rest
    is literal."""
    parts = re.split(r"(<[\w ]+>|\.\.\.)", quote)
    out = []
    for part in parts:
        if part == "...":
            out.append(".*")
        elif part.startswith("<") and part.endswith(">") and placeholders is not None:
            out.append(f"(?:{placeholders[part[1:-1]]})")
        else:
            out.append(re.escape(part))
    return "".join(out)


def assert_readme_names(workdir, folder, not_made=()):
    """Every output file name README quotes under `folder/` (in backticks, with <placeholders>) is the
    name of a file the command wrote there, except those in `not_made` (outputs this run cannot make)."""
    names = sorted(p.name for p in (workdir / folder).iterdir())
    quotes = [q for q in re.findall(r"`([^`\s]+)`", README)  # file names: <placeholders> and an extension
              if q.startswith(f"{folder}/") and "<" in q and re.search(r"\.[a-z]+$", q)]
    assert quotes, f"README quotes no file name under {folder}/"
    for quote in quotes:
        if quote not in not_made:
            name = quote.split("/", 1)[1]
            found = any(re.fullmatch(readme_regex(name), n) for n in names)
            assert found, f"README's `{quote}`: no such file in {names}"


def check_samples(workdir, method, step=6, n=16, out="samples"):
    stem = str(one_file(workdir / out, f"samples_{step}_{method}_*.npz"))[:-len(".npz")]
    samples = np.load(f"{stem}.npz")["samples"]
    assert samples.shape == (n, 8, 8, 1)
    assert np.all(np.isfinite(samples))
    from PIL import Image

    grid = Image.open(f"{stem}.png")
    # 4x4 grid of 8x8 images with 1-pixel borders, upscaled 4x: (4 * 9 + 1) * 4 = 148 pixels a side.
    assert grid.size == (148, 148)
    summary = json.loads(pathlib.Path(f"{stem}.json").read_text())
    assert summary["method"] == method and summary["step"] == step and summary["num_samples"] == n
    assert summary["shape"] == [8, 8, 1]
    assert summary["nfe"] >= 5 and summary["run_seconds"] > 0 and summary["compile_seconds"] > 0
    return summary


@pytest.mark.slow
def test_sample_ode(trained):
    workdir = trained[0]
    ok(run_cli(workdir, "sample", *ODE, *FEW_SAMPLES))
    summary = check_samples(workdir, "ode")
    assert summary["nfe"] <= 6  # 5 Euler steps (+ at most one denoising evaluation)
    assert_readme_names(workdir, "samples")


@pytest.mark.slow
def test_sample_pc(trained):
    workdir = trained[0]
    ok(run_cli(workdir, "sample", *PC, *FEW_SAMPLES))
    summary = check_samples(workdir, "pc")
    assert summary["nfe"] >= 10  # 5 predictor + 5 corrector steps


@pytest.mark.slow
def test_sample_nfe_preset(trained):
    """--config.sampling.unipc.nfe=4 draws exactly the samples of the preset's settings spelt out
    (UniPCSampler.for_budget(4): those of solvers.get("unipc", nfe=4)), and they differ from unipc's defaults."""
    workdir, made = trained[0], set()

    def new_samples(*args):
        ok(run_cli(workdir, "sample", "--config.sampling.method=unipc", *args, *FEW_SAMPLES))
        [path] = set(map(str, (workdir / "samples").glob("samples_6_unipc_*.npz"))) - made
        made.add(path)
        return np.load(path)["samples"]

    preset = solvers.SAMPLERS["unipc"].for_budget(4)
    assert solvers.get("unipc", **preset) == solvers.get("unipc", nfe=4) != solvers.get("unipc", n_steps=4)
    by_nfe = new_samples("--config.sampling.unipc.nfe=4")
    spelt_out = new_samples(*[f"--config.sampling.unipc.{k}={v}" for k, v in preset.items()])
    np.testing.assert_array_equal(by_nfe, spelt_out)
    assert not np.array_equal(by_nfe, new_samples("--config.sampling.unipc.n_steps=4"))


@pytest.mark.slow
def test_likelihood(trained):
    workdir = trained[0]
    proc = ok(run_cli(workdir, "likelihood", *LIKELIHOOD))
    result = json.loads(one_file(workdir / "likelihood", "likelihood_6_hutchinson_*.json").read_text())
    assert result["step"] == 6 and result["num_examples"] == 10
    # A proper density's bits/dim of dequantised data is >= 0; a 6-step model is far from good but finite.
    assert 0.0 < result["bits_per_dim"] < 30.0
    assert math.isfinite(result["standard_error"]) and result["standard_error"] >= 0.0
    assert result["nfe_mean"] > 0 and result["divergence"] == "hutchinson"
    assert '"bits_per_dim"' in proc.stdout
    assert_readme_names(workdir, "likelihood")


@pytest.mark.slow
def test_eval_one_checkpoint(trained):
    workdir = trained[0]
    ok(run_cli(workdir, "eval", "--checkpoints=4", *ODE, *FEW_SAMPLES, *LIKELIHOOD))
    result = json.loads(one_file(workdir / "eval", "eval_4_*.json").read_text())
    assert result["step"] == 4 and math.isfinite(result["test_loss"]) and result["test_loss"] > 0
    assert math.isfinite(result["likelihood"]["bits_per_dim"])
    check_samples(workdir, "ode", step=4, out="eval")
    assert result["quality"]["num_samples"] == 16
    assert not list((workdir / "eval").glob("eval_6*"))  # only the requested checkpoint
    assert_readme_names(workdir, "eval", not_made=["eval/inception_stats_<step>_<method>_<hash>.npz"])  # FID weights


@pytest.mark.slow
def test_missing_checkpoint_step_is_an_error(trained):
    workdir = trained[0]
    before = tree(workdir)
    proc = run_cli(workdir, "sample", "--checkpoints=3", *ODE)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: no checkpoint at step(s) [3]")
    assert "saved: [2, 4, 6]" in proc.stderr
    assert tree(workdir) == before


# --- user errors: one `error:` line, non-zero exit, workdir untouched -----------------------------
ERRORS = {
    "unknown_sampler": (["--mode=sample", "--config.sampling.method=nope"],
                        ["unknown sampler 'nope'", "euler_maruyama", "ode", "pc"]),
    "unknown_dataset": (["--mode=train", "--config.data.dataset=nope"],
                        ["unknown dataset 'nope'", "digits", "cifar10", "toy_gmm"]),
    "no_checkpoint_sample": (["--mode=sample"], ["no checkpoints in {workdir}/checkpoints", "--mode=train"]),
    "no_checkpoint_likelihood": (["--mode=likelihood"], ["no checkpoints in {workdir}/checkpoints"]),
    "no_cifar10_files": (["--mode=train", "--config.data.dataset=cifar10", "--config.data.image_size=32",
                          "--config.data.num_channels=3", "--config.data.num_levels=256",
                          "--config.data.data_dir={workdir}_no_data"],
                         ["CIFAR-10 not found", "{workdir}_no_data/cifar-10-python.tar.gz"]),
    "override_bad_value": (["--mode=train", "--config.training.n_iters=abc"],
                           ["--config.training.n_iters=abc", "invalid literal for int()"]),
    "override_unknown_key": (["--mode=train", "--config.training.n_iter=3"],
                             ["unknown config key 'n_iter'", "--config.training.n_iter", "n_iters"]),
    "override_unknown_key_with_config": (["--mode=train", "--config=configs/digits_vp.py", "--config.training.nokey=3"],
                                         ["unknown config key 'nokey'", "--config.training.nokey"]),
    "batch_not_divisible": (["--mode=train", "--config.training.batch_size=7"],
                            ["training.batch_size=7", "not divisible by the 2 devices"]),
    "flat_sampler_option": (["--mode=sample", "--config.sampling.n_steps=5"],
                            ["unknown config key 'n_steps'", "--config.sampling.<method>.n_steps=...",
                             "--config.sampling.ddim.n_steps", "Keys of sampling: aug_level, batch_size, class_label",
                             ", ".join(solvers.names())]),
    "nfe_without_preset": (["--mode=sample", "--config.sampling.method=ode", "--config.sampling.ode.nfe=10"],
                           ["unknown config key 'nfe'", "ode has no nfe= preset", ", ".join(solvers.budget_names())]),
    "nfe_with_other_options": (["--mode=sample", "--config.sampling.method=unipc", "--config.sampling.unipc.nfe=10",
                                "--config.sampling.unipc.order=3"],
                               ["sampling.unipc.nfe=10 picks unipc's preset", "sampling.unipc.order"]),
}


# Every error with a workdir that does not exist (it must not be created), and a few representative
# ones with an existing workdir (it must stay unchanged).
ERROR_CASES = [(c, False) for c in sorted(ERRORS)] + [
    (c, True) for c in ("unknown_sampler", "no_checkpoint_sample", "override_unknown_key", "batch_not_divisible")]


@pytest.mark.parametrize("case,existing", ERROR_CASES,
                         ids=[f"{c}-{'existing' if e else 'new'}_workdir" for c, e in ERROR_CASES])
def test_user_error(case, existing, tmp_path):
    args, expected = ERRORS[case]
    workdir = tmp_path / "run"
    if existing:
        workdir.mkdir()
        (workdir / "notes.txt").write_text("keep me")
    before = tree(workdir)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("SCORE_SDE_DEBUG", None)
    args = [a.replace("{workdir}", str(workdir)) for a in args]
    config_first = [a for a in args if a.startswith("--config=")]  # --config must precede its overrides
    rest = [a for a in args if not a.startswith("--config=")]
    cmd = [sys.executable, "main.py", *config_first, f"--workdir={workdir}", *TINY, *rest]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for text in expected:
        assert text.replace("{workdir}", str(workdir)) in lines[0], lines[0]
    assert tree(workdir) == before  # not created, or unchanged


@pytest.mark.slow
def test_edit_inpaint_and_interpolate(trained):
    """--mode=edit writes a grid, .npz and .json per task: smc inpainting keeps the known half exactly
    (noiseless observation), and an interpolation path starts and ends at the two examples (the
    probability-flow round trip at rtol 1e-5; asserted within 1e-2); colorize on grey data is a user error."""
    workdir = trained[0]
    ok(run_cli(workdir, "edit", "--config.edit.task=inpaint", "--config.edit.num_examples=3",
               "--config.edit.n_particles=4", "--config.edit.n_steps=10"))
    out = np.load(one_file(workdir / "edit", "edit_6_inpaint_*.npz"))
    x, result = out["inputs"], out["result"]
    assert result.shape == x.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(result[:, :4], x[:, :4])  # bottom_half unknown: the top rows are known
    assert not np.allclose(result[:, 4:], x[:, 4:])
    assert one_file(workdir / "edit", "edit_6_inpaint_*.png").exists()
    ok(run_cli(workdir, "edit", "--config.edit.task=interpolate", "--config.edit.num_examples=2",
               "--config.edit.n_interp=3"))
    out = np.load(one_file(workdir / "edit", "edit_6_interpolate_*.npz"))
    path, x = out["result"], out["inputs"]
    assert path.shape == (1, 3, 8, 8, 1)
    np.testing.assert_allclose(path[0, 0], x[0], atol=1e-2)
    np.testing.assert_allclose(path[0, -1], x[1], atol=1e-2)
    assert_readme_names(workdir, "edit")
    proc = run_cli(workdir, "edit", "--config.edit.task=colorize")
    assert proc.returncode == 2 and "colorize needs RGB data" in proc.stderr


# The user errors whose one line README quotes (`error: ...` in backticks).
README_ERROR_CASES = ("unknown_sampler", "flat_sampler_option", "nfe_without_preset")


def error_line(args, workdir):
    """The one stderr line of `python main.py --workdir=workdir TINY args` (a user error)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    env.pop("SCORE_SDE_DEBUG", None)
    cmd = [sys.executable, "main.py", f"--workdir={workdir}", *TINY, *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    return lines[0]


def test_readme_error_quotes_are_what_the_cli_prints(tmp_path):
    """Every `error: ...` line quoted in README is, up to its `...` elisions, the line main.py prints
    for one of README_ERROR_CASES: a changed message fails here until README follows."""
    quotes = re.findall(r"`(error: [^`]+)`", README)
    assert len(quotes) >= len(README_ERROR_CASES)
    printed = [error_line(ERRORS[case][0], tmp_path / case) for case in README_ERROR_CASES]
    for quote in quotes:
        assert any(re.fullmatch(readme_regex(quote, None), line) for line in printed), (quote, printed)
