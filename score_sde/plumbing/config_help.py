"""Every config key with its value and a help line: what `main.py --mode=show_config` prints.

    lines = config_help.describe(config, key_help=config_help.comment_help(open("configs/default.py").read()))

The help of a key is read from where the key is defined, so nothing is kept twice: the comment
beside (or the comment block just above) its assignment in a config file (`comment_help`), and for
`sampling.<method>.<option>` the sampler's docstring (`sampler_help`: its `Attributes:` / `Args:`
entry).
"""

from __future__ import annotations

import inspect
import io
import re
import textwrap
import tokenize

from score_sde import solvers

_ALIAS_DEF = re.compile(r"^\s*config\.(\w+)\s*=\s*(\w+)\s*=")       # config.data = data = ConfigDict()
_ALIAS_USE = re.compile(r"^\s*(\w+)\s*=\s*config\.(\w+)\s*$")         # data = config.data
_ASSIGN = re.compile(r"^\s*([\w.]+)\s*=(?!=)")                        # data.image_size = 8
_ENTRY = re.compile(r"^(\s*)([\w, ]+):\s*(.*)$")                      # "  rtol, atol: tolerances ..."

NFE_HELP = ("nfe alone (every other option of this sampler at its default) picks the sampler's tuned settings "
            "for this many score evaluations, solvers.get(name, nfe=K); None: unset")


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """line number -> (column, text without '#') of the comment on that line."""
    out = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = (tok.start[1], tok.string.lstrip("#").strip())
    return out


def _key(target: str, aliases: dict[str, str]) -> str | None:
    """`data.image_size` / `config.data.image_size` / `config.seed` -> the config key, or None."""
    parts = target.split(".")
    if parts[0] == "config":
        return ".".join(parts[1:]) or None
    if parts[0] in aliases and len(parts) > 1:
        return ".".join([aliases[parts[0]], *parts[1:]])
    return None


def comment_help(source: str) -> dict[str, str]:
    """key -> help, from the comments of a config file's source (e.g. configs/default.py).

    A key's help is the comment at the end of its assignment line, continued by comment-only lines
    right below it; or, without one, the comment block right above the assignment. Section aliases
    (`config.data = data = ...`, `data = config.data`) are followed.
    """
    lines, comments = source.splitlines(), _comments(source)
    aliases: dict[str, str] = {}
    out: dict[str, str] = {}
    for i, line in enumerate(lines, start=1):
        code = line.split("#", 1)[0]
        for pattern, (alias, section) in ((_ALIAS_DEF, (2, 1)), (_ALIAS_USE, (1, 2))):
            m = pattern.match(code)
            if m:
                aliases[m.group(alias)] = m.group(section)
        m = _ASSIGN.match(code)
        key = _key(m.group(1), aliases) if m else None
        if key is None:
            continue
        text = _trailing(lines, comments, i) if i in comments else _above(lines, comments, i)
        if text:
            out[key] = text
    return out


def _only_comment(lines: list[str], comments: dict, j: int) -> bool:
    return j in comments and lines[j - 1].lstrip().startswith("#")


def _trailing(lines: list[str], comments: dict, i: int) -> str:
    """The comment on line i and the comment-only lines below it that start in its column."""
    column, text = comments[i]
    parts, j = [text], i + 1
    while _only_comment(lines, comments, j) and comments[j][0] == column:
        parts.append(comments[j][1])
        j += 1
    return " ".join(parts)


def _above(lines: list[str], comments: dict, i: int) -> str:
    """The block of comment-only lines right above line i."""
    parts, j = [], i - 1
    while _only_comment(lines, comments, j):
        parts.insert(0, comments[j][1])
        j -= 1
    return " ".join(parts)


def _docstring_entries(doc: str) -> dict[str, str]:
    """name -> text of each entry of the `Args:` / `Attributes:` sections of a Google-style docstring.

    An entry is `name: text` (or `a, b: text` for several names) at the section's indentation, with
    deeper-indented continuation lines; a blank or less-indented line ends the section.
    """
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None  # None: outside a section; -1: in a section, before its first entry
    for line in textwrap.dedent(doc).splitlines():
        depth = len(line) - len(line.lstrip())
        if line.strip() in ("Args:", "Attributes:"):
            indent, names = -1, []
        elif indent is None:
            continue
        elif not line.strip() or (indent >= 0 and depth < indent):
            indent, names = None, []
        elif (indent in (-1, depth)) and _ENTRY.match(line):
            indent = depth
            m = _ENTRY.match(line)
            names = [n.strip() for n in m.group(2).split(",")]
            out.update({n: m.group(3).strip() for n in names})
        elif names:
            out.update({n: f"{out[n]} {line.strip()}" for n in names})
    return out


def sampler_help(name: str) -> dict[str, str]:
    """option -> help of sampler `name`, from its class and constructor docstrings (plus `nfe` for the
    samplers with an `nfe=` preset)."""
    cls = solvers.SAMPLERS[name]
    out: dict[str, str] = {}
    for doc in (inspect.getdoc(cls.__init__) if "__init__" in vars(cls) else None, inspect.getdoc(cls)):
        if doc:
            out = {**_docstring_entries(doc), **out}
    if name in solvers.budget_names():
        out["nfe"] = NFE_HELP + (f"; with other options changed, {out['nfe']}" if "nfe" in out else "")
    return out


def _flatten(config, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every leaf of a ConfigDict, in definition order."""
    out = []
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.extend(_flatten(value, path + "."))
        else:
            out.append((path, value))
    return out


def _value(config, key: str, value) -> str:
    """A value as it would be typed after `--config.<key>=`; a placeholder shows its type."""
    if value is None:
        parent, _, leaf = key.rpartition(".")
        node = config
        for part in filter(None, parent.split(".")):
            node = node[part]
        field = node.get_ref(leaf) if hasattr(node, "get_ref") else None
        kind = getattr(field.get_type(), "__name__", None) if field is not None else None
        return f"None ({kind})" if kind else "None"
    return repr(tuple(value) if isinstance(value, list) else value)


def help_for(key: str, key_help: dict[str, str]) -> str:
    """The help line of config `key`: a sampler option's docstring entry, else the config comment."""
    parts = key.split(".")
    if len(parts) == 3 and parts[0] == "sampling" and parts[1] in solvers.SAMPLERS:
        return sampler_help(parts[1]).get(parts[2], "")
    return key_help.get(key, "")


def describe(config, key_help: dict[str, str] | None = None) -> list[str]:
    """One line per config key, `key = value  # help` (help where one exists), in definition order."""
    key_help = key_help or {}
    lines = []
    for key, value in _flatten(config):
        text = help_for(key, key_help)
        line = f"{key} = {_value(config, key, value)}"
        lines.append(f"{line}  # {text}" if text else line)
    return lines


__all__ = ["NFE_HELP", "comment_help", "describe", "help_for", "sampler_help"]
