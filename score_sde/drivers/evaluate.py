"""Sample / likelihood / eval drivers used by main.py (parallelism at this edge only).

Each driver loads the EMA parameters of a checkpoint in `workdir` (nothing else: no optimizer
is built, so changed `config.optim` settings never make a checkpoint unreadable), turns them into
a `score_fn(x, t)`, and splits its work over the local devices with `jax.pmap`. The data splits
are read once by the caller (`score_sde.data.load_split`) and passed in. Outputs go to
`workdir/<mode>/` as .npz / .png / .json named by what produced them (`score_sde.plumbing.outputs`: step,
method, a hash of the options, a number if the name is taken), each recorded in
`workdir/results.jsonl`; nothing already written is modified. Timings keep compilation apart
(`compile_seconds`, `run_seconds`; `score_sde.plumbing.timing`).

Class-conditional models (`config.data.num_classes` > 0) load as cond_score(x, t, y), which
called as score(x, t) is the null-class (unconditional) score, so every mode works unchanged;
`sampling.class_label` (k, or -1 for one row per class) samples with classifier-free guidance
(`sampling.guidance="free"`) or with the trained noise-conditional classifier ("classifier"),
weight `sampling.guidance_scale` (`score_sde.guidance`).
"""

from __future__ import annotations

import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from score_sde import config_utils, data, guidance, likelihood, solvers
from score_sde.drivers import train
from score_sde.plumbing import outputs, restore, shards, timing
from score_sde.bpd import bits_per_dim

# Datasets whose --mode=eval adds the weight-free quality figures (they need the training split).
QUALITY_DATASETS = ("digits", "mnist")


# The restore of a checkpoint as a ScoreModel lives in plumbing (every driver uses it); these names stay.
CheckpointNotFoundError, Loaded, load_score_fn = restore.CheckpointNotFoundError, restore.Loaded, restore.load_score_fn
save_grid = outputs.save_grid


def _per_device(total: int, n_dev: int) -> int:
    return max(1, math.ceil(total / n_dev))


class SampleProgress:
    """A bar over the batches of a sampling run that moves after every step of the sampling loop.

    `step(i, n)` is the sampler's host callback (`sampler(..., progress=...)`, called by each
    device after step i of n); `batch_done()` after each batch. The adaptive `ode` has no steps to
    report, so its bar moves per batch.
    """

    def __init__(self, num_batches: int, desc: str, enabled: bool = True):
        fmt = "{desc}: {percentage:3.0f}%|{bar}| batch {n:.2f}/{total} [{elapsed}<{remaining}]"
        self.bar = tqdm(total=num_batches, desc=desc, bar_format=fmt, disable=not enabled, file=sys.stderr)
        self.batch, self.position = 0, 0.0

    def _move_to(self, position: float) -> None:
        position = min(position, float(self.bar.total))
        if position > self.position:  # each device reports each step: count it once
            self.bar.update(position - self.position)
            self.bar.n = self.position = position  # no float drift past the total

    def step(self, i: int, n: int) -> None:
        self._move_to(self.batch + i / n)

    def batch_done(self) -> None:
        self.batch += 1
        self._move_to(float(self.batch))

    def close(self) -> None:
        self.bar.close()


