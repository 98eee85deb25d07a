"""CDM's cascade ablation on the embedded 8x8 digits: cascade vs the single model, with and without augmentation.

    python -m benchmarks.cascade --base-workdir runs/digits_base4 --sr-workdir runs/digits_sr \\
        --sr-noaug-workdir runs/digits_sr_noaug --uncond-workdir runs/digits [--n 400]
    python -m benchmarks.cascade --smoke     # untrained nf=8 models (4 training steps each) in a temp dir

The four workdirs hold checkpoints of `configs/digits_base4.py` (the digits area-downsampled to 4x4),
`configs/digits_sr.py` (x2, trained with conditioning augmentation s ~ U(0, 0.2)), the same with
`--config.data.task.max_aug_level=0` (no augmentation) and `configs/digits_vp.py` (the single 8x8
model; train it with `--config.training.n_iters` equal to the others' steps). Every model samples with
dpm_solver; a cascade's NFE is base + SR. For each row `--n` samples: the digits classifier's Frechet
distance to the training split and its mean top-class confidence (score_sde.quality, as
`--mode=eval`), and the consistency RMS ||area_downsample(sample) - SR input without noise||.
Rows "SR of true 4x4 test digits" feed the SR models the test split's low-res images instead of
base samples (no base-model error: what the SR model does on the inputs it was trained on).

Writes benchmarks/results/cascade.md and cascade.png (rows: base samples nearest-upsampled | cascade
with augmentation | cascade without augmentation at aug_level 0 | the single model), in --out.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time

import jax.numpy as jnp
import numpy as np

from benchmarks import image_to_image as i2i_bench
from benchmarks.common import RESULTS
from configs import digits_base4, digits_cascade, digits_vp
from score_sde import data, image_to_image as i2i, quality
from score_sde.drivers import cascade, train
from score_sde.plumbing import outputs, restore

SMOKE_NF = 8


class Scorer(i2i_bench.Scorer):
    """The digits classifier's Frechet distance to the training split and mean top-class confidence."""

    def __call__(self, x) -> tuple[float, float]:
        return self.frechet(x), quality.class_stats(self.clf, i2i_bench._to01(x))[0]


def _with(config, nfe: int, n: int, batch: int, smoke: bool):
    c = copy.deepcopy(config)
    c.sampling.method = "dpm_solver"
    c.sampling.dpm_solver.nfe = nfe
    c.sampling.update(num_samples=n, batch_size=batch)
    if smoke:
        c.model.nf = SMOKE_NF
    return c


def smoke_workdirs(root: str) -> dict:
    """Trains each of the four models for 4 steps (nf 8) under root; returns their workdirs."""
    dirs = {}
    for name, module, aug in (("base", digits_base4, None), ("sr", digits_cascade, None),
                              ("sr_noaug", digits_cascade, 0.0), ("uncond", digits_vp, None)):
        c = module.get_config()
        c.model.nf = SMOKE_NF
        c.training.update(n_iters=4, snapshot_freq=4, batch_size=16, log_freq=2)
        if aug is not None:
            c.data.task.max_aug_level = aug
        dirs[name] = os.path.join(root, name)
        train.train(c, dirs[name])
    return dirs


def run(args) -> tuple[list, dict]:
    """The table's rows (name, NFE, Frechet distance, confidence, consistency RMS, seconds), the share of base
    samples with a pixel outside [-1.5, 1.5] per base NFE, and the figure's images."""
    n, b, smoke = args.n, args.batch, args.smoke
    scorer = Scorer(os.path.join(args.out if smoke else args.sr_workdir, "digits_classifier.npz"))
    sr_config = digits_cascade.get_config()
    uncond_config = digits_vp.get_config()
    base_config = digits_base4.get_config()
    cfg = lambda c, nfe: _with(c, nfe, n, b, smoke)  # noqa: E731
    nfe0 = args.nfe[0]
    base = restore.load_score_fn(cfg(base_config, nfe0), args.base_workdir, (4, 4, 1))
    sr = restore.load_score_fn(cfg(sr_config, nfe0), args.sr_workdir, (8, 8, 1))
    sr_noaug = restore.load_score_fn(cfg(sr_config, nfe0), args.sr_noaug_workdir, (8, 8, 1))
    single = restore.load_score_fn(cfg(uncond_config, nfe0), args.uncond_workdir, (8, 8, 1))
    task = i2i.SuperResolution(factor=2)
    test = data.load_split(uncond_config, "test")
    idx = np.arange(n) % len(test.source)
    truth = data.scale(test.source.get(idx), test.num_levels, True).astype(np.float32)
    true_low = np.asarray(i2i.area_downsample(jnp.asarray(truth), 2))
    rows, shown, outliers = [], {}, {}

    def add(name, nfe, x, low, secs):
        consist = None if low is None else float(np.mean(np.sqrt(np.mean(
            (np.asarray(i2i.area_downsample(jnp.asarray(x), 2)) - low) ** 2, axis=(1, 2, 3)))))
        rows.append((name, nfe, *scorer(x), consist, secs))
        print(rows[-1], flush=True)

    for nfe in args.nfe:
        t0 = time.perf_counter()
        x, _ = cascade.draw(cfg(uncond_config, nfe), single, n, uncond_config.seed)
        add(f"single 8x8 model (digits_vp step {single.step})", nfe, x, None, time.perf_counter() - t0)
        shown.setdefault("single", x)
    for nfe in args.nfe:
        half = nfe // 2
        t0 = time.perf_counter()
        raw, _ = cascade.draw(cfg(base_config, half), base, n, base_config.seed)
        low = np.clip(raw, -1.0, 1.0)  # as --mode=cascade feeds them to the SR stage
        outliers[half] = float(np.mean(np.abs(raw).reshape(n, -1).max(axis=1) > 1.5))
        base_secs = time.perf_counter() - t0
        shown.setdefault("base", low)
        for label, model, levels in (("with augmentation (max 0.2)", sr, args.levels),
                                     ("without augmentation", sr_noaug, args.noaug_levels)):
            for level in levels:
                t0 = time.perf_counter()
                conds = cascade.sr_conditions(sr_config, task, low, level)
                x, _ = cascade.draw(cfg(sr_config, half), model, n, sr_config.seed + 1, conds=conds)
                add(f"cascade: base 4x4 (step {base.step}) + SR {label} (step {model.step}), aug_level {level:g}",
                    f"{half} + {half}", x, low, base_secs + time.perf_counter() - t0)
                shown.setdefault(f"{label} {level:g}", x)
    for label, model in (("with augmentation", sr), ("without augmentation", sr_noaug)):
        t0 = time.perf_counter()
        conds = cascade.sr_conditions(sr_config, task, true_low, 0.0)
        x, _ = cascade.draw(cfg(sr_config, nfe0), model, n, sr_config.seed + 1, conds=conds)
        add(f"SR {label} of true 4x4 test digits, aug_level 0", nfe0, x, true_low, time.perf_counter() - t0)
    add("truth (test digits)", "–", truth, true_low, 0.0)
    return rows, outliers, {"base": shown["base"], "aug": shown[f"with augmentation (max 0.2) {args.fig_level:g}"],
                  "noaug": shown[f"without augmentation {args.noaug_levels[0]:g}"], "single": shown["single"]}


