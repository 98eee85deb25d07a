"""Does bf16 cost quality, and what does remat cost and save, on CPU: two parts, one Markdown result.

    python -m benchmarks.precision_remat                # digits, 600 steps per precision + the remat ratios (CPU: minutes)
    python -m benchmarks.precision_remat --smoke        # 4 steps, nf=8: seconds after compiling

bf16:  configs/digits_vp.py trained by the real driver (`score_sde.drivers.train.train`) with
       training.precision=fp32 and =bf16, same seed, same data order, same steps; the logged training
       loss (metrics.jsonl, every log_freq steps) side by side, and the mean over the last third of the run.
remat: the digits UNet's value-and-gradient of the DSM loss with and without model.remat: the bytes the
       backward pass keeps (jax.vjp residuals), XLA's compiled temp bytes on this backend, and the step
       time (best of 5), as remat / plain ratios.
Writes benchmarks/out/precision_remat.md (--out: another folder; committed copy in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS, write_result
from benchmarks.memory import compiled_bytes
from configs import digits_vp
from score_sde import config_utils
from score_sde.drivers import train



def digits_config(precision: str, steps: int, smoke: bool, remat: bool = False):
    config = digits_vp.get_config()
    config.training.update(precision=precision, n_iters=steps, log_freq=max(1, steps // 12),
                           snapshot_freq=steps, batch_size=32 if smoke else 128)
    config.model.remat = remat
    if smoke:
        config.model.nf = 8
    return config


def loss_curve(precision: str, steps: int, smoke: bool) -> list[tuple[int, float]]:
    """(step, logged training loss) of one run of the training driver in a temporary workdir."""
    with tempfile.TemporaryDirectory() as workdir:
        train.train(digits_config(precision, steps, smoke), workdir)
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            rows = [json.loads(line) for line in f]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def bf16_part(steps: int, smoke: bool) -> str:
    curves = {p: loss_curve(p, steps, smoke) for p in ("fp32", "bf16")}
    lines = ["| step | loss fp32 | loss bf16 | bf16 / fp32 |", "|---|---|---|---|"]
    for (s, a), (_, b) in zip(curves["fp32"], curves["bf16"]):
        lines.append(f"| {s} | {a:.4f} | {b:.4f} | {b / a:.3f} |")
    tail = max(1, len(curves["fp32"]) // 3)
    m32, m16 = (float(np.mean([v for _, v in curves[p][-tail:]])) for p in ("fp32", "bf16"))
    return (f"### bf16 vs fp32 on digits ({steps} steps, seed {digits_vp.get_config().seed})\n\n"
            + "\n".join(lines) + f"\n\nMean logged loss over the last {tail} logs: fp32 {m32:.4f}, bf16 {m16:.4f} "
            f"(ratio {m16 / m32:.3f}).\n")


def remat_part(smoke: bool, batch: int) -> str:
    rows = {}
    for remat in (False, True):
        config = digits_config("fp32", 1, smoke, remat=remat)
        net, sde = config_utils.objects(config).net, config_utils.objects(config).sde
        loss = train.loss_fn_from_config(config, net, sde)
        params = jax.jit(net.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))["params"]
        x = jax.random.uniform(jax.random.PRNGKey(1), (batch, 8, 8, 1), minval=-1.0, maxval=1.0)
        keys = jax.random.split(jax.random.PRNGKey(2), batch)
        vg = jax.value_and_grad(loss)
        res = jax.eval_shape(lambda p: jax.vjp(lambda q: loss(q, x, keys), p)[1], params)
        kept = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(res))
        temp = compiled_bytes(vg, params, x, keys)["temp"]
        fn = jax.jit(vg)
        jax.block_until_ready(fn(params, x, keys))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(params, x, keys))
            times.append(time.perf_counter() - t0)
        rows[remat] = (kept, temp, min(times))
    (k0, t0_, s0), (k1, t1, s1) = rows[False], rows[True]
    return (f"### remat on {jax.default_backend()}: digits UNet (nf={digits_config('fp32', 1, smoke).model.nf}), "
            f"loss value-and-gradient, batch {batch}\n\n"
            "| figure | plain | remat | remat / plain |\n|---|---|---|---|\n"
            f"| residuals kept for the backward pass (MB) | {k0 / 1e6:.2f} | {k1 / 1e6:.2f} | {k1 / k0:.2f} |\n"
            f"| XLA compiled temp bytes (MB) | {t0_ / 1e6:.2f} | {t1 / 1e6:.2f} | {t1 / t0_:.2f} |\n"
            f"| step time (ms, best of 5) | {s0 * 1e3:.1f} | {s1 * 1e3:.1f} | {s1 / s0:.2f} |\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--part", default="bf16,remat", help="bf16, remat or both (comma-separated)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    steps = 4 if args.smoke else args.steps
    parts = args.part.split(",")
    body = ""
    if "bf16" in parts:
        body += bf16_part(steps, args.smoke) + "\n"
    if "remat" in parts:
        body += remat_part(args.smoke, 32 if args.smoke else 128)
    name = "precision_remat_smoke" if args.smoke else "precision_remat"
    cmd = "python -m benchmarks.precision_remat " + " ".join(argv if argv is not None else sys.argv[1:])
    print(body)
    print(f"wrote {write_result(name, body, cmd.strip(), title='bf16 and remat on CPU', directory=args.out or RESULTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
