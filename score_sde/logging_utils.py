"""Training logs: a tqdm progress bar, TensorBoard event files (tensorboardX, no TensorFlow)
and a machine-readable `metrics.jsonl` (one JSON object per logged step) in the workdir."""

from __future__ import annotations

import json
import os
import time

from tqdm.auto import tqdm


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
        from tensorboardX import SummaryWriter

        os.makedirs(workdir, exist_ok=True)
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)

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
            self._tb.add_scalar(f"train/{name}", value, step)
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k != "nonfinite_total"})

    def message(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self._bar.close()


__all__ = ["MetricLogger"]
