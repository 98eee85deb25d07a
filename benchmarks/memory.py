"""Measured memory without a GPU: XLA's compiled memory analysis of the train step, a sampler step and
the likelihood step, per config and batch, and the largest batch that fits 16 / 40 / 80 GB.

    python -m benchmarks.memory            # DDPM++ / NCSN++ at 32², 64², 128², 256², batches 4, 8, 16 (CPU: hours)
    python -m benchmarks.memory --smoke    # a tiny DDPM++ on 8x8, two batches: seconds
    python -m benchmarks.memory --merge --out benchmarks/results --families=ddpmpp --sizes=64 \
        --programs=train --remat=false --batches=4,8     # one part of the table, upserted into its json

Every program is lowered on abstract inputs (`jax.ShapeDtypeStruct`, nothing is allocated) and
compiled for the default backend (on CPU with LLVM optimisation level 0: same bytes, half the compile
CPU time); `compiled.memory_analysis()` gives its argument, output, temporary and alias bytes. The programs:
  train       one step of `score_sde.drivers.train.make_train_step` (continuous DSM, AdamW, EMA), one device,
              its state donated as in the driver (the new state aliases the old: counted once);
  sample      one probability-flow drift evaluation (a network forward: the memory of any sampler step);
  likelihood  one evaluation of the likelihood ODE's vector field (drift + Hutchinson divergence, one jvp).

Largest batch: bytes(B) = argument + output + temp - alias is fitted as a + b B from the two smallest
measured batches (params, optimizer and EMA are the constant a; activations grow with B), then
B_max = floor((capacity - a) / b); a third measured batch checks the line (the fit's error there is
reported). Measure from B = 4 up: XLA:CPU fuses the batch-1 train step differently (its temporaries
fell from B = 1 to 2). On the backend measured (XLA:CPU unless run on a GPU) the temporaries follow
that backend's fusion and scheduling; a GPU's differ (cuDNN workspaces, another scheduler), so the GB
columns are estimates to confirm with `benchmarks.gpu_check --section=memory`. --merge upserts rows
into an existing memory.json under a file lock (parallel runs may share it) and skips rows it already
has at the same batches, so an interrupted table resumes. Writes benchmarks/out/memory.md and
memory.json (--out: another folder; the committed copies are in benchmarks/results/).
"""

from __future__ import annotations

import argparse
import fcntl
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


# programs whose first argument the real driver donates (its pmapped step: donate_argnums=0), so that
# the new state aliases the old one as on the device
DONATED = {"train": (0,)}


def compiler_options(extra: dict | None = None) -> dict | None:
    """The XLA options memory.py compiles with: on CPU, LLVM optimisation level 0 (it changes the machine
    code, not the buffer assignment: same bytes, the compile ~40 % shorter, measured in the README), then
    `extra` ({debug option: value}, e.g. from --xla-option)."""
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    options.update(extra or {})
    return options or None


