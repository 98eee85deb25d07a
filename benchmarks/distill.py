"""Distilled students against fast samplers on the exact score: the toy mixture with its analytic teacher.

    python -m benchmarks.distill [--smoke] [--out DIR] [--iters N]

`configs/toy_distill.py` (8 Gaussians on a circle, VP SDE, MLP student) is distilled through the
same driver as `--mode=distill` (`score_sde.drivers.distill.distill`, the training loop of
`train.py`), from the mixture's exact score (no teacher error): progressive distillation
16 -> 8 -> 4 -> 2 -> 1 steps (`--iters` steps per round) and consistency distillation (`--iters` x 4
steps; one student for every step count). Each student then draws `--n` samples with
`solvers.get("student", n_steps=K)`, and DDIM, DPM-Solver++ and UniPC (`get(name, nfe=K)`, the tuned
presets) draw as many from the exact score at the same NFE K; the figure is the sliced
Wasserstein-1 distance (64 directions) to `--n` fresh samples of the true mixture. The Monte Carlo
floor is the distance between two independent true samples of that size; "converged" is the
adaptive probability-flow ODE (tsit5, rtol = atol = 1e-5) on the exact score. Training cost is
counted in teacher evaluations (progressive: 2 DDIM steps, each also evaluating the Tweedie branch
of the step to t = 0 = 4 per example; consistency: one Heun step = 2) and minutes.

Writes <out>/distill.md and distill.json (default benchmarks/out; the committed figures are in
benchmarks/results/). `--smoke` runs a tiny version (seconds of training; a few minutes with
compilation on 2 shared cores) into a temporary folder unless --out is given.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import jax
import numpy as np

import score_sde.solvers as solvers
from benchmarks.common import RESULTS, write_result
from configs import toy_distill
from score_sde import config_utils, data
from score_sde.drivers import distill as distill_driver

BUDGETS = (1, 2, 4, 8)
BASELINES = ("ddim", "dpm_solver", "unipc")


def sliced_w1(x, y, n_dirs: int = 64, seed: int = 0) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = np.random.default_rng(seed).normal(size=(x.shape[1], n_dirs))
    d /= np.linalg.norm(d, axis=0)
    return float(np.mean(np.abs(np.sort(x @ d, axis=0) - np.sort(y @ d, axis=0))))


def train_students(method: str, workdir: str, iters: int, teacher_steps: int) -> tuple[object, float]:
    """Runs the driver for `method`; returns (config, minutes)."""
    config = toy_distill.get_config()
    config.distill.method = method
    config.distill.teacher_steps = teacher_steps
    config.training.n_iters = iters
    config.training.snapshot_freq = iters
    config.training.log_freq = min(100, iters)
    if iters % config.training.steps_per_call:
        config.training.steps_per_call = 1
    it = data.get_dataset(config, "train", 0, 1)
    t0 = time.perf_counter()
    distill_driver.distill(config, workdir, it)
    return config, (time.perf_counter() - t0) / 60


def draw(sampler, sde, score_fn, n: int, seed: int = 7) -> np.ndarray:
    x, _ = jax.jit(lambda k: sampler(k, sde, score_fn, (n, 2)))(jax.random.PRNGKey(seed))
    return np.asarray(x)


def run(out: pathlib.Path, iters: int, n: int, teacher_steps: int) -> dict:
    gmm = data.sources.toy_gmm_mixture()
    config = toy_distill.get_config()
    sde = config_utils.sde_from_config(config.sde)
    truth = np.asarray(gmm.sample(jax.random.PRNGKey(1), n))
    floor = sliced_w1(np.asarray(gmm.sample(jax.random.PRNGKey(2), n)), truth)
    exact = gmm.score_fn(sde)
    converged = sliced_w1(draw(solvers.get("ode", rtol=1e-5, atol=1e-5), sde, exact, n), truth)
    rows: dict[str, dict[int, float]] = {}
    for name in BASELINES:
        rows[f"{name} (exact score, get(nfe=K))"] = {k: sliced_w1(draw(solvers.get(name, nfe=k), sde, exact, n), truth)
                                                     for k in BUDGETS}
    best10 = {name: sliced_w1(draw(solvers.get(name, nfe=10), sde, exact, n), truth) for name in BASELINES}
    cost = {}
    work = out / "distill_runs"
    for method, kind in (("progressive", "ddim"), ("consistency", "consistency")):
        steps = iters if method == "progressive" else 4 * iters
        cfg, minutes = train_students(method, str(work / method), steps, teacher_steps)
        counts = [k for k in BUDGETS if method == "consistency" or k <= teacher_steps // 2]
        rows[f"{method} student"] = {}
        for k in counts:
            cfg.sampling.student.n_steps = k
            loaded = distill_driver.load_student(cfg, str(work / method), (2,))
            rows[f"{method} student"][k] = sliced_w1(draw(solvers.get("student", n_steps=k, kind=kind), sde,
                                                          loaded.score_fn, n), truth)
        # teacher evaluations per example and step: two DDIM steps, each also evaluating the Tweedie
        # branch of the step to t = 0 (`teacher_step` computes both); one Heun step = 2
        per_example = 4 if method == "progressive" else 2
        rounds = len(distill_driver.rounds(teacher_steps)) if method == "progressive" else 1
        cost[method] = {"minutes": round(minutes, 2), "steps": steps * rounds,
                        "teacher_evaluations": steps * rounds * cfg.training.batch_size * per_example}
    return {"n": n, "iters": iters, "teacher_steps": teacher_steps, "mc_floor": floor, "converged_ode": converged,
            "best_10_nfe": best10, "rows": rows, "cost": cost}


def table(res: dict) -> str:
    lines = ["| sampler | " + " | ".join(f"NFE {k}" for k in BUDGETS) + " |",
             "|---|" + "---:|" * len(BUDGETS)]
    for name, vals in res["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{vals[k]:.4f}" if k in vals else "–" for k in BUDGETS) + " |")
    best = ", ".join(f"{k} {v:.4f}" for k, v in res["best_10_nfe"].items())
    cost = "; ".join(f"{m}: {c['steps']} steps, {c['teacher_evaluations']:,} teacher evaluations, "
                     f"{c['minutes']} min" for m, c in res["cost"].items())
    return "\n".join(lines) + (
        f"\n\nSliced W1 to {res['n']} true samples (lower is better). Monte Carlo floor (two true samples of "
        f"{res['n']}): {res['mc_floor']:.4f}; converged teacher (adaptive ODE, exact score): "
        f"{res['converged_ode']:.4f}; the exact score's samplers at 10 NFE: {best}.\n\nTraining ({cost}).\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny run (seconds of training), for a check")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/out; --smoke: a temp folder)")
    p.add_argument("--iters", type=int, default=2000, help="training steps per progressive round (consistency: 4x)")
    p.add_argument("--n", type=int, default=5000, help="samples per sampler and in the reference")
    args = p.parse_args(argv)
    iters, n, teacher_steps = (20, 500, 4) if args.smoke else (args.iters, args.n, 16)
    out = pathlib.Path(args.out or (tempfile.mkdtemp(prefix="distill_smoke_") if args.smoke else RESULTS))
    out.mkdir(parents=True, exist_ok=True)
    res = run(out, iters, n, teacher_steps)
    body = table(res)
    (out / "distill.json").write_text(json.dumps(res, indent=2, default=str))
    command = "python -m benchmarks.distill" + (" --smoke" if args.smoke else f" --iters {iters} --n {n}")
    write_result("distill", body, command, title="Distilled students vs samplers on the exact score (toy mixture)",
                 directory=out)
    print(body)
    return res


if __name__ == "__main__":
    main()
