"""Sample / likelihood / eval drivers used by main.py (parallelism at this edge only).

Each driver loads the EMA parameters of a checkpoint in `workdir` (nothing else: no optimizer
is built, so changed `config.optim` settings never make a checkpoint unreadable), turns them into
a `score_fn(x, t)`, and splits its work over the local devices with `jax.pmap`. The data splits
are read once by the caller (`score_sde.data.load_split`) and passed in. Outputs go to
`workdir/<mode>/` as .npz / .png / .json; nothing already written is modified.

Class-conditional models (`config.data.num_classes` > 0) load as cond_score(x, t, y), which
called as score(x, t) is the null-class (unconditional) score, so every mode works unchanged;
`sampling.class_label` (k, or -1 for one row per class) samples with classifier-free guidance
(`sampling.guidance="free"`) or with the trained noise-conditional classifier ("classifier"),
weight `sampling.guidance_scale` (`score_sde.guidance`).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from score_sde import checkpoint, config_utils, data, guidance, likelihood, models, train
from score_sde.bpd import bits_per_dim

# Datasets whose --mode=eval adds the weight-free quality figures (they need the training split).
QUALITY_DATASETS = ("digits",)


class CheckpointNotFoundError(FileNotFoundError):
    """No checkpoint in the workdir (train first, or point --workdir at a trained run)."""


class Loaded(NamedTuple):
    """A restored checkpoint, ready to sample from: `load_score_fn`'s result."""

    score_fn: Callable
    sde: Any
    data_shape: tuple[int, ...]
    step: int


def load_score_fn(config, workdir: str, data_shape: tuple[int, ...], step: int | None = None) -> Loaded:
    """The score_fn of the EMA params of the latest (or given) checkpoint, with its sde and step.

    Only the EMA params are read (`checkpoint.restore_ema_params`); `config.model` and
    `config.sde` must be those of the run, `config.optim` and `config.training` may differ.

    Args:
      data_shape: the shape of one example, e.g. `data.load_split(config, "test").data_shape`.
      step: a saved step instead of the latest.
    """
    model = config_utils.model_from_config(config.model, data.num_classes(config))
    sde = config_utils.sde_from_config(config.sde)
    shape = tuple(data_shape)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir):
        raise CheckpointNotFoundError(f"no checkpoints in {ckpt_dir}; train first with --mode=train")
    net_shape = models.network_input_shape(sde, shape)
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *net_shape), jnp.float32),
                                                 jnp.zeros((1,), jnp.float32))["params"])
    manager = checkpoint.make_manager(workdir, config.training.keep_checkpoints)
    try:
        if step is not None and step not in manager.all_steps():
            raise CheckpointNotFoundError(f"no checkpoint at step {step} in {ckpt_dir}; "
                                          f"available steps: {sorted(manager.all_steps())}")
        restored = checkpoint.restore_ema_params(manager, template, step)
    finally:
        manager.close()
    if restored is None:
        raise CheckpointNotFoundError(f"no checkpoints in {ckpt_dir}; train first with --mode=train")
    params, step = restored
    wrap = models.cond_score_fn if data.num_classes(config) else models.score_fn  # cond: score(x, t) = null class
    return Loaded(wrap(model, {"params": params}, sde), sde, shape, step)


def _per_device(total: int, n_dev: int) -> int:
    return max(1, math.ceil(total / n_dev))


def sample(config, workdir: str, data_shape: tuple[int, ...], step: int | None = None,
           out_dir: str | None = None, loaded: Loaded | None = None) -> dict:
    """Draws `sampling.num_samples` samples; writes samples.npz, samples.png and samples.json.

    `loaded`: the output of `load_score_fn`, when the caller already restored the checkpoint.
    """
    loaded = loaded or load_score_fn(config, workdir, data_shape, step)
    labels = sample_labels(config)
    num = config.sampling.num_samples if labels is None else len(labels)
    log_prob = load_guidance_classifier(config, workdir, loaded.data_shape) if labels is not None else None
    outs, nfes, t0 = [], [], time.perf_counter()
    with tqdm(total=num, desc=f"sampling ({config.sampling.method})", unit="img") as bar:
        for x, nfe in draw_batches(config, loaded, num, config.sampling.batch_size, config.seed, labels=labels,
                                   log_prob=log_prob):
            outs.append(x)
            nfes.append(nfe)
            bar.update(len(x))
    elapsed = time.perf_counter() - t0
    samples, step = np.concatenate(outs), loaded.step
    out_dir = out_dir or os.path.join(workdir, "samples")
    extra, tag, cols = {"nfe": int(np.mean(nfes)), "seconds": elapsed}, "", None
    if labels is not None:
        sc = config.sampling
        extra.update(class_label=int(sc.class_label), guidance=sc.guidance, guidance_scale=float(sc.guidance_scale))
        tag = f"_class{'all' if sc.class_label == -1 else sc.class_label}_{sc.guidance}{float(sc.guidance_scale):g}"
        cols = len(labels) // data.num_classes(config) if sc.class_label == -1 else None
    return write_samples(config, samples, out_dir, step, extra, labels=labels, tag=tag, cols=cols)


