"""A checkpoint's EMA parameters as a `ScoreModel`, for every driver that samples from a run
(sample, likelihood, eval, edit): the one restore path, so drivers do not import each other.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from score_sde import config_utils, models
from score_sde.plumbing import checkpoint


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
    objects = config_utils.objects(config)
    model, sde = objects.net, objects.sde
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
    params, step = restored  # a ScoreModel: called as score(x, t) it is the null condition's score
    return Loaded(objects.score_model({"params": params}), sde, shape, step)


__all__ = ["CheckpointNotFoundError", "Loaded", "load_score_fn"]
