"""Training checkpoints with orbax: the train state and the data iterator's position.

A checkpoint at step n holds two items, written atomically by orbax (a temporary directory
renamed when complete, so a killed run never leaves a half-written "latest"):

    state: the TrainState as a state dict of numpy arrays (params, optimizer, EMA, step, rng)
    data:  the JSON position of the training iterator after the batches of steps 1..n

Restoring both reproduces the uninterrupted run bit for bit (on CPU). Sampling and evaluation
read the `ema_params` subtree of `state` alone (`restore_ema_params`), so they need neither an
optimizer nor the optimizer settings the run was trained with.
"""

from __future__ import annotations

import os
from typing import Any

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
    """A CheckpointManager in `workdir/checkpoints` keeping the latest `keep` checkpoints."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options,
                                 item_names=("state", "data"))


def save(manager: ocp.CheckpointManager, step: int, state: Any, data_state: dict) -> None:
    """Saves a host-local (unreplicated) state and the data position at `step` (asynchronously)."""
    tree = jax.device_get(flax.serialization.to_state_dict(state))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                               data=ocp.args.JsonSave(dict(data_state))), force=True)


def restore_latest(manager: ocp.CheckpointManager, template: Any, step: int | None = None
                   ) -> tuple[Any, dict, int] | None:
    """(state, data position, step) of the latest checkpoint (or of `step`), or None when there is none.

    Args:
      template: a state of the same structure (e.g. a freshly created one); its arrays give
        the shapes and dtypes.
      step: a specific saved step instead of the latest.
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    target = jax.tree.map(np.asarray, jax.device_get(flax.serialization.to_state_dict(template)))
    out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                        data=ocp.args.JsonRestore()))
    state = flax.serialization.from_state_dict(template, jax.tree.map(np.asarray, out["state"]))
    return state, dict(out["data"] or {}), step


def restore_ema_params(manager: ocp.CheckpointManager, template: Any, step: int | None = None
                       ) -> tuple[Any, int] | None:
    """(EMA params, step) of the latest checkpoint (or of `step`), or None when there is none.

    Only the `ema_params` subtree of the `state` item is read (an orbax partial restore): the
    optimizer state, whose structure depends on `config.optim`, is never touched.

    Args:
      template: params of the network the checkpoint was trained with (arrays or
        `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of `model.init`); gives the structure.
      step: a specific saved step instead of the latest.

    Raises:
      ValueError: the saved params do not have the template's structure or shapes (the checkpoint
        was trained with another `config.model`).
    """
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    target = {"ema_params": flax.serialization.to_state_dict(template)}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy, partial_restore=True)))
    saved = out["state"]["ema_params"]
    want = jax.tree.map(np.shape, target["ema_params"])
    got = jax.tree.map(np.shape, saved)
    if want != got:
        raise ValueError(f"the checkpoint at step {step} in {manager.directory} holds params of another "
                         f"network than config.model describes; evaluate it with the config it was trained with")
    return flax.serialization.from_state_dict(template, saved), step


__all__ = ["make_manager", "save", "restore_latest", "restore_ema_params"]