def sample(config, workdir: str, data_shape: tuple[int, ...], step: int | None = None,
           out_dir: str | None = None, loaded: Loaded | None = None, progress: bool = True,
           record: bool = True) -> dict:
    """Draws `sampling.num_samples` samples; writes samples_<step>_<method>_<hash>.npz / .png / .json.

    Args:
      loaded: the output of `load_score_fn`, when the caller already restored the checkpoint.
      progress: a bar that moves per step of the sampling loop (a host callback in the solve).
      record: append the output to `workdir/results.jsonl` (eval records its own row instead).
    """
    loaded = loaded or load_score_fn(config, workdir, data_shape, step)
    labels = sample_labels(config)
    conds, target = sample_conditions(config, with_target=True) if labels is None else (None, None)
    num, batch = (config.sampling.num_samples if labels is None else len(labels)), config.sampling.batch_size
    log_prob = load_guidance_classifier(config, workdir, loaded.data_shape) if labels is not None else None
    n_batches = math.ceil(num / (_per_device(min(batch, num), jax.local_device_count()) * jax.local_device_count()))
    step, tag, cols = loaded.step, "", None
    if labels is not None:
        sc = config.sampling
        tag = f"_class{'all' if sc.class_label == -1 else sc.class_label}_{sc.guidance}{float(sc.guidance_scale):g}"
        cols = len(labels) // data.num_classes(config) if sc.class_label == -1 else None
    out_dir = out_dir or os.path.join(workdir, "samples")
    store = sample_shards(out_dir, f"samples_{step}_{config.sampling.method}{tag}", outputs.sampling_options(config),
                          n_batches)
    outs, nfes = [], []
    bar = SampleProgress(n_batches, f"sampling ({config.sampling.method})", enabled=progress)
    try:
        with timing.Timer() as timer:
            for x, nfe in draw_batches(config, loaded, num, batch, config.seed, labels=labels, log_prob=log_prob,
                                       progress=bar.step if progress else None, conds=conds, store=store):
                outs.append(x)
                nfes.append(nfe)
                bar.batch_done()
    finally:
        bar.close()
    samples = np.concatenate(outs)
    extra = {"nfe": int(np.mean(nfes)), **timer.fields()}
    if labels is not None:
        extra.update(class_label=int(sc.class_label), guidance=sc.guidance, guidance_scale=float(sc.guidance_scale))
    with outputs.writing():  # the files and their results.jsonl row, or (a signal before it) none of them
        summary = write_samples(config, samples, out_dir, step, extra, labels=labels, tag=tag, cols=cols, conds=conds,
                                target=target)
        if record:
            files = [summary[k] for k in ("npz", "grid", "json") if k in summary]
            outputs.append_result(workdir, "sample", step, config.sampling.method, outputs.sampling_options(config),
                                  files, timer.fields(), {"nfe": summary["nfe"], "num_samples": summary["num_samples"]})
    if store is not None:
        store.remove()  # the final output holds them now
    return summary


def sample_shards(out_dir: str, name: str, options: dict, n_batches: int) -> shards.ShardStore | None:
    """The on-disk shards of a sampling run of `n_batches` batches (None for one batch: nothing to resume),
    announced on stderr when a rerun finds some (`score_sde.plumbing.shards`)."""
    if n_batches <= 1:
        return None
    store = shards.ShardStore(out_dir, name, {**options, "local_devices": jax.local_device_count()}, n_batches)
    store.announce()
    return store


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


def sample_conditions(config, with_target: bool = False):
    """The conditions of a `data.cond` model's samples: {part: (num_samples, ...)}, the first
    num_samples of the test split (cycled if it is shorter) for `sampling.condition="test"`, None
    (every part null: the marginal) for "null" or an unconditional config.

    An image-to-image task (`data.task`) makes its parts from those test images (`task_inputs`).
    `with_target`: returns (conds, target), target the test images (num_samples, *shape) of a task
    config (the truth the samples are compared with), else None.
    """
    if not (config.data.get("cond", None) or {}):
        return (None, None) if with_target else None
    how = config.sampling.get("condition", "test")
    if how == "null":
        return (None, None) if with_target else None
    if how != "test":
        raise ValueError(f"sampling.condition must be 'test' (conditions from the test split) or 'null' "
                         f"(the marginal), got {how!r}")
    test = data.load_split(config, "test")
    n = config.sampling.num_samples
    rows = np.arange(n) % len(test.source)
    conds, target = {k: v[rows] for k, v in data.cond_arrays(config, test).items()}, None
    task = config_utils.task_from_config(config)
    if task is not None:
        derived, target = task_inputs(config, task, test, rows)
        conds.update(derived)
    return (conds, target) if with_target else conds


def task_inputs(config, task, test: data.Split, rows: np.ndarray) -> tuple[dict, np.ndarray]:
    """({part: (n, ...)} of the task, the clean test images (n, *shape)) for test examples `rows`:
    the task's parts of the un-dequantised images at level `sampling.aug_level`, its randomness
    (masks, augmentation noise) from fold_in(PRNGKey(seed + 3), row)."""
    x0 = next(data.iterate_once(config, "test", batch_size=len(test.source), dequantize=False, loaded=test))[rows]
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), i))(jnp.asarray(rows))
    level = float(config.sampling.get("aug_level", 0.0))
    derived = task.derive(keys, jnp.asarray(x0), level=level)
    return {k: np.asarray(v) for k, v in derived.items()}, x0


