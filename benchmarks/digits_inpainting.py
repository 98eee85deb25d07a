"""Digits inpainting: the bottom half of test digits is masked, filled in by a trained model, classified.

    python -m benchmarks.digits_inpainting --workdir runs/digits [--n 100] [--particles 8] [--steps 200]

Needs a checkpoint of configs/digits_vp.py in --workdir (examples/digits.sh or
`python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=train`). The project's
weight-free digits classifier (score_sde.quality, trained on the training split, cached in the
workdir) labels the first n test digits after inpainting; the table gives its accuracy against the
true labels for each method, next to the full digits (the ceiling) and the top half alone with
the bottom half left blank (the floor). Writes benchmarks/results/digits_inpainting.md.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import write_result
from configs.digits_vp import get_config
from score_sde import data, evaluate, inverse, quality, solvers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=200)
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

    def accuracy(x_model):
        x01 = np.clip((np.asarray(x_model) + 1.0) / 2.0, 0.0, 1.0)
        return float(np.mean(np.argmax(clf.probs(x01), axis=1) == labels))

    rows = [("full test digits (ceiling)", "", accuracy(x), 0.0),
            ("top half only, bottom half blank (floor)", "", accuracy(jnp.where(mask > 0, x, -1.0)), 0.0)]
    methods = {
        f"smc, {args.particles} particles, {args.steps} steps": ("smc", dict(n_particles=args.particles,
                                                                             n_steps=args.steps)),
        f"replace, euler_maruyama, {args.steps} steps": ("replace", dict(
            sampler=solvers.get("euler_maruyama", n_steps=args.steps))),
        f"replace, pc, {args.steps} steps": ("replace", dict(n_steps=args.steps)),
    }
    for label, (method, opts) in methods.items():
        t = time.perf_counter()
        x_in, info = inverse.inpaint(jax.random.PRNGKey(0), loaded.sde, loaded.score_fn, x, mask, method=method, **opts)
        x_in = np.asarray(x_in)
        rows.append((label, str(int(info.nfe)), accuracy(x_in), time.perf_counter() - t))
        print(rows[-1], flush=True)
    lines = [f"Checkpoint step {loaded.step} of configs/digits_vp.py; first {args.n} test digits, top half known.", "",
             "| filling | score calls | classifier accuracy | seconds (incl. compile) |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c:.2f} | {d:.1f} |" for a, b, c, d in rows]
    cmd = (f"python -m benchmarks.digits_inpainting --workdir {args.workdir} --n {args.n} "
           f"--particles {args.particles} --steps {args.steps}")
    print(write_result("digits_inpainting", "\n".join(lines), cmd))


if __name__ == "__main__":
    main()
