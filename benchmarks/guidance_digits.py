"""Guided class-conditional digits: does the project's digits classifier agree with the requested label?

    python -m benchmarks.guidance_digits --workdir runs/digits_cond --out /tmp/guidance [--scales 0,1,2,4]
        [--per-class 50] [--guidance free|classifier] [--bpd]
    python -m benchmarks.guidance_digits --step-time --out /tmp/guidance    # training step: digits_cond vs digits_vp

Needs a checkpoint of configs/digits_cond.py in --workdir (`python main.py --config=configs/digits_cond.py
--workdir=runs/digits_cond --mode=train`; for --guidance=classifier also `--mode=train_classifier`).
For each guidance scale it draws per-class x 10 samples with the config's sampler (probability-flow
ODE, tsit5 at 1e-4), one row per digit, and reports the share on which the weight-free digits
classifier (score_sde.quality, trained on the training split, cached in --out) predicts the
requested digit, its mean confidence, and the same figures for the real test digits (the ceiling).
Free guidance at scale -1 is the unconditional model (the null class). --bpd adds the test
bits/dim of the model with the null label (the unconditional model) and conditional on each test
digit's true label (same dequantisation noise and Hutchinson probes for both). Writes
results.json, results.md and one grid PNG per scale to --out (nothing in the repository).
--step-time instead times the pmapped training step of configs/digits_cond.py against
configs/digits_vp.py on the same digits batches, interleaved (best of 5 rounds of 50 steps each), so
that a shared machine's load affects both alike; writes step_time.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from configs.digits_cond import get_config
from score_sde import bpd, data, guidance, likelihood, quality
from score_sde.drivers import evaluate
from score_sde.plumbing import timing


def agreement(clf, samples, labels, centered=True) -> tuple[float, float]:
    """(share of samples classified as their label, mean max-probability) of model-scale samples."""
    x01 = np.clip((samples + 1.0) / 2.0 if centered else samples, 0.0, 1.0)
    p = clf.probs(x01[..., 0])
    return float(np.mean(np.argmax(p, axis=1) == labels)), float(np.mean(np.max(p, axis=1)))


def guided_samples(config, loaded, scale: float, per_class: int, log_prob=None):
    """per_class samples of each digit (labels 0,0,..,9,9) at guidance `scale`; (samples, labels,
    {"compile_seconds", "run_seconds"})."""
    config.sampling.class_label, config.sampling.guidance_scale = -1, float(scale)
    config.sampling.num_samples = per_class * config.data.num_classes
    labels = evaluate.sample_labels(config)
    with timing.Timer() as timer:
        out = [x for x, _ in evaluate.draw_batches(config, loaded, len(labels), config.sampling.batch_size,
                                                   config.seed, labels=labels, log_prob=log_prob)]
    return np.concatenate(out), labels, timer.fields()


def test_bpd(config, loaded, test: data.Split, true_labels: bool) -> tuple[float, float]:
    """Test bits/dim (mean, standard error) with the null label, or conditional on the true labels."""
    lc, k = config.likelihood, config.data.num_classes
    n_dev = jax.local_device_count()
    per_dev = max(1, math.ceil(lc.batch_size / n_dev))
    shape = test.data_shape

    def solve(key, x, y, cond):
        res = likelihood.log_likelihood(key, loaded.sde, guidance.classifier_free(cond, y, 0.0), x,
                                        divergence=lc.divergence, solver=lc.solver, rtol=lc.rtol, atol=lc.atol,
                                        max_steps=lc.max_steps)
        return res.logp

    p_solve = jax.pmap(solve, in_axes=(0, 0, 0, None))
    key, out = jax.random.PRNGKey(config.seed + 1), []
    batches = data.iterate_once(config, "test", batch_size=per_dev * n_dev, dequantize=True, loaded=test,
                                with_labels=True)
    for i, batch in enumerate(batches):
        if len(batch["cond"]["label"]) == 0:
            continue
        x, mask = data.pad_batch(batch["image"], per_dev * n_dev)
        y = batch["cond"]["label"] if true_labels else np.full(len(batch["cond"]["label"]), k, np.int32)
        y, _ = data.pad_batch(y.astype(np.int32), per_dev * n_dev)
        keys = jax.random.split(jax.random.fold_in(key, i), n_dev)
        logp = p_solve(keys, x.reshape((n_dev, per_dev) + shape), jnp.asarray(y.reshape(n_dev, per_dev)),
                       loaded.score_fn)
        logp = np.asarray(logp).reshape(-1)[mask]
        out.extend(np.asarray(bpd.bits_per_dim(logp, shape, num_levels=test.num_levels,
                                               data_range=data.data_range(config.data.centered))))
    out = np.asarray(out, np.float64)
    return float(out.mean()), float(out.std(ddof=1) / math.sqrt(len(out)))


def step_time(out: str, rounds: int = 5, steps: int = 50) -> dict:
    """Seconds per training step of digits_cond and digits_vp (best round), and their ratio."""
    from configs import digits_vp
    from score_sde import config_utils
    from score_sde.drivers import train

    timed = {}
    for name, config in (("digits_vp", digits_vp.get_config()), ("digits_cond", get_config())):
        model = config_utils.model_from_config(config.model, config.data.num_classes)
        optimizer, p_step = train.step_for_config(config, model, config_utils.sde_from_config(config.sde))
        state = train.replicate(train.create_train_state(jax.random.PRNGKey(0), model, optimizer, (8, 8, 1)))
        n_dev = jax.local_device_count()
        batch = next(data.get_dataset(config, "train"))
        batch = jax.tree.map(lambda a: train.shard_to_devices(a.reshape(n_dev, 1, -1, *a.shape[1:])), batch)
        state, m = p_step(state, batch)  # compile
        jax.block_until_ready(m)
        timed[name] = [p_step, state, batch, []]
    for _ in range(rounds):
        for name, entry in timed.items():
            p_step, state, batch, times = entry
            t0 = time.perf_counter()
            for _ in range(steps):
                state, m = p_step(state, batch)
            jax.block_until_ready(m)
            times.append((time.perf_counter() - t0) / steps)
            entry[1] = state
    result = {name: min(entry[3]) for name, entry in timed.items()}
    result["ratio_cond_over_uncond"] = result["digits_cond"] / result["digits_vp"]
    with open(os.path.join(out, "step_time.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/digits_cond")
    parser.add_argument("--out", required=True, help="output folder (results.json, results.md, grids)")
    parser.add_argument("--scales", default="0,1,2,4")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--guidance", default="free", choices=["free", "classifier"])
    parser.add_argument("--bpd", action="store_true", help="also the test bits/dim (null label, true label)")
    parser.add_argument("--step-time", action="store_true", help="only time the training step vs digits_vp")
    args = parser.parse_args()
    if args.step_time:
        os.makedirs(args.out, exist_ok=True)
        return step_time(args.out)

    config = get_config()
    config.sampling.guidance = args.guidance
    config.sampling.batch_size = 100
    os.makedirs(args.out, exist_ok=True)
    train, test = data.load_split(config, "train"), data.load_split(config, "test")
    loaded = evaluate.load_score_fn(config, args.workdir, test.data_shape)
    log_prob = evaluate.load_guidance_classifier(config, args.workdir, test.data_shape)
    train01 = train.source.get(np.arange(len(train.source))) / (train.num_levels - 1)
    clf = quality.load_or_train_classifier(os.path.join(args.out, "digits_classifier.npz"), train01, train.labels)
    test_x = data.scale(test.source.get(np.arange(len(test.source))), test.num_levels, True)
    ceiling = agreement(clf, test_x, test.labels)
    result = {"step": loaded.step, "guidance": args.guidance, "per_class": args.per_class,
              "sampler": f"{config.sampling.method} ({config.sampling.ode.solver}, rtol {config.sampling.ode.rtol})",
              "test_digits": {"agreement": ceiling[0], "confidence": ceiling[1]}, "scales": {}}
    for scale in [float(s) for s in args.scales.split(",")]:
        samples, labels, timings = guided_samples(config, loaded, scale, args.per_class, log_prob)
        agree, conf = agreement(clf, samples, labels)
        per_digit = [float(np.mean(np.argmax(clf.probs(np.clip((samples[labels == d] + 1) / 2, 0, 1)[..., 0]), 1) == d))
                     for d in range(config.data.num_classes)]
        result["scales"][f"{scale:g}"] = {"agreement": agree, "confidence": conf, "per_digit": per_digit,
                                          **timings}
        rows10 = np.concatenate([samples[labels == d][:10] for d in range(config.data.num_classes)])
        evaluate.save_grid(rows10, True, os.path.join(args.out, f"grid_{args.guidance}_{scale:g}.png"), cols=10)
        print(f"scale {scale:g}: agreement {agree:.3f}, confidence {conf:.3f} (compile "
              f"{timings['compile_seconds']:.0f} s, run {timings['run_seconds']:.0f} s)", flush=True)
    if args.bpd:
        for name, true in (("null_label", False), ("true_label", True)):
            with timing.Timer() as timer:
                mean, se = test_bpd(config, loaded, test, true)
            result[f"bpd_{name}"] = {"bits_per_dim": mean, "standard_error": se, **timer.fields()}
            print(f"bits/dim ({name}): {mean:.3f} +- {se:.3f}", flush=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    lines = [f"| guidance ({args.guidance}) scale | agreement with the requested digit | mean confidence |",
             "|---|---|---|"]
    lines += [f"| {s} | {r['agreement']:.3f} | {r['confidence']:.3f} |" for s, r in result["scales"].items()]
    lines.append(f"| real test digits (ceiling) | {ceiling[0]:.3f} | {ceiling[1]:.3f} |")
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