def guided_parts_score(config, model, cond: dict):
    """score_fn(x, t) of a conditional model under `cond`, with classifier-free guidance weights
    `sampling.guidance_scales` ({part: w}; none: the plain conditional score)."""
    scales = {k: float(v) for k, v in (config.sampling.get("guidance_scales", None) or {}).items()}
    return guidance.classifier_free_parts(model, cond, scales)


def load_guidance_classifier(config, workdir: str, data_shape: tuple[int, ...]):
    """The classifier's log_prob(x, t, y) when `sampling.guidance` is "classifier", else None."""
    if config.sampling.get("guidance", "free") != "classifier":
        return None
    from score_sde.drivers import classifier

    return classifier.load_classifier(config, workdir, data_shape)


def guided_score(config, cond_score, y, log_prob=None):
    """score_fn(x, t) for labels y (B,): classifier-free or classifier guidance per `config.sampling`."""
    sc = config.sampling
    scale = float(sc.get("guidance_scale", 0.0))
    if sc.get("guidance", "free") == "classifier":
        return guidance.classifier(cond_score, log_prob, y, scale)
    return guidance.classifier_free(cond_score, y, scale)


def write_samples(config, samples: np.ndarray, out_dir: str, step: int, extra: dict,
                  labels: np.ndarray | None = None, tag: str = "", cols: int | None = None,
                  conds: dict | None = None, target: np.ndarray | None = None) -> dict:
    """samples_<step>_<method><tag>_<hash>.npz (model scale), a PNG grid (images only) and a JSON summary.

    The sampler's name, `tag` (class and guidance) and a hash of the sampling options are part of the
    file name (plus a number when the name is taken), so no earlier result is ever overwritten; each
    file is written atomically. `labels`: the requested classes, saved in the npz beside the samples;
    `cols`: grid columns (one row per class); `conds`: the condition parts of the samples, saved as
    cond_<name> (e.g. cond_y); `target`: an image-to-image task's true images, saved as `target`, and the
    grid shows condition | sample | truth (`task_grid`).
    """
    os.makedirs(out_dir, exist_ok=True)
    options = outputs.sampling_options(config)
    stem = outputs.new_stem(out_dir, f"samples_{step}_{config.sampling.method}{tag}_{outputs.options_hash(options)}")
    summary = {"step": int(step), "method": config.sampling.method, "num_samples": int(len(samples)),
               "shape": list(samples.shape[1:]), **extra, "options": options}
    with outputs.writing():
        extra_arrays = {} if labels is None else {"labels": labels}
        extra_arrays.update({f"cond_{k}": np.asarray(v)[: len(samples)] for k, v in (conds or {}).items()})
        if target is not None:
            extra_arrays["target"] = np.asarray(target)[: len(samples)]
        outputs.save_npz(stem + ".npz", samples=samples, **extra_arrays)
        if samples.ndim == 4:
            shown = samples if target is None else task_grid(conds, samples, target)
            cols = cols if target is None else 3 * min(8, len(samples))
            outputs.save_with(stem + ".png", lambda p: save_grid(shown, config.data.centered, p, cols=cols))
            summary["grid"] = stem + ".png"
        summary["npz"] = stem + ".npz"
        summary["json"] = stem + ".json"
        outputs.write_json(stem + ".json", summary)
    return summary


