"""Data-parallel DSM training: TrainState, the pmapped step, EMA, checkpoints and the loop.

    state = create_train_state(key, model, optimizer, data_shape)
    step = make_train_step(loss_fn, optimizer, ema_rate, axis_name="batch")   # pure; pmap it
    state = train(config, workdir)                                            # the whole loop

Parallelism lives here only: `jax.pmap(axis_name="batch")` over the local devices, gradients
and loss averaged with `lax.pmean`; across hosts the same pmap spans every process's devices
after `jax.distributed.initialize`. Randomness: the key of step n is fold_in(rng, n) and each
example draws from fold_in(step key, its global index in the batch), so a step gives the same
result however the global batch is split over devices and hosts (up to float summation order).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import signal
import sys
import threading
from typing import Any, Callable, Iterator

import flax
import flax.jax_utils
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from score_sde import config_utils, losses, models
from score_sde.plumbing import checkpoint
from score_sde.plumbing.logging_utils import MetricLogger

Array = jax.Array
AXIS = "batch"
# apply_if_finite must never fall back to applying a non-finite update; the host loop stops first.
_NEVER = 2**30


class NonFiniteLossError(RuntimeError):
    """Raised when `training.max_nonfinite` consecutive steps had a non-finite loss or gradient."""


class LossDivergedError(NonFiniteLossError):
    """Raised when a finite loss exceeds `training.divergence_factor` times the running mean loss."""


class TrainingInterrupted(Exception):
    """SIGINT / SIGTERM stopped training between steps (any in-flight save finished first).

    Attributes: step (steps taken), checkpoint (the last saved step, or None), signum.
    """

    def __init__(self, step: int, checkpoint: int | None, signum: int):
        last = f"the last checkpoint is step {checkpoint}" if checkpoint is not None else "no checkpoint was saved yet"
        super().__init__(f"stopped at step {step}; {last}; run the same command to resume")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


@flax.struct.dataclass
class TrainState:
    """Everything that determines the rest of a run (the data position is saved beside it).

    Attributes:
      step: int32 scalar, number of steps taken (skipped non-finite steps included).
      params: network parameters.
      opt_state: optax state; its outer `ApplyIfFiniteState` counts non-finite steps.
      ema_params: exponential moving average of params (used for sampling).
      rng: uint32 (2,) base key; step n uses fold_in(rng, n).
    """

    step: Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: Array


def make_optimizer(optim) -> optax.GradientTransformation:
    """`config.optim` -> apply_if_finite(clip_by_global_norm -> AdamW with linear warmup).

    Non-finite gradients leave params and Adam moments untouched and are counted in
    `opt_state.notfinite_count` (consecutive) and `opt_state.total_notfinite`.
    """
    lr = optax.linear_schedule(0.0, optim.lr, optim.warmup) if optim.warmup > 0 else optim.lr
    clip = optax.clip_by_global_norm(optim.grad_clip) if optim.grad_clip > 0 else optax.identity()
    adam = optax.adamw(lr, b1=optim.beta1, eps=optim.eps, weight_decay=optim.weight_decay)
    return optax.apply_if_finite(optax.chain(clip, adam), max_consecutive_errors=_NEVER)


def batch_size_of(batch) -> int:
    """Examples in a batch: an array (B, ...) or a pytree of them, e.g. {"image", "label"}."""
    return jax.tree.leaves(batch)[0].shape[0]


def create_train_state(key: Array, model: nn.Module, optimizer: optax.GradientTransformation,
                       data_shape: tuple[int, ...]) -> TrainState:
    """Initialises params (from `key`), optimizer state and EMA; the step rng is fold_in(key, 1)."""
    x = jnp.zeros((1, *data_shape), jnp.float32)
    params = model.init(jax.random.fold_in(key, 0), x, jnp.zeros((1,), jnp.float32))["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                      ema_params=params, rng=jax.random.fold_in(key, 1))


def ema_decay(rate: float, step: Array, warmup: bool = True) -> Array:
    """The EMA decay used by the update after `step` steps: min(rate, (1 + n) / (10 + n)), n = step.

    The warm-up (as in TensorFlow's `ExponentialMovingAverage(num_updates=...)`) makes the early
    average follow the raw weights: the first update keeps 1/10 of the initial weights, the second
    2/11, ..., so a short run's EMA is not dominated by the random initialisation (with rate 0.999
    and no warm-up, 0.999^2000 = 13.5 % of it is still there at step 2000). From
    n = (10 rate - 1) / (1 - rate) on (8989 for 0.999) the decay is `rate`.

    Args:
      rate: the configured decay (`model.ema_rate`), in [0, 1).
      step: int32 scalar, the steps taken before this update (`TrainState.step`).
      warmup: False gives the constant `rate` (`model.ema_warmup = False`).

    Returns:
      float32 scalar decay.
    """
    if not warmup:
        return jnp.asarray(rate, jnp.float32)
    n = step.astype(jnp.float32)
    return jnp.minimum(jnp.float32(rate), (1.0 + n) / (10.0 + n))


def make_train_step(loss_fn: losses.LossFn, optimizer: optax.GradientTransformation, ema_rate: float,
                    axis_name: str | None = None, ema_warmup: bool = True,
                    frozen_of: Callable | None = None) -> Callable[..., tuple[TrainState, dict]]:
    """A pure step(state, batch, frozen=None) -> (state, metrics) on this device's batch (B_local, *dims).

    `loss_fn(params, batch, keys, frozen)`; `frozen`: variables that are not trained (a teacher, a
    classifier), an argument of the step, so never a constant of the compiled program.
    With `axis_name` (inside pmap) the loss and gradients are averaged over the named axis
    with `lax.pmean`, and the device's examples get global indices d * B_local + i.
    EMA: ema <- d ema + (1 - d) params with d = `ema_decay(ema_rate, state.step, ema_warmup)`,
    skipped together with non-finite updates.
    `frozen_of(state, frozen)`: what the loss gets as `frozen` instead (e.g. a consistency model's EMA
    target, {"teacher": frozen, "target": state.ema_params}); None passes `frozen` as it is.
    """

    def step(state: TrainState, batch: Array, frozen=None):
        if frozen_of is not None:
            frozen = frozen_of(state, frozen)
        n = batch_size_of(batch)
        device = lax.axis_index(axis_name) if axis_name else 0
        keys = losses.example_keys(jax.random.fold_in(state.rng, state.step), n, offset=device * n)
        if frozen is None:  # losses written for three arguments keep working
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, keys)
        else:
            loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, keys, frozen)
        if axis_name:
            loss, grads = lax.pmean((loss, grads), axis_name)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        finite = opt_state.last_finite
        d = ema_decay(ema_rate, state.step, ema_warmup)
        ema = jax.tree.map(lambda e, p: jnp.where(finite, d * e + (1 - d) * p, e), state.ema_params, params)
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
        return new, {"loss": loss, "nonfinite_run": opt_state.notfinite_count,
                     "nonfinite_total": opt_state.total_notfinite}

    return step


def make_multi_step(step: Callable) -> Callable:
    """k steps in one call: batches (k, B_local, *dims) scanned with `lax.scan`; metrics stacked (k,).

    k = 1 calls the step directly: XLA:CPU runs convolutions inside a while loop several times
    slower than outside one (measured 7x for the digits UNet), so conv nets on CPU should keep
    `training.steps_per_call = 1`; small MLPs gain from k > 1 (less dispatch per step).
    """

    def multi(state, batches, frozen=None):
        if batch_size_of(batches) == 1:
            state, metrics = step(state, jax.tree.map(lambda b: b[0], batches), frozen)
            return state, jax.tree.map(lambda m: m[None], metrics)
        return lax.scan(lambda s, b: step(s, b, frozen), state, batches)

    return multi


def make_pmapped_step(loss_fn, optimizer, ema_rate: float, ema_warmup: bool = True,
                      frozen_of: Callable | None = None) -> Callable:
    """p_step(state, batches, frozen=None): pmap over all devices (of all processes) of k scanned
    steps; state is donated; `frozen` (non-trained variables) is broadcast to every device as an
    argument (in_axes None), not compiled in as a constant. `frozen_of`: as in `make_train_step`."""
    step = make_train_step(loss_fn, optimizer, ema_rate, axis_name=AXIS, ema_warmup=ema_warmup, frozen_of=frozen_of)
    pmapped = jax.pmap(make_multi_step(step), axis_name=AXIS, donate_argnums=0, in_axes=(0, 0, None))

    def p_step(state, batches, frozen=None):
        return pmapped(state, batches, frozen)

    p_step.pmapped = pmapped  # the compiled function
    return p_step


# --------------------------------------------------------------------------- host side
def maybe_initialize_distributed(dist) -> None:
    """jax.distributed.initialize(...) when `config.distributed.coordinator_address` is set."""
    if dist.coordinator_address and not jax.distributed.is_initialized():
        jax.distributed.initialize(coordinator_address=dist.coordinator_address,
                                   num_processes=dist.num_processes, process_id=dist.process_id)


def check_batch_config(training) -> int:
    """Validates batch and step settings; returns the per-device batch. Raises ValueError."""
    n_dev, k = jax.device_count(), training.steps_per_call
    if training.batch_size % n_dev:
        raise ValueError(f"training.batch_size={training.batch_size} is not divisible by the {n_dev} devices "
                         f"({jax.process_count()} process(es)); use a multiple of {n_dev}")
    if k < 1 or training.n_iters % k or training.snapshot_freq % k or training.log_freq % k:
        raise ValueError(f"training.steps_per_call={k} must be >= 1 and divide n_iters={training.n_iters}, "
                         f"snapshot_freq={training.snapshot_freq} and log_freq={training.log_freq}")
    if training.get("sample_freq", 0) % k:
        raise ValueError(f"training.sample_freq={training.sample_freq} must be a multiple of "
                         f"training.steps_per_call={k} (or 0: no sample grids)")
    return training.batch_size // n_dev


def shard_to_devices(x: np.ndarray) -> Array:
    """Puts (n_local_devices, ...) on the local devices, one slice each (pmap's input layout)."""
    devices = jax.local_devices()
    # The mesh axis is named like pmap's axis: pmap's cache keys on it (no recompilation).
    mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
    return jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.P(AXIS)))


