"""Training checkpoints with orbax: the train state and the data iterator's position.

A checkpoint at step n holds two items, written atomically by orbax (a temporary directory
renamed when complete, so a killed run never leaves a half-written "latest"):

    state: the TrainState as a state dict of numpy arrays (params, optimizer, EMA, step, rng)
    data:  the JSON position of the training iterator after the batches of steps 1..n

Restoring both reproduces the uninterrupted run bit for bit (on CPU). Sampling and evaluation
read the `ema_params` subtree of `state` alone (`restore_ema_params`), so they need neither an
optimizer nor the optimizer settings the run was trained with.

A checkpoint that cannot be read (a truncated array file, a missing OCDBT manifest, an empty step
folder) is reported as one warning line naming it, and the newest readable one is used instead;
nothing is deleted here. Asking for a step by hand (`step=`) raises `CheckpointCorruptError`.
In a run of several processes they agree on one step, the newest that every process can read
(`_agree`: an all-gather of each process's newest readable step, then the minimum).
`workdir_lock` gives one training run exclusive use of a workdir.
"""

from __future__ import annotations

import fcntl
import os
import sys
from typing import Any, Callable

import flax.serialization
import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointCorruptError(ValueError):
    """A checkpoint exists but cannot be read (truncated or missing files)."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint holds another network than the config describes."""


class WorkdirLockedError(RuntimeError):
    """Another process trains in this workdir."""


def _warn(message: str) -> None:
    print("warning: " + " ".join(message.split()), file=sys.stderr)


def _reason(e: BaseException) -> str:
    """The first line of an orbax / tensorstore error, short enough for a one-line message."""
    text = str(e).strip().split("\n")[0].strip(" '\"") or type(e).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class _Unreadable(Exception):
    """manager.restore failed: the files of this checkpoint cannot be read (reason in args[0])."""


def _read(manager: ocp.CheckpointManager, step: int, args) -> Any:
    """manager.restore(step, args) with any orbax / tensorstore failure (ValueError, KeyError, OSError, ...
    on truncated or missing files) turned into _Unreadable."""
    try:
        return _local_view(manager).restore(step, args=args)
    except Exception as e:  # noqa: BLE001  (tensorstore's errors have no common type)
        quiet_closed_loop_reports()
        raise _Unreadable(_reason(e)) from e


_LOCAL_VIEWS: dict[tuple[str, int], ocp.CheckpointManager] = {}


def _local_view(manager: ocp.CheckpointManager) -> ocp.CheckpointManager:
    """`manager` itself in a single-process run; with several processes, a read-only manager of the same
    directory whose restores involve this process alone. (orbax ends every restore at a barrier of all
    processes; a restore that fails on one process alone would leave the others waiting there, and the
    processes may need different numbers of tries before they agree on a step.)"""
    if jax.process_count() == 1:
        return manager
    me = jax.process_index()
    key = (str(manager.directory), me)
    if key not in _LOCAL_VIEWS:
        alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
        options = ocp.CheckpointManagerOptions(read_only=True, multiprocessing_options=alone)
        _LOCAL_VIEWS[key] = ocp.CheckpointManager(manager.directory, options=options, item_names=("state", "data"))
    return _LOCAL_VIEWS[key]