def sample_labels(config) -> np.ndarray | None:
    """The labels `sampling.class_label` asks for: None (unset), num_samples copies of k, or for -1
    ceil(num_samples / K) of each class 0..K-1 in order (one grid row per class)."""
    label = config.sampling.get("class_label", None)
    if label is None:
        return None
    k, n = data.num_classes(config), config.sampling.num_samples
    if label == -1:
        return np.repeat(np.arange(k, dtype=np.int32), math.ceil(n / k))
    return np.full((n,), label, np.int32)


def load_guidance_classifier(config, workdir: str, data_shape: tuple[int, ...]):
    """The classifier's log_prob(x, t, y) when `sampling.guidance` is "classifier", else None."""
    if config.sampling.get("guidance", "free") != "classifier":
        return None
    from score_sde import classifier

    return classifier.load_classifier(config, workdir, data_shape)


def guided_score(config, cond_score, y, log_prob=None):
    """score_fn(x, t) for labels y (B,): classifier-free or classifier guidance per `config.sampling`."""
    sc = config.sampling
    scale = float(sc.get("guidance_scale", 0.0))
    if sc.get("guidance", "free") == "classifier":
        return guidance.classifier(cond_score, log_prob, y, scale)
    return guidance.classifier_free(cond_score, y, scale)


def write_samples(config, samples: np.ndarray, out_dir: str, step: int, extra: dict,
                  labels: np.ndarray | None = None, tag: str = "", cols: int | None = None) -> dict:
    """samples_<step>_<method><tag>.npz (model scale), a PNG grid (images only) and a JSON summary.

    The sampler's name is part of the file name, so sampling one checkpoint with several
    methods keeps every result. `labels`: the requested classes, saved in the npz beside the
    samples; `tag`: a file-name suffix (class and guidance); `cols`: grid columns (one row per class).
    """
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, f"samples_{step}_{config.sampling.method}{tag}")
    np.savez(stem + ".npz", samples=samples, **({} if labels is None else {"labels": labels}))
    summary = {"step": int(step), "method": config.sampling.method, "num_samples": int(len(samples)),
               "shape": list(samples.shape[1:]), **extra}
    if samples.ndim == 4:
        save_grid(samples, config.data.centered, stem + ".png", cols=cols)
        summary["grid"] = stem + ".png"
    summary["npz"] = stem + ".npz"
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    return summary


def save_grid(samples: np.ndarray, centered: bool, path: str, upscale: int = 4, cols: int | None = None) -> None:
    """Writes images (N, H, W, C) in model scale as a PNG grid, square unless `cols` is given."""
    from PIL import Image

    x = (samples + 1.0) / 2.0 if centered else samples
    x = np.clip(x, 0.0, 1.0)
    n, h, w, c = x.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    img = (grid * 255).round().astype(np.uint8)
    img = img[..., 0] if c == 1 else img
    Image.fromarray(img).resize((img.shape[1] * upscale, img.shape[0] * upscale), Image.NEAREST).save(path)