def device_batches(it, k: int, per_device: int, depth: int = 2) -> Iterator[tuple[Array, dict]]:
    """Background prefetch of (k steps of batches laid out (n_local, k, per_device, ...), data state).

    The data state is the iterator's position after these k batches: saved with a checkpoint,
    it resumes exactly where the consumed batches end (prefetched ones are read again).
    """
    n_local = jax.local_device_count()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work():
        try:
            while not stop.is_set():
                xs = _stack_batches([next(it) for _ in range(k)])
                got = jax.tree.leaves(xs)[0].shape[1]
                if got != n_local * per_device:
                    raise ValueError(f"data iterator gave batches of {got} examples; this process needs "
                                     f"{n_local * per_device} (global batch / process count)")
                xs = jax.tree.map(lambda a: a.reshape(k, n_local, per_device, *a.shape[2:]).swapaxes(0, 1), xs)
                q.put((jax.tree.map(shard_to_devices, xs), it.get_state()))
        except StopIteration:
            q.put(RuntimeError("the training data iterator ran out; training needs an infinite iterator "
                               "(score_sde.data.get_dataset(..., repeat=True))"))
        except BaseException as e:  # handed to the consumer, re-raised there
            q.put(e)

    threading.Thread(target=work, daemon=True).start()
    try:
        while True:
            item = q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while not q.empty():
            q.get_nowait()