def figure(path: str, shown: dict, m: int = 12) -> None:
    up = np.repeat(np.repeat(shown["base"][:m], 2, axis=1), 2, axis=2)
    outputs.save_grid(np.concatenate([up, shown["aug"][:m], shown["noaug"][:m], shown["single"][:m]]), True, path,
                      cols=m)


def _fmt(v, spec):
    return "–" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-workdir", default="runs/digits_base4")
    parser.add_argument("--sr-workdir", default="runs/digits_sr")
    parser.add_argument("--sr-noaug-workdir", default="runs/digits_sr_noaug")
    parser.add_argument("--uncond-workdir", default="runs/digits")
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--nfe", type=int, nargs="+", default=[20], help="the single model's NFE; a cascade "
                        "gives each stage half")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2],
                        help="aug_level of the augmented SR model")
    parser.add_argument("--noaug-levels", type=float, nargs="+", default=[0.0, 0.1],
                        help="aug_level of the SR model trained without augmentation")
    parser.add_argument("--fig-level", type=float, default=0.1, help="the augmented cascade's aug_level in the figure")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="tiny models trained for 4 steps in a temp dir")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    tmp = tempfile.TemporaryDirectory() if args.smoke else None
    if args.smoke:
        dirs = smoke_workdirs(tmp.name)
        args.base_workdir, args.sr_workdir, args.sr_noaug_workdir, args.uncond_workdir = (
            dirs["base"], dirs["sr"], dirs["sr_noaug"], dirs["uncond"])
        args.n, args.batch, args.nfe, args.levels, args.noaug_levels, args.fig_level = 8, 8, [4], [0.0, 0.1], [0.0], 0.1
        args.out = tmp.name
    rows, outliers, shown = run(args)
    os.makedirs(args.out, exist_ok=True)
    figure(os.path.join(args.out, "cascade.png"), shown)
    lines = [f"{args.n} samples per row (8x8 digits), dpm_solver; classifier features of score_sde.quality "
             "(Frechet distance to the training split, lower is better; mean top-class confidence). "
             "Consistency: mean over samples of the RMS of area_downsample(sample) - the SR stage's clean input "
             "(the clipped base sample, or the true 4x4 image).", "",
             "| model | NFE | Frechet distance | confidence | consistency RMS | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.3f} | {_fmt(r[4], '.4f')} | {r[5]:.1f} |" for r in rows]
    lines += ["", "Base samples with a pixel outside [-1.5, 1.5] (clipped to [-1, 1] before the SR stage, as "
              "--mode=cascade does): " + ", ".join(f"{v:.1%} at NFE {k}" for k, v in outliers.items()) + "."]
    lines += ["", f"Benchmark wall time {time.perf_counter() - t_start:.0f} s (training not included; seconds per "
              "row include compilation and, for a cascade, its base stage)."]
    cmd = ("python -m benchmarks.cascade --smoke" if args.smoke else
           f"python -m benchmarks.cascade --base-workdir {args.base_workdir} --sr-workdir {args.sr_workdir} "
           f"--sr-noaug-workdir {args.sr_noaug_workdir} --uncond-workdir {args.uncond_workdir} --n {args.n} "
           f"--batch {args.batch} --nfe {' '.join(map(str, args.nfe))} --levels {' '.join(map(str, args.levels))} "
           f"--noaug-levels {' '.join(map(str, args.noaug_levels))}")
    i2i_bench.finish("cascade", lines, cmd, args.out, tmp)
    return rows


if __name__ == "__main__":
    main()
