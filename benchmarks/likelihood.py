"""Likelihood cost: exact vs Hutchinson divergence, fused vs unfused, against NFE x one score eval.

    python -m benchmarks.likelihood [--quick]

A random 3-layer MLP score network (width 512, SiLU, time input) on data of shape (8, 8, 1)
(D = 64) under the VP SDE, tsit5 at rtol = atol = 1e-5, batch 32. Prints a table of
ratios and writes it as Markdown to benchmarks/out/likelihood.md. Timings are the
median of a few jitted runs after compilation, on whatever machine runs it; on a shared
CPU they are noisy (ratios in the same run are more trustworthy than absolute times).
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp

import score_sde as ss
from benchmarks.common import write_result
from score_sde.likelihood import log_likelihood


class RandomMLPScore(eqx.Module):
    """score(x, t) = MLP([x, t]) with random weights: a stand-in for a trained network."""

    layers: list

    def __init__(self, key, dim, width=512, depth=3):
        sizes = [dim + 1] + [width] * depth + [dim]
        keys = jax.random.split(key, len(sizes) - 1)
        self.layers = [(jax.random.normal(k, (a, b)) / jnp.sqrt(a), jnp.zeros(b))
                       for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def __call__(self, x, t):
        h = jnp.concatenate([x.reshape(x.shape[0], -1), jnp.broadcast_to(t, x.shape[:1])[:, None]], 1)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = jax.nn.silu(h)
        return h.reshape(x.shape)


def _median_time(fn, repeats):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(quick: bool) -> str:
    batch, shape, repeats = (16, (8, 8, 1), 2) if quick else (32, (8, 8, 1), 5)
    sde = ss.VPSDE()
    score = RandomMLPScore(jax.random.key(0), 64)
    x = jax.random.uniform(jax.random.key(1), (batch,) + shape, minval=-1, maxval=1)
    t = jnp.full((batch,), 0.5)
    one_eval = jax.jit(lambda x: score(x, t))
    t_score = _median_time(lambda: one_eval(x), 50)

    calls, first = {}, {}
    for div in ("hutchinson", "exact"):
        for fused in (True, False):
            calls[div, fused] = jax.jit(lambda x, div=div, fused=fused: log_likelihood(
                jax.random.key(2), sde, score, x, divergence=div, fused=fused))
            t0 = time.perf_counter()
            jax.block_until_ready(calls[div, fused](x))  # compile (and one run, subtracted below)
            first[div, fused] = time.perf_counter() - t0
    # Interleaved rounds, so that load from other jobs hits every variant alike.
    times = {k: [] for k in calls}
    for _ in range(repeats):
        for k, fn in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))
            times[k].append(time.perf_counter() - t0)
    rows = [(d, f, statistics.median(times[d, f]), int(calls[d, f](x).nfe)) for d, f in calls]

    by = {(d, f): (s, n) for d, f, s, n in rows}
    lines = [
        f"Likelihood of a batch of {batch} x {shape} (D = 64), random MLP score (3 x 512), VP SDE, "
        f"tsit5 rtol=atol=1e-5; median of {repeats} runs; one score eval = {t_score * 1e3:.3f} ms. "
        "Compile = first call - median run. On a shared CPU single times are noisy; the ratios "
        "(measured in the same run, interleaved) are the figures to read.",
        "",
        "| divergence | fused | time / batch (s) | compile (s) | NFE | time / (NFE x score eval) | fused / unfused |",
        "|---|---|---|---|---|---|---|",
    ]
    for div, fused, secs, nfe in rows:
        ratio = secs / by[div, False][0]
        compile_s = max(first[div, fused] - secs, 0.0)
        lines.append(f"| {div} | {fused} | {secs:.3f} | {compile_s:.2f} | {nfe} | {secs / (nfe * t_score):.2f} | "
                     f"{ratio:.2f} |")
    h, e = by["hutchinson", True], by["exact", True]
    lines += ["", f"exact / hutchinson (fused): {e[0] / h[0]:.2f}x time; "
              f"per evaluation {e[0] / e[1] / (h[0] / h[1]):.2f}x (D = 64 jvps vs 1)."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller batch, fewer repeats")
    quick = parser.parse_args().quick
    table = run(quick)
    print(table)
    write_result("likelihood", table, "python -m benchmarks.likelihood" + (" --quick" if quick else ""),
                 title="Likelihood: exact vs Hutchinson, fused vs unfused")


if __name__ == "__main__":
    main()
