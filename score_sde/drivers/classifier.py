"""The noise-conditional classifier for classifier guidance: its loss, training driver and log p_t(y | x).

    log_prob = load_classifier(config, workdir, data_shape)      # log_prob(x, t, y) -> (B,)
    score = guidance.classifier(score_fn, log_prob, y, scale)    # score + scale grad_x log p_t(y | x)

Training (`--mode=train_classifier`, `train_classifier(config, workdir)`) minimises the
cross-entropy of the label given a perturbed example,

    E_{t ~ U(eps, T)} E_{(x0, y)} E_{z} [ -log p_theta(y | x_t, t) ],   x_t = alpha(t) x0 + std(t) z,

with the same per-example keys, time and noise draws as the DSM loss (`losses.draw_time_and_noise`),
so the classifier sees x_t from every marginal p_t the sampler visits (Song et al. 2021, app. I;
Dhariwal & Nichol 2021). The network (`models.NoisyClassifier`, sized by `config.classifier`) gets
x_t / sqrt(alpha(t)^2 + std(t)^2), about unit scale for every SDE, and c_noise(t) like the score
networks. It trains with the score model's pmapped step, EMA and checkpoint code in its own folder
`<workdir>/classifier/` (checkpoints/, metrics.jsonl, tensorboard/), so a rerun resumes.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from score_sde import config_utils, losses
from score_sde.drivers import train
from score_sde.plumbing import checkpoint
from score_sde.models.classifier import NoisyClassifier
from score_sde.models.parameterization import noise_conditioning
from score_sde.sde import SDE, Array, batch_times, expand_to

CLASSIFIER_DIR = "classifier"


class ClassifierNotFoundError(FileNotFoundError):
    """No classifier checkpoint in <workdir>/classifier (run --mode=train_classifier first)."""


def classifier_workdir(workdir: str) -> str:
    """<workdir>/classifier: the classifier's checkpoints and logs."""
    return os.path.join(workdir, CLASSIFIER_DIR)


def _sde(config) -> SDE:
    """config.sde; the classifier perturbs data with sde.marginal_prob (VP, sub-VP, VE; not CLD's (x, v) state)."""
    sde = config_utils.objects(config).sde
    if getattr(sde, "training_objective", "dsm") != "dsm":
        raise ValueError(f"the noise-conditional classifier supports sde.name = vpsde | subvpsde | vesde, "
                         f"got {config.sde.name!r}; use classifier-free guidance (sampling.guidance=free)")
    return sde


def classifier_from_config(config) -> NoisyClassifier:
    """`config.classifier` and `config.data.num_classes` -> a `NoisyClassifier`."""
    k = int(config.data.get("num_classes", 0) or 0)
    if k < 2:
        raise ValueError(f"a classifier needs class labels: set config.data.num_classes (>= 2) for a dataset "
                         f"with labels, got data.num_classes={k}")
    c = config.classifier
    return NoisyClassifier(num_classes=k, nf=c.nf, ch_mult=tuple(c.ch_mult), num_res_blocks=c.num_res_blocks,
                           fourier_scale=config.model.get("fourier_scale", 16.0))


def logits(model: nn.Module, variables: Any, sde: SDE, x: Array, t) -> Array:
    """Class logits (B, K) of x_t at times t (scalar or (B,))."""
    t = batch_times(t, x.shape[0], x.dtype)
    scale = jnp.sqrt(sde.alpha(t) ** 2 + sde.std(t) ** 2)
    return model.apply(variables, x / expand_to(scale, x), noise_conditioning(sde, t))


class ClassifierLogProb(eqx.Module):
    """log p_t(y | x) of a trained classifier as log_prob(x, t, y) -> (B,), for `guidance.classifier`."""

    model: nn.Module = eqx.field(static=True)
    variables: Any
    sde: SDE

    def __call__(self, x: Array, t, y: Array) -> Array:
        logp = jax.nn.log_softmax(logits(self.model, self.variables, self.sde, x, t), axis=-1)
        y = jnp.broadcast_to(jnp.asarray(y, jnp.int32), (x.shape[0],))
        return jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def classifier_loss_fn(model: nn.Module, sde: SDE, eps: float = 1e-5) -> losses.LossFn:
    """loss_fn(params, batch, keys, frozen=None) -> mean cross-entropy of the batch's "label" part
    given x_t, t ~ U(eps, T); batch {"image", "cond": {"label"}} (`losses.split_batch`)."""

    def loss_fn(params, batch, keys, frozen=None):
        x0, cond = losses.split_batch(batch)
        y = cond["label"]
        t, z = losses.draw_time_and_noise(keys, x0, lambda k: jax.random.uniform(k, (), x0.dtype, eps, sde.T))
        mean, std = sde.marginal_prob(x0, t)
        out = logits(model, {"params": params}, sde, mean + expand_to(std, x0) * z, t)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(out, y))

    return loss_fn


