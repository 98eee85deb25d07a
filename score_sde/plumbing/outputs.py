"""Output files that are never overwritten, and the `results.jsonl` index of a workdir.

Every output of `--mode=sample|likelihood|eval|edit` is named by what produced it:

    <kind>_<step>_<what>_<hash>[_<n>].<ext>      e.g. samples_8000_ode_3fa2c1.npz, likelihood_8000_exact_91b0d4.json

`<what>` is the sampler / divergence / task, `<hash>` the first 6 hex digits of the SHA-1 of the
options that change the result (`options_hash`), and `_<n>` (2, 3, ...) is added when a file of
that name already exists (the same command run twice, or with another number of examples). Each
file is written to a temporary name in the same folder and renamed, so a killed run never leaves a
half-written output under the final name. Each finished output appends one row to
`<workdir>/results.jsonl`: mode, step, method, options and their hash, the files, compile / run
seconds and the key figures.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

RESULTS_INDEX = "results.jsonl"
# The keys of every results.jsonl row (values: see append_result).
ROW_KEYS = ("time", "mode", "step", "method", "options", "options_hash", "files", "compile_seconds",
            "run_seconds", "figures")


def _plain(value: Any) -> Any:
    """A JSON-friendly copy of a config value (ConfigDicts -> dicts, tuples -> lists)."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.generic,)):
        return value.item()
    return value


def options_hash(options: dict) -> str:
    """The first 6 hex digits of the SHA-1 of `options` as sorted JSON (the same options, the same hash)."""
    text = json.dumps(_plain(options), sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def sampling_options(config) -> dict:
    """What changes a sample: the sampler, its own options, how many samples, the batch, the seed and the guidance."""
    sc = config.sampling
    options = {"method": sc.method, sc.method: _plain(sc.get(sc.method, {})), "num_samples": sc.num_samples,
               "batch_size": sc.batch_size, "seed": config.seed}
    if sc.get("class_label", None) is not None:  # guided sampling of a class-conditional model
        options.update(class_label=sc.class_label, guidance=sc.get("guidance", "free"),
                       guidance_scale=float(sc.get("guidance_scale", 0.0)))
    if config.get("data", {}).get("cond", None):  # a data.cond model: where its conditions come from, the weights
        options.update(condition=sc.get("condition", "test"), guidance_scales=_plain(sc.get("guidance_scales", {})))
    return options


def likelihood_options(config) -> dict:
    """What changes a likelihood figure: every `config.likelihood` key and the seed."""
    return {"likelihood": _plain(config.likelihood), "seed": config.seed}


def new_stem(out_dir: str, name: str) -> str:
    """`out_dir/name`, or `out_dir/name_<n>` with the smallest n >= 2 that no existing file uses."""
    stem, n = os.path.join(out_dir, name), 2
    while glob.glob(glob.escape(stem) + ".*"):
        stem, n = os.path.join(out_dir, f"{name}_{n}"), n + 1
    return stem


def _atomic(path: str, write, tmp: str | None = None) -> None:
    """`write(tmp)` then rename tmp to `path`; the temporary file never outlives the call."""
    tmp = tmp or f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _NO_SPACE_ERRNOS and not e.filename:  # a failed write() names no file: name the output
            raise OSError(e.errno, os.strerror(e.errno), path) from e
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically (temporary file + rename)."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    _atomic(path, write)


def save_npz(path: str, **arrays) -> None:
    """np.savez to `path`, atomically."""

    def write(tmp):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        with open(tmp, "wb") as f:
            f.write(buf.getvalue())

    _atomic(path, write)


def save_with(path: str, save) -> None:
    """`save(tmp_path)` then rename to `path` (e.g. a PNG written by PIL; the extension is kept)."""
    root, ext = os.path.splitext(path)
    _atomic(path, save, f"{root}.tmp{os.getpid()}{ext}")


def append_result(workdir: str, mode: str, step: int, method: str | None, options: dict, files: list[str],
                  timings: dict, figures: dict) -> dict:
    """Appends one row to `<workdir>/results.jsonl` (one line, flushed) and returns it.

    Args:
      mode: sample | likelihood | eval | edit.
      method: the sampler, divergence or task.
      options: what produced the output (hashed into its file names).
      files: the paths written.
      timings: {"compile_seconds", "run_seconds"}.
      figures: the key figures (bits/dim, NFE, test loss ...).
    """
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mode": mode, "step": int(step), "method": method,
           "options": _plain(options), "options_hash": options_hash(options), "files": list(files),
           "compile_seconds": timings.get("compile_seconds"), "run_seconds": timings.get("run_seconds"),
           "figures": _plain(figures)}
    os.makedirs(workdir, exist_ok=True)
    append_line(os.path.join(workdir, RESULTS_INDEX), json.dumps(row, default=str))
    return row