def likelihood_bpd(config, workdir: str, test: data.Split, step: int | None = None,
                   out_dir: str | None = None, loaded: Loaded | None = None) -> dict:
    """Bits/dim on the test split with uniform dequantisation; writes likelihood_<step>.json.

    Args:
      test: `data.load_split(config, "test")`.
      loaded: the output of `load_score_fn`, when the caller already restored the checkpoint.
    """
    score_fn, sde, shape, step = loaded or load_score_fn(config, workdir, test.data_shape, step)
    lc = config.likelihood
    n_dev = jax.local_device_count()
    per_dev = _per_device(lc.batch_size, n_dev)
    levels = test.num_levels  # None: continuous data (toys), no dequantisation and no offset
    it = data.iterate_once(config, "test", batch_size=per_dev * n_dev, dequantize=levels is not None, loaded=test)

    def solve(key, x, sf):  # log p(x); for CLD the ELBO over v0 (`likelihood.augmented_elbo`)
        return likelihood.augmented_elbo(key, sde, sf, x, divergence=lc.divergence, solver=lc.solver,
                                         rtol=lc.rtol, atol=lc.atol, max_steps=lc.get("max_steps", 4096))

    p_solve = jax.pmap(solve, in_axes=(0, 0, None))
    bpds, nfes, key, t0 = [], [], jax.random.PRNGKey(config.seed + 1), time.perf_counter()
    total = min(lc.num_examples, len(test.source))
    with tqdm(total=total, desc="likelihood", unit="img") as bar:
        for i, x in enumerate(it):
            x = x[: total - len(bpds)]
            if len(x) == 0:
                break
            padded, mask = data.pad_batch(x, per_dev * n_dev)
            keys = jax.random.split(jax.random.fold_in(key, i), n_dev)
            logp, nfe = p_solve(keys, padded.reshape((n_dev, per_dev) + shape), score_fn)
            logp = np.asarray(logp).reshape(-1)[np.asarray(mask, bool)]
            bpds.extend(np.asarray(bits_per_dim(logp, shape, num_levels=levels,
                                                data_range=data.data_range(config.data.centered))))
            nfes.append(float(np.mean(nfe)))
            bar.update(len(logp))
            if len(bpds) >= total:
                break
    bpds = np.asarray(bpds, np.float64)
    result = {"step": int(step), "bits_per_dim": float(bpds.mean()),
              "standard_error": float(bpds.std(ddof=1) / math.sqrt(len(bpds))) if len(bpds) > 1 else float("nan"),
              "num_examples": int(len(bpds)), "nfe_mean": float(np.mean(nfes)), "divergence": lc.divergence,
              "seconds": time.perf_counter() - t0}
    out_dir = out_dir or os.path.join(workdir, "likelihood")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"likelihood_{step}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def test_loss(config, score_fn, sde, test: data.Split, max_examples: int = 2048) -> float:
    """The training objective on the test split (EMA params, eval mode), averaged over examples."""
    from score_sde import losses

    loss_fn = jax.jit(train.loss_fn_from_config(config, score_fn.model, sde, train=False))
    key, total, count = jax.random.PRNGKey(config.seed + 2), 0.0, 0
    labeled = data.num_classes(config) > 0  # a conditional model's loss takes {"image", "label"} batches
    for i, x in enumerate(data.iterate_once(config, "test", batch_size=config.sampling.batch_size, loaded=test,
                                            with_labels=labeled)):
        n = len(x["image"]) if labeled else len(x)
        if count >= max_examples or n == 0:
            break
        keys = losses.example_keys(jax.random.fold_in(key, i), n)
        total += float(loss_fn(score_fn.variables["params"], jax.tree.map(jnp.asarray, x), keys)) * n
        count += n
    return total / max(count, 1)


def needs_train_split(config, mode: str) -> bool:
    """Whether `mode` reads the training split: eval of a dataset with quality figures (digits)."""
    return mode == "eval" and config.data.dataset in QUALITY_DATASETS


def evaluate_checkpoint(config, workdir: str, step: int | None, test: data.Split,
                        train_split: data.Split | None = None) -> dict:
    """Test loss, bits/dim, a sample grid and (digits) the weight-free quality figures for one checkpoint.

    Args:
      test: `data.load_split(config, "test")`.
      train_split: `data.load_split(config, "train")`, needed when `needs_train_split(config, "eval")`.
    """
    out_dir = os.path.join(workdir, "eval")
    loaded = load_score_fn(config, workdir, test.data_shape, step)  # restored once, used by every figure below
    score_fn, sde, _, step = loaded
    result = {"step": int(step), "test_loss": test_loss(config, score_fn, sde, test)}
    result["likelihood"] = likelihood_bpd(config, workdir, test, step, out_dir, loaded=loaded)
    samples_summary = sample(config, workdir, test.data_shape, step, out_dir, loaded=loaded)
    result["samples"] = samples_summary
    if needs_train_split(config, "eval"):
        if train_split is None:
            raise ValueError(f"evaluating {config.data.dataset} needs its training split (train_split=...)")
        samples = np.load(samples_summary["npz"])["samples"]
        result["quality"] = digits_quality_of(config, workdir, samples, train_split, test)
    if config.get("eval") and config.eval.inception_weights:  # FID / KID / IS (score_sde.metrics)
        result["inception"] = inception_quality_of(config, workdir, loaded, out_dir)
    with open(os.path.join(out_dir, f"eval_{step}.json"), "w") as f:
        json.dump(result, f, indent=2)
    return result


