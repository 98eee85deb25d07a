"""--mode=cascade: a low-resolution base model and a super-resolution model chained by one command
(cascaded diffusion, Ho et al. 2021).

    python main.py --config=configs/digits_cascade.py --workdir=runs/digits_cascade --mode=cascade \
        --config.cascade.base_workdir=runs/digits_base4 --config.cascade.sr_workdir=runs/digits_sr

The config is the SR model's (its `data.task` is super_resolution; `model`, `sde` and `data` describe
the run in `cascade.sr_workdir`), plus `cascade.base_config`, the config file of the base model's run
in `cascade.base_workdir` (e.g. configs/digits_base4.py). Workdirs hold no config, so both are named,
as `distill.teacher_workdir` is a run of the distill config. Both stages sample with the cascade
config's `sampling` settings (method, its options, num_samples, batch_size):

1. the base model draws `sampling.num_samples` low-resolution images (batch i: fold_in(PRNGKey(seed), i)),
   clipped to the data range ([-1, 1] centered, else [0, 1]: the SR model's training inputs lie there; a
   few-step solve of a small base model can throw rare samples far outside it);
2. each becomes the SR model's condition at augmentation level s = `sampling.aug_level`: low_res =
   base sample + s e, e ~ N(0, I) from fold_in(fold_in(PRNGKey(seed + 3), row), 8), and aug_level = s
   (`SuperResolution.from_low_res`; the SR model was trained with s ~ U(0, data.task.max_aug_level));
3. the SR model draws one high-resolution sample per condition (batch i: fold_in(PRNGKey(seed + 1), i)).

Writes `<workdir>/cascade/cascade_<base step>_<sr step>_<method>_<hash>.npz` (`base_samples` (N, h, w, C),
`samples` (N, H, W, C), `cond_low_res`, `cond_aug_level`), a PNG grid (rows of base samples,
nearest-upsampled, over their SR samples) and a JSON summary, and one `results.jsonl` row (mode
"cascade", step = the SR model's step).
"""

from __future__ import annotations

import importlib.util
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_sde import config_utils, data, image_to_image
from score_sde.drivers import evaluate
from score_sde.plumbing import outputs, restore, timing


