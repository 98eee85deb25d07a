"""The declared type and range of every numeric config key, checked before a command does any work.

    problems = schema.check(config, sde_T=1.0)     # [] or ["training.n_iters must be an int >= 1, got 0", ...]
    schema.validate(config, sde_T=1.0)             # raises ValueError with every problem on one line

ml_collections checks the type of an override only against the default's type, so e.g.
`--config.model.hidden=abc` or `--config.training.snapshot_freq=0` pass it. The table below says
what each key accepts; a key missing from a config (an older experiment file) is not checked.
Times (`training.eps`, `sampling.<method>.eps`) must lie in (0, T) of the configured SDE.
Names (datasets, SDEs, samplers, models) and the SDE's parameters are checked where they are
turned into objects (`config_utils`, the SDEs' own `__check_init__`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    """A key's accepted values: `kind` (int, float, str, bool, "ints") and a range test with its wording."""

    kind: Any
    test: Callable[[Any], bool] | None = None
    wording: str = ""


def _at_least(lo):
    return Rule(int, lambda v: v >= lo, f">= {lo}")


_POSITIVE_INT = _at_least(1)
_NONNEG = Rule(float, lambda v: v >= 0, ">= 0")
_POSITIVE = Rule(float, lambda v: v > 0, "> 0")
_UNIT = Rule(float, lambda v: 0 <= v < 1, "in [0, 1)")
GUIDANCE = ("free", "classifier")  # sampling.guidance: classifier-free, or with the trained noisy classifier
CONDITIONS = ("test", "null")  # sampling.condition (data.cond models): from the test split, or null (the marginal)

SCHEMA: dict[str, Rule] = {
    "seed": Rule(int),
    "data.image_size": _POSITIVE_INT,
    "data.downsample": _POSITIVE_INT,
    "data.num_levels": _at_least(0),
    "data.test_fraction": Rule(float, lambda v: 0 < v < 1, "in (0, 1)"),
    "data.num_classes": _at_least(0),
    "training.label_dropout": _UNIT,
    "sampling.guidance_scale": Rule(float),
    "sampling.guidance": Rule(str, lambda v: v in GUIDANCE, f"one of {', '.join(GUIDANCE)}"),
    "sampling.condition": Rule(str, lambda v: v in CONDITIONS, f"one of {', '.join(CONDITIONS)}"),
    "sampling.aug_level": Rule(float, lambda v: v >= 0, ">= 0"),
    "data.task.factor": Rule(int, lambda v: v >= 2, "an integer >= 2"),
    "data.task.max_aug_level": Rule(float, lambda v: v >= 0, ">= 0"),
    "classifier.nf": _POSITIVE_INT,
    "classifier.ch_mult": Rule("ints", lambda v: len(v) > 0 and all(h >= 1 for h in v), "a tuple of positive ints"),
    "classifier.num_res_blocks": _at_least(0),
    "classifier.n_iters": _POSITIVE_INT,
    "classifier.batch_size": _POSITIVE_INT,
    "classifier.lr": _POSITIVE,
    "classifier.warmup": _at_least(0),
    "classifier.ema_rate": _UNIT,
    "classifier.snapshot_freq": _POSITIVE_INT,
    "classifier.log_freq": _POSITIVE_INT,
    "model.ema_rate": _UNIT,
    "model.nf": _POSITIVE_INT,
    "model.num_res_blocks": _at_least(0),
    "model.dropout": _UNIT,
    "model.hidden": Rule("ints", lambda v: len(v) > 0 and all(h >= 1 for h in v), "a tuple of positive ints"),
    "model.ch_mult": Rule("ints", lambda v: len(v) > 0 and all(h >= 1 for h in v), "a tuple of positive ints"),
    "training.batch_size": _POSITIVE_INT,
    "training.n_iters": _POSITIVE_INT,
    "training.snapshot_freq": _POSITIVE_INT,
    "training.log_freq": _POSITIVE_INT,
    "training.steps_per_call": _POSITIVE_INT,
    "training.keep_checkpoints": _POSITIVE_INT,
    "training.max_nonfinite": _POSITIVE_INT,
    "training.divergence_factor": Rule(float, lambda v: v == 0 or v > 1, "0 (off) or > 1"),
    "training.sample_freq": _at_least(0),
    "training.precision": Rule(str, lambda v: v in ("fp32", "bf16"), "one of fp32, bf16"),
    "model.remat": Rule(bool),
    "optim.lr": _POSITIVE,
    "optim.beta1": _UNIT,
    "optim.eps": _NONNEG,
    "optim.weight_decay": _NONNEG,
    "optim.warmup": _at_least(0),
    "optim.grad_clip": _NONNEG,
    "sampling.num_samples": _POSITIVE_INT,
    "sampling.batch_size": _POSITIVE_INT,
    "likelihood.num_examples": _POSITIVE_INT,
    "likelihood.batch_size": _POSITIVE_INT,
    "likelihood.rtol": _NONNEG,
    "likelihood.atol": _NONNEG,
    "likelihood.max_steps": _POSITIVE_INT,
    "edit.num_examples": _POSITIVE_INT,
    "edit.n_particles": _POSITIVE_INT,
    "edit.n_steps": _POSITIVE_INT,
    "edit.n_interp": _at_least(2),
    "distributed.num_processes": _POSITIVE_INT,
    "distributed.process_id": _at_least(0),
}

