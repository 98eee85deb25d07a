"""What the per-step progress callback costs: samplers with and without `progress=...`, side by side.

    python -m benchmarks.progress_overhead            # 200 steps, batch 256, 5 rounds
    python -m benchmarks.progress_overhead --quick    # 50 steps, 3 rounds

`sampler(..., progress=fn)` calls fn(step, n_steps) on the host through `jax.debug.callback` after
every step of the sampling loop, at most 50 times a solve (what moves the CLI's sample bar). The cost problem is the one of
`benchmarks.samplers`: a random 3-layer MLP score (width 512) on 64-d data, batch 256, VP SDE. Each
sampler is compiled ahead of time with and without the callback, then the two are timed in
alternation (round robin, fastest of the rounds, since the CPU may be shared); the ratio
with / without is the overhead. Also reported: the same for a cheap score (-x), where the callback's
fixed cost per step is the largest share. Writes benchmarks/out/progress_overhead.md.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import score_sde as ss
from benchmarks.common import write_result
from benchmarks.samplers import BATCH, DIM, RandomMLPScore
from score_sde.solvers import base


class _Count:
    """A progress callback that only counts its calls (what a bar update costs is host-side noise)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, i, n):
        self.calls += 1


def _compiled(sampler, sde, score_fn, shape, progress):
    """The sampler's solve compiled ahead of time (`eqx.filter_jit(...).lower(...).compile()`)."""
    args = (sampler, jax.random.PRNGKey(0), sde, score_fn, shape, jnp.dtype(jnp.float32), None, None, None, progress)
    t0 = time.perf_counter()
    compiled = base._sample_jit.lower(*args).compile()
    return compiled, time.perf_counter() - t0, args


def measure(name: str, sampler, sde, score_fn, rounds: int) -> dict:
    shape = (BATCH, DIM)
    count = _Count()
    plain, c_plain, a_plain = _compiled(sampler, sde, score_fn, shape, None)
    tracked, c_tracked, a_tracked = _compiled(sampler, sde, score_fn, shape, count)
    best = {"plain": float("inf"), "tracked": float("inf")}
    for _ in range(rounds):
        for label, fn, args in (("plain", plain, a_plain), ("tracked", tracked, a_tracked)):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(*args))
            jax.effects_barrier()
            best[label] = min(best[label], time.perf_counter() - t0)
    reports = count.calls // rounds
    return {"name": name, "reports": reports, "plain": best["plain"], "tracked": best["tracked"],
            "ratio": best["tracked"] / best["plain"],
            "per_report_us": (best["tracked"] - best["plain"]) / max(reports, 1) * 1e6,
            "compile_plain": c_plain, "compile_tracked": c_tracked}


def run(quick: bool) -> str:
    n_steps, rounds = (50, 3) if quick else (200, 5)
    sde = ss.VPSDE(0.1, 20.0)
    mlp = RandomMLPScore(jax.random.PRNGKey(1))
    cases = [("euler_maruyama", ss.solvers.get("euler_maruyama", n_steps=n_steps), mlp, "MLP 3x512"),
             ("ddim", ss.solvers.get("ddim", n_steps=n_steps), mlp, "MLP 3x512"),
             ("dpm_solver 2M", ss.solvers.get("dpm_solver", order=2, method="multistep", n_steps=n_steps), mlp,
              "MLP 3x512"),
             ("ddim", ss.solvers.get("ddim", n_steps=n_steps), lambda x, t: -x, "-x (no network)")]
    lines = [f"Batch {BATCH} of {DIM}-d data, {n_steps} steps, fastest of {rounds} alternating rounds.", "",
             "| sampler | score | callbacks | without (s) | with callback (s) | with / without | per callback (µs) | "
             "compile without / with (s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, sampler, score_fn, label in cases:
        r = measure(name, sampler, sde, score_fn, rounds)
        lines.append(f"| {name} | {label} | {r['reports']} | {r['plain']:.3f} | {r['tracked']:.3f} | "
                     f"{r['ratio']:.3f} | {r['per_report_us']:.0f} | {r['compile_plain']:.1f} / "
                     f"{r['compile_tracked']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 steps, 3 rounds")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out)")
    args = parser.parse_args()
    table = run(args.quick)
    print(table)
    path = write_result("progress_overhead", table,
                        "python -m benchmarks.progress_overhead" + (" --quick" if args.quick else ""),
                        title="Per-step progress callback: overhead", directory=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