def compiled_bytes(fn, *args, donate_argnums=(), options: dict | None = None) -> dict:
    """{argument, output, temp, alias, total, compile_s} of `jax.jit(fn, donate_argnums)` compiled for
    `args` (arrays or ShapeDtypeStructs) with `compiler_options(options)`; total = argument + output + temp
    - alias (donated buffers counted once); compile_s: seconds of lowering and compiling."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate_argnums).lower(*args)
    analysis = lowered.compile(compiler_options=compiler_options(options)).memory_analysis()
    out = {"argument": int(analysis.argument_size_in_bytes), "output": int(analysis.output_size_in_bytes),
           "temp": int(analysis.temp_size_in_bytes), "alias": int(analysis.alias_size_in_bytes)}
    out["total"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    out["compile_s"] = round(time.perf_counter() - t0, 1)
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


def measure(config, batches, which=PROGRAMS, donate: bool = True, options: dict | None = None,
            on_result=None) -> dict:
    """{program: {batch: compiled_bytes}} for each batch; donate: the train step's state is donated
    (`DONATED`, as in the driver); `on_result(program, batch, bytes)` after each compile."""
    out = {name: {} for name in which}
    for batch in batches:
        progs = programs(config, batch)
        for name in which:
            fn, args = progs[name]
            out[name][batch] = compiled_bytes(fn, *args, donate_argnums=DONATED.get(name, ()) if donate else (),
                                              options=options)
            if on_result is not None:
                on_result(name, batch, out[name][batch])
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


def make_row(family, size, remat, name, by_batch, donate: bool = True) -> dict:
    row = {"family": family, "image_size": size, "remat": remat, "program": name,
           "donated": bool(donate and name in DONATED), "bytes": {str(b): m for b, m in sorted(by_batch.items())}}
    if len(by_batch) >= 2:
        for cap in CAPACITIES_GB:
            row[f"max_batch_{cap}GB"], row["fit"] = largest_batch(by_batch, cap * GB)
    return row


def run(families, sizes, batches, which, remats, smoke: bool, write=None, donate: bool = True,
        options: dict | None = None, done=None) -> list[dict]:
    """Rows of the table; `write(rows)` after each compile (partial results survive an interrupted run);
    `done`: {(family, size, remat, program): row} already measured (--merge): only the batches a row
    lacks are compiled and added to its bytes."""
    done = done or {}
    rows = []
    for family in families:
        for size in sizes:
            for remat in remats:
                have = {p: {int(b): m for b, m in done[(family, size, remat, p)]["bytes"].items()}
                        if (family, size, remat, p) in done else {} for p in which}
                missing = {p: [b for b in batches if b not in have[p]] for p in which}
                todo = [p for p in which if missing[p]]
                if not todo:
                    continue
                t0 = time.perf_counter()
                config = make_config(family, size, remat=remat, smoke=smoke)
                partial = {name: dict(have[name]) for name in todo}

                def on_result(name, batch, m):
                    partial[name][batch] = m
                    print(f"{family} {size}² remat={remat} {name} B={batch}: total {m['total'] / 1e6:.1f} MB, "
                          f"compile {m['compile_s']:.0f} s", flush=True)
                    if write is not None:
                        write(rows + [make_row(family, size, remat, n, bb, donate) for n, bb in partial.items() if bb])

                for name in todo:
                    measure(config, missing[name], [name], donate, options, on_result)
                rows += [make_row(family, size, remat, name, by_batch, donate) for name, by_batch in partial.items()]
                print(f"{family} {size}² remat={remat}: {time.perf_counter() - t0:.0f} s", flush=True)
                if write is not None:
                    write(rows)
    return rows


def table(rows, batches=None) -> str:
    """Markdown table of `rows`: each row's own measured batches (argument / output / temp / alias MB),
    the fitted MB per example and constant, the largest batch per capacity and the line's error."""
    head = ("| net | size | remat | program | measured: B: arg / out / temp / alias (MB) | MB per example | "
            "constant MB | " + " | ".join(f"max B {c} GB" for c in CAPACITIES_GB) + " | fit error | compile s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        by = sorted(r["bytes"].items(), key=lambda kv: int(kv[0]))
        cells = "<br>".join(f"{b}: {m['argument'] / 1e6:.1f} / {m['output'] / 1e6:.1f} / {m['temp'] / 1e6:.1f}"
                            f" / {m['alias'] / 1e6:.1f}" for b, m in by)
        compile_s = " / ".join(f"{m['compile_s']:.0f}" if "compile_s" in m else "?" for _, m in by)
        if "fit" not in r:
            fit = ["", ""] + ["one batch"] * len(CAPACITIES_GB) + [""]
        else:
            caps = [str(r[f"max_batch_{c}GB"]) if r[f"max_batch_{c}GB"] is not None else "n/a (bytes fell)"
                    for c in CAPACITIES_GB]
            fit = ([f"{r['fit']['per_example'] / 1e6:.1f}", f"{r['fit']['constant'] / 1e6:.0f}"] + caps
                   + [f"{100 * r['fit']['max_rel_error']:.1f} %" if len(by) > 2 else "(2 batches)"])
        lines.append(f"| {r['family']} | {r['image_size']}² | {r['remat']} | {r['program']} | {cells} | "
                     + " | ".join(fit) + f" | {compile_s} |")
    return "\n".join(lines)


def row_key(r) -> tuple:
    return (r["family"], r["image_size"], r["remat"], r["program"])


def merged(old_rows, new_rows) -> list[dict]:
    """old_rows with new_rows upserted by (family, size, remat, program), in the table's order."""
    by = {row_key(r): r for r in old_rows}
    by.update({row_key(r): r for r in new_rows})
    fam = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(by.values(), key=lambda r: (fam.get(r["family"], 9), r["image_size"], r["remat"],
                                              PROGRAMS.index(r["program"])))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="a tiny DDPM++ on 8x8 images, batches 2 and 4")
    ap.add_argument("--families", default="ddpmpp,ncsnpp")
    ap.add_argument("--sizes", default="32,64,128,256", help="image sizes (comma-separated)")
    ap.add_argument("--batches", default="4,8,16",
                    help="measured batches (the fit uses the two smallest; a third checks the line)")
    ap.add_argument("--programs", default=",".join(PROGRAMS))
    ap.add_argument("--remat", default="false,true", help="remat settings measured: false, true or both")
    ap.add_argument("--out", default=None, help="folder for memory.md / memory.json (default benchmarks/out)")
    ap.add_argument("--merge", action="store_true",
                    help="upsert rows into the folder's memory.json (locked: runs may share it), compiling only "
                         "the batches its (net, size, remat, program) rows lack")
    ap.add_argument("--no-donate", dest="donate", action="store_false",
                    help="do not donate the train step's state (then its output is counted besides its argument)")
    ap.add_argument("--xla-option", action="append", default=[], metavar="KEY=VALUE",
                    help="extra XLA compile option, e.g. xla_llvm_disable_expensive_passes=true (repeatable)")
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
    try:
        options = {k: _option_value(v) for k, v in (o.split("=", 1) for o in args.xla_option)}
    except ValueError:
        print(f"error: --xla-option takes KEY=VALUE, got {args.xla_option}", file=sys.stderr)
        return 2
    remats = [{"false": False, "true": True}[r.strip().lower()] for r in args.remat.split(",")]
    t0 = time.perf_counter()
    out = pathlib.Path(args.out) if args.out else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    name = "memory_smoke" if args.smoke else "memory"
    backend = f"{jax.default_backend()} ({jax.devices()[0].device_kind})"
    cmd = "python -m benchmarks.memory" + (" --smoke" if args.smoke else " " + " ".join(argv or sys.argv[1:]))
    path = out / f"{name}.json"

    def load():
        return json.loads(path.read_text()).get("rows", []) if args.merge and path.exists() else []

    done = {row_key(r): r for r in load()}

    def write(rows):
        with open(out / f".{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two --merge runs may share the folder
            rows = merged(load(), rows)
            path.write_text(json.dumps({"backend": backend, "rows": rows}, indent=1))
            body = (f"Compiled for {backend} (XLA's compiled memory analysis, not measured on a GPU); float32; "
                    f"options {compiler_options(options)}. Bytes from `jax.jit(f, donate_argnums).lower(...)"
                    ".compile().memory_analysis()`; the train step's state is donated as in the driver (alias: "
                    "the bytes counted once). Largest batch from the line a + b B through the two smallest "
                    "batches' total (argument + output + temp - alias); fit error: the line's relative error at "
                    "a third batch. Compile s: lowering + compiling each batch, on a shared 2-core CPU.\n\n"
                    + table(rows))
            return write_result(name, body, cmd if not args.merge else "python -m benchmarks.memory --merge ... "
                                "(several runs, commands in the README)", title="Compiled memory", directory=out)

    rows = run(families, sizes, batches, which, remats, args.smoke, write, args.donate, options, done)
    print(f"wrote {write(rows)} in {time.perf_counter() - t0:.0f} s")
    return 0


def _option_value(v: str):
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    try:
        return int(v)
    except ValueError:
        return v


if __name__ == "__main__":
    sys.exit(main())
