"""Path error of the deterministic samplers at small budgets: distance to a converged ODE solve from the same x_T.

    python -m benchmarks.path_error [--quick] [--out DIR] [--workers K]

For each problem (an exact Gaussian-mixture score: the 4-component 2-D mixture of
accuracy_vs_nfe, and a 64-dimensional "digits-like" mixture whose 10 means are the class means of
scikit-learn's 8x8 digits scaled to [-1, 1], std 0.2), each SDE (VP, VE) and each budget
NFE in {5, 8, 10, 15, 20}, every candidate sampler runs from the same x_T (split(key)[0]) in
float64, and the figure is the mean over samples of || x - x_ref ||_2, where x_ref is the
probability-flow ODE solved by diffrax Tsit5 at rtol = atol = 1e-9 from that x_T to eps, followed
by Tweedie's denoising at eps when the sampler ends with it (edm_heun, denoise_to_zero).
This is the measure of issue 17 (its DPM-Solver++ baselines: 0.0395 at 10 NFE, 0.0083 at 20).
Rows marked "optimised grid" use a grid fitted by `score_sde.solvers.grid_opt.optimise_grid` per
problem, SDE and budget on OTHER prior draws (FIT_KEY, n_fit) than the evaluation's x_T; the fitted
fractions are written to <out>/path_error_grids.json.
Writes <out>/path_error.md and path_error.png (default benchmarks/out). A benchmark, not a test:
tests/test_path_error.py runs `path_errors` on a small case.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import score_sde as ss
import score_sde.solvers as solvers
from benchmarks.common import RESULTS, write_result
from score_sde.solvers import grid_opt
from score_sde.solvers.data_prediction import data_prediction

BUDGETS = (5, 8, 10, 15, 20)


def mixture_2d() -> ss.GaussianMixture:
    return ss.GaussianMixture(jnp.array([0.4, 0.3, 0.2, 0.1]),
                              jnp.array([[1.5, 1.5], [-1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]]),
                              jnp.array([0.1, 0.05, 0.1, 0.05]))


def mixture_digits() -> ss.GaussianMixture:
    """10 components in 64-d: the digit class means (in [-1, 1]), equal weights, std 0.2."""
    from sklearn.datasets import load_digits

    d = load_digits()
    means = np.stack([d.data[d.target == k].mean(0) for k in range(10)]) / 16.0 * 2.0 - 1.0
    return ss.GaussianMixture(jnp.full((10,), 0.1), jnp.asarray(means), jnp.full((10,), 0.2))


PROBLEMS = {"2-D mixture": mixture_2d, "64-d digits-like mixture": mixture_digits}
SDES = {"VP": ss.VPSDE(), "VE": ss.VESDE()}

# label -> (sampler name, options for a budget of nfe evaluations, output ends with Tweedie's denoising)
CANDIDATES = {
    "ddim (time_uniform)": ("ddim", lambda n: dict(n_steps=n), False),
    "ddim (logSNR)": ("ddim", lambda n: dict(n_steps=n, skip="logSNR"), False),
    "dpm_solver++ 2M (logSNR)": ("dpm_solver", lambda n: dict(nfe=n, order=2), False),
    "dpm_solver++ 2M (time_quadratic)": ("dpm_solver", lambda n: dict(nfe=n, order=2, skip="time_quadratic"), False),
    "dpm_solver++ 2M (time_quadratic, denoise_to_zero)": (
        "dpm_solver", lambda n: dict(nfe=n, order=2, skip="time_quadratic", denoise_to_zero=True), True),
    "dpm_solver++ 3M (logSNR)": ("dpm_solver", lambda n: dict(nfe=n, order=3), False),
    "dpm_solver++ 3M (time_quadratic)": ("dpm_solver", lambda n: dict(nfe=n, order=3, skip="time_quadratic"), False),
    "dpm_solver++ 3S (logSNR)": ("dpm_solver", lambda n: dict(nfe=n, order=3, method="singlestep"), False),
    "dpm_solver++ 3S (time_quadratic)": (
        "dpm_solver", lambda n: dict(nfe=n, order=3, method="singlestep", skip="time_quadratic"), False),
    "unipc 2 bh2 (time_quadratic)": ("unipc", lambda n: dict(n_steps=n, order=2, variant="bh2"), False),
    "unipc 3 bh2 (time_quadratic)": ("unipc", lambda n: dict(n_steps=n, order=3, variant="bh2"), False),
    "unipc 2 bh1 (logSNR)": ("unipc", lambda n: dict(n_steps=n, order=2, skip="logSNR"), False),
    "ipndm 4 (logSNR)": ("ipndm", lambda n: dict(n_steps=n, order=4, skip="logSNR"), False),
    "ipndm 4 (time_quadratic)": ("ipndm", lambda n: dict(n_steps=n, order=4, skip="time_quadratic"), False),
    "edm_heun (karras)": ("edm_heun", lambda n: dict(n_steps=(n + 1) // 2), True),
    "edm_heun (time_uniform)": ("edm_heun", lambda n: dict(n_steps=(n + 1) // 2, schedule="time_uniform"), True),
    "edm_heun (time_quadratic)": ("edm_heun", lambda n: dict(n_steps=(n + 1) // 2, schedule="time_quadratic"), True),
}


# label -> (sampler name, options for nfe evaluations): the sampler's grid is fitted, then used as custom_grid
OPTIMISED = {
    "unipc 2 bh2 (optimised grid)": ("unipc", lambda n: dict(n_steps=n, order=2, variant="bh2")),
    "ipndm 4 (optimised grid)": ("ipndm", lambda n: dict(n_steps=n, order=4, skip="time_quadratic")),
    "dpm_solver++ 2M (optimised grid)": ("dpm_solver", lambda n: dict(n_steps=n, order=2, skip="time_quadratic")),
}
FIT_KEY = 1  # prior draws for fitting grids: split(PRNGKey(FIT_KEY))[0], not the evaluation's PRNGKey(0)


def fit_grids(mix, sde, optimised, budgets, n_fit, n_iter=200):
    """{label: {nfe: (fractions, info)}}: each optimised candidate's grid fitted on n_fit draws of FIT_KEY."""
    score = mix.score_fn(sde)
    x_fit = sde.prior_sampling(jax.random.split(jax.random.PRNGKey(FIT_KEY))[0],
                               (n_fit,) + tuple(mix.means.shape[1:]), jnp.float64)
    x_ref = reference(sde, score, x_fit, ss.default_eps(sde))[0]
    return {label: {nfe: grid_opt.optimise_grid(solvers.get(name, **opts(nfe)), sde, score, x_fit, x_ref=x_ref,
                                                n_iter=n_iter)
                    for nfe in budgets}
            for label, (name, opts) in optimised.items()}


