"""Inpainting accuracy against the exact conditional, and the probability-flow round trip (exact scores).

    python -m benchmarks.inverse_edit [--n 4000] [--steps 200]

Inpainting: the 2-D three-component mixture of tests/test_inverse.py (big modes at (+-1.5, -2), a
small one at (0, 2)), x1 = 0 observed between the big modes; the exact conditional
(`analytic.mask_conditional`) puts 95.7% of its mass on the small mode. For each method, n
observations (one sample each), VP SDE, the same number of grid steps: the 1-D W1 distance of x2 to
an exact conditional sample of size n, and the fraction of samples with x2 > 0. The Monte-Carlo
floor is W1 between two exact samples of size n.

Round trip: max relative error of decode(encode(x)) over 256 mixture samples, tsit5 at two
tolerances, float32. Writes benchmarks/out/inverse_edit.md (a benchmark, not a test).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import score_sde as ss
from benchmarks.common import timed_split, write_result
from score_sde import edit, inverse
from score_sde.analytic import mask_conditional

MIX = ss.GaussianMixture(jnp.array([0.4, 0.4, 0.2]), jnp.array([[-1.5, -2.0], [1.5, -2.0], [0.0, 2.0]]),
                         jnp.array([0.5, 0.5, 0.5]))
MASK = np.array([1.0, 0.0])


def w1(a, b):
    return float(np.mean(np.abs(np.sort(np.asarray(a, np.float64)) - np.sort(np.asarray(b, np.float64)))))


def inpainting_table(n: int, steps: int) -> str:
    sde = ss.VPSDE()
    cond = mask_conditional(MIX, jnp.zeros(2), MASK)
    exact, exact2 = (np.asarray(cond.sample(jax.random.PRNGKey(k), n))[:, 1] for k in (11, 12))
    em = ss.solvers.get("euler_maruyama", n_steps=steps)
    rows = {
        "smc, 16 particles": ("smc", dict(n_particles=16, n_steps=steps)),
        "smc, 64 particles": ("smc", dict(n_particles=64, n_steps=steps)),
        "smc, 256 particles": ("smc", dict(n_particles=256, n_steps=steps)),
        "replace, pc (reverse diffusion + Langevin)": ("replace", dict(n_steps=steps)),
        "replace, euler_maruyama": ("replace", dict(sampler=em)),
        "replace, euler_maruyama, RePaint n_resample = 5": ("replace", dict(sampler=em, n_resample=5)),
    }
    y = jnp.zeros((n, 2))
    lines = [f"x1 = 0 observed, VP, {steps} steps, n = {n} observations. Monte-Carlo floor (two exact samples): "
             f"W1 {w1(exact, exact2):.3f}; exact fraction with x2 > 0: {np.mean(exact > 0):.3f}. "
             "Score calls: smc evaluates n x particles points per call, replace n.", "",
             "| method | score calls | W1 to the exact conditional | fraction x2 > 0 | compile (s) | run (s) |",
             "|---|---:|---:|---:|---:|---:|"]
    for label, (method, opts) in rows.items():
        compile_s, run_s, (x, info) = timed_split(inverse.inpaint, jax.random.PRNGKey(0), sde, MIX.score_fn(sde), y,
                                                  MASK, method=method, **opts)
        x = np.asarray(x)
        assert np.all(x[:, 0] == 0.0)
        lines.append(f"| {label} | {int(info.nfe)} | {w1(x[:, 1], exact):.3f} | {np.mean(x[:, 1] > 0):.3f} | "
                     f"{compile_s:.1f} | {run_s:.1f} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def round_trip_table() -> str:
    x = MIX.sample(jax.random.PRNGKey(0), 256)
    lines = ["| SDE | tolerance (rtol = atol) | max relative error of decode(encode(x)) |", "|---|---:|---:|"]
    for name, sde in (("VP", ss.VPSDE()), ("VE", ss.VESDE())):
        for tol in (1e-5, 1e-6):
            z = edit.encode(sde, MIX.score_fn(sde), x, rtol=tol, atol=tol)
            xr = edit.decode(sde, MIX.score_fn(sde), z, rtol=tol, atol=tol)
            err = np.max(np.linalg.norm(np.asarray(xr - x), axis=1) / np.linalg.norm(np.asarray(x), axis=1))
            lines.append(f"| {name} | {tol:g} | {err:.1e} |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    body = "## Inpainting between two modes\n\n" + inpainting_table(args.n, args.steps)
    body += "\n\n## Probability-flow round trip (256 points, float32, tsit5)\n\n" + round_trip_table()
    path = write_result("inverse_edit", body, f"python -m benchmarks.inverse_edit --n {args.n} --steps {args.steps}")
    print(path)


if __name__ == "__main__":
    main()