def _stack_batches(batches: list):
    """k batches -> one with a leading k axis: integer leaves (labels) int32, the rest float32."""
    def stack(*xs):
        kind = np.int32 if np.issubdtype(np.asarray(xs[0]).dtype, np.integer) else np.float32
        return np.stack([np.asarray(x, kind) for x in xs])

    return jax.tree.map(stack, *batches)


def loss_fn_from_config(config, model: nn.Module, sde, *, train: bool = True) -> losses.LossFn:
    """The training objective named by `config.training` (continuous DSM or DDPM/SMLD), with the
    condition parts of `config` (`config_utils.cond_spec_from_config`) and their dropout rates.

    `train=False` evaluates the network in eval mode (no dropout), e.g. for a test loss.
    """
    return _loss_fn(model, sde, config_utils.freeze(config.training), config_utils.freeze(config.sde),
                    config_utils.cond_spec_from_config(config), train, config_utils.task_from_config(config))


def _loss_fn(model, sde, tc, sde_config, spec, train: bool = True, task=None) -> losses.LossFn:
    discrete = "ddpm" if tc.continuous else config_utils.discrete_loss_name(sde_config)

    def make(apply):
        return losses.get_loss_fn(apply, sde, continuous=tc.continuous, discrete=discrete, reduce_mean=tc.reduce_mean,
                                  likelihood_weighting=tc.likelihood_weighting, eps=tc.eps,
                                  n_levels=tc.get("num_scales", 1000))

    return losses.model_loss_fn(models.ScoreModel(model, None, sde, spec), make, train=train,
                                derive=None if task is None else task.derive)