def quiet_closed_loop_reports() -> None:
    """After a failed restore, tensorstore reads still in flight finish on orbax's closed event loop and
    each reports RuntimeError('Event loop is closed') through sys.unraisablehook (a traceback per read).
    Those reports, and only those, are dropped from then on."""
    previous = sys.unraisablehook
    if getattr(previous, "_score_sde_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._score_sde_quiet = True
    sys.unraisablehook = hook


def _restore_readable(manager: ocp.CheckpointManager, restore: Callable[[int], Any], step: int | None,
                      on_corrupt: Callable[[int, str], None] | None) -> tuple[Any, int] | None:
    """restore(step) of `step`, or of the newest readable checkpoint; None when there is none.

    Unreadable newer checkpoints are passed to `on_corrupt(step, reason)` (default: a warning line)
    and skipped. A given `step` that cannot be read raises CheckpointCorruptError.

    In a run of several processes (`jax.process_count() > 1`; every process must call this), the
    processes agree on one step: the newest that every process can read (`_agree`). Every saved step
    newer than it is passed to `on_corrupt`, with this process's own reason or "not readable on
    every process", and process 0 prints one line naming the agreed step and each process's newest.
    """
    where = manager.directory
    if step is not None:
        try:
            return restore(step), step
        except _Unreadable as e:
            raise CheckpointCorruptError(f"the checkpoint at step {step} in {where} is unreadable ({e.args[0]}); "
                                         f"pick another with --checkpoints=<step>") from None
    steps = sorted(manager.all_steps(), reverse=True)
    reasons: dict[int, str] = {}  # this process's unreadable steps

    def newest_readable(bound: int | None) -> tuple[Any, int] | None:
        for s in steps:
            if s in reasons or (bound is not None and s > bound):
                continue
            try:
                return restore(s), s
            except _Unreadable as e:
                reasons[s] = e.args[0]
        return None

    found = newest_readable(None)
    if jax.process_count() > 1:
        found = _agree(found, newest_readable, where)
    used = found[1] if found is not None else None
    corrupt = [(s, reasons.get(s, "not readable on every process")) for s in steps if used is None or s > used]
    if found is not None:
        _report(corrupt, used, where, on_corrupt)
        return found
    if corrupt:
        if on_corrupt is not None:  # without a callback the error below says it all
            _report(corrupt, None, where, on_corrupt)
        raise CheckpointCorruptError(f"no readable checkpoint in {where}: step(s) {[c[0] for c in corrupt]} "
                                     f"are unreadable ({corrupt[0][1]})")
    return None


def _agree(found, newest_readable, where):
    """The processes' agreed restore: each gathers every process's newest readable step (-1: none), and
    a process whose own is newer than the minimum looks again at or below it, until all are equal."""
    from jax.experimental import multihost_utils

    first = None
    while True:
        mine = found[1] if found is not None else -1
        newest = np.asarray(multihost_utils.process_allgather(np.asarray(mine, np.int64))).reshape(-1)
        first = newest if first is None else first
        agreed = int(newest.min())
        if (newest == agreed).all():
            break
        if mine > agreed:
            found = newest_readable(agreed)
    if jax.process_index() == 0 and (first != agreed).any():
        per_process = ", ".join(f"process {i}: {'none' if n < 0 else f'step {n}'}" for i, n in enumerate(first))
        chosen = f"step {agreed}" if agreed >= 0 else "no checkpoint (starting from step 0)"
        _warn(f"the {len(first)} processes agree on {chosen} in {where}, the newest checkpoint every process "
              f"can read (newest readable per process: {per_process})")
    return found


def _report(corrupt, used: int | None, where, on_corrupt) -> None:
    for s, reason in corrupt:
        if on_corrupt is not None:
            on_corrupt(s, reason)
        else:
            instead = f"; using step {used} instead" if used is not None else ""
            _warn(f"the checkpoint at step {s} in {where} is unreadable ({reason}){instead}")


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


def restore_latest(manager: ocp.CheckpointManager, template: Any, step: int | None = None,
                   on_corrupt: Callable[[int, str], None] | None = None) -> tuple[Any, dict, int] | None:
    """(state, data position, step) of the newest readable checkpoint (or of `step`), or None when there is none.

    Args:
      template: a state of the same structure (e.g. a freshly created one); its arrays give
        the shapes and dtypes.
      step: a specific saved step instead of the latest.
      on_corrupt: called as on_corrupt(step, reason) for each newer checkpoint that could not be read
        (default: a one-line warning on stderr).

    Raises:
      CheckpointCorruptError: `step` (or every checkpoint) is unreadable.
    """
    target = jax.tree.map(np.asarray, jax.device_get(flax.serialization.to_state_dict(template)))

    def restore(s):
        out = _read(manager, s, ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                   data=ocp.args.JsonRestore()))
        _check_shapes(manager, s, target, out["state"])  # orbax restores saved shapes whatever the target's
        state = flax.serialization.from_state_dict(template, jax.tree.map(np.asarray, out["state"]))
        return state, dict(out["data"] or {})

    found = _restore_readable(manager, restore, step, on_corrupt)
    if found is None:
        return None
    (state, data_state), step = found
    return state, data_state, step


