"""What main.py runs: validate the config, dispatch the mode, turn user errors into one line.

Everything a user can get wrong (unknown sampler / dataset / SDE / model, bad sampler
options, missing data files or checkpoints, a batch the devices cannot split) is checked
before the workdir is touched, printed as one `error: ...` line, and exits with status 2.
Set SCORE_SDE_DEBUG=1 to see the traceback instead. Each data split a command needs is read
once and handed to the drivers. The numeric config keys are checked against `score_sde.plumbing.schema`,
and the paths a mode writes (workdir, its output folder) must not be blocked by files.
Any mode stopped by SIGINT / SIGTERM prints one line and exits 130 / 143 (sample, likelihood, eval
and edit finish the output file they are writing first: nothing is half-written). Each mode ends
with one `done: ...` line on stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys

import jax
import numpy as np

from score_sde import config_utils, data, likelihood
from score_sde.drivers import cascade, distill, evaluate, train
from score_sde.drivers import edit as edit_driver
from score_sde.plumbing import checkpoint, outputs, schema
from score_sde.lookup import check_choice

USER_ERRORS = (ValueError, FileNotFoundError, ImportError, train.NonFiniteLossError, checkpoint.WorkdirLockedError)

# What each mode writes in the workdir: (relative path, "dir" | "file").
OUTPUTS = {
    "train": [("checkpoints", "dir"), ("tensorboard", "dir"), ("metrics.jsonl", "file"), (".lock", "file")],
    "sample": [("checkpoints", "dir"), ("samples", "dir"), (outputs.RESULTS_INDEX, "file")],
    "likelihood": [("checkpoints", "dir"), ("likelihood", "dir"), (outputs.RESULTS_INDEX, "file")],
    "eval": [("checkpoints", "dir"), ("eval", "dir"), ("digits_classifier.npz", "file"), ("tensorboard", "dir"),
             (outputs.RESULTS_INDEX, "file")],
    "edit": [("checkpoints", "dir"), ("edit", "dir"), (outputs.RESULTS_INDEX, "file")],
    "train_classifier": [("classifier", "dir")],
    "distill": [("progressive", "dir"), ("consistency", "dir")],
    "cascade": [("cascade", "dir"), (outputs.RESULTS_INDEX, "file")],
}


def check_outputs(workdir: str, mode: str) -> None:
    """Raises ValueError when the workdir or a path `mode` writes is blocked (a file where a folder
    goes, or the reverse), so that no command fails after its work is done."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"--workdir={workdir} is a file, not a directory; pass a directory (it is created if missing)")
    parent = os.path.dirname(os.path.abspath(workdir))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ValueError(f"--workdir={workdir} cannot be created: {parent} is a file")
    for rel, kind in OUTPUTS[mode]:
        path = os.path.join(workdir, rel)
        if os.path.exists(path) and os.path.isdir(path) != (kind == "dir"):
            what = "a file" if kind == "dir" else "a directory"
            raise ValueError(f"{path} is {what}, but --mode={mode} writes a {kind} there; move it away")


