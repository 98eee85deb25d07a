"""One process of the two-process CPU training test (tests/test_train.py::test_two_process_training).

    python tests/multihost_worker.py PROCESS_ID PORT WORKDIR OUT.npz [UNREADABLE_STEP]

Each process has one CPU device, joins the job through jax.distributed (gloo CPU collectives),
reads only its half of every global batch of 16 and trains the tiny config for 4 steps; the
final params, the step and the step it resumed from (-1: none) are written to OUT.npz.

UNREADABLE_STEP (fault injection, tests/test_train.py::test_two_processes_agree_on_the_fallback_step):
this process alone fails to read the checkpoint at that step (as a host with a damaged or stale
view of the shared checkpoint directory would); the other process reads it fine.

MULTIHOST_STALL_AT=k in the environment (tests/test_train.py::test_kill_9_of_one_process_then_both_resume):
reading global batch k waits 120 s, so the run stays after step k for a kill -9 to land in.
"""

import os
import sys
import time

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs.default import get_default_configs  # noqa: E402
from score_sde.drivers import train  # noqa: E402
from score_sde.plumbing import checkpoint  # noqa: E402

GLOBAL_BATCH, N_ITERS = 16, 4


def tiny_config():
    """Same as tests/test_train.py's tiny_config() with n_iters=4 (kept in sync by hand)."""
    c = get_default_configs()
    c.model.name, c.model.hidden, c.model.ema_rate = "mlp", (32, 32), 0.9
    c.training.update(batch_size=GLOBAL_BATCH, n_iters=N_ITERS, snapshot_freq=2, log_freq=2, keep_checkpoints=3)
    c.optim.update(lr=3e-3, warmup=5)
    return c


class ShardIter:
    """Rows [p * 8, (p + 1) * 8) of the global batches of tests/test_train.py's GaussIter(16)."""

    data_shape = (2,)

    def __init__(self, process_id, process_count):
        self.lo = process_id * GLOBAL_BATCH // process_count
        self.hi = self.lo + GLOBAL_BATCH // process_count
        self.i = 0

    def __next__(self):
        if self.i == int(os.environ.get("MULTIHOST_STALL_AT", -1)):
            time.sleep(120)
        x = np.random.default_rng([0, self.i]).normal(size=(GLOBAL_BATCH, 2)) * 0.5 + [1.0, -0.5]
        self.i += 1
        return x[self.lo:self.hi].astype(np.float32)

    def get_state(self):
        return {"index": self.i}

    def set_state(self, state):
        self.i = int(state["index"])


def inject_unreadable(step: int, resumed: list):
    """This process's reads of checkpoint `step` fail; the step restore_latest returns goes to `resumed`."""
    read, restore_latest = checkpoint._read, checkpoint.restore_latest

    def failing_read(manager, s, args):
        if s == step:
            raise checkpoint._Unreadable(f"injected: process {jax.process_index()} cannot read step {s}")
        return read(manager, s, args)

    def recording_restore_latest(*args, **kwargs):
        found = restore_latest(*args, **kwargs)
        resumed.append(found[2] if found is not None else -1)
        return found

    checkpoint._read, checkpoint.restore_latest = failing_read, recording_restore_latest


def main(process_id: int, port: int, workdir: str, out: str, unreadable_step: int | None = None):
    resumed = []
    inject_unreadable(-2 if unreadable_step is None else unreadable_step, resumed)
    c = tiny_config()
    c.distributed.update(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    train.maybe_initialize_distributed(c.distributed)
    assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 2, 1)
    state = train.train(c, workdir, train_iter=ShardIter(process_id, 2))
    leaves = jax.tree.leaves(state.params)
    np.savez(out, step=int(state.step), resumed=resumed[0] if resumed else -1, *[np.asarray(x) for x in leaves])


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], *[int(a) for a in sys.argv[5:6]])