def with_grids(optimised, grids):
    """CANDIDATES-style rows for the optimised candidates, using the fitted grids."""
    return {label: (name, lambda n, opts=opts, g=grids[label]: dict(opts(n), custom_grid=g[n][0]), False)
            for label, (name, opts) in optimised.items()}


def reference(sde, score_fn, x_T, eps):
    """(x_eps, Tweedie(x_eps)) of a tight probability-flow solve from x_T at T (Tsit5, rtol = atol = 1e-9)."""
    x_eps = grid_opt.reference_solve(sde, score_fn, x_T, eps)
    return x_eps, data_prediction(sde, score_fn, x_eps, eps)


def path_errors(mix, sde, candidates, budgets, n, key=None):
    """{label: [(actual NFE, mean distance to the reference), ...]} for each budget (needs jax_enable_x64)."""
    key = jax.random.PRNGKey(0) if key is None else key
    score = mix.score_fn(sde)
    shape = (n,) + tuple(mix.means.shape[1:])
    x_T = sde.prior_sampling(jax.random.split(key)[0], shape, jnp.float64)  # every sampler's x_T for this key
    ref = reference(sde, score, x_T, ss.default_eps(sde))
    out = {}
    for label, (name, opts, denoised) in candidates.items():
        out[label] = []
        for nfe in budgets:
            x, info = solvers.get(name, **opts(nfe))(key, sde, score, shape, jnp.float64)
            dist = jnp.linalg.norm((x - ref[int(denoised)]).reshape(n, -1), axis=1)
            out[label].append((int(info.nfe), float(jnp.mean(dist))))
    return out