@functools.lru_cache(maxsize=8)
def _step_for_config(model, sde, tc, optim, sde_config, spec, ema_rate: float, ema_warmup: bool = True, task=None):
    """(optimizer, pmapped step), cached so that a resumed run in the same process does not recompile."""
    optimizer = make_optimizer(optim)
    return optimizer, make_pmapped_step(_loss_fn(model, sde, tc, sde_config, spec, task=task), optimizer, ema_rate,
                                        ema_warmup)


def step_for_config(config, model: nn.Module, sde) -> tuple[optax.GradientTransformation, Callable]:
    """(optimizer, pmapped step) for `config`; the same settings give the same compiled step."""
    loss_keys = ("continuous", "reduce_mean", "likelihood_weighting", "eps", "num_scales")
    loss_config = config_utils.freeze({k: config.training[k] for k in loss_keys if k in config.training})
    return _step_for_config(model, sde, loss_config, config_utils.freeze(config.optim), config_utils.freeze(config.sde),
                            config_utils.cond_spec_from_config(config), config.model.ema_rate,
                            bool(config.model.get("ema_warmup", True)), config_utils.task_from_config(config))


def _local(x: Array) -> np.ndarray:
    """This process's first device copy of a pmapped (replicated) output, as numpy."""
    return np.asarray(x.addressable_data(0))[0]


def replicate(tree):
    """One copy of a host pytree per local device, laid out as pmap's outputs are (no recompilation)."""
    return flax.jax_utils.replicate(tree, axis_name=AXIS)


def unreplicate(tree):
    """Host-local numpy copy of a replicated pmapped pytree."""
    return jax.tree.map(_local, tree)


def _maybe_resume(manager, state: TrainState, train_iter, logger: Callable[[str], None],
                  primary: bool = True) -> tuple[TrainState, int]:
    """Restores the newest readable checkpoint (state and data position) if there is one.

    Unreadable newer checkpoints are moved (not deleted) to `checkpoints_corrupt/<step>` beside
    `checkpoints/`, so that the run can save those steps again. With several processes every process
    calls this: they agree on one step (`checkpoint.restore_latest`), process 0 moves the newer ones
    aside, and all list the steps again after it has.
    """
    corrupt: list[tuple[int, str]] = []
    try:
        restored = checkpoint.restore_latest(manager, state, on_corrupt=lambda s, why: corrupt.append((s, why)))
    except checkpoint.CheckpointCorruptError:
        restored = None  # every checkpoint is unreadable: each is moved aside below, training starts over
    used = restored[2] if restored is not None else None
    for s, why in corrupt if primary else ():
        aside = _move_aside(manager, s)
        instead = f"resuming from step {used}" if used is not None else "starting from step 0"
        print(f"warning: the checkpoint at step {s} in {manager.directory} is unreadable ({why}); "
              f"moved to {aside}; {instead}", file=sys.stderr)
    if jax.process_count() > 1:  # the others wait for process 0's moves before they list the steps again
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("score_sde: corrupt checkpoints moved aside")
    if corrupt:
        manager.reload()
    if restored is None:
        return state, 0
    state, data_state, step = restored
    train_iter.set_state(data_state)
    logger(f"Resumed from checkpoint at step {step} ({manager.directory})")
    return state, step


