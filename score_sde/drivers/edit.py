"""`--mode=edit`: inpainting, colourisation, SDEdit and interpolation of test examples, as image grids.

    python main.py --config=configs/digits_vp.py --workdir=runs/digits --mode=edit --config.edit.task=inpaint

Takes the first `edit.num_examples` test examples, runs the task with the checkpoint's EMA score
(`score_sde.inverse`, `score_sde.edit`), and writes `workdir/edit/edit_<step>_<task>_<hash>.png` (one
row per example: input | observation | result; for interpolate: the path from one example to the
next), `.npz` (model scale) and `.json`, never overwriting (`score_sde.plumbing.outputs`), with a row in
`workdir/results.jsonl`. Single device: the work is a few examples.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from score_sde import config_utils, data, edit, inverse
from score_sde.plumbing import outputs, restore, timing
from score_sde.lookup import check_choice

TASKS = ("inpaint", "colorize", "sdedit", "interpolate")
MASKS = ("bottom_half", "top_half", "left_half", "right_half")


def make_mask(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A (H, W, C) mask, 1 = known: `name` says which half is unknown."""
    check_choice(name, MASKS, "mask")
    h, w = shape[0], shape[1]
    mask = np.ones(shape, np.float32)
    rows, cols = slice(None), slice(None)
    if name == "bottom_half":
        rows = slice(h // 2, None)
    elif name == "top_half":
        rows = slice(None, h // 2)
    elif name == "left_half":
        cols = slice(None, w // 2)
    else:
        cols = slice(w // 2, None)
    mask[rows, cols] = 0.0
    return mask


def check_edit_config(config, data_shape: tuple[int, ...]) -> None:
    """Raises ValueError for a task / mask / method this data cannot take (before any work)."""
    ec = config.edit
    check_choice(ec.task, TASKS, "edit task", "tasks")
    check_choice(ec.method, inverse.METHODS, "edit method", "methods")
    if len(data_shape) != 3:
        raise ValueError(f"--mode=edit needs image data (H, W, C), got examples of shape {data_shape}")
    if ec.task == "inpaint":
        make_mask(ec.mask, data_shape)
    if ec.task == "colorize" and data_shape[-1] != 3:
        raise ValueError(f"edit.task=colorize needs RGB data (3 channels), got {data_shape[-1]} "
                         f"(data.dataset={config.data.dataset!r})")
    if ec.task == "interpolate" and ec.num_examples < 2:
        raise ValueError(f"edit.task=interpolate needs edit.num_examples >= 2, got {ec.num_examples}")
    if not 0.0 < ec.t0 <= 1.0:
        raise ValueError(f"edit.t0 must lie in (0, T] = (0, 1], got {ec.t0}")


def run_edit(config, workdir: str, test: data.Split, step: int | None = None) -> dict:
    """Runs `config.edit.task` on the first test examples; writes the grid, .npz and .json."""
    ec = config.edit
    check_edit_config(config, test.data_shape)
    score_fn, sde, shape, step = restore.load_score_fn(config, workdir, test.data_shape, step)
    x = jnp.asarray(next(data.iterate_once(config, "test", batch_size=ec.num_examples, loaded=test)))
    key = jax.random.PRNGKey(config.seed + 3)
    timer = timing.Timer().__enter__()
    # a signal waits for the solve (nothing is left running when it is acted on), then stops before any write
    with outputs.deferring(f"the {ec.task} solve in flight (an edit solve cannot stop mid-solve)"):
        print(f"edit: {ec.task} of {len(x)} examples (checkpoint step {step}) ...", file=sys.stderr, flush=True)
        result, rows = solve_task(config, key, sde, score_fn, x, shape)
    timer.__exit__(None, None, None)
    grid = np.stack([np.asarray(r) for r in rows], axis=1)  # (examples, columns, H, W, C)
    out_dir = os.path.join(workdir, "edit")
    os.makedirs(out_dir, exist_ok=True)
    options = edit_options(config)
    stem = outputs.new_stem(out_dir, f"edit_{step}_{ec.task}_{outputs.options_hash(options)}")
    summary = {"step": int(step), "task": ec.task, "num_examples": int(len(x)), **timer.fields(),
               "grid": stem + ".png", "npz": stem + ".npz", "json": stem + ".json", "options": options}
    if ec.task in ("inpaint", "colorize"):
        summary.update(method=ec.method, n_steps=ec.n_steps)
    with outputs.writing():
        outputs.save_with(stem + ".png", lambda p: outputs.save_grid(grid.reshape((-1,) + grid.shape[2:]),
                                                                     config.data.centered, p, cols=grid.shape[1]))
        outputs.save_npz(stem + ".npz", inputs=np.asarray(x), result=result)
        outputs.write_json(stem + ".json", summary)
        outputs.append_result(workdir, "edit", step, ec.task, options, [stem + ".png", stem + ".npz", stem + ".json"],
                              timer.fields(), {"num_examples": int(len(x))})
    return summary


def solve_task(config, key, sde, score_fn, x, shape: tuple[int, ...]):
    """(result as numpy, the grid's columns) of `config.edit.task` on the examples x (B, H, W, C)."""
    ec = config.edit
    method_opts = dict(n_steps=ec.n_steps)
    if ec.method == "smc":
        method_opts["n_particles"] = ec.n_particles
    if ec.task == "inpaint":
        mask = jnp.asarray(make_mask(ec.mask, shape))
        result, _ = inverse.inpaint(key, sde, score_fn, x, mask, method=ec.method, **method_opts)
        rows = [x, jnp.where(mask > 0, x, 0.0), result]
    elif ec.task == "colorize":
        gray = jnp.mean(x, axis=-1, keepdims=True)
        result, _ = inverse.colorize(key, sde, score_fn, gray, method=ec.method, **method_opts)
        rows = [x, jnp.repeat(gray, 3, axis=-1), result]
    elif ec.task == "sdedit":
        sampler = config_utils.objects(config).sampler
        result, _ = edit.sdedit(key, sampler, sde, score_fn, x, ec.t0)
        rows = [x, result]
    else:
        ends = edit.interpolate(sde, score_fn, x[:-1], x[1:], ec.n_interp)  # (B - 1, n, H, W, C)
        result = ends
        rows = [ends[:, i] for i in range(ec.n_interp)]
    return np.asarray(jax.block_until_ready(result)), rows


def edit_options(config) -> dict:
    """What changes an edit result: `config.edit`, and the sampler for sdedit."""
    opts = {"edit": config.edit.to_dict(), "seed": config.seed}
    if config.edit.task == "sdedit":
        opts.update(outputs.sampling_options(config))
    return opts


__all__ = ["MASKS", "TASKS", "check_edit_config", "edit_options", "make_mask", "run_edit", "solve_task"]