def task_grid(conds: dict, samples: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Images (3 n, H, W, C) in triples condition | sample | truth: the condition is "low_res"
    (nearest-upsampled to H x W), "masked" (unknown pixels shown as mid-grey 0) or "jpeg" (the JPEG
    image; a multi-task model's examples show whichever of masked / jpeg is present)."""
    n, h = len(samples), samples.shape[1]
    if "low_res" in conds:
        low = np.asarray(conds["low_res"])[:n]
        shown = np.repeat(np.repeat(low, h // low.shape[1], axis=1), h // low.shape[2], axis=2)
    else:
        shown = np.nan_to_num(np.asarray(conds["masked"])[:n], nan=0.0) if "masked" in conds else 0.0 * samples
        if "jpeg" in conds:
            jp = np.asarray(conds["jpeg"])[:n]
            shown = np.where(np.isnan(jp), shown, jp)
    return np.stack([shown, samples, np.asarray(target)[:n]], axis=1).reshape(3 * n, *samples.shape[1:])


def likelihood_batch(batch_size: int, num_examples: int, n_dev: int) -> int:
    """Examples per device: min(batch_size, num_examples) split over `n_dev` devices (rounded up), so
    8 examples with batch_size 150 on 2 devices solve 2 x 4, not 2 x 75 padded ones."""
    return _per_device(min(batch_size, num_examples), n_dev)


def exact_cost_line(shape: tuple[int, ...], num_examples: int) -> str:
    """The up-front cost note of `likelihood.divergence=exact`: D network evaluations (one jvp per
    data dimension) per ODE step and example, against Hutchinson's one."""
    d = int(np.prod(shape))
    return (f"exact divergence: {d} network evaluations (one jvp per data dimension) per ODE step and example, "
            f"about {d}x the cost of likelihood.divergence=hutchinson; {num_examples} examples")


def likelihood_bpd(config, workdir: str, test: data.Split, step: int | None = None,
                   out_dir: str | None = None, loaded: Loaded | None = None, progress: bool = True,
                   record: bool = True) -> dict:
    """Bits/dim on the test split with uniform dequantisation; writes likelihood_<step>_<divergence>_<hash>.json.

    Each finished batch's per-example bits/dim is kept as a shard (`likelihood_shards`) until the result
    is written, so a rerun after a kill or a signal continues from the last complete batch and gives the
    same figures, bit for bit (batch i uses fold_in(PRNGKey(seed + 1), i) whatever came before it).

    Args:
      test: `data.load_split(config, "test")`.
      loaded: the output of `load_score_fn`, when the caller already restored the checkpoint.
      progress: a bar advancing per batch, with an estimate of the time left.
      record: append the output to `workdir/results.jsonl` (eval records its own row instead).
    """
    score_fn, sde, shape, step = loaded or load_score_fn(config, workdir, test.data_shape, step)
    lc = config.likelihood
    n_dev = jax.local_device_count()
    total = min(lc.num_examples, len(test.source))
    per_dev = likelihood_batch(lc.batch_size, total, n_dev)
    if lc.divergence == "exact" and progress and jax.process_index() == 0:
        print(exact_cost_line(shape, total), file=sys.stderr, flush=True)
    levels = test.num_levels  # None: continuous data (toys), no dequantisation and no offset
    it = data.iterate_once(config, "test", batch_size=per_dev * n_dev, dequantize=levels is not None, loaded=test)

    def solve(key, x, sf):  # log p(x); for CLD the ELBO over v0 (`likelihood.augmented_elbo`)
        return likelihood.augmented_elbo(key, sde, sf, x, divergence=lc.divergence, solver=lc.solver,
                                         rtol=lc.rtol, atol=lc.atol, max_steps=lc.get("max_steps", 4096))

    p_solve = jax.pmap(solve, in_axes=(0, 0, None))
    out_dir = out_dir or os.path.join(workdir, "likelihood")
    store = likelihood_shards(config, out_dir, f"likelihood_{step}_{lc.divergence}",
                              math.ceil(total / (per_dev * n_dev)))
    bpds, nfes, key = [], [], jax.random.PRNGKey(config.seed + 1)
    with timing.Timer() as timer, tqdm(total=total, desc="likelihood", unit="img", disable=not progress) as bar:
        for i, x in enumerate(it):
            x = x[: total - len(bpds)]
            if len(x) == 0:
                break
            key_i = jax.random.fold_in(key, i)
            stored = store.get(i, key_i) if store is not None else None
            if stored is None:
                padded, mask = data.pad_batch(x, per_dev * n_dev)
                with outputs.deferring("the likelihood batch in flight (an adaptive ODE solve cannot stop "
                                       "mid-solve)"):
                    logp, nfe = p_solve(jax.random.split(key_i, n_dev), padded.reshape((n_dev, per_dev) + shape),
                                        score_fn)
                    logp, nfe = np.asarray(logp), np.asarray(nfe)  # nothing left running when a signal is acted on
                logp = logp.reshape(-1)[np.asarray(mask, bool)]
                stored = (np.asarray(bits_per_dim(logp, shape, num_levels=levels,
                                                  data_range=data.data_range(config.data.centered))),
                          float(np.mean(nfe)))
                if store is not None:
                    store.put(i, key_i, *stored)
            bpds.extend(stored[0])
            nfes.append(stored[1])
            bar.update(len(stored[0]))
            if len(bpds) >= total:
                break
    bpds = np.asarray(bpds, np.float64)
    result = {"step": int(step), "bits_per_dim": float(bpds.mean()),
              "standard_error": float(bpds.std(ddof=1) / math.sqrt(len(bpds))) if len(bpds) > 1 else float("nan"),
              "num_examples": int(len(bpds)), "nfe_mean": float(np.mean(nfes)), "divergence": lc.divergence,
              "batch_per_device": per_dev, **timer.fields()}
    os.makedirs(out_dir, exist_ok=True)
    options = outputs.likelihood_options(config)
    stem = outputs.new_stem(out_dir, f"likelihood_{step}_{lc.divergence}_{outputs.options_hash(options)}")
    result["options"], result["json"] = options, stem + ".json"
    with outputs.writing():
        outputs.write_json(stem + ".json", result)
        if record:
            figures = {k: result[k] for k in ("bits_per_dim", "standard_error", "num_examples", "nfe_mean")}
            outputs.append_result(workdir, "likelihood", step, lc.divergence, options, [stem + ".json"],
                                  timer.fields(), figures)
    if store is not None:
        store.remove()  # the result holds them now
    return result


def likelihood_shards(config, out_dir: str, name: str, n_batches: int) -> shards.ShardStore | None:
    """The on-disk per-batch bits/dim of a likelihood run of `n_batches` batches (None for one batch), so
    that a rerun continues from the last complete batch: the options hash covers `config.likelihood`, the
    seed, `config.data` (which examples) and the local device count (the per-device batch)."""
    if n_batches <= 1:
        return None
    identity = {**outputs.likelihood_options(config), "data": config.data, "local_devices": jax.local_device_count()}
    store = shards.ShardStore(out_dir, name, identity, n_batches, field="bits_per_dim")
    store.announce()
    return store


def test_loss(config, score_fn, sde, test: data.Split, max_examples: int = 2048) -> float:
    """The training objective on the test split (EMA params, eval mode), averaged over examples."""
    from score_sde import losses

    loss_fn = jax.jit(train.loss_fn_from_config(config, score_fn.model, sde, train=False))
    key, total, count = jax.random.PRNGKey(config.seed + 2), 0.0, 0
    labeled = bool(data.cond_names(config))  # a conditional model's loss takes {"image", "cond"} batches
    for i, x in enumerate(data.iterate_once(config, "test", batch_size=config.sampling.batch_size, loaded=test,
                                            with_cond=labeled)):
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
    timer = timing.Timer().__enter__()
    result = {"step": int(step), "test_loss": test_loss(config, score_fn, sde, test)}
    result["likelihood"] = likelihood_bpd(config, workdir, test, step, out_dir, loaded=loaded, record=False)
    samples_summary = sample(config, workdir, test.data_shape, step, out_dir, loaded=loaded, record=False)
    result["samples"] = samples_summary
    if needs_train_split(config, "eval"):
        if train_split is None:
            raise ValueError(f"evaluating {config.data.dataset} needs its training split (train_split=...)")
        with np.load(samples_summary["npz"]) as f:
            samples, labels = f["samples"], f["labels"] if "labels" in f.files else None
        quality_of = mnist_quality_of if config.data.dataset == "mnist" else digits_quality_of
        result["quality"] = quality_of(config, workdir, samples, train_split, test, labels)
    if config.get("eval") and config.eval.inception_weights:  # FID / KID / IS (score_sde.metrics)
        result["inception"] = inception_quality_of(config, workdir, loaded, out_dir)
    timer.__exit__(None, None, None)
    result.update(timer.fields())
    options = eval_options(config)
    stem = outputs.new_stem(out_dir, f"eval_{step}_{outputs.options_hash(options)}")
    result["options"], result["json"] = options, stem + ".json"
    figures = eval_figures(result)
    files = [stem + ".json", result["likelihood"]["json"]] + [samples_summary[k] for k in ("npz", "grid", "json")
                                                              if k in samples_summary]
    with outputs.writing():
        outputs.write_json(stem + ".json", result)
        outputs.append_result(workdir, "eval", step, config.sampling.method, options, files, timer.fields(), figures)
        write_eval_scalars(workdir, step, figures)
    return result


def eval_options(config) -> dict:
    """What changes an eval result: the sampling and likelihood options, and `config.eval`."""
    opts = {**outputs.sampling_options(config), **outputs.likelihood_options(config)}
    if config.get("eval"):
        opts["eval"] = config.eval.to_dict() if hasattr(config.eval, "to_dict") else dict(config.eval)
    return opts


def eval_figures(result: dict) -> dict:
    """The scalar figures of an eval result: test loss, bits/dim, NFE and the quality figures."""
    figures = {"test_loss": result["test_loss"], "bits_per_dim": result["likelihood"]["bits_per_dim"],
               "bits_per_dim_se": result["likelihood"]["standard_error"], "sample_nfe": result["samples"]["nfe"]}
    for group in ("quality", "inception"):
        for k, v in (result.get(group) or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None:
                figures[f"{group}/{k}"] = float(v)
    return figures


def write_eval_scalars(workdir: str, step: int, figures: dict) -> None:
    """Adds the eval figures to TensorBoard (`workdir/tensorboard`, tags `eval/<name>`) at `step`."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(os.path.join(workdir, "tensorboard"))
    try:
        for name, value in figures.items():
            if value is not None and math.isfinite(value):
                writer.add_scalar(f"eval/{name}", value, step)
    finally:
        writer.close()


def _to01(config, x: np.ndarray) -> np.ndarray:
    return (x + 1.0) / 2.0 if config.data.centered else x


def _levels01(split: data.Split) -> np.ndarray:
    return split.source.get(np.arange(len(split.source))) / (split.num_levels - 1)


def digits_quality_of(config, workdir: str, samples: np.ndarray, train_split: data.Split,
                      test: data.Split, labels: np.ndarray | None = None) -> dict:
    """Weight-free quality of digits samples (model scale) with the cached classifier."""
    from score_sde import quality

    train01, test01 = _levels01(train_split), _levels01(test)
    clf = quality.load_or_train_classifier(os.path.join(workdir, "digits_classifier.npz"), train01,
                                           train_split.labels)
    return quality.digits_quality(clf, _to01(config, samples)[..., 0], train01[..., 0], test01[..., 0])


def mnist_quality_of(config, workdir: str, samples: np.ndarray, train_split: data.Split,
                     test: data.Split, labels: np.ndarray | None = None) -> dict:
    """MNIST samples (model scale): the cached CNN's Frechet distance, confidence and label agreement."""
    from score_sde import mnist_quality

    train01, test01 = _levels01(train_split), _levels01(test)
    clf = mnist_quality.load_or_train_classifier(os.path.join(workdir, "mnist_classifier.npz"), train01,
                                                 train_split.labels)
    return mnist_quality.mnist_quality(clf, _to01(config, samples), train01, test01, labels)


# Steps per jitted call of a fixed-grid sampling solve in `draw_batches`: a SIGINT / SIGTERM is acted on
# between two calls, so it waits for at most this many steps (~0.5 s for the digits UNet's pc steps on
# 2 CPU cores; the chunks give the same samples as one call, tests/test_signals_cli.py).
CHUNK_STEPS = 16


def draw_batches(config, loaded: Loaded, num_samples: int, batch_size: int, seed: int,
                 labels: np.ndarray | None = None, log_prob=None, progress=None, conds: dict | None = None,
                 store: shards.ShardStore | None = None):
    """Yields (samples (model scale), NFE) for `num_samples` samples in batches of about `batch_size`,
    drawn with `config.sampling`'s sampler on every local device; batch i uses fold_in(PRNGKey(seed), i).

    `labels` (num_samples,): class labels of a conditional model, sampled with the guidance of
    `config.sampling` (`guided_score`; `log_prob`: the classifier for sampling.guidance=classifier).
    `progress(i, n)`: called on the host after every CHUNK_STEPS steps of a fixed-grid solve (after the
    batch for the adaptive ode), or None.
    `conds` ({part: (num_samples, ...)}): the conditions of a `data.cond` model (`guided_parts_score`).

    A fixed-grid solve runs as pmapped calls of CHUNK_STEPS steps (`StepSampler.begin` / `advance` /
    `finish`; the samples are those of one call) inside `outputs.deferring`, so a SIGINT / SIGTERM
    stops it after the steps in flight, with nothing left running on the devices.
    `store` (`shards.ShardStore`): batch i is read from it when it holds it, else drawn and written there.
    """
    sampler = config_utils.objects(config).sampler
    n_dev = jax.local_device_count()
    shape = (_per_device(min(batch_size, num_samples), n_dev),) + loaded.data_shape
    if conds is not None:
        labels = conds  # drawn like labels below: a pytree of per-sample values
        score_args, in_axes = (loaded.score_fn, None, None), (None, 0, None)
        score_of = lambda sf, c, lp: guided_parts_score(config, sf, c)  # noqa: E731
        per_call = n_dev * shape[0]
    elif labels is None:
        score_args, in_axes = (loaded.score_fn,), (None,)
        score_of = lambda sf: sf  # noqa: E731
    else:
        score_args, in_axes = (loaded.score_fn, None, log_prob), (None, 0, None)
        score_of = lambda sf, y, lp: guided_score(config, sf, y, lp)  # noqa: E731
        per_call = n_dev * shape[0]
    solve = _chunked_solve(sampler, loaded.sde, shape, score_of, in_axes, progress)
    key, done, i = jax.random.PRNGKey(seed), 0, 0
    while done < num_samples:
        key_i = jax.random.fold_in(key, i)
        stored = store.get(i, key_i) if store is not None else None
        if stored is not None:
            x, nfe = stored
            if progress is not None:
                progress(1, 1)
        else:
            keys = jax.random.split(key_i, n_dev)
            if labels is not None:  # labels of samples done .. done + per_call (the last padded with the last one)
                rows = np.minimum(np.arange(done, done + per_call), num_samples - 1)
                y = jax.tree.map(lambda v: jnp.asarray(v[rows].reshape(n_dev, shape[0], *v.shape[1:])), labels)
                score_args = (loaded.score_fn, y, log_prob)
            x, nfe = solve(keys, score_args)
            x = x.reshape((-1,) + loaded.data_shape)[: num_samples - done]
            if store is not None:
                store.put(i, key_i, x, nfe)
        done, i = done + len(x), i + 1
        yield x, nfe


def _chunked_solve(sampler, sde, shape: tuple[int, ...], score_of, in_axes: tuple, progress=None):
    """solve(keys (n_dev, 2), score_args) -> (samples as numpy (n_dev, B, *dims), NFE): the sampler on
    every local device, score_fn = score_of(*score_args) (in_axes: their pmap axes).

    Fixed-grid samplers run `begin`, `advance` per piece of `chunks(n, CHUNK_STEPS)` and `finish` as
    separate pmapped calls (start / stop traced: one program per kind, not per piece), checking for a
    signal between pieces; the adaptive ode runs as one call, its batch finished before a signal acts.
    """
    shape, dtype, *_ = sampler.check_call(sde, shape, None, None, None, None)
    method = type(sampler).__name__
    if not (isinstance(sampler, solvers.StepSampler) and sampler.fixed_grid):
        p_draw = jax.pmap(lambda key, *a: sampler(key, sde, score_of(*a), shape, dtype), in_axes=(0, *in_axes))

        def solve_whole(keys, score_args):
            with outputs.deferring(f"the batch in flight ({method} is adaptive: it cannot stop mid-solve)"):
                x, info = p_draw(keys, *score_args)
                x, nfe = np.asarray(x), int(np.max(info.nfe))
            if progress is not None:
                progress(1, 1)
            return x, nfe

        return solve_whole

    def begin(key, *a):
        return sampler.begin(key, sde, solvers.checked_score(sde, score_of(*a), shape, dtype), shape, dtype)

    def advance(kind, length, masked, solve, start, stop, *a):
        score_fn = solvers.checked_score(sde, score_of(*a), shape, dtype)
        return sampler.advance(solve, sde, score_fn, start, length, kind, stop=stop if masked else None)

    def finish(solve, *a):
        x, info = sampler.finish(solve, sde, solvers.checked_score(sde, score_of(*a), shape, dtype))
        return solvers.data_and_info(sde, x, info)

    p_begin = jax.pmap(begin, in_axes=(0, *in_axes))
    p_advance = jax.pmap(advance, in_axes=(None, None, None, 0, None, None, *in_axes),
                         static_broadcasted_argnums=(0, 1, 2))
    p_finish = jax.pmap(finish, in_axes=(0, *in_axes))

    def solve_in_chunks(keys, score_args):
        state = p_begin(keys, *score_args)
        n = state.ts.shape[-1] - 1
        pieces = sampler.chunks(n, CHUNK_STEPS)
        with outputs.deferring(f"the {method} steps in flight (at most {CHUNK_STEPS} of {n})"):
            for piece in pieces:
                state = p_advance(piece.kind, piece.length, piece.masked, state, jnp.int32(piece.start),
                                  jnp.int32(piece.stop), *score_args)
                jax.block_until_ready(state.x)  # nothing in flight when a signal is acted on
                outputs.check_stop()
                if progress is not None:
                    progress(piece.stop, n)
            x, info = p_finish(state, *score_args)
            x, nfe = np.asarray(x), int(np.max(info.nfe))
        return x, nfe

    return solve_in_chunks


def sample_batches(config, loaded: Loaded, num_samples: int, batch_size: int, seed: int,
                   store: shards.ShardStore | None = None):
    """Yields the samples of `draw_batches` alone (`store`: its on-disk shards, as in `draw_batches`)."""
    for x, _ in draw_batches(config, loaded, num_samples, batch_size, seed, store=store):
        yield x


def inception_quality_of(config, workdir: str, loaded: Loaded, out_dir: str) -> dict:
    """FID / KID / IS of `config.eval.num_samples` fresh samples (`score_sde.metrics.evaluation`)."""
    from score_sde.metrics import evaluation

    ec = config.eval
    evaluation.check_image_data(loaded.data_shape, config.data.dataset)
    options = eval_options(config)
    n_dev = jax.local_device_count()
    n_batches = math.ceil(ec.num_samples / (_per_device(min(ec.batch_size, ec.num_samples), n_dev) * n_dev))
    name = f"inception_samples_{loaded.step}_{config.sampling.method}"
    store = sample_shards(out_dir, name, options, n_batches)  # a 50k-sample FID run resumes where it stopped
    batches = sample_batches(config, loaded, ec.num_samples, ec.batch_size, config.seed + 3, store=store)
    stem = outputs.new_stem(out_dir, f"inception_stats_{loaded.step}_{config.sampling.method}_"
                                     f"{outputs.options_hash(options)}")
    result = evaluation.sample_quality(config, workdir, batches, loaded.data_shape, out_stem=stem)
    if store is not None:
        store.remove()
    return result


__all__ = ["Loaded", "SampleProgress", "likelihood_batch", "exact_cost_line", "eval_options", "eval_figures",
           "write_eval_scalars", "load_score_fn", "sample", "sample_labels", "sample_conditions", "guided_score", "guided_parts_score", "load_guidance_classifier",
           "write_samples", "task_grid", "task_inputs", "save_grid", "likelihood_bpd", "likelihood_shards", "test_loss",
           "needs_train_split", "evaluate_checkpoint", "digits_quality_of", "CheckpointNotFoundError",
           "draw_batches", "sample_batches", "inception_quality_of", "CHUNK_STEPS"]
