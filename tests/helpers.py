"""Test helpers shared by several test files: the SDE table, a counting score and sliced W1.

Imported as `from helpers import ...`: tests/ is not a package, so pytest's default
("prepend") import mode puts tests/ on sys.path, for the whole suite and for a single file.
"""

import dataclasses
import io
import tarfile

import equinox as eqx
import jax
import numpy as np

import score_sde as ss
from score_sde.sde import ScoreFn

# One SDE of each family with the paper's parameters (the library defaults, spelt out because
# test_sde.py checks these SDEs against DESIGN.md's formulas with the same numbers).
SDES = {
    "vp": ss.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": ss.SubVPSDE(beta_min=0.1, beta_max=20.0),
    "ve": ss.VESDE(sigma_min=0.01, sigma_max=50.0),
}


@dataclasses.dataclass(eq=False)
class _Counts:
    """Mutable counters. Not a pytree and hashed by identity: a static leaf under jit that stays
    the same (no recompilation) however often the counts change."""

    traces: int = 0
    evals: int = 0

    def bump(self):
        self.evals += 1


class CountingScore(eqx.Module):
    """Wraps a score function and counts its Python traces and its run-time evaluations.

    `traces` counts Python calls of `__call__`, i.e. traces: a jitted sampler that is called again
    with new data or a new key and does not re-trace the score has not recompiled. `evals` counts
    evaluations at run time (one `jax.debug.callback` per call of the traced function), i.e. the
    number of function evaluations (NFE) a solve really made; reading it first waits for pending
    callbacks (`jax.effects_barrier`).

    An equinox Module, so the wrapped score's arrays (e.g. a `GaussianMixture`'s) stay traced
    inputs of the jitted function, as they are without the wrapper; the counters are one static
    leaf compared by identity. Each instance has its own counters.
    """

    score_fn: ScoreFn
    counts: _Counts = eqx.field(default_factory=_Counts)

    def __call__(self, x, t):
        self.counts.traces += 1
        jax.debug.callback(self.counts.bump)
        return self.score_fn(x, t)

    @property
    def traces(self) -> int:
        return self.counts.traces

    @property
    def evals(self) -> int:
        jax.effects_barrier()
        return self.counts.evals


def sliced_w1(x, y, n_dirs=64, seed=0):
    """Sliced Wasserstein-1 distance between two equal-size samples (B, *dims), in float64.

    The mean over `n_dirs` fixed random unit directions (numpy, `seed`) of the 1-D W1 between
    the projected samples, i.e. the mean absolute difference of their sorted projections.
    """
    x, y = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (x, y))
    d = np.random.default_rng(seed).normal(size=(x.shape[1], n_dirs))
    d /= np.linalg.norm(d, axis=0)
    return float(np.mean(np.abs(np.sort(x @ d, axis=0) - np.sort(y @ d, axis=0))))


def write_cifar_files(root, files: dict, extracted: bool) -> None:
    """Writes CIFAR-10 batch files {name: pickled bytes} under root as the real layout: the folder
    cifar-10-batches-py/ (extracted) or the archive cifar-10-python.tar.gz."""
    if extracted:
        (root / "cifar-10-batches-py").mkdir(parents=True)
        for name, blob in files.items():
            (root / "cifar-10-batches-py" / name).write_bytes(blob)
        return
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))


def assert_sgd_step_averages(loss_fn, ema_rate, state, batch, rtol=1e-5, atol=1e-6):
    """With optax.sgd(1) the pmapped step (2 devices) moves the params by minus the gradient of the mean
    loss over the whole batch, as the jitted single-device step does (rtol 1e-5, atol 1e-6): a sum of the
    device gradients instead of their mean doubles the move and fails."""
    import optax
    from score_sde.drivers import train

    sgd = optax.apply_if_finite(optax.sgd(1.0), 10)
    params = state.params
    state = state.replace(opt_state=sgd.init(params))
    single, _ = jax.jit(train.make_train_step(loss_fn, sgd, ema_rate))(state, batch)
    pstate, _ = train.make_pmapped_step(loss_fn, sgd, ema_rate)(
        train.replicate(state), jax.tree.map(lambda a: a.reshape(2, 1, a.shape[0] // 2, *a.shape[1:]), batch))
    multi = train.unreplicate(pstate)
    moved = 0.0
    for a, b, p in zip(jax.tree.leaves(single.params), jax.tree.leaves(multi.params), jax.tree.leaves(params),
                       strict=True):
        np.testing.assert_allclose(np.asarray(b) - np.asarray(p), np.asarray(a) - np.asarray(p), rtol=rtol, atol=atol)
        moved = max(moved, float(np.max(np.abs(np.asarray(a) - np.asarray(p)))))
    assert moved > 1e-3, moved