def markdown(results, budgets, n_of) -> str:
    text = ""
    for (problem, sde_name), rows in results.items():
        best = [min(r[i][1] for r in rows.values()) for i in range(len(budgets))]
        text += (f"\n### {problem}, {sde_name} (n = {n_of[problem]})\n\n| sampler | "
                 + " | ".join(f"NFE {b}" for b in budgets) + " |\n|---|" + "---:|" * len(budgets) + "\n")
        for label, row in rows.items():
            cells = [(f"**{e:.4f}**" if e == best[i] else f"{e:.4f}") + ("" if m == budgets[i] else f" ({m})")
                     for i, (m, e) in enumerate(row)]
            text += f"| {label} | " + " | ".join(cells) + " |\n"
    return text


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4.5), squeeze=False)
    for ax, ((problem, sde_name), rows) in zip(axes[0], results.items()):
        for label, row in rows.items():
            ax.loglog([m for m, _ in row], [e for _, e in row], "o-", label=label, ms=3)
        ax.set(xlabel="NFE", ylabel="mean distance to the converged ODE", title=f"{problem}, {sde_name}")
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_case(problem, sde_name, budgets, n, n_fit):
    """One (problem, SDE): (path errors of CANDIDATES and the optimised rows, the fitted grids)."""
    jax.config.update("jax_enable_x64", True)
    mix, sde = PROBLEMS[problem](), SDES[sde_name]
    grids = fit_grids(mix, sde, OPTIMISED, budgets, n_fit)
    rows = path_errors(mix, sde, dict(CANDIDATES, **with_grids(OPTIMISED, grids)), budgets, n)
    return rows, {label: {str(b): {"fractions": list(u), **info} for b, (u, info) in g.items()} for label, g in grids.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="NFE 5, 10, 20 on the 2-D mixture under VP only")
    ap.add_argument("--out", default=None, help="output folder (default benchmarks/out)")
    ap.add_argument("--workers", type=int, default=1, help="processes, one (problem, SDE) each")
    args = ap.parse_args()
    jax.config.update("jax_enable_x64", True)  # here, not at import: tests import this module
    budgets = (5, 10, 20) if args.quick else BUDGETS
    n_of = {"2-D mixture": 2000, "64-d digits-like mixture": 500}
    fit_of = {"2-D mixture": 1000, "64-d digits-like mixture": 250}
    problems = ["2-D mixture"] if args.quick else list(PROBLEMS)
    sdes = ["VP"] if args.quick else list(SDES)
    cases = [(p, s) for p in problems for s in sdes]
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {c: pool.submit(run_case, *c, budgets, n_of[c[0]], fit_of[c[0]]) for c in cases}
        done = {c: f.result() for c, f in futures.items()}
    results = {c: done[c][0] for c in cases}
    grids = {f"{p}, {s}": done[p, s][1] for p, s in cases}
    out = pathlib.Path(args.out) if args.out else RESULTS
    text = ("Mean distance || x - x_ref || over samples to a Tsit5 (rtol = atol = 1e-9) probability-flow solve "
            "from the same x_T (float64, exact mixture score); the best per column in bold, the actual NFE in "
            "brackets where it differs from the budget. \"optimised grid\" rows: grids fitted (optimise_grid, "
            f"200 Adam steps) on {fit_of['2-D mixture']} (2-D) / {fit_of['64-d digits-like mixture']} (64-d) "
            "OTHER prior draws (key 1) than the evaluation's x_T (key 0); fractions in path_error_grids.json.\n"
            + markdown(results, budgets, n_of))
    out.mkdir(parents=True, exist_ok=True)
    (out / "path_error_grids.json").write_text(json.dumps(grids, indent=1))
    write_result("path_error", text + "\n![path error](path_error.png)\n",
                 "python -m benchmarks.path_error" + (" --quick" if args.quick else ""), title="Path error vs NFE",
                 directory=out)
    plot(results, out / "path_error.png")
    print(text)


if __name__ == "__main__":
    main()