def _move_aside(manager, step: int) -> str:
    """Moves checkpoints/<step> to checkpoints_corrupt/<step> (a numbered suffix if taken); returns the path."""
    src = os.path.join(str(manager.directory), str(step))
    dest_dir = str(manager.directory).rstrip("/") + "_corrupt"
    os.makedirs(dest_dir, exist_ok=True)
    dest, n = os.path.join(dest_dir, str(step)), 1
    while os.path.exists(dest):
        dest, n = os.path.join(dest_dir, f"{step}.{n}"), n + 1
    shutil.move(src, dest)
    return dest


def drop_metrics_after(workdir: str, step: int) -> int:
    """Removes the rows of `workdir/metrics.jsonl` past `step` (left by a run killed after its last
    checkpoint), so a resumed run does not log those steps twice. The dropped rows are appended to
    `metrics_dropped.jsonl`; returns how many there were."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    keep, drop = [], []
    with open(path) as f:
        for line in f:
            try:
                past = int(json.loads(line).get("step", 0)) > step
            except (ValueError, AttributeError, TypeError):
                past = False  # a torn last line of a killed run is kept as it is
            (drop if past else keep).append(line)
    if drop:
        with open(os.path.join(workdir, "metrics_dropped.jsonl"), "a") as f:
            f.writelines(drop)
        with open(path + ".tmp", "w") as f:
            f.writelines(keep)
        os.replace(path + ".tmp", path)
    return len(drop)


class _Monitor:
    """Reads step metrics (one call late, so the host never waits on the running call),
    stops on too many consecutive non-finite steps, and logs averages every log_freq steps."""

    def __init__(self, tc, logger: MetricLogger, manager):
        self.tc, self.logger, self.manager = tc, logger, manager
        self.pending: list = []
        self.losses: list = []
        self.nonfinite_total = 0
        self.loss_sum, self.loss_count = 0.0, 0  # running mean of every finite loss so far

    def add(self, metrics, sync: bool) -> None:
        self.pending.append(metrics)
        ready, self.pending = (self.pending, []) if sync else (self.pending[:-1], self.pending[-1:])
        for m in ready:
            self._check(jax.tree.map(_local, m))

    def _check(self, m: dict) -> None:
        loss = m["loss"]
        finite = loss[np.isfinite(loss)].tolist()
        self._check_divergence(finite)
        self.losses.extend(finite)
        self.nonfinite_total = int(m["nonfinite_total"][-1])
        run = int(np.max(m["nonfinite_run"]))
        if run >= self.tc.max_nonfinite:
            self.manager.wait_until_finished()
            raise NonFiniteLossError(
                f"training stopped: {run} consecutive steps with a non-finite loss or gradient "
                f"(training.max_nonfinite={self.tc.max_nonfinite}); those updates were skipped and "
                f"{_last_checkpoint(self.manager)}. Check the data for NaN/Inf, or lower optim.lr / set optim.grad_clip.")

    def _check_divergence(self, finite: list[float]) -> None:
        """Stops when a finite loss exceeds divergence_factor x the running mean of the earlier losses."""
        factor = self.tc.get("divergence_factor", 0)
        for value in finite:
            if factor and self.loss_count and abs(value) > factor * abs(self.loss_sum / self.loss_count):
                mean = self.loss_sum / self.loss_count
                self.manager.wait_until_finished()
                raise LossDivergedError(
                    f"training stopped: the loss diverged ({value:.4g}, over training.divergence_factor={factor:g} "
                    f"times the running mean {mean:.4g}); {_last_checkpoint(self.manager)}. Lower optim.lr or "
                    "set optim.grad_clip (training.divergence_factor=0 turns this check off).")
            self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + 1

    def log(self, step: int) -> None:
        scalars = {"loss": float(np.mean(self.losses)) if self.losses else float("nan"),
                   **self.logger.rates(step, self.tc.batch_size), "nonfinite_total": float(self.nonfinite_total)}
        self.losses = []
        self.logger.write(step, scalars)


def _last_checkpoint(manager) -> str:
    step = manager.latest_step()
    if step is None:
        return f"no checkpoint was saved yet in {manager.directory}"
    return f"the last checkpoint (step {step}) in {manager.directory} is intact"


@contextlib.contextmanager
def _stop_on_signals():
    """Turns the first SIGINT / SIGTERM into a request (a list holding the signal number) that the
    loop reads between steps; a second one acts as usual. Main thread only (elsewhere: no-op)."""
    request: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        request.append(signum)
        for sig, old in previous.items():
            signal.signal(sig, old)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _loop(p_step, pstate, batches, start: int, tc, manager, logger: MetricLogger, stop: list | None = None,
          snapshot: Callable | None = None):
    """Runs steps start+1 .. n_iters in calls of steps_per_call; checkpoints every snapshot_freq.

    `stop`: a list that becomes non-empty (a signal number) when training should stop; checked after
    each call, once any in-flight checkpoint save has finished (TrainingInterrupted).
    `snapshot(step, pstate)`: called every `training.sample_freq` steps (sample grids for TensorBoard)."""
    monitor, step, k = _Monitor(tc, logger, manager), start, tc.steps_per_call
    sample_freq = tc.get("sample_freq", 0) if snapshot is not None else 0
    first = True
    while step < tc.n_iters:
        if stop:
            manager.wait_until_finished()
            raise TrainingInterrupted(step, manager.latest_step(), stop[0])
        xs, data_state = next(batches)
        if first:  # the call returns once the step is compiled and dispatched
            with logger.compiling("the training step"):
                pstate, metrics = p_step(pstate, xs)
            first = False
        else:
            pstate, metrics = p_step(pstate, xs)
        step += k
        save = step % tc.snapshot_freq == 0 or step == tc.n_iters
        log = step % tc.log_freq == 0
        monitor.add(metrics, sync=save or log)
        logger.advance(k)
        if log:
            monitor.log(step)
        if save:
            checkpoint.save(manager, step, unreplicate(pstate), data_state)
        if sample_freq and step % sample_freq == 0:
            snapshot(step, pstate)
    return pstate


def make_snapshot(config, model: nn.Module, sde, data_shape: tuple[int, ...], logger: MetricLogger) -> Callable:
    """snapshot(step, pstate): samples min(64, sampling.num_samples) examples from the EMA params with
    `config.sampling`'s sampler (one device, a fixed key, so snapshots compare like for like) and
    logs them to TensorBoard as `samples/<method>` (a grid for images, a histogram for 2-D points)."""
    objects = config_utils.objects(config)
    shape = (min(64, config.sampling.num_samples), *data_shape)
    key = jax.random.PRNGKey(config.seed + 4)

    def snapshot(step: int, pstate) -> None:
        fn = models.ScoreModel(model, {"params": jax.tree.map(_local, pstate.ema_params)}, sde, objects.cond_spec)
        x, _ = objects.sampler(key, sde, fn, shape)  # the null condition: the unconditional score
        logger.image(step, f"samples/{config.sampling.method}", np.asarray(x), config.data.centered)

    return snapshot


def train(config, workdir: str, train_iter=None) -> TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

    Args:
      config: the experiment config (configs/default.py keys).
      workdir: checkpoints/, tensorboard/ and metrics.jsonl go here.
      train_iter: optional data iterator (the `score_sde.data.get_dataset` protocol: `next` gives this
        process's share of the global batch, `get_state`/`set_state`, `data_shape`).

    Raises:
      ValueError: bad batch / step settings (before anything is written).
      WorkdirLockedError: another training run holds `workdir/.lock`.
      NonFiniteLossError: too many consecutive non-finite steps, or (LossDivergedError) a finite loss
        over `training.divergence_factor` x the running mean (the last checkpoint stays intact).
      TrainingInterrupted: SIGINT / SIGTERM (checked between steps; no save is left half-done).
    """
    maybe_initialize_distributed(config.distributed)
    tc = config.training
    per_device = check_batch_config(tc)
    if train_iter is None:
        from score_sde import data

        train_iter = data.get_dataset(config, "train", jax.process_index(), jax.process_count())
    objects = config_utils.objects(config)
    model, sde = objects.net, objects.sde
    # training.precision: the loss's network computes in bfloat16 for 'bf16'; params, optimizer, EMA,
    # checkpoints and the snapshot sampler stay float32 (the state is created from the float32 net)
    optimizer, p_step = step_for_config(config, models.with_precision(model, tc.get("precision", "fp32")), sde)
    state = create_train_state(jax.random.PRNGKey(config.seed), model, optimizer,
                               models.network_input_shape(sde, tuple(train_iter.data_shape)))
    snapshot = None
    if tc.get("sample_freq", 0) > 0:
        snapshot = lambda logger: make_snapshot(config, model, sde, tuple(train_iter.data_shape), logger)  # noqa: E731
    return run_loop(workdir, p_step, state, train_iter, tc, per_device, snapshot)


