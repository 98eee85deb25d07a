"""The prepared GPU check (benchmarks/gpu_check.py) runs end to end at its --smoke size on CPU.

Asserts only that it exits 0 and prints a figure for every section (never a timing bound):
the script exists for a lent accelerator, and this keeps it from rotting between loans.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLERS = ("dpm_solver-20", "edm_heun-18", "ode dopri5", "euler_maruyama-1000", "pc-1000")
# section -> figures the summary table must hold, each with a number
EXPECTED = {
    "devices": ["devices"],
    "train": ["compile (s)", "step time (ms)", "steps/s", "images/s"],
    "score_eval": ["compile (s)", "one eval (ms)"],
    **{f"sample:{s}": ["compile (s)", "wall (s)", "NFE", "samples/s", "wall / (NFE x score eval)"] for s in SAMPLERS},
    "likelihood": ["compile (s)", "time / batch (s)", "NFE"],
    "host_vs_device": ["device dopri5 (s, NFE)", "host scipy RK45 (s, NFE)", "host / device time"],
}


def summary_rows(stdout: str) -> dict:
    """{(section, figure): value} from the '| section | figure | value |' table after '=== summary ==='."""
    _, _, tail = stdout.partition("=== summary ===")
    rows = {}
    for line in tail.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] not in ("section", "---"):
            rows[cells[0], cells[1]] = cells[2]
    return rows


@pytest.mark.slow
def test_gpu_check_smoke_prints_every_figure(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "FAILED" not in proc.stdout and "SKIPPED" not in proc.stdout, out[-4000:]
    rows = summary_rows(proc.stdout)
    for section, figures in EXPECTED.items():
        for figure in figures:
            value = rows.get((section, figure))
            assert value is not None, f"no figure {figure!r} for section {section!r}:\n{proc.stdout[-3000:]}"
            if section != "devices":
                assert re.search(r"\d", value), (section, figure, value)
    assert int(rows["sample:edm_heun-18", "NFE"]) == 2 * 18 - 1  # Heun steps + a final Euler step
    assert (tmp_path / "gpu_check_smoke.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("part", ["train", "sample", "likelihood", "memory"])
def test_gpu_check_part_starts_and_writes_its_file(part, tmp_path):
    """`python -m benchmarks.gpu_check --section=<part> --smoke`, in-process: the part runs at its
    smallest size on CPU and writes gpu_check_<part>_smoke.md / .json with at least one row of figures."""
    import json

    from benchmarks import gpu_check

    assert gpu_check.main([f"--section={part}", "--smoke", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"gpu_check_{part}_smoke.json").read_text())["rows"]
    assert rows and all(len(r) > 1 for r in rows)
    assert (tmp_path / f"gpu_check_{part}_smoke.md").read_text().count("\n| ") >= 2


def test_gpu_check_unknown_part_is_one_line(capsys):
    from benchmarks import gpu_check

    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--section=speed"])
    assert e.value.code == 2
    assert "unknown part 'speed'; valid parts: train, sample, likelihood, memory" in capsys.readouterr().err