def append_line(path: str, line: str) -> None:
    """Appends `line` and a newline to `path` whole or not at all: a write that fails part way (a full
    disk) is cut back off, so the file never ends in a torn line that the next row would be glued to."""
    data = (line + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
        except OSError as e:
            os.ftruncate(fd, size)
            if e.errno in _NO_SPACE_ERRNOS and not e.filename:  # a failed write() names no file
                raise OSError(e.errno, os.strerror(e.errno), path) from e
            raise
    finally:
        os.close(fd)


def read_results(workdir: str) -> list[dict]:
    """The rows of `<workdir>/results.jsonl` (empty when there is none; a torn last line is skipped)."""
    path = os.path.join(workdir, RESULTS_INDEX)
    rows = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    return rows


# errno values and texts of a write that failed for lack of space: a full disk, a quota, a file-size limit.
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_NO_SPACE_TEXTS = ("No space left on device", "File too large", "Disk quota exceeded") + tuple(
    f"os_error_code='{n}'" for n in _NO_SPACE_ERRNOS)  # tensorstore's (orbax's) form


def out_of_space(e: BaseException) -> str | None:
    """A short reason when `e` (or an exception it was raised from) is a write that failed for lack of
    space (ENOSPC, EFBIG from a file-size limit, EDQUOT; also orbax / tensorstore's wrapped form), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE_ERRNOS:
            where = f" writing {e.filename}" if e.filename else ""
            return f"{os.strerror(e.errno)}{where}"
        text = str(e)
        for t in _NO_SPACE_TEXTS:
            if t in text:
                path = re.search(r'(?:Failed writing|file): "([^"]+)"', text)  # tensorstore names the file
                name = next((n for n in _NO_SPACE_TEXTS[:3] if n in text), t)
                return name + (f" writing {path.group(1)}" if path else "")
        e = e.__cause__ or e.__context__
    return None


class NoSpaceLogFilter(logging.Filter):
    """Drops log records about a write that failed for lack of space (orbax logs its failed background
    save with a traceback before raising it); the CLI reports that failure as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (any(t in record.getMessage() for t in _NO_SPACE_TEXTS) or (exc is not None and out_of_space(exc)))


class Stopped(BaseException):
    """SIGINT / SIGTERM outside training (sample, likelihood, eval, edit). Attribute: signum."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_deferred: list[int] = []
_writing = threading.local()


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT / SIGTERM raise `Stopped` in the main thread, except inside `writing()` / `deferring()`,
    where the signal waits until the block is done (so no output is half-written and no computation
    is left running; `deferring` prints what is being finished, and its code may stop earlier with
    `check_stop()`). A second signal while one waits acts as usual. Main thread only (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        blocks = getattr(_writing, "blocks", [])
        if blocks:
            _deferred.append(signum)
            for sig, old in previous.items():
                signal.signal(sig, old)
            what = next((w for w in reversed(blocks) if w), None)
            if what:  # on its own line, under any progress bar
                from tqdm import tqdm

                tqdm.write(f"{signal.Signals(signum).name}: finishing {what}, then stopping (send it again to stop "
                           "at once)", file=sys.stderr)
            return
        raise Stopped(signum)

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        _deferred.clear()
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def deferring(what: str | None = None):
    """A block that must not be cut short (a computation in flight, an output's files): a SIGINT /
    SIGTERM arriving inside it (under `stop_on_signals`) is acted on at its end, or at a `check_stop()`
    inside it; `what` (e.g. "the 16 sampling steps in flight") is printed on stderr when a signal waits."""
    blocks = _writing.__dict__.setdefault("blocks", [])
    blocks.append(what)
    try:
        yield
    finally:
        blocks.pop()
    if not blocks and _deferred:
        raise Stopped(_deferred.pop(0))


def check_stop() -> None:
    """Raises `Stopped` if a signal arrived during the enclosing `deferring()` block (call it where the
    block's work can stop cleanly, e.g. between two jitted calls)."""
    if _deferred:
        raise Stopped(_deferred.pop(0))


def writing():
    """A block that writes one output's files: a signal arriving inside it is acted on at its end."""
    return deferring(None)


def save_grid(samples: np.ndarray, centered: bool, path: str, upscale: int = 4, cols: int | None = None) -> None:
    """Writes images (N, H, W, C) in model scale as a PNG grid, square unless `cols` is given."""
    from PIL import Image

    x = (samples + 1.0) / 2.0 if centered else samples
    x = np.clip(x, 0.0, 1.0)
    n, h, w, c = x.shape
    cols = cols or int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    img = (grid * 255).round().astype(np.uint8)
    img = img[..., 0] if c == 1 else img
    Image.fromarray(img).resize((img.shape[1] * upscale, img.shape[0] * upscale), Image.NEAREST).save(path)


__all__ = ["NoSpaceLogFilter", "out_of_space", "append_line",
           "save_grid", "RESULTS_INDEX", "ROW_KEYS", "Stopped", "append_result", "likelihood_options", "new_stem",
           "options_hash", "read_results", "sampling_options", "save_npz", "save_with", "stop_on_signals",
           "check_stop", "deferring",
           "write_json", "writing"]
