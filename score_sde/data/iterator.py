"""The resumable iterator: infinite per-epoch reshuffled batches (`get_dataset`), one ordered pass
(`iterate_once`), per-process and per-device sharding.

The stream of examples of a split is the concatenation of per-epoch permutations; the
permutation of epoch e is a pure function of (config.seed, split, e), and every random
augmentation of an example is a pure function of (config.seed, split, e, example id). What a
stream position holds therefore does not depend on the batch size or the number of processes,
and a run resumed from ``get_state`` continues bit for bit.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np

from score_sde.data.sources import _SPLIT_CODE, Split, cond_arrays, downsample_factor, load_split
from score_sde.data.transforms import Transform


def shard_for_devices(batch, n_devices: int):
    """Reshapes every array of a batch (an array or a pytree) from (B, ...) to (n, B // n, ...)."""
    import jax  # local: the data pipeline itself needs no jax

    def split(x):
        x = np.asarray(x) if not hasattr(x, "reshape") else x
        if x.shape[0] % n_devices:
            raise ValueError(
                f"batch of {x.shape[0]} examples is not divisible by {n_devices} devices; "
                f"choose a batch size that is a multiple of {n_devices}")
        return x.reshape((n_devices, x.shape[0] // n_devices) + tuple(x.shape[1:]))

    return jax.tree.map(split, batch)


def pad_batch(batch: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pads a (b, ...) batch with zeros to (size, ...); returns it and a (size,) bool mask of real rows."""
    b = batch.shape[0]
    if b > size:
        raise ValueError(f"batch of {b} examples is larger than the padded size {size}")
    out = np.zeros((size,) + batch.shape[1:], batch.dtype)
    out[:b] = batch
    return out, np.arange(size) < b


class DataIterator:
    """Infinite shuffled batches of one split: this process's share of each global batch.

    Attributes:
      data_shape: shape of one example, e.g. (8, 8, 1) or (2,).
      num_examples: examples in the split.
      num_levels: grey levels of the raw data (17 digits, 256 8-bit images, None continuous).
      batch_size: examples per `next` on this process (global batch // process count).
      global_batch_size: examples per step over all processes.

    Batches are float32 arrays (B, *data_shape), or with conditions `conds` ({part: (N, ...)} of
    the split) dicts {"image": (B, *data_shape) float32, "cond": {part: (B, ...)}} (labels int32);
    `with_labels` is conds={"label": split.labels}.
    """

    def __init__(self, split: Split, transform: Transform, global_batch: int, process_index: int,
                 process_count: int, with_labels: bool = False, conds: Mapping[str, np.ndarray] | None = None):
        if with_labels and split.labels is None:
            raise ValueError("with_labels=True needs a split with class labels (Split.labels is None)")
        self._source, self._transform = split.source, transform
        self._conds = dict(conds) if conds else ({"label": split.labels.astype(np.int32)} if with_labels else None)
        self.data_shape, self.num_levels = tuple(split.data_shape), split.num_levels
        self.num_examples = len(split.source)
        self.global_batch_size = global_batch
        self.batch_size = _process_batch(global_batch, process_index, process_count)
        self._offset = process_index * self.batch_size
        self._epoch, self._index = 0, 0
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            key = [self._transform.seed, self._transform.split_code, epoch]
            self._orders[epoch] = np.random.default_rng(key).permutation(self.num_examples)
        return self._orders[epoch]

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        n = self.num_examples
        start = self._epoch * n + self._index + self._offset  # stream position of this share
        epochs, index = np.divmod(np.arange(start, start + self.batch_size), n)
        out, all_ids = [], []
        for epoch in np.unique(epochs).tolist():  # a batch may straddle epochs
            ids = self._order(epoch)[index[epochs == epoch]]
            out.append(self._transform(self._source.get(ids), epoch, ids))
            all_ids.append(ids)
        self._epoch, self._index = divmod(self._epoch * n + self._index + self.global_batch_size, n)
        if self._conds is None:
            return np.concatenate(out)
        ids = np.concatenate(all_ids)
        return {"image": np.concatenate(out), "cond": {k: v[ids] for k, v in self._conds.items()}}

    def get_state(self) -> dict:
        """The stream position {'epoch', 'index'} (JSON-serialisable; save it with the checkpoint)."""
        return {"epoch": int(self._epoch), "index": int(self._index)}

    def set_state(self, state: Mapping) -> None:
        """Moves to a position from `get_state`; the following batches are those that followed it."""
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index < self.num_examples:
            raise ValueError(f"invalid data state {dict(state)}: need epoch >= 0 and 0 <= index < {self.num_examples}")
        self._epoch, self._index = epoch, index


def _process_batch(global_batch: int, process_index: int, process_count: int) -> int:
    if global_batch <= 0 or global_batch % process_count:
        raise ValueError(
            f"global batch size {global_batch} is not divisible by the process count {process_count}; "
            f"set --config.training.batch_size to a positive multiple of {process_count}")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return global_batch // process_count


def _transform(config, split: Split, split_name: str, dequantize: bool | None = None) -> Transform:
    data = config.data
    return Transform(
        num_levels=split.num_levels,
        centered=bool(data.centered),
        random_flip=bool(data.random_flip) and split_name == "train" and len(split.data_shape) == 3,
        dequantize=bool(data.uniform_dequantization if dequantize is None else dequantize),
        seed=int(config.seed) & (2**61 - 1),  # non-negative, as SeedSequence and the Philox key need
        split_code=_SPLIT_CODE[split_name],
        downsample=downsample_factor(config))


def get_dataset(config, split: str = "train", process_index: int = 0, process_count: int = 1,
                batch_size: int | None = None, repeat: bool = True, loaded: Split | None = None):
    """An infinite, per-epoch reshuffled `DataIterator` over `split` of `config.data.dataset`.

    Args:
      config: the experiment config (`config.data`, `config.training.batch_size`, `config.seed`).
      split: "train" or "test"; random flips apply to "train" only.
      process_index, process_count: this process's share of each global batch (contiguous rows).
      batch_size: global batch size; defaults to `config.training.batch_size`.
      repeat: False gives `iterate_once(config, split, batch_size, ...)` instead (one ordered pass).
      loaded: `load_split(config, split)` when the caller has it already (it is not read again).

    Returns:
      Batches of shape (global_batch // process_count, *data_shape), float32; for a conditional
      config (`data.num_classes` > 0 or `data.cond`), dicts {"image": those, "cond": {part: (B, ...)}}
      ("label": int32, other parts float32; `cond_arrays`).
    """
    global_batch = int(batch_size or config.training.batch_size)
    _process_batch(global_batch, process_index, process_count)
    if not repeat:
        return iterate_once(config, split, global_batch, process_index, process_count, loaded=loaded)
    data = loaded if loaded is not None else load_split(config, split)
    return DataIterator(data, _transform(config, data, split), global_batch, process_index, process_count,
                        conds=cond_arrays(config, data))


def iterate_once(config, split: str = "test", batch_size: int | None = None, process_index: int = 0,
                 process_count: int = 1, dequantize: bool | None = None,
                 loaded: Split | None = None, with_labels: bool = False,
                 with_cond: bool = False) -> Iterator[np.ndarray]:
    """One pass over `split` in its stored order, every example exactly once (e.g. for bits/dim).

    Global batches hold `batch_size` examples except the last, which is smaller (the remainder).
    Each process gets its contiguous share (np.array_split of the global batch, so the shares of
    the last batch may differ by one and may be empty). Use `pad_batch` for fixed shapes.
    Dequantisation follows `config.data.uniform_dequantization` unless `dequantize` is given;
    its noise is a pure function of (config.seed, split, example), so bits/dim is reproducible.
    `loaded`: `load_split(config, split)` when the caller has it already (it is not read again).
    `with_labels` / `with_cond`: yield {"image", "cond": {part: ...}} dicts with the config's condition
    parts (`cond_arrays`; with_labels and an unconditional config: the split's labels as "label").
    """
    global_batch = int(batch_size or config.training.batch_size)
    _process_batch(global_batch, process_index, process_count)
    data = loaded if loaded is not None else load_split(config, split)  # errors surface here, not at the first `next`
    if with_labels and data.labels is None:
        raise ValueError(f"dataset {config.data.dataset!r} has no class labels to iterate over")
    conds = cond_arrays(config, data) if (with_labels or with_cond) else None
    if with_labels and conds is None:
        conds = {"label": data.labels.astype(np.int32)}
    return _one_pass(data, _transform(config, data, split, dequantize), global_batch, process_index, process_count,
                     conds)


def _one_pass(data: Split, transform: Transform, global_batch: int, process_index: int,
              process_count: int, conds: Mapping[str, np.ndarray] | None = None) -> Iterator[np.ndarray]:
    n = len(data.source)
    for start in range(0, n, global_batch):
        ids = np.array_split(np.arange(start, min(start + global_batch, n)), process_count)[process_index]
        x = np.zeros((0,) + data.data_shape, np.float32) if ids.size == 0 else transform(data.source.get(ids), 0, ids)
        yield x if conds is None else {"image": x, "cond": {k: v[ids] for k, v in conds.items()}}