# Options of the chosen sampler (`sampling.<method>.<option>`), when the sampler has them; None = default.
SAMPLER_OPTIONS: dict[str, Rule] = {
    "rtol": _NONNEG, "atol": _NONNEG, "n_steps": _POSITIVE_INT, "max_steps": _POSITIVE_INT,
    "n_corrector_steps": _at_least(0), "snr": _NONNEG, "nfe": _POSITIVE_INT,
}


def _get(config, path: str):
    node = config
    for part in path.split("."):
        if part not in node:
            raise KeyError(path)
        node = node[part]
    return node


def _type_ok(kind, value) -> bool:
    if kind == "ints":
        return isinstance(value, (tuple, list)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    return isinstance(value, kind)


def _check_one(path: str, rule: Rule, value) -> str | None:
    kinds = {"ints": "a tuple of ints", int: "an int", float: "a number", str: "a string", bool: "a bool"}
    if not _type_ok(rule.kind, value):
        wanted = rule.wording if rule.kind == "ints" else f"{kinds[rule.kind]} {rule.wording}".strip()
        return f"{path} must be {wanted}, got {value!r}"
    if rule.test is not None and not rule.test(value):
        return f"{path} must be {rule.wording}, got {value!r}"
    return None


def _time(path: str, value, sde_T: float) -> str | None:
    if value is None:
        return None
    if not _type_ok(float, value) or not 0 < value < sde_T:
        return f"{path} must be a time in (0, T={sde_T}) of the SDE, got {value!r}"
    return None


def check(config, sde_T: float | None = None) -> list[str]:
    """Every problem of `config` against `SCHEMA` (and the chosen sampler's options), one line each.

    Args:
      sde_T: the end time of the configured SDE; with it, `training.eps` and the sampler's `eps`
        are checked to lie in (0, T).
    """
    problems = []
    for path, rule in SCHEMA.items():
        try:
            value = _get(config, path)
        except KeyError:
            continue
        problems.append(_check_one(path, rule, value))
    method = config.get("sampling", {}).get("method")
    options = config.sampling.get(method) if isinstance(method, str) and "sampling" in config else None
    if options is not None and hasattr(options, "items"):
        for name, value in options.items():
            if name in SAMPLER_OPTIONS and value is not None:
                problems.append(_check_one(f"sampling.{method}.{name}", SAMPLER_OPTIONS[name], value))
        if sde_T is not None and "eps" in options:
            problems.append(_time(f"sampling.{method}.eps", options["eps"], sde_T))
    if sde_T is not None and "training" in config and "eps" in config.training:
        problems.append(_time("training.eps", config.training.eps, sde_T))
    if sde_T is not None and "classifier" in config and "eps" in config.classifier:
        problems.append(_time("classifier.eps", config.classifier.eps, sde_T))
    problems.append(_class_label(config))
    return [p for p in problems if p]


def _class_label(config) -> str | None:
    """sampling.class_label: unset, -1 (every class, one grid row each) or a class 0..K-1 of a
    class-conditional config (data.num_classes = K > 0)."""
    label = config.get("sampling", {}).get("class_label", None)
    if label is None:
        return None
    k = config.get("data", {}).get("num_classes", 0) or 0
    if not _type_ok(int, label):
        return f"sampling.class_label must be an int (-1: every class, or a class 0..K-1), got {label!r}"
    if not _type_ok(int, k) or k <= 0:
        return (f"sampling.class_label={label} needs a class-conditional model, but data.num_classes={k!r}; "
                f"train one with data.num_classes > 0 (e.g. configs/digits_cond.py) or leave class_label unset")
    if not -1 <= label < k:
        return f"sampling.class_label must be -1 (every class) or a class in 0..{k - 1}, got {label}"
    return None


def validate(config, sde_T: float | None = None) -> None:
    """Raises ValueError listing every problem `check` finds (one line), or returns None."""
    problems = check(config, sde_T)
    if problems:
        raise ValueError("bad config: " + "; ".join(problems))


__all__ = ["Rule", "SCHEMA", "SAMPLER_OPTIONS", "check", "validate"]