def restore_ema_params(manager: ocp.CheckpointManager, template: Any, step: int | None = None,
                       on_corrupt: Callable[[int, str], None] | None = None) -> tuple[Any, int] | None:
    """(EMA params, step) of the newest readable checkpoint (or of `step`), or None when there is none.

    Only the `ema_params` subtree of the `state` item is read (an orbax partial restore): the
    optimizer state, whose structure depends on `config.optim`, is never touched.

    Args:
      template: params of the network the checkpoint was trained with (arrays or
        `jax.ShapeDtypeStruct`s, e.g. from `jax.eval_shape` of `model.init`); gives the structure.
      step: a specific saved step instead of the latest.
      on_corrupt: as in `restore_latest`.

    Raises:
      CheckpointMismatchError (a ValueError): the saved params do not have the template's structure
        or shapes (the checkpoint was trained with another `config.model`).
      CheckpointCorruptError: `step` (or every checkpoint) is unreadable.
    """
    target = {"ema_params": flax.serialization.to_state_dict(template)}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)

    def restore(s):
        saved_paths = _saved_ema_paths(manager, s)
        want_paths = {tuple(_key_name(k) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(target["ema_params"])}
        if saved_paths is not None and saved_paths != want_paths:
            _mismatch(manager, s)
        out = _read(manager, s, ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, restore_args=as_numpy, partial_restore=True)))
        saved = out["state"]["ema_params"]
        _check_shapes(manager, s, target["ema_params"], saved)
        return flax.serialization.from_state_dict(template, saved)

    return _restore_readable(manager, restore, step, on_corrupt)


def _mismatch(manager, step, detail: str = ""):
    raise CheckpointMismatchError(
        f"the checkpoint at step {step} in {manager.directory} holds params of another network than "
        f"config.model describes{detail}; use the config it was trained with (or another --workdir)")


def _check_shapes(manager, step, want: Any, saved: Any) -> None:
    """CheckpointMismatchError naming the first key whose saved shape differs from the config's network."""
    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=_is_array)
        return {".".join(_key_name(k) for k in path): tuple(np.shape(x)) for path, x in leaves}

    want_shapes, saved_shapes = shapes(want), shapes(saved)
    for key, shape in want_shapes.items():
        if key not in saved_shapes:
            _mismatch(manager, step, f" (no {key} saved)")
        if saved_shapes[key] != shape:
            _mismatch(manager, step, f" ({key}: saved {saved_shapes[key]}, config gives {shape})")
    extra = sorted(set(saved_shapes) - set(want_shapes))
    if extra:
        _mismatch(manager, step, f" ({extra[0]} saved, not in the config's network)")


def _is_array(x) -> bool:
    return hasattr(x, "shape")


def _key_name(k) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _saved_ema_paths(manager, step) -> set[tuple[str, ...]] | None:
    """The key paths of the saved `ema_params` leaves, from the state item's `_METADATA` JSON (None when
    it cannot be read: then the restore itself decides whether the checkpoint is readable)."""
    import json

    try:
        with open(os.path.join(str(manager.directory), str(step), "state", "_METADATA")) as f:
            entries = json.load(f)["tree_metadata"].values()
        paths = {tuple(str(k["key"]) for k in e["key_metadata"]) for e in entries}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {p[1:] for p in paths if p and p[0] == "ema_params"}


def prune(manager: ocp.CheckpointManager, keep: int) -> list[int]:
    """Deletes the oldest checkpoints beyond the newest `keep` (a kill right after a save can leave
    one extra); returns the deleted steps."""
    extra = sorted(manager.all_steps())[:-keep] if keep > 0 else []
    for s in extra:
        manager.delete(s)
    return extra


def check_unlocked(workdir: str) -> None:
    """Raises WorkdirLockedError when a training run holds `workdir/.lock`; creates and changes nothing
    (a probe before any work; `workdir_lock` takes the lock itself)."""
    path = os.path.join(workdir, ".lock")
    try:
        fh = open(path)
    except OSError:
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = fh.read().strip()
            raise WorkdirLockedError(
                f"another training run{f' (pid {holder})' if holder else ''} is using {workdir}; "
                "wait for it to finish or use another --workdir") from None
        fcntl.flock(fh, fcntl.LOCK_UN)


class workdir_lock:
    """Context manager: an exclusive `flock` on `workdir/.lock`, held while training.

    The operating system drops the lock when the process ends, however it ends, so a stale lock
    of a killed run never blocks the next one. A second holder gets WorkdirLockedError at once.
    """

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, ".lock")
        self._fh = None

    def __enter__(self):
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fh = open(self.path, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            raise WorkdirLockedError(
                f"another training run{f' (pid {holder})' if holder else ''} is using {os.path.dirname(self.path)}; "
                "wait for it to finish or use another --workdir") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        return False


__all__ = ["make_manager", "save", "restore_latest", "restore_ema_params", "prune", "workdir_lock", "check_unlocked",
           "CheckpointCorruptError", "CheckpointMismatchError", "WorkdirLockedError",
           "quiet_closed_loop_reports"]