def load_config_file(path: str) -> ml_collections.ConfigDict:
    """get_config() of a config file (a path like configs/digits_base4.py).

    Raises:
      ValueError: no such file, or it defines no get_config().
    """
    if not path:
        raise ValueError("cascade.base_config is empty; name the base model's config file, e.g. "
                         "--config.cascade.base_config=configs/digits_base4.py")
    if not os.path.isfile(path):
        raise ValueError(f"cascade.base_config={path!r} is not a file; name the base model's config file, e.g. "
                         "configs/digits_base4.py")
    spec = importlib.util.spec_from_file_location(f"_cascade_base_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"cascade.base_config={path!r} defines no get_config() function")
    return module.get_config()


def stage_configs(config) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
    """(base config, SR config) of a cascade config: the base config file's get_config() with the
    cascade's `sampling` and `seed`; the SR config is `config` itself."""
    base = load_config_file(str(config.cascade.base_config))
    base.seed = config.seed
    base.sampling = ml_collections.ConfigDict(config.sampling.to_dict())
    return base, config


def _check_workdir(key: str, workdir: str) -> None:
    ckpt = os.path.join(workdir, "checkpoints")
    if not workdir:
        raise ValueError(f"{key} is empty; name the workdir of the trained run (--config.{key}=runs/...)")
    if not os.path.isdir(ckpt) or not any(d.isdigit() for d in os.listdir(ckpt)):
        raise restore.CheckpointNotFoundError(f"{key}={workdir}: no checkpoints in {ckpt}; train that run first "
                                              "with --mode=train")


def check_cascade_config(config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Raises ValueError / CheckpointNotFoundError naming what is wrong (nothing is written); returns the
    (base, SR) image shapes. The base model must be unconditional and make images of exactly the
    SR model's low-res size, and both workdirs must hold checkpoints."""
    cc = config.get("cascade", None)
    if cc is None:
        raise ValueError("--mode=cascade needs a cascade config (cascade.base_config, cascade.base_workdir, "
                         "cascade.sr_workdir), e.g. --config=configs/digits_cascade.py")
    task = config_utils.task_from_config(config)
    if not isinstance(task, image_to_image.SuperResolution):
        raise ValueError(f"--mode=cascade: the config must be the SR model's, data.task.name='super_resolution'; got "
                         f"{config.data.task.get('name', '')!r} (e.g. --config=configs/digits_cascade.py)")
    base, _ = stage_configs(config)
    if data.cond_names(base):
        raise ValueError(f"cascade.base_config={cc.base_config}: the base model must be unconditional; it has the "
                         f"condition parts {data.cond_names(base)}")
    size, ch = int(config.data.image_size), int(config.data.num_channels)
    low = (size // task.factor, size // task.factor, ch)
    base_shape = (int(base.data.image_size), int(base.data.image_size), int(base.data.num_channels))
    if base_shape != low:
        raise ValueError(f"the base model ({cc.base_config}) makes {'x'.join(map(str, base_shape))} images but the SR "
                         f"model's low-res input is {'x'.join(map(str, low))} ({size} / data.task.factor "
                         f"{task.factor}); use a base config with data.image_size={low[0]}, num_channels={ch}")
    _check_workdir("cascade.base_workdir", str(cc.base_workdir))
    _check_workdir("cascade.sr_workdir", str(cc.sr_workdir))
    return base_shape, (size, size, ch)


def draw(config, loaded, num: int, seed: int, conds=None, stage: str = "") -> tuple[np.ndarray, int]:
    """(`num` samples of `loaded` with config.sampling (batches of sampling.batch_size), their NFE); with a
    `stage` name, a progress bar `cascade <stage> (<method>)` on stderr moves per sampling step."""
    outs, nfes = [], []
    batch = config.sampling.batch_size
    bar = evaluate.SampleProgress(-(-num // batch), f"cascade {stage} ({config.sampling.method})", enabled=bool(stage))
    try:
        for x, nfe in evaluate.draw_batches(config, loaded, num, batch, seed, conds=conds,
                                            progress=bar.step if stage else None):
            outs.append(x)
            nfes.append(nfe)
            bar.batch_done()
    finally:
        bar.close()
    return np.concatenate(outs), int(np.mean(nfes))


def sr_conditions(config, task: image_to_image.SuperResolution, low: np.ndarray, level: float) -> dict:
    """The SR stage's conditions of base samples `low` (N, h, w, C) at augmentation level `level`
    (the noise of row i from fold_in(PRNGKey(seed + 3), i))."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(config.seed + 3), i))(jnp.arange(len(low)))
    return {k: np.asarray(v) for k, v in task.from_low_res(keys, jnp.asarray(low), level).items()}


def cascade_sample(base_config, sr_config, base_loaded, sr_loaded, num: int, level: float,
                   progress: bool = False) -> dict:
    """{"base_samples", "samples", "cond_low_res", "cond_aug_level", "base_nfe", "sr_nfe"}: `num`
    base samples, clipped to the data range, and their SR samples at augmentation level `level`
    (library call of the two stages; `progress`: a bar per stage on stderr)."""
    raw, base_nfe = draw(base_config, base_loaded, num, base_config.seed, stage="base" if progress else "")
    low = np.clip(raw, *data.data_range(bool(sr_config.data.centered)))  # the range the SR model trained on
    task = config_utils.task_from_config(sr_config)
    conds = sr_conditions(sr_config, task, low, level)
    high, sr_nfe = draw(sr_config, sr_loaded, num, sr_config.seed + 1, conds=conds, stage="SR" if progress else "")
    return {"base_samples": low, "samples": high, "cond_low_res": conds["low_res"],
            "cond_aug_level": conds["aug_level"], "base_nfe": base_nfe, "sr_nfe": sr_nfe}


def cascade_options(config) -> dict:
    """What changes a cascade's output: the sampling options, the augmentation level and the two runs."""
    cc = config.cascade
    return {**outputs.sampling_options(config), "aug_level": float(config.sampling.aug_level),
            "base_config": str(cc.base_config), "base_workdir": os.path.abspath(str(cc.base_workdir)),
            "sr_workdir": os.path.abspath(str(cc.sr_workdir))}


def run_cascade(config, workdir: str) -> dict:
    """--mode=cascade: samples both stages from the latest checkpoints and writes the outputs (module doc)."""
    base_shape, sr_shape = check_cascade_config(config)
    base_config, sr_config = stage_configs(config)
    base_loaded = restore.load_score_fn(base_config, str(config.cascade.base_workdir), base_shape)
    sr_loaded = restore.load_score_fn(sr_config, str(config.cascade.sr_workdir), sr_shape)
    level = float(config.sampling.aug_level)
    with timing.Timer() as timer:
        out = cascade_sample(base_config, sr_config, base_loaded, sr_loaded, config.sampling.num_samples, level,
                             progress=jax.process_index() == 0)
    out_dir = os.path.join(workdir, "cascade")
    os.makedirs(out_dir, exist_ok=True)
    options = cascade_options(config)
    method = config.sampling.method
    stem = outputs.new_stem(out_dir, f"cascade_{base_loaded.step}_{sr_loaded.step}_{method}_"
                                     f"{outputs.options_hash(options)}")
    summary = {"step": int(sr_loaded.step), "base_step": int(base_loaded.step), "method": method,
               "num_samples": int(len(out["samples"])), "aug_level": level, "base_nfe": out["base_nfe"],
               "sr_nfe": out["sr_nfe"], "nfe": out["base_nfe"] + out["sr_nfe"],
               "base_shape": list(base_shape), "shape": list(sr_shape), **timer.fields(), "options": options,
               "npz": stem + ".npz", "grid": stem + ".png", "json": stem + ".json"}
    with outputs.writing():
        outputs.save_npz(stem + ".npz", **{k: out[k] for k in ("base_samples", "samples", "cond_low_res",
                                                                "cond_aug_level")})
        outputs.save_with(stem + ".png", lambda p: outputs.save_grid(cascade_grid(out["base_samples"], out["samples"]),
                                                                     config.data.centered, p,
                                                                     cols=min(8, len(out["samples"]))))
        outputs.write_json(stem + ".json", summary)
        outputs.append_result(workdir, "cascade", sr_loaded.step, method, options,
                              [stem + ".npz", stem + ".png", stem + ".json"], timer.fields(),
                              {"nfe": summary["nfe"], "base_nfe": out["base_nfe"], "sr_nfe": out["sr_nfe"],
                               "num_samples": summary["num_samples"], "aug_level": level,
                               "base_step": int(base_loaded.step)})
    return summary


def cascade_grid(low: np.ndarray, high: np.ndarray, cols: int = 8) -> np.ndarray:
    """Images for a grid of `cols` columns: rows of base samples (nearest-upsampled to the SR side)
    alternating with the rows of their SR samples (the first 4 rows of each, at most)."""
    n = min(len(high), 4 * cols)
    n -= n % cols if n >= cols else 0
    up = np.repeat(np.repeat(low[:n], high.shape[1] // low.shape[1], axis=1), high.shape[2] // low.shape[2], axis=2)
    rows = [a for i in range(0, n, cols) for a in (up[i:i + cols], high[i:i + cols])]
    return np.concatenate(rows)


__all__ = ["load_config_file", "draw", "stage_configs", "check_cascade_config", "sr_conditions", "cascade_sample",
           "cascade_options", "run_cascade", "cascade_grid"]
