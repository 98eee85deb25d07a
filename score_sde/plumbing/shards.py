"""Completed batches ("shards") of a long sampling or likelihood run, kept on disk so that a rerun continues.

A run of `--mode=sample` (or eval's samples, or its FID samples) with more than one batch writes
each finished batch as soon as it is drawn; `--mode=likelihood` (and eval's bits/dim) writes each
batch's per-example bits/dim the same way:

    <out_dir>/.partial/<name>_<hash>/shard_<i>.npz     samples (or bits_per_dim), key, options_hash, nfe

`<name>` is the output's name without its hash (e.g. `samples_2_pc`), `<hash>` the hash of the
options that change the samples plus the number of local devices (the per-device batch). Batch
i is drawn from `fold_in(PRNGKey(seed), i)` whatever came before it, so a rerun that loads shards
0..k-1 and draws the rest gives the same samples, bit for bit, as a run that was never stopped.
Each shard is written atomically (`outputs.save_npz`); one whose key or options hash differs from
what this run would draw, or that cannot be read, is drawn again. The folder is removed once the
final output is written. Shards of another options set are never reused: a one-line note says so.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

import numpy as np

from score_sde.plumbing import outputs

PARTIAL = ".partial"


def note(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(" ".join(message.split()), file=sys.stderr)


class ShardStore:
    """The shards of one sampling run (see the module docstring).

    Args:
      out_dir: the folder of the final output (`samples/`, `eval/`).
      name: the output's name without the options hash, e.g. `samples_2000_pc`.
      identity: what changes the samples (the sampling options and the device count); hashed.
      total: the number of shards of the run (for the progress line).
      field: the name of the array a shard holds (`samples`, or `bits_per_dim` for a likelihood batch).
    """

    def __init__(self, out_dir: str, name: str, identity: dict, total: int, field: str = "samples"):
        self.hash = outputs.options_hash(identity)
        self.folder = os.path.join(out_dir, PARTIAL, f"{name}_{self.hash}")
        self.total, self.field = total, field

    def path(self, i: int) -> str:
        return os.path.join(self.folder, f"shard_{i:06d}.npz")

    def announce(self) -> int:
        """Prints what a rerun reuses (and which other shards it does not); returns the shards done."""
        parent, prefix = os.path.dirname(self.folder), os.path.basename(self.folder)[: -len(self.hash)]
        for other in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*"))):
            if other != self.folder and os.path.isdir(other):
                note(f"note: the shards in {other} were drawn with other options (hash {other[-6:]}; this "
                      f"command's is {self.hash}): not reused")
        done = self.count()
        if done:
            note(f"resuming: {min(done, self.total)} of {self.total} shards already done in {self.folder}")
        return done

    def count(self) -> int:
        """The shard files on disk."""
        return len(glob.glob(os.path.join(glob.escape(self.folder), "shard_*.npz")))

    def get(self, i: int, key: np.ndarray) -> tuple[np.ndarray, int | float] | None:
        """(values, nfe) of shard i if it is on disk, readable and drawn from `key` with these options
        (nfe as it was put: an int for samples, a float mean for a likelihood batch)."""
        path = self.path(i)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as f:
                x, saved_key, saved_hash, nfe = f[self.field], f["key"], str(f["options_hash"]), f["nfe"].item()
        except Exception as e:  # noqa: BLE001  (np.load raises many types on a damaged file)
            note(f"warning: shard {path} is unreadable ({type(e).__name__}); drawing it again")
            return None
        if saved_hash != self.hash or not np.array_equal(saved_key, np.asarray(key)):
            note(f"warning: shard {path} was drawn with another key or options; drawing it again")
            return None
        return x, nfe

    def put(self, i: int, key: np.ndarray, x: np.ndarray, nfe: int | float) -> None:
        """Writes shard i atomically (a signal during the write waits until the file is complete)."""
        os.makedirs(self.folder, exist_ok=True)
        with outputs.writing():
            outputs.save_npz(self.path(i), **{self.field: np.asarray(x)}, key=np.asarray(key),
                             options_hash=np.asarray(self.hash), nfe=np.asarray(nfe))

    def remove(self) -> None:
        """Deletes the shards (after the final output is written) and `.partial` if it is then empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        parent = os.path.dirname(self.folder)
        try:
            os.rmdir(parent)
        except OSError:
            pass


__all__ = ["PARTIAL", "ShardStore", "note"]