def digits_quality_of(config, workdir: str, samples: np.ndarray, train_split: data.Split,
                      test: data.Split) -> dict:
    """Weight-free quality of digits samples (model scale) with the cached classifier."""
    from score_sde import quality

    def to01(x):
        return (x + 1.0) / 2.0 if config.data.centered else x

    def levels01(split):
        return split.source.get(np.arange(len(split.source))) / (split.num_levels - 1)

    train01, test01 = levels01(train_split), levels01(test)
    clf = quality.load_or_train_classifier(os.path.join(workdir, "digits_classifier.npz"), train01,
                                           train_split.labels)
    return quality.digits_quality(clf, to01(samples)[..., 0], train01[..., 0], test01[..., 0])


def draw_batches(config, loaded: Loaded, num_samples: int, batch_size: int, seed: int,
                 labels: np.ndarray | None = None, log_prob=None):
    """Yields (samples (model scale), NFE) for `num_samples` samples in batches of about `batch_size`,
    drawn with `config.sampling`'s sampler on every local device; batch i uses fold_in(PRNGKey(seed), i).

    `labels` (num_samples,): class labels of a conditional model, sampled with the guidance of
    `config.sampling` (`guided_score`; `log_prob`: the classifier for sampling.guidance=classifier).
    """
    sampler = config_utils.sampler_from_config(config.sampling)
    n_dev = jax.local_device_count()
    shape = (_per_device(min(batch_size, num_samples), n_dev),) + loaded.data_shape
    if labels is None:
        p_draw = jax.pmap(lambda key, sf: sampler(key, loaded.sde, sf, shape), in_axes=(0, None))
    else:
        guided = jax.pmap(lambda key, sf, y, lp: sampler(key, loaded.sde, guided_score(config, sf, y, lp), shape),
                          in_axes=(0, None, 0, None))
        per_call = n_dev * shape[0]
    key, done, i = jax.random.PRNGKey(seed), 0, 0
    while done < num_samples:
        keys = jax.random.split(jax.random.fold_in(key, i), n_dev)
        if labels is None:
            x, info = p_draw(keys, loaded.score_fn)
        else:  # the labels of samples done .. done + per_call (the last call padded with the last label)
            y = labels[np.minimum(np.arange(done, done + per_call), len(labels) - 1)].reshape(n_dev, shape[0])
            x, info = guided(keys, loaded.score_fn, jnp.asarray(y), log_prob)
        x = np.asarray(x).reshape((-1,) + loaded.data_shape)[: num_samples - done]
        done, i = done + len(x), i + 1
        yield x, int(np.max(info.nfe))


def sample_batches(config, loaded: Loaded, num_samples: int, batch_size: int, seed: int):
    """Yields the samples of `draw_batches` alone."""
    for x, _ in draw_batches(config, loaded, num_samples, batch_size, seed):
        yield x


def inception_quality_of(config, workdir: str, loaded: Loaded, out_dir: str) -> dict:
    """FID / KID / IS of `config.eval.num_samples` fresh samples (`score_sde.metrics.evaluation`)."""
    from score_sde.metrics import evaluation

    ec = config.eval
    evaluation.check_image_data(loaded.data_shape, config.data.dataset)
    batches = sample_batches(config, loaded, ec.num_samples, ec.batch_size, config.seed + 3)
    stem = os.path.join(out_dir, f"inception_stats_{loaded.step}_{config.sampling.method}")
    return evaluation.sample_quality(config, workdir, batches, loaded.data_shape, out_stem=stem)


__all__ = ["Loaded", "load_score_fn", "sample", "sample_labels", "guided_score", "load_guidance_classifier",
           "write_samples", "save_grid", "likelihood_bpd", "test_loss",
           "needs_train_split", "evaluate_checkpoint", "digits_quality_of", "CheckpointNotFoundError",
           "draw_batches", "sample_batches", "inception_quality_of"]
