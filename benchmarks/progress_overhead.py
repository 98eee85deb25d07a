"""What the per-step progress callback costs: samplers with and without `progress=...`, side by side.

    python -m benchmarks.progress_overhead            # 200 steps, batch 256, 5 rounds
    python -m benchmarks.progress_overhead --quick    # 50 steps, 3 rounds
    python -m benchmarks.progress_overhead --quick --ddpmpp   # and DDIM on the paper-size DDPM++ (GPU)

`sampler(..., progress=fn)` calls fn(step, n_steps) on the host through `jax.debug.callback` after
every step of the sampling loop, at most 10 times a solve (what moves the CLI's sample bar). The cost problem is the one of
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


def measure(name: str, sampler, sde, score_fn, rounds: int, shape=(BATCH, DIM)) -> dict:
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


def ddpmpp_case(smoke: bool, n_steps: int) -> tuple:
    """DDIM on the paper-size DDPM++ of configs/cifar10_vp.py (random weights), batch 64 of 32x32x3
    (--smoke: benchmarks.gpu_check's tiny DDPM++ on 8x8, batch 4): a real network's step beside the callback."""
    from benchmarks import gpu_check
    from score_sde import models

    config = gpu_check.make_config(smoke)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    model, sde, params = gpu_check.build(config, shape)
    score = models.score_fn(model, {"params": params}, sde)
    batch = 4 if smoke else 64
    return ("ddim", ss.solvers.get("ddim", n_steps=n_steps), score, f"DDPM++ nf={config.model.nf}",
            sde, (batch, *shape))


def run(quick: bool, ddpmpp: bool = False, smoke: bool = False) -> str:
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
    runs = [(name, sampler, score_fn, label, sde, (BATCH, DIM)) for name, sampler, score_fn, label in cases]
    if ddpmpp:
        runs.append(ddpmpp_case(smoke, n_steps))
    for name, sampler, score_fn, label, case_sde, shape in runs:
        r = measure(name, sampler, case_sde, score_fn, rounds, shape)
        lines.append(f"| {name} | {label} | {r['reports']} | {r['plain']:.3f} | {r['tracked']:.3f} | "
                     f"{r['ratio']:.3f} | {r['per_report_us']:.0f} | {r['compile_plain']:.1f} / "
                     f"{r['compile_tracked']:.1f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="50 steps, 3 rounds")
    parser.add_argument("--ddpmpp", action="store_true",
                        help="also DDIM on the paper-size DDPM++ (batch 64, 32x32x3; for an accelerator)")
    parser.add_argument("--smoke", action="store_true", help="with --ddpmpp: a tiny DDPM++ (CPU check)")
    parser.add_argument("--out", default=None, help="output folder (default benchmarks/out)")
    args = parser.parse_args()
    table = run(args.quick, args.ddpmpp, args.smoke)
    print(table)
    path = write_result("progress_overhead", table,
                        "python -m benchmarks.progress_overhead" + (" --quick" if args.quick else "")
                        + (" --ddpmpp" if args.ddpmpp else "") + (" --smoke" if args.smoke else ""),
                        title="Per-step progress callback: overhead", directory=args.out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