def training_config(config) -> ml_collections.ConfigDict:
    """The classifier's loop settings in the shape of `config.training` (for the shared train loop)."""
    c, tc = config.classifier, config.training
    return ml_collections.ConfigDict({
        "batch_size": c.batch_size, "n_iters": c.n_iters, "snapshot_freq": c.snapshot_freq,
        "log_freq": c.log_freq, "steps_per_call": 1, "keep_checkpoints": tc.keep_checkpoints,
        "max_nonfinite": tc.max_nonfinite, "divergence_factor": 0.0})


def _optim_settings(config) -> tuple:
    """config.optim with the classifier's lr and warmup, as a hashable snapshot."""
    optim = dict(config.optim.to_dict(), lr=config.classifier.lr, warmup=config.classifier.warmup)
    return config_utils.freeze(optim)


@functools.lru_cache(maxsize=4)
def _step(model: nn.Module, sde: SDE, eps: float, optim, ema_rate: float):
    """(optimizer, pmapped step), cached so that a resumed run in the same process does not recompile."""
    optimizer = train.make_optimizer(optim)
    return optimizer, train.make_pmapped_step(classifier_loss_fn(model, sde, eps), optimizer, ema_rate)


def train_classifier(config, workdir: str, train_iter=None) -> train.TrainState:
    """Trains `config.classifier` on labelled x_t in `<workdir>/classifier`, resuming if it can; returns the state.

    Args:
      train_iter: optional iterator of {"image", "label"} batches of `classifier.batch_size`
        (default: `data.get_dataset(config, "train", batch_size=classifier.batch_size)`).
    """
    train.maybe_initialize_distributed(config.distributed)
    tc = training_config(config)
    per_device = train.check_batch_config(tc)
    model, sde = classifier_from_config(config), _sde(config)
    if train_iter is None:
        from score_sde import data

        train_iter = data.get_dataset(config, "train", jax.process_index(), jax.process_count(),
                                      batch_size=tc.batch_size)
    optimizer, p_step = _step(model, sde, float(config.classifier.eps), _optim_settings(config),
                              float(config.classifier.ema_rate))
    state = train.create_train_state(jax.random.PRNGKey(config.seed + 7), model, optimizer,
                                     tuple(train_iter.data_shape))
    return train.run_loop(classifier_workdir(workdir), p_step, state, train_iter, tc, per_device)


def load_classifier(config, workdir: str, data_shape: tuple[int, ...]) -> ClassifierLogProb:
    """log p_t(y | x) of the EMA params of the newest classifier checkpoint in <workdir>/classifier.

    Raises:
      ClassifierNotFoundError: no classifier was trained in this workdir.
    """
    model, sde = classifier_from_config(config), _sde(config)
    out = classifier_workdir(workdir)
    missing = ClassifierNotFoundError(
        f"sampling.guidance=classifier needs a trained classifier in {os.path.join(out, 'checkpoints')}; "
        f"train it first with --mode=train_classifier (same --config and --workdir)")
    if not os.path.isdir(os.path.join(out, "checkpoints")):
        raise missing
    template = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *data_shape), jnp.float32),
                                                 jnp.zeros((1,), jnp.float32))["params"])
    manager = checkpoint.make_manager(out, config.training.keep_checkpoints)
    try:
        restored = checkpoint.restore_ema_params(manager, template)
    finally:
        manager.close()
    if restored is None:
        raise missing
    return ClassifierLogProb(model, {"params": restored[0]}, sde)


__all__ = ["CLASSIFIER_DIR", "ClassifierNotFoundError", "classifier_workdir", "classifier_from_config", "logits",
           "ClassifierLogProb", "classifier_loss_fn", "training_config", "train_classifier", "load_classifier"]
