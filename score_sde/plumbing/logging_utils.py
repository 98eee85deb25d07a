"""Training logs: a tqdm progress bar, TensorBoard event files (tensorboardX, no TensorFlow)
and a machine-readable `metrics.jsonl` (one JSON object per logged step) in the workdir, each row
appended whole or not at all (`outputs.append_line`).

The event file is opened at the first scalar or image, so a resumed run that trains nothing
leaves no empty event file. Sample grids (`image`) go to TensorBoard's Images tab.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time

import numpy as np
from tqdm.auto import tqdm

from score_sde.plumbing import outputs


class MetricLogger:
    """Writes scalars to the console, TensorBoard and metrics.jsonl; only `enabled` processes write.

    Args:
      workdir: output directory (`tensorboard/` and `metrics.jsonl` go there).
      total: total number of steps (progress bar length).
      initial: step to start the progress bar from (after a resume).
      enabled: False on non-primary processes of a multi-host run.
    """

    def __init__(self, workdir: str, total: int, initial: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._last = (time.perf_counter(), initial)
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        self._tb_dir, self._tb = os.path.join(workdir, "tensorboard"), None
        self._jsonl = os.path.join(workdir, "metrics.jsonl")
        # Not a terminal (a log file, a notebook without widgets): a line every 30 s, not every 0.1 s.
        self._tty = _isatty(sys.stderr)
        interval = 0.1 if self._tty else 30.0
        self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
                         mininterval=interval)

    @property
    def tb(self):
        """The TensorBoard writer, created at first use (no empty event file when nothing is logged)."""
        if self._tb is None:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(self._tb_dir)
        return self._tb

    def rates(self, step: int, batch_size: int) -> dict:
        """steps/s and images/s since the previous call."""
        now, (then, last_step) = time.perf_counter(), self._last
        self._last = (now, step)
        sps = (step - last_step) / max(now - then, 1e-9)
        return {"steps_per_sec": sps, "images_per_sec": sps * batch_size}

    def advance(self, n: int) -> None:
        if self.enabled:
            self._bar.update(n)

    def write(self, step: int, scalars: dict) -> None:
        """Logs `scalars` (name -> float) at `step` to all three sinks."""
        if not self.enabled:
            return
        for name, value in scalars.items():
            self.tb.add_scalar(f"train/{name}", value, step)
        # one O_APPEND write of the whole row; a write that fails part way (a full disk) is cut back off,
        # so the file never ends in a torn row
        outputs.append_line(self._jsonl, json.dumps({"step": step, **scalars}))
        # The bar shows its own steps/s; the logged rates stay in TensorBoard and metrics.jsonl.
        hidden = ("nonfinite_total", "steps_per_sec", "images_per_sec")
        # Off a terminal the postfix waits for the bar's next (30 s) refresh: no line per log.
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k not in hidden}, refresh=self._tty)

    def image(self, step: int, tag: str, samples: np.ndarray, centered: bool) -> None:
        """Logs samples (N, H, W, C) in model scale as one grid image, or 2-D points (N, 2) as a
        64 x 64 histogram, under `tag` at `step`."""
        if not self.enabled:
            return
        self.tb.add_image(tag, sample_image(samples, centered), step, dataformats="HWC")
        self.tb.flush()

    @contextlib.contextmanager
    def compiling(self, what: str = "the training step"):
        """Shows "compiling N s" on the bar while the block runs, then one line with the time."""
        if not self.enabled:
            yield
            return
        done, t0 = threading.Event(), time.perf_counter()
        self.message(f"compiling {what}...")

        def tick():  # on a terminal only: elsewhere each refresh would be a new line
            while self._tty and not done.wait(1.0):
                self._bar.set_postfix_str(f"compiling {time.perf_counter() - t0:.0f} s")

        thread = threading.Thread(target=tick, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()
            self._bar.set_postfix_str("", refresh=self._tty)
            self._bar.unpause()  # rates count from here: the compile time is not a training step
            self._last = (time.perf_counter(), self._last[1])
        seconds = time.perf_counter() - t0
        self.message(f"compiled {what} in {seconds:.1f} s")
        self.tb.add_scalar("train/compile_seconds", seconds, self._last[1])

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self.enabled:
            if self._tb is not None:
                self._tb.close()
            self._bar.close()


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def sample_image(samples: np.ndarray, centered: bool) -> np.ndarray:
    """uint8 (H, W, C) picture of samples: images (N, H, W, C) in model scale as a square grid with
    1-pixel borders; 2-D points (N, 2) as a 64 x 64 histogram over their range (C = 1)."""
    x = np.asarray(samples, np.float64)
    if x.ndim == 2 and x.shape[1] == 2:
        finite = x[np.all(np.isfinite(x), axis=1)]
        hist, _, _ = np.histogram2d(finite[:, 1], finite[:, 0], bins=64) if len(finite) else (np.zeros((64, 64)),) * 3
        img = hist[::-1] / max(hist.max(), 1.0)
        return (img[..., None] * 255).round().astype(np.uint8)
    if x.ndim != 4:
        raise ValueError(f"sample_image takes images (N, H, W, C) or 2-D points (N, 2), got shape {x.shape}")
    x = np.clip((x + 1.0) / 2.0 if centered else x, 0.0, 1.0)
    n, h, w, c = x.shape
    cols = int(math.ceil(math.sqrt(n)))
    rows = int(math.ceil(n / cols))
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c))
    for i in range(n):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = x[i]
    return (grid * 255).round().astype(np.uint8)


__all__ = ["MetricLogger", "sample_image"]
