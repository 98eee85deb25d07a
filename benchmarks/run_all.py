"""Every benchmark in one command; each writes benchmarks/out/<name>.md headed by the machine.

    python -m benchmarks.run_all            # full sizes: about 15 minutes on 2 CPU cores
    python -m benchmarks.run_all --quick    # about 3 minutes
    python -m benchmarks.run_all --only samplers,likelihood

Each benchmark runs in its own Python process (accuracy_vs_nfe switches JAX to float64, and a
fresh process keeps compilation caches from leaking between figures); a failing one is reported
and the others still run. Every figure is a ratio against a baseline measured in the same run
of the same script; compile times are reported apart from run times. The run's own index,
with each script's wall time and exit status, goes to benchmarks/out/run_all.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from benchmarks.common import write_result
from score_sde.lookup import check_choice

# name -> what its table shows (the README's benchmark list)
BENCHMARKS = {
    "samplers": "sampler overhead vs NFE x one score evaluation and vs a minimal lax.scan loop; "
                "on-device ODE vs the scipy host loop",
    "likelihood": "likelihood: exact vs Hutchinson divergence, fused vs unfused",
    "accuracy_vs_nfe": "accuracy vs NFE for every sampler on an exact Gaussian-mixture score (table + PNG)",
    "path_error": "deterministic samplers' distance to a converged ODE solve from the same x_T at 5-20 NFE "
                  "(2-D and 64-d mixtures, VP and VE; table + PNG)",
    "train_throughput": "training steps/s and images/s (toy MLP, digits UNet, CIFAR-10 DDPM++), "
                        "share of time outside the jitted step",
    "progress_overhead": "the per-step progress callback of the samplers: time with / without it",
}


def run_one(name: str, quick: bool) -> tuple[int, float]:
    """(exit status, wall seconds) of `python -m benchmarks.<name> [--quick]`, output passed through."""
    cmd = [sys.executable, "-m", f"benchmarks.{name}"] + (["--quick"] if quick else [])
    print(f"\n##### {' '.join(cmd[1:])}", flush=True)
    t0 = time.perf_counter()
    rc = subprocess.call(cmd)
    return rc, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the scripts' --quick sizes (about 3 minutes)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = ap.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    for name in names:
        try:
            check_choice(name, BENCHMARKS, "benchmark", "benchmarks")
        except ValueError as e:
            ap.error(str(e))
    status = {name: run_one(name, args.quick) for name in names}
    lines = ["| benchmark | result | shows | exit status | wall (s) |", "|---|---|---|---:|---:|"]
    lines += [f"| {n} | [{n}.md]({n}.md) | {BENCHMARKS[n]} | {rc} | {secs:.0f} |" for n, (rc, secs) in status.items()]
    table = "\n".join(lines)
    print("\n" + table)
    cmd = "python -m benchmarks.run_all" + (" --quick" if args.quick else "")
    write_result("run_all", table, cmd, title="All benchmarks")
    return int(any(rc for rc, _ in status.values()))


if __name__ == "__main__":
    sys.exit(main())
