"""Few-step samplers on the trained digits model: 5 and 10 evaluations against 1000-step references.

    python -m benchmarks.few_step_digits --workdir runs/digits_vp --out runs/few_step_digits [--n 1000]

Loads the EMA params of the workdir's latest checkpoint (config configs/digits_vp.py unless --config),
draws n samples with every fast sampler at each budget from the SAME x_T (key 0), and reports per row:

* FD ref: the weight-free Frechet distance (score_sde.quality: features of a small MLP classifier
  trained on the digits train split, cached in --out) to n Euler-Maruyama samples of 1000 steps;
* FD test: the same distance to the 300 test digits (the 1000-step samples' own figure is printed too);
* path: the RMS per-pixel distance to a tight probability-flow solve (Tsit5, rtol = atol = 1e-5) from
  the same x_T, the per-sample error of a deterministic sampler.

Rows "optimised grid" use grids fitted with `score_sde.solvers.grid_opt.optimise_grid` on --n-fit OTHER
prior draws (key 1) against the same tight solve, saved as <out>/grids/<sampler>_<nfe>.json: this is
also the way to compute and save a grid for any trained model (`--budgets 10 --n 0` fits and saves the
grids only). Writes <out>/few_step_digits.md and .json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import score_sde.solvers as solvers
from benchmarks.common import write_result
from score_sde import data, quality
from score_sde.drivers import evaluate
from score_sde.solvers import grid_opt

# label -> (sampler name, options for a budget of nfe evaluations)
FAST = {
    "ddim": ("ddim", lambda n: dict(nfe=n)),
    "dpm_solver (preset)": ("dpm_solver", lambda n: dict(nfe=n)),
    "unipc (preset)": ("unipc", lambda n: dict(nfe=n)),
    "ipndm (preset)": ("ipndm", lambda n: dict(nfe=n)),
    "edm_heun (preset)": ("edm_heun", lambda n: dict(nfe=n)),
    "euler_maruyama": ("euler_maruyama", lambda n: dict(n_steps=n - 1)),  # + 1 denoising evaluation
}
OPTIMISED = {"unipc": dict(order=2, variant="bh2"), "ipndm": dict(order=4, skip="time_quadratic")}


def load_config(path: str):
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def fit_and_save_grids(loaded, budgets, n_fit: int, n_iter: int, out: pathlib.Path, rtol: float = 1e-5) -> dict:
    """{(name, nfe): grid path}: OPTIMISED samplers' grids fitted on n_fit draws of key 1, saved as JSON."""
    x_fit = loaded.sde.prior_sampling(jax.random.split(jax.random.PRNGKey(1))[0], (n_fit,) + loaded.data_shape)
    x_ref = grid_opt.reference_solve(loaded.sde, loaded.score_fn, x_fit, loaded.sde.sampling_eps, rtol, rtol)
    paths = {}
    for name, opts in OPTIMISED.items():
        for nfe in budgets:
            t0 = time.time()
            u, info = grid_opt.optimise_grid(solvers.get(name, n_steps=nfe, **opts), loaded.sde, loaded.score_fn,
                                             x_fit, x_ref=x_ref, n_iter=n_iter, learning_rate=0.05)
            paths[name, nfe] = grid_opt.save_grid(str(out / "grids" / f"{name}_{nfe}.json"), u, sampler=name,
                                                  n_steps=nfe, options=opts, step=int(loaded.step), **info)
            print(f"grid {name} {nfe}: fit loss {info['loss_initial']:.4f} -> {info['loss_final']:.4f} "
                  f"({time.time() - t0:.0f} s)", flush=True)
    return paths


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="runs/digits_vp")
    ap.add_argument("--config", default="configs/digits_vp.py")
    ap.add_argument("--out", required=True, help="output folder (tables, grids, classifier cache)")
    ap.add_argument("--n", type=int, default=1000, help="samples per sampler (0: fit and save grids only)")
    ap.add_argument("--budgets", default="5,10")
    ap.add_argument("--n-fit", type=int, default=256, help="prior draws the grids are fitted on")
    ap.add_argument("--n-iter", type=int, default=150, help="Adam steps per grid")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budgets = [int(b) for b in args.budgets.split(",")]
    config = load_config(args.config)
    test = data.load_split(config, "test")
    loaded = evaluate.load_score_fn(config, args.workdir, test.data_shape)
    print(f"checkpoint step {loaded.step}", flush=True)
    grids = fit_and_save_grids(loaded, budgets, args.n_fit, args.n_iter, out) if args.n_fit > 0 else {}
    if args.n == 0:
        return
    key, shape, sde, score = jax.random.PRNGKey(0), (args.n,) + loaded.data_shape, loaded.sde, loaded.score_fn
    x_T = sde.prior_sampling(jax.random.split(key)[0], shape)  # every sampler's x_T for this key
    ode_ref = grid_opt.reference_solve(sde, score, x_T, sde.sampling_eps, 1e-5, 1e-5)
    em, _ = solvers.get("euler_maruyama", n_steps=1000)(key, sde, score, shape)

    train = data.load_split(config, "train")
    levels01 = lambda s: s.source.get(np.arange(len(s.source))) / (s.num_levels - 1)  # noqa: E731
    to01 = lambda x: np.clip((np.asarray(x) + 1.0) / 2.0 if config.data.centered else np.asarray(x), 0, 1)[..., 0]  # noqa: E731
    clf = quality.load_or_train_classifier(str(out / "digits_classifier.npz"), levels01(train), train.labels)
    feats = lambda x: clf.features(x)  # noqa: E731
    ref01, test01 = to01(em), levels01(test)[..., 0]
    fd = lambda a, b: quality.frechet_distance_of(feats, a, b)  # noqa: E731
    rows = [("euler_maruyama 1000 (reference)", 1000, 0.0, fd(ref01, test01), float("nan"))]
    print(rows[-1], flush=True)
    for nfe in budgets:
        cands = {label: (name, opts(nfe)) for label, (name, opts) in FAST.items()}
        cands.update({f"{name} (optimised grid)": (name, dict(n_steps=nfe, custom_grid=grids[name, nfe], **opts))
                      for name, opts in OPTIMISED.items() if (name, nfe) in grids})
        for label, (name, opts) in cands.items():
            x, info = solvers.get(name, **opts)(key, sde, score, shape)
            path = float(jnp.sqrt(jnp.mean((x - ode_ref) ** 2)))
            x01 = to01(x)
            rows.append((f"{label} @ {nfe}", int(info.nfe), fd(x01, ref01), fd(x01, test01), path))
            print(rows[-1], flush=True)
    text = (f"Checkpoint {args.workdir} step {loaded.step}; n = {args.n} samples per row from the same x_T (key 0). "
            "FD: Frechet distance in the digits classifier's features (score_sde.quality); 'FD ref' to 1000-step "
            "Euler-Maruyama samples, 'FD test' to the 300 test digits; 'path': RMS per-pixel distance to a Tsit5 "
            "(rtol = atol = 1e-5) probability-flow solve from the same x_T. Optimised grids fitted on "
            f"{args.n_fit} other prior draws (key 1), {args.n_iter} Adam steps.\n\n"
            "| sampler @ budget | NFE | FD ref | FD test | path |\n|---|---:|---:|---:|---:|\n")
    text += "".join(f"| {r[0]} | {r[1]} | {r[2]:.3f} | {r[3]:.3f} | {r[4]:.4f} |\n" for r in rows)
    write_result("few_step_digits", text, "python -m benchmarks.few_step_digits --workdir "
                 f"{args.workdir} --out {args.out} --n {args.n}", title="Few-step samplers on digits", directory=out)
    (out / "few_step_digits.json").write_text(json.dumps(rows, indent=1))
    print(text)


if __name__ == "__main__":
    main()