def validate(config, mode: str, workdir: str | None = None) -> data.Split:
    """Raises a ValueError / FileNotFoundError naming the problem; writes nothing.

    Returns the split `mode` reads (train for training, else test), loaded while checking it.
    """
    if workdir is not None:
        check_outputs(workdir, mode)
        if mode == "train":
            checkpoint.check_unlocked(workdir)  # a second run on a busy workdir stops before loading anything
        if mode == "train_classifier":
            checkpoint.check_unlocked(os.path.join(workdir, "classifier"))
        if mode == "distill":
            for run_dir in distill.run_dirs(config, workdir):  # a second run on a busy student stops here
                checkpoint.check_unlocked(run_dir)
    objects = config_utils.objects(config)  # built once; the drivers get the same objects
    schema.validate(config, objects.sde.T)
    check_choice(config.likelihood.divergence, likelihood.DIVERGENCES, "likelihood.divergence", "divergences")
    split = data.load_split(config, "train" if mode in ("train", "train_classifier", "distill") else "test")
    check_condition_values(config, split)
    if mode in ("train", "distill"):
        train.check_batch_config(config.training)
    if mode == "distill" or (mode == "sample" and config.sampling.method == "student"):
        distill.check_distill_config(config)
    if mode == "train_classifier" or (mode == "sample" and config.sampling.get("guidance", "free") == "classifier"
                                      and config.sampling.get("class_label", None) is not None):
        from score_sde.drivers import classifier

        classifier.classifier_from_config(config)  # needs data.num_classes >= 2
        if mode == "train_classifier":
            train.check_batch_config(classifier.training_config(config))
    if mode == "edit":
        edit_driver.check_edit_config(config, split.data_shape)
    if mode == "cascade":
        cascade.check_cascade_config(config)
    if mode in ("likelihood", "eval") and data.downsample_factor(config) > 1:
        raise ValueError(f"--mode={mode} measures bits/dim of discrete images; data.downsample="
                         f"{data.downsample_factor(config)} makes block means, which have no such likelihood "
                         "(sample the model with --mode=sample)")
    for name in ("num_samples", "batch_size"):
        if config.sampling[name] <= 0:
            raise ValueError(f"sampling.{name} must be positive, got {config.sampling[name]}")
    return split


def check_condition_values(config, split: data.Split) -> None:
    """A one-line ValueError when a condition part the dataset brings (`data.cond`, kinds image / mask)
    holds values outside the data range, Inf, or NaN where NaN has no meaning (`conditions.check_values`)."""
    from score_sde.models import conditions

    parts = config.data.get("cond", None) or {}
    if parts and split.conds:
        kinds = {name: conditions.kind_from_config(fields) for name, fields in parts.items()}
        conditions.check_values(kinds, split.conds, data.data_range(config.data.centered))


def checkpoint_steps(workdir: str, which: str) -> list[int | None]:
    """'latest' -> [None]; 'all' -> every saved step; '1000,2000' -> those steps."""
    if which == "latest":
        return [None]
    ckpt_dir = os.path.join(workdir, "checkpoints")
    saved = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if os.path.isdir(ckpt_dir) else []
    if not saved:
        raise evaluate.CheckpointNotFoundError(f"no checkpoints in {ckpt_dir}; train first with --mode=train")
    if which == "all":
        return saved
    try:
        steps = [int(s) for s in which.split(",")]
    except ValueError:
        raise ValueError(f"--checkpoints must be 'latest', 'all' or steps like 1000,2000; got {which!r}") from None
    missing = [s for s in steps if s not in saved]
    if missing:
        raise evaluate.CheckpointNotFoundError(f"no checkpoint at step(s) {missing} in {ckpt_dir}; saved: {saved}")
    return steps


def summary_line(mode: str, result: dict) -> str:
    """The one `done: ...` line printed after each output of sample / likelihood / eval / edit."""
    try:
        return _summary_line(mode, result)
    except (KeyError, TypeError, ValueError):  # a result without the usual fields: say what is known
        return f"done: --mode={mode} step {result.get('step')}"


def _summary_line(mode: str, result: dict) -> str:
    t = f"compile {result.get('compile_seconds', 0):.1f} s, run {result.get('run_seconds', 0):.1f} s"
    if mode == "sample":
        what = f"{result['num_samples']} samples ({result['method']}, NFE {result['nfe']}) in {result['npz']}"
    elif mode == "cascade":
        what = (f"{result['num_samples']} samples, base step {result['base_step']} then SR at aug_level "
                f"{result['aug_level']:g} ({result['method']}, NFE {result['base_nfe']} + {result['sr_nfe']}) in "
                f"{result['npz']}")
    elif mode == "likelihood":
        what = (f"{result['bits_per_dim']:.4f} ± {result['standard_error']:.4f} bits/dim on {result['num_examples']} "
                f"examples in {result['json']}")
    elif mode == "eval":
        what = (f"test loss {result['test_loss']:.4g}, {result['likelihood']['bits_per_dim']:.4f} bits/dim "
                f"in {result['json']}")
    else:
        what = f"{result['task']} of {result['num_examples']} examples in {result['grid']}"
    return f"done: --mode={mode} step {result['step']}: {what} ({t})"


