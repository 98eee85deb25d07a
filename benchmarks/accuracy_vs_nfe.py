"""Accuracy versus NFE for every registered sampler on an exact Gaussian-mixture score (VP SDE).

    python -m benchmarks.accuracy_vs_nfe [--quick]

Two distances to the truth, float64:
  * sliced W1 (64 directions) between the samples and an exact sample of the data of the same size
    (the Monte-Carlo floor, mean SW1 between two exact samples over 4 pairs, is printed with the table);
  * for deterministic samplers, the RMS endpoint error against a tight probability-flow ODE solve
    (diffrax Tsit5, rtol = atol = 1e-8) from the same starting noise x_T, followed by the same
    final denoising step the sampler applies (Tweedie at eps), if any.
Writes benchmarks/out/accuracy_vs_nfe.md and .png (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import math

import diffrax
import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import score_sde as ss  # noqa: E402
from benchmarks.common import RESULTS, write_result  # noqa: E402
import score_sde.solvers as solvers  # noqa: E402
from score_sde.solvers.data_prediction import data_prediction  # noqa: E402

MIX = ss.GaussianMixture(jnp.array([0.4, 0.3, 0.2, 0.1]),
                         jnp.array([[1.5, 1.5], [-1.5, 1.5], [-1.5, -1.5], [1.5, -1.5]]),
                         jnp.array([0.1, 0.05, 0.1, 0.05]))


def half(nfe):
    return max(1, (nfe - 1) // 2)


# label -> (name, options for a target NFE, output is denoised, deterministic); every sampler draws x_T from split(key)[0]
CANDIDATES = {
    "ddim (eta=0)": ("ddim", lambda n: dict(n_steps=n), False, True),
    "ddim (eta=0, logSNR)": ("ddim", lambda n: dict(n_steps=n, skip="logSNR"), False, True),
    "dpm_solver++ 2M": ("dpm_solver", lambda n: dict(nfe=n, order=2, method="multistep"), False, True),
    "dpm_solver++ 3M": ("dpm_solver", lambda n: dict(nfe=n, order=3, method="multistep"), False, True),
    "dpm_solver++ 3S": ("dpm_solver", lambda n: dict(nfe=n, order=3, method="singlestep"), False, True),
    "dpm_solver 3S": ("dpm_solver", lambda n: dict(nfe=n, order=3, method="singlestep", algorithm="dpmsolver"),
                      False, True),
    "edm_heun": ("edm_heun", lambda n: dict(n_steps=(n + 1) // 2), True, True),
    "euler_maruyama": ("euler_maruyama", lambda n: dict(n_steps=max(1, n - 1)), True, False),
    "pc (reverse_diffusion+langevin)": ("pc", lambda n: dict(n_steps=half(n)), True, False),
    "ode (heun, fixed steps)": ("ode", lambda n: dict(solver="heun", n_steps=half(n)), True, True),
}


def sliced_w1(a, b, n_dirs=64):
    d = jax.random.normal(jax.random.PRNGKey(99), (n_dirs, a.shape[1]), a.dtype)
    d = d / jnp.linalg.norm(d, axis=1, keepdims=True)
    return float(jnp.mean(jnp.abs(jnp.sort(a @ d.T, axis=0) - jnp.sort(b @ d.T, axis=0))))


@jax.jit
def reference_flow(x_t):
    """x_eps from x_T along the probability-flow ODE, Tsit5 with rtol = atol = 1e-8."""
    sde = ss.VPSDE()
    score = MIX.score_fn(sde)
    term = diffrax.ODETerm(lambda t, y, _: ss.probability_flow_drift(sde, score, y, t))
    sol = diffrax.diffeqsolve(term, diffrax.Tsit5(), sde.T, 1e-3, -1e-3, x_t,
                              stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8), max_steps=100000)
    return sol.ys[-1]


def run(quick: bool):
    sde, key = ss.VPSDE(), jax.random.PRNGKey(5)
    score = MIX.score_fn(sde)
    n = 4000 if quick else 50000
    budgets = [5, 10, 20] if quick else [5, 10, 20, 50, 100]
    shape = (n, 2)
    truth = MIX.sample(jax.random.PRNGKey(1000), n)
    floor = sum(sliced_w1(MIX.sample(jax.random.PRNGKey(2 * i + 1), n), MIX.sample(jax.random.PRNGKey(2 * i + 2), n))
                for i in range(4)) / 4
    x_eps = reference_flow(sde.prior_sampling(jax.random.split(key)[0], shape, jnp.float64))  # the samplers' x_T
    refs = {False: x_eps, True: data_prediction(sde, score, x_eps, 1e-3)}
    rows = {}
    for label, (name, opts, denoised, deterministic) in CANDIDATES.items():
        if name not in solvers.names():
            continue
        rows[label] = []
        for target in budgets:
            x, info = solvers.get(name, **opts(target))(key, sde, score, shape, jnp.float64)
            err = float(jnp.sqrt(jnp.mean((x - refs[denoised]) ** 2))) if deterministic else math.nan
            rows[label].append((target, int(info.nfe), sliced_w1(x, truth), err))
            print(label, rows[label][-1], flush=True)
    return rows, floor, n, budgets


def markdown(rows, floor, n, budgets) -> str:
    head = "| sampler | " + " | ".join(f"NFE {b}" for b in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n"
    sw = "".join(f"| {k} | " + " | ".join(f"{s:.4f} ({m}) {s / floor:.1f}x" for _, m, s, _ in v) + " |\n"
                 for k, v in rows.items())
    ep = "".join(f"| {k} | " + " | ".join("—" if math.isnan(e) else f"{e:.2e} ({m})" for _, m, _, e in v) + " |\n"
                 for k, v in rows.items())
    return (f"VP SDE, 4-component 2-D Gaussian mixture, exact score, float64, n = {n}. Accuracy only: no "
            "timings (the cost of each sampler is NFE x one score evaluation; see samplers.md).\n\n"
            f"Sliced W1 to an exact data sample (actual NFE in brackets), then its ratio to the baseline, the "
            f"Monte-Carlo floor measured in the same run (mean over 4 pairs of exact samples): {floor:.4f}\n\n"
            + head + sw +
            "\nRMS endpoint error against a Tsit5 (rtol = atol = 1e-8) probability-flow solve from the same x_T "
            "(deterministic samplers only)\n\n" + head + ep)


def plot(rows, floor, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for k, v in rows.items():
        nfe = [m for _, m, _, _ in v]
        a1.loglog(nfe, [s for _, _, s, _ in v], "o-", label=k)
        if not any(math.isnan(e) for *_, e in v):
            a2.loglog(nfe, [e for *_, e in v], "o-", label=k)
    a1.axhline(floor, color="k", ls=":", label="MC floor")
    a1.set(xlabel="NFE", ylabel="sliced W1 to data", title="distribution error")
    a2.set(xlabel="NFE", ylabel="RMS endpoint error", title="error vs exact ODE endpoint")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 4000 and NFE in {5, 10, 20}")
    args = parser.parse_args()
    rows, floor, n, budgets = run(args.quick)
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, floor, n, budgets)
    write_result("accuracy_vs_nfe", text + "\n![accuracy vs NFE](accuracy_vs_nfe.png)\n",
                 "python -m benchmarks.accuracy_vs_nfe" + (" --quick" if args.quick else ""),
                 title="Accuracy vs NFE")
    plot(rows, floor, RESULTS / "accuracy_vs_nfe.png")
    print(text)


if __name__ == "__main__":
    main()
