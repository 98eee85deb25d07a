"""The one "unknown name; valid: ..." check behind every name table (samplers, predictors, SDEs, ...)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def check_choice(value: Any, choices: Iterable, kind: str, valid_label: str = "values") -> None:
    """Raises ValueError "unknown <kind> <value!r>; valid <valid_label>: a, b, c" unless value is a choice.

    Args:
      value: what the user gave.
      choices: the valid values, listed in this order in the message.
      kind: what the value names, e.g. "sampler" or "skip".
      valid_label: the noun after "valid", e.g. "samplers" (default "values").
    """
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid {valid_label}: {', '.join(str(c) for c in choices)}")


def lookup(table: Mapping, name: str, kind: str, valid_label: str | None = None) -> Any:
    """table[name], or the ValueError of `check_choice` listing the table's keys in its order."""
    check_choice(name, table, kind, valid_label or kind + "s")
    return table[name]


__all__ = ["check_choice", "lookup"]