def _dispatch(config, workdir: str, mode: str, which: str, split: data.Split) -> None:
    if mode == "train":
        it = data.get_dataset(config, "train", jax.process_index(), jax.process_count(), loaded=split)
        state = train.train(config, workdir, train_iter=it)
        if jax.process_index() == 0:
            ckpt = os.path.join(workdir, "checkpoints")
            print(f"done: --mode=train at step {int(state.step)}; checkpoints in {ckpt}, logs in "
                  f"{os.path.join(workdir, 'metrics.jsonl')} and {os.path.join(workdir, 'tensorboard')}",
                  file=sys.stderr)
        return
    if mode == "distill":
        it = data.get_dataset(config, "train", jax.process_index(), jax.process_count(), loaded=split)
        done = distill.distill(config, workdir, train_iter=it)
        if jax.process_index() == 0:
            runs = ", ".join(f"{d} (step {int(s.step)})" for d, s in done.items())
            print(f"done: --mode=distill ({config.distill.method}): {runs}", file=sys.stderr)
        return
    if mode == "cascade":
        result = cascade.run_cascade(config, workdir)
        if jax.process_index() == 0:
            print(json.dumps(result, indent=2))
            print(summary_line(mode, result), file=sys.stderr)
        return
    if mode == "train_classifier":
        from score_sde.drivers import classifier

        it = data.get_dataset(config, "train", jax.process_index(), jax.process_count(),
                              batch_size=config.classifier.batch_size, loaded=split)
        classifier.train_classifier(config, workdir, train_iter=it)
        return
    steps = checkpoint_steps(workdir, which)  # load_score_fn checks the folder before touching it
    train_split = data.load_split(config, "train") if evaluate.needs_train_split(config, mode) else None
    run_one = {
        "sample": lambda step: sample(config, workdir, split.data_shape, step),
        "likelihood": lambda step: evaluate.likelihood_bpd(config, workdir, split, step),
        "eval": lambda step: evaluate.evaluate_checkpoint(config, workdir, step, split, train_split),
        "edit": lambda step: edit_driver.run_edit(config, workdir, split, step),
    }[mode]
    for step in steps:
        try:
            result = run_one(step)
        except checkpoint.CheckpointCorruptError as e:
            if which != "all":
                raise
            print(f"warning: skipped: {e}", file=sys.stderr)
            continue
        if jax.process_index() == 0:
            print(json.dumps(result, indent=2))
            print(summary_line(mode, result), file=sys.stderr)


def sample(config, workdir: str, data_shape: tuple[int, ...], step: int | None) -> dict:
    """--mode=sample: the score model's checkpoint, or with sampling.method=student a distilled student."""
    if config.sampling.method != "student":
        return evaluate.sample(config, workdir, data_shape, step)
    loaded = distill.load_student(config, workdir, data_shape, step)
    return evaluate.sample(distill.sampling_config(config), workdir, data_shape, step, loaded=loaded)


def solver_failure(e: BaseException) -> str | None:
    """The one-line message of a run-time solver check (`eqx.error_if`, e.g. an adaptive ODE solve that
    hit max_steps), or None when `e` is not one."""
    if "EquinoxRuntimeError" not in type(e).__name__ and "max_steps" not in str(e):
        return None
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    found = [line for line in lines if "max_steps" in line] or lines[:1]
    if not found:
        return None
    return found[0].split("EquinoxRuntimeError: ")[-1] + " (settings: --config.sampling.ode.max_steps / rtol / atol; --config.likelihood.max_steps / rtol / atol)"


def _drain_failed_checks() -> None:
    """Waits out the other devices' copies of a failed runtime check (`eqx.error_if`: a host callback that
    raised), which JAX would otherwise raise again, with a traceback, when the process exits.

    JAX keeps, per device, the runtime token of the latest computation with a host callback, so one
    successful no-op callback on every local device replaces the failed tokens, and the public
    `jax.effects_barrier()` then waits for those and forgets them."""
    noop = jax.pmap(lambda x: jax.pure_callback(lambda v: v, jax.ShapeDtypeStruct((), np.float32), x))
    try:
        noop(np.zeros((jax.local_device_count(),), np.float32)).block_until_ready()
        jax.effects_barrier()
    except Exception:  # noqa: BLE001  (the same failed check, already reported)
        pass


