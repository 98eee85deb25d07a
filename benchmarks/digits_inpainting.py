"""Digits inpainting: the bottom half of test digits is masked, filled in by a trained model, classified.

    python -m benchmarks.digits_inpainting --workdir runs/digits [--n 100] [--particles 8] [--steps 200]
    python -m benchmarks.digits_inpainting --workdir runs/digits --figures   # docs/digits_{inpainting,interpolation}.png

Needs a checkpoint of configs/digits_vp.py in --workdir (examples/digits.sh or
`python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=train`). The project's
weight-free digits classifier (score_sde.quality, trained on the training split, cached in the
workdir) labels the first n test digits after inpainting; the table gives its accuracy against the
true labels for each method, next to the full digits (the ceiling) and the top half alone with
the bottom half left blank (the floor). Writes benchmarks/out/digits_inpainting.md.
With --figures instead: a grid of 8 test digits (columns: digit | top half | smc | replace, pc)
and interpolation strips between test digits through the probability-flow latents (edit.interpolate).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import timed_split, write_result
from configs.digits_vp import get_config
from score_sde import data, edit, inverse, quality, solvers
from score_sde.drivers import evaluate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--figures", action="store_true", help="write the two PNGs to docs/ instead of the table")
    args = parser.parse_args()

    config = get_config()
    loaded = evaluate.load_score_fn(config, args.workdir, (8, 8, 1))
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    train01 = train.source.get(np.arange(len(train.source))) / (train.num_levels - 1)
    clf = quality.load_or_train_classifier(os.path.join(args.workdir, "digits_classifier.npz"), train01,
                                           train.labels)
    idx = np.arange(args.n)
    labels = test.labels[idx]
    x = jnp.asarray(data.scale(test.source.get(idx), test.num_levels, config.data.centered))
    mask = np.zeros((8, 8, 1), np.float32)
    mask[:4] = 1.0  # top half known, bottom half masked
    if args.figures:
        return figures(loaded, x, mask, args)

    def accuracy(x_model):
        x01 = np.clip((np.asarray(x_model) + 1.0) / 2.0, 0.0, 1.0)
        return float(np.mean(np.argmax(clf.probs(x01), axis=1) == labels))

    rows = [("full test digits (ceiling)", "", accuracy(x), 0.0, 0.0),
            ("top half only, bottom half blank (floor)", "", accuracy(jnp.where(mask > 0, x, -1.0)), 0.0, 0.0)]
    methods = {
        f"smc, {args.particles} particles, {args.steps} steps": ("smc", dict(n_particles=args.particles,
                                                                             n_steps=args.steps)),
        f"replace, euler_maruyama, {args.steps} steps": ("replace", dict(
            sampler=solvers.get("euler_maruyama", n_steps=args.steps))),
        f"replace, pc, {args.steps} steps": ("replace", dict(n_steps=args.steps)),
    }
    for label, (method, opts) in methods.items():
        compile_s, run_s, (x_in, info) = timed_split(inverse.inpaint, jax.random.PRNGKey(0), loaded.sde,
                                                     loaded.score_fn, x, mask, method=method, **opts)
        x_in = np.asarray(x_in)
        rows.append((label, str(int(info.nfe)), accuracy(x_in), compile_s, run_s))
        print(rows[-1], flush=True)
    lines = [f"Checkpoint step {loaded.step} of configs/digits_vp.py; first {args.n} test digits, top half known.", "",
             "| filling | score calls | classifier accuracy | compile (s) | run (s) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c:.2f} | {d:.1f} | {e:.1f} |" for a, b, c, d, e in rows]
    cmd = (f"python -m benchmarks.digits_inpainting --workdir {args.workdir} --n {args.n} "
           f"--particles {args.particles} --steps {args.steps}")
    print(write_result("digits_inpainting", "\n".join(lines), cmd))


def save_rows(rows: np.ndarray, path: str, upscale: int = 6) -> None:
    """Writes images (R, C, 8, 8, 1) in model scale as a PNG grid of R rows and C columns."""
    from PIL import Image

    r, c, h, w, _ = rows.shape
    x = np.clip((rows[..., 0] + 1.0) / 2.0, 0.0, 1.0)
    grid = np.ones((r * (h + 1) + 1, c * (w + 1) + 1))
    for i in range(r):
        for j in range(c):
            grid[1 + i * (h + 1): 1 + i * (h + 1) + h, 1 + j * (w + 1): 1 + j * (w + 1) + w] = x[i, j]
    img = Image.fromarray((grid * 255).round().astype(np.uint8))
    img.resize((img.width * upscale, img.height * upscale), Image.NEAREST).save(path)
    print(path)


def figures(loaded, x, mask, args):
    x = x[:8]
    smc, _ = inverse.inpaint(jax.random.PRNGKey(1), loaded.sde, loaded.score_fn, x, mask,
                             n_particles=args.particles, n_steps=args.steps)
    rep, _ = inverse.inpaint(jax.random.PRNGKey(1), loaded.sde, loaded.score_fn, x, mask, method="replace",
                             n_steps=args.steps)
    observed = jnp.where(mask > 0, x, -1.0)
    save_rows(np.stack([np.asarray(a) for a in (x, observed, smc, rep)], axis=1), "docs/digits_inpainting.png")
    path = edit.interpolate(loaded.sde, loaded.score_fn, x[0:3], x[3:6], 8)
    save_rows(np.asarray(path), "docs/digits_interpolation.png")


if __name__ == "__main__":
    main()
