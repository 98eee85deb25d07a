"""Measured memory without a GPU: XLA's compiled memory analysis of the train step, a sampler step and
the likelihood step, per config and batch, and the largest batch that fits 16 / 40 / 80 GB.

    python -m benchmarks.memory            # DDPM++ / NCSN++ at 32², 64², 128², 256² (CPU: ~15-30 min of compiles)
    python -m benchmarks.memory --smoke    # a tiny DDPM++ on 8x8, two batches: seconds

Every program is lowered on abstract inputs (`jax.ShapeDtypeStruct`, nothing is allocated) and
compiled for the default backend; `compiled.memory_analysis()` gives its argument, output and
temporary bytes. The programs:
  train       one step of `score_sde.drivers.train.make_train_step` (continuous DSM, AdamW, EMA), one device;
  sample      one probability-flow drift evaluation (a network forward: the memory of any sampler step);
  likelihood  one evaluation of the likelihood ODE's vector field (drift + Hutchinson divergence, one jvp).

Largest batch: bytes(B) = argument + output + temp - alias is fitted as a + b B from the two measured
batches (params, optimizer and EMA are the constant a; activations grow with B), then
B_max = floor((capacity - a) / b). The third column of the table (the largest batch measured) checks the
line: the fit's error there is reported. On the backend measured (XLA:CPU unless run on a GPU) the
temporaries follow that backend's fusion and scheduling; a GPU's differ (cuDNN workspaces, another
scheduler), so the GB columns are estimates to confirm with `benchmarks.gpu_check --section=memory`.
Writes benchmarks/out/memory.md and memory.json (--out: another folder; the committed copies are in
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp

from benchmarks.common import RESULTS, write_result
from configs import cifar10_ve, cifar10_vp
from score_sde import config_utils, models
from score_sde.divergence import hutchinson_divergence
from score_sde.drivers import train
from score_sde.sde import probability_flow_drift

GB = 1e9
CAPACITIES_GB = (16, 40, 80)
# resolution -> model overrides: 32² and 64² the CIFAR-10 / CelebA-64 networks (4 levels, 4 blocks);
# 128² and 256² the paper's high-resolution layout (CelebA-HQ 256: 7 levels, 2 blocks), 128² with 6 levels
RESOLUTIONS = {
    32: dict(ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,)),
    64: dict(ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,)),
    128: dict(ch_mult=(1, 1, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
    256: dict(ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)),
}
FAMILIES = {"ddpmpp": cifar10_vp, "ncsnpp": cifar10_ve}
PROGRAMS = ("train", "sample", "likelihood")


def compiled_bytes(fn, *args) -> dict:
    """{argument, output, temp, alias, total} bytes of `jax.jit(fn)` compiled for `args` (arrays or
    ShapeDtypeStructs); total = argument + output + temp - alias (donated buffers counted once)."""
    # LLVM's optimisation level changes XLA:CPU's machine code, not its buffer assignment: level 0 gives
    # the same bytes and compiles in about half the time
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
    analysis = jax.jit(fn).lower(*args).compile(compiler_options=options).memory_analysis()
    out = {"argument": int(analysis.argument_size_in_bytes), "output": int(analysis.output_size_in_bytes),
           "temp": int(analysis.temp_size_in_bytes), "alias": int(analysis.alias_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def make_config(family: str, image_size: int, *, remat: bool = False, precision: str = "fp32", smoke: bool = False):
    """The paper's config of `family` ('ddpmpp': configs/cifar10_vp, 'ncsnpp': configs/cifar10_ve) at
    `image_size`; smoke: nf=8, ch_mult (1, 2), one block, attention at 4."""
    config = FAMILIES[family].get_config()
    config.data.image_size = image_size
    config.model.update(RESOLUTIONS.get(image_size, {}))
    if smoke:
        config.model.update(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    config.model.remat = remat
    config.training.precision = precision
    return config


def programs(config, batch: int) -> dict:
    """{name: (fn, abstract args)} of the train step, a sampler step and the likelihood step at `batch`."""
    net, sde = config_utils.objects(config).net, config_utils.objects(config).sde
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    optimizer = train.make_optimizer(config.optim)
    state = jax.eval_shape(lambda k: train.create_train_state(k, net, optimizer, shape), jax.random.PRNGKey(0))
    loss = train.loss_fn_from_config(config, models.with_precision(net, config.training.precision), sde)
    step = train.make_train_step(loss, optimizer, config.model.ema_rate)
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
    t = jax.ShapeDtypeStruct((), jnp.float32)

    def drift(params, y, s):
        return probability_flow_drift(sde, models.ScoreModel(net, {"params": params}, sde), y, s)

    def likelihood_field(params, y, s, probe):
        return hutchinson_divergence(lambda z: drift(params, z, s), y, probe)

    return {"train": (step, (state, x)), "sample": (drift, (state.params, x, t)),
            "likelihood": (likelihood_field, (state.params, x, t, x))}


def measure(config, batches, which=PROGRAMS) -> dict:
    """{program: {batch: compiled_bytes}} for each batch."""
    out = {name: {} for name in which}
    for batch in batches:
        progs = programs(config, batch)
        for name in which:
            fn, args = progs[name]
            out[name][batch] = compiled_bytes(fn, *args)
    return out


def largest_batch(by_batch: dict, capacity_bytes: float) -> tuple[int | None, dict]:
    """(B_max, fit) from the line through the two smallest measured batches' total bytes; B_max is None
    when the bytes did not grow between them (no line to extrapolate).

    fit: {per_example, constant, max_rel_error} with max_rel_error the line's relative error at the other
    measured batches (0 with two batches). B_max is 0 when even the constant part does not fit.
    """
    (b0, m0), (b1, m1) = sorted(by_batch.items())[:2]
    slope = (m1["total"] - m0["total"]) / (b1 - b0)
    const = m0["total"] - slope * b0
    errs = [abs(const + slope * b - m["total"]) / m["total"] for b, m in sorted(by_batch.items())[2:]]
    fit = {"per_example": slope, "constant": const, "max_rel_error": max(errs, default=0.0)}
    if slope <= 0:  # e.g. XLA:CPU fusing B = 1 differently: no line to extrapolate, measure larger batches
        return None, fit
    return max(0, math.floor((capacity_bytes - const) / slope)), fit


def run(families, sizes, batches, which, remats, smoke: bool, write=None) -> list[dict]:
    """Rows of the table; `write(rows)` after each config (partial results survive an interrupted run)."""
    rows = []
    for family in families:
        for size in sizes:
            for remat in remats:
                t0 = time.perf_counter()
                config = make_config(family, size, remat=remat, smoke=smoke)
                res = measure(config, batches, which)
                for name, by_batch in res.items():
                    row = {"family": family, "image_size": size, "remat": remat, "program": name,
                           "bytes": {str(b): m for b, m in by_batch.items()}}
                    for cap in CAPACITIES_GB:
                        row[f"max_batch_{cap}GB"], row["fit"] = largest_batch(by_batch, cap * GB)
                    rows.append(row)
                print(f"{family} {size}² remat={remat}: {time.perf_counter() - t0:.0f} s", flush=True)
                if write is not None:
                    write(rows)
    return rows


def table(rows, batches) -> str:
    head = ("| net | size | remat | program | " + " | ".join(f"B={b} arg / out / temp (MB)" for b in batches)
            + " | MB per example | " + " | ".join(f"max B {c} GB" for c in CAPACITIES_GB) + " | fit error |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [f"{r['bytes'][str(b)]['argument'] / 1e6:.1f} / {r['bytes'][str(b)]['output'] / 1e6:.1f} / "
                 f"{r['bytes'][str(b)]['temp'] / 1e6:.1f}" for b in batches]
        caps = [str(r[f"max_batch_{c}GB"]) if r[f"max_batch_{c}GB"] is not None else "n/a (bytes fell)"
                for c in CAPACITIES_GB]
        lines.append(f"| {r['family']} | {r['image_size']}² | {r['remat']} | {r['program']} | " + " | ".join(cells)
                     + f" | {r['fit']['per_example'] / 1e6:.1f} | " + " | ".join(caps)
                     + f" | {100 * r['fit']['max_rel_error']:.1f} % |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny DDPM++ on 8x8 images, batches 2 and 4")
    ap.add_argument("--families", default="ddpmpp,ncsnpp")
    ap.add_argument("--sizes", default="32,64,128,256", help="image sizes (comma-separated)")
    ap.add_argument("--batches", default="1,2,4", help="measured batches (at least two; the fit uses the two smallest)")
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--remat", default="false,true", help="remat settings measured: false, true or both")
    ap.add_argument("--out", default=None, help="folder for memory.md / memory.json (default benchmarks/out)")
    args = ap.parse_args(argv)
    families = ["ddpmpp"] if args.smoke else args.families.split(",")
    sizes = [8] if args.smoke else [int(s) for s in args.sizes.split(",")]
    batches = [2, 4] if args.smoke else sorted(int(b) for b in args.batches.split(","))
    which = [p for p in args.programs.split(",") if p]
    bad = [p for p in which if p not in PROGRAMS] + [f for f in families if f not in FAMILIES]
    if bad or len(batches) < 2:
        print(f"error: unknown program / family {bad} (valid: {PROGRAMS}, {tuple(FAMILIES)}) or fewer than two "
              f"batches {batches}", file=sys.stderr)
        return 2
    remats = [{"false": False, "true": True}[r.strip().lower()] for r in args.remat.split(",")]
    t0 = time.perf_counter()
    out = pathlib.Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    name = "memory_smoke" if args.smoke else "memory"
    backend = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    cmd = "python -m benchmarks.memory" + (" --smoke" if args.smoke else " " + " ".join(argv or sys.argv[1:]))

    def write(rows):
        (out / f"{name}.json").write_text(json.dumps({"backend": backend, "batches": batches, "rows": rows},
                                                     indent=1))
        body = (f"Compiled for {backend}; float32; {time.perf_counter() - t0:.0f} s. Bytes from "
                "`jax.jit(f).lower(...).compile().memory_analysis()`; largest batch from the line a + b B through "
                f"the two smallest batches (fit error: the line's relative error at the other batches).\n\n"
                + table(rows, batches))
        return write_result(name, body, cmd, title="Compiled memory", directory=out)

    rows = run(families, sizes, batches, which, remats, args.smoke, write)
    print(f"wrote {write(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