def run_loop(workdir: str, p_step, state: TrainState, train_iter, tc, per_device: int,
             make_snapshot_fn=None) -> TrainState:
    """The training loop around a pmapped step, shared by the score model and the noisy classifier:
    the workdir lock, signal handling, checkpoints (resume, prune), metrics.jsonl (rows past the
    restored step dropped) and TensorBoard, then `_loop`; returns the final (unreplicated) state.

    Args:
      tc: the loop settings (`config.training`'s keys: n_iters, snapshot_freq, log_freq,
        steps_per_call, keep_checkpoints, max_nonfinite, divergence_factor).
      make_snapshot_fn: optional make_snapshot_fn(logger) -> the periodic sample-grid writer
        (primary process only).
    """
    primary = jax.process_index() == 0
    with contextlib.ExitStack() as stack:
        if primary:  # one training run per workdir (multi-host: the primary process holds it)
            stack.enter_context(checkpoint.workdir_lock(workdir))
        stop = stack.enter_context(_stop_on_signals())
        manager = checkpoint.make_manager(workdir, tc.keep_checkpoints)
        stack.callback(manager.close)
        state, start = _maybe_resume(manager, state, train_iter, print if primary else (lambda s: None), primary)
        if primary:
            checkpoint.prune(manager, tc.keep_checkpoints)
            dropped = drop_metrics_after(workdir, start)
            if dropped:
                print(f"Dropped {dropped} metrics.jsonl row(s) past step {start} (kept in metrics_dropped.jsonl)")
        logger = MetricLogger(workdir, tc.n_iters, start, enabled=primary)
        stack.callback(logger.close)
        stack.callback(manager.wait_until_finished)
        batches = device_batches(train_iter, tc.steps_per_call, per_device)
        stack.callback(batches.close)
        snapshot = make_snapshot_fn(logger) if primary and make_snapshot_fn is not None else None
        pstate = _loop(p_step, replicate(state), batches, start, tc, manager, logger, stop, snapshot)
    return jax.tree.map(jnp.asarray, unreplicate(pstate))

__all__ = ["TrainState", "NonFiniteLossError", "LossDivergedError", "TrainingInterrupted", "drop_metrics_after",
           "make_optimizer", "create_train_state", "ema_decay", "make_train_step", "make_multi_step", "make_pmapped_step", "loss_fn_from_config", "step_for_config",
           "check_batch_config", "maybe_initialize_distributed", "device_batches", "shard_to_devices",
           "replicate", "unreplicate", "run_loop", "train"]