class _QuietFailedChecks(logging.Filter):
    """Drops JAX's log record of a failed runtime check (a host callback that raised an equinox runtime
    error, logged with its traceback before it is raised); the CLI reports it as one `error:` line.
    Matched by the exception's type, not by JAX's internal logger names; other records pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (record.name.startswith("jax") and exc is not None
                    and "EquinoxRuntimeError" in type(exc).__name__)


def _quiet_reported_failures() -> None:
    """Adds `_QuietFailedChecks` and `outputs.NoSpaceLogFilter` to the handlers log records reach (once):
    the failures they drop are reported as one `error:` line instead. Also drops the 'Event loop is
    closed' reports of a failed orbax save or restore (`checkpoint.quiet_closed_loop_reports`)."""
    handlers = list(logging.getLogger().handlers) + list(logging.getLogger("jax").handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for h in handlers:
        for kind in (_QuietFailedChecks, outputs.NoSpaceLogFilter):
            if not any(isinstance(f, kind) for f in h.filters):
                h.addFilter(kind())
    checkpoint.quiet_closed_loop_reports()


def out_of_space_line(e: BaseException, mode: str, workdir: str) -> str | None:
    """The one line for a write that failed for lack of space (`outputs.out_of_space`), or None."""
    reason = outputs.out_of_space(e)
    if reason is None:
        return None
    if mode in ("train", "train_classifier"):
        ckpt = os.path.join(workdir, "checkpoints" if mode == "train" else "classifier/checkpoints")
        steps = sorted(int(s) for s in os.listdir(ckpt) if s.isdigit()) if os.path.isdir(ckpt) else []
        kept = (f"the last complete checkpoint (step {steps[-1]}) is intact and training resumes from it" if steps
                else "no checkpoint was complete yet")
    else:
        kept = "the outputs and batch shards finished before it are kept (none is half-written)"
    return (f"error: out of disk space during --mode={mode}: {reason}; {kept}; free space and run the same "
            "command again")


def run(config, workdir: str, mode: str, which: str = "latest") -> int:
    """Runs `mode`; returns the process exit status (0 ok, 2 user error, 128 + signal when training
    was stopped by SIGINT / SIGTERM: 130 / 143)."""
    debug = os.environ.get("SCORE_SDE_DEBUG", "") not in ("", "0")
    if not debug:  # a failed runtime check (eqx.error_if) is logged with a traceback before it is raised
        _quiet_reported_failures()
    try:
        train.maybe_initialize_distributed(config.distributed)  # before any JAX backend is used
        split = validate(config, mode, workdir)
        with contextlib.ExitStack() as stack:
            if mode != "train":  # training has its own handler (stops between steps, after a save)
                stack.enter_context(outputs.stop_on_signals())
            _dispatch(config, workdir, mode, which, split)
    except USER_ERRORS as e:
        if debug:
            raise
        full = out_of_space_line(e, mode, workdir)  # orbax reports a failed write as a ValueError
        print(full or "error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1 if full else 2
    except train.TrainingInterrupted as e:
        print(str(e), file=sys.stderr)
        return 128 + e.signum
    except outputs.Stopped as e:
        if debug:
            raise
        name = signal.Signals(e.signum).name
        print(f"stopped by {name} during --mode={mode}; the outputs finished before it are kept in {workdir} "
              "(none is half-written); run the same command again", file=sys.stderr)
        _drain_failed_checks()
        return 128 + e.signum
    except Exception as e:  # noqa: BLE001  (a full disk; a solver's runtime check, raised from inside jit)
        full = out_of_space_line(e, mode, workdir)
        if full is not None and not debug:
            print(full, file=sys.stderr)
            return 1
        message = solver_failure(e)
        if message is None or debug:
            raise
        _drain_failed_checks()
        print("error: " + message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # outside the training loop (loading data, compiling, sampling)
        if debug:
            raise
        print(f"stopped by Ctrl-C during --mode={mode}", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0
