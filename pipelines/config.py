"""One config path for every task: commented YAML defaults, ``--config FILE``, ``--set key=value``.

Configs are plain nested dicts. Every key a user may set exists in the task's defaults, so an unknown
key is a typo: it is rejected with the closest valid keys. A task's defaults are the shared base
(``tasks/base.yaml``: ``seed``, the common ``train`` keys, ``log``) with the task's own YAML merged over
it (the task overrides values and adds keys). Values given on the command line are parsed with
``yaml.safe_load`` (never ``eval``) and checked against the type of the default.

Allowed values live beside their keys, in the comment that documents them, so there is one table:
``# (str: binary|subtype) ...``, ``# (int > 0) ...``, ``# (float >= 0) ...``, ``# (float in [0, 1]) ...``;
:func:`check_declared` enforces them (``null`` passes a bound, so optional keys stay optional).

Example:
    >>> cfg = {"train": {"epochs": 30, "lr": 0.001}}
    >>> apply_overrides(cfg, ["train.epochs=3"])["train"]["epochs"]
    3
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.errors import ConfigError

__all__ = [
    "apply_settings",
    "load_yaml",
    "dump_yaml",
    "flatten",
    "get_key",
    "set_key",
    "merge",
    "apply_overrides",
    "check_choices",
    "BASE_DEFAULTS",
    "load_defaults",
    "defaults_text",
    "declared_rules",
    "check_declared",
]

BASE_DEFAULTS = Path(__file__).with_name("tasks") / "base.yaml"


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise ConfigError(f"{path}{where} is not valid YAML; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, not {type(data).__name__}")
    return data


def dump_yaml(cfg: Mapping) -> str:
    return yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None)


def flatten(cfg: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def get_key(cfg: Mapping, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def set_key(cfg: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[leaf] = value


def _unknown_key(dotted: str, valid: Iterable[str], source: str) -> ConfigError:
    valid = sorted(valid)
    close = difflib.get_close_matches(dotted, valid, n=3, cutoff=0.5)
    if not close:
        leaf = dotted.split(".")[-1]
        close = [k for k in valid if k.split(".")[-1] == leaf][:3]
    hint = f"did you mean {', '.join(close)}?" if close else "run 'pipelines list keys TASK' for valid keys"
    return ConfigError(f"unknown config key '{dotted}' in {source}; {hint}")


def _coerce(dotted: str, value: Any, default: Any, source: str) -> Any:
    """Check ``value`` against the type of ``default``; numbers become strings where a string is due."""
    if default is None or value is None:
        return value
    expected = type(default)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    elif isinstance(default, list):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"bad value for '{dotted}' in {source}: {value!r} is {type(value).__name__}, "
            f"expected {expected.__name__} like the default {default!r}"
        )
    return value


def merge(base: dict, override: Mapping, source: str, prefix: str = "") -> dict:
    """Deep-merge ``override`` into a copy of ``base``; keys must already exist in ``base``."""
    out = copy.deepcopy(base)
    valid = _all_prefixes(base, prefix)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            raise _unknown_key(dotted, valid, source)
        if isinstance(out[key], dict) and out[key] and isinstance(value, Mapping):
            out[key] = merge(out[key], value, source, dotted + ".")
        else:
            out[key] = _coerce(dotted, value, out[key], source)
    return out


def _all_prefixes(cfg: Mapping, prefix: str = "") -> list[str]:
    keys = []
    for key, value in cfg.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, Mapping):
            keys.extend(_all_prefixes(value, f"{prefix}{key}."))
    return keys


def _resolve_leaf(key: str, flat: Mapping[str, Any]) -> str:
    """A bare leaf name (``epochs``) stands for the one dotted key ending in it (``train.epochs``)."""
    if key in flat or "." in key:
        return key
    matches = [k for k in flat if k.rsplit(".", 1)[-1] == key]
    return matches[0] if len(matches) == 1 else key


def apply_overrides(cfg: dict, items: Iterable[str], source: str = "--set") -> dict:
    """Apply ``key=value`` strings (dotted keys, or a leaf name that is unique; YAML values) to a copy of ``cfg``."""
    out = copy.deepcopy(cfg)
    flat = flatten(cfg)
    for item in items:
        if "=" not in item:
            raise ConfigError(f"{source} expects key=value, got '{item}' (example: --set train.epochs=3)")
        dotted, raw = item.split("=", 1)
        dotted = _resolve_leaf(dotted.strip(), flat)
        if dotted not in flat:
            raise _unknown_key(dotted, flat.keys(), source)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        set_key(out, dotted, _coerce(dotted, value, flat[dotted], source))
    return out


def check_choices(cfg: Mapping, choices: Mapping[str, Iterable], positive: Iterable[str] = ()) -> None:
    """Reject values outside a key's allowed choices, and non-positive numbers where they must be > 0."""
    for dotted, allowed in choices.items():
        value = get_key(cfg, dotted)
        allowed = list(allowed)
        if value not in allowed:
            raise ConfigError(
                f"bad value for '{dotted}': {value!r}; choose one of {', '.join(map(str, allowed))}"
            )
    for dotted in positive:
        value = get_key(cfg, dotted)
        if value is not None and value <= 0:
            raise ConfigError(f"bad value for '{dotted}': {value!r}; it must be greater than 0")


# ----------------------------------------------------------------------- commented defaults
_KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
_RULE = re.compile(r"^\((?P<type>\w+)(?::\s*(?P<choices>[^)]*)|\s+(?P<op>>=|>|<=|<)\s*(?P<bound>[-+\d.e]+)"
                   r"|\s+in\s+(?P<lo_b>[\[(])\s*(?P<lo>[-+\d.e]+)\s*,\s*(?P<hi>[-+\d.e]+)\s*(?P<hi_b>[\])]))?\)")


@functools.lru_cache(maxsize=32)
def _parse(path: Path) -> tuple[dict, dict[str, str], tuple[str, ...]]:
    """A commented defaults file: its mapping, each dotted key's comment, and its header comment lines."""
    text = path.read_text()
    data = load_yaml(path)
    comments: dict[str, str] = {}
    header: list[str] = []
    stack: list[tuple[int, str]] = []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if not match:
            if not stack and line.startswith("#"):
                header.append(line)
            continue
        indent = len(match["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, match["key"]))
        _, _, comment = match["rest"].partition(" #")
        if comment.strip():
            comments[".".join(k for _, k in stack)] = comment.strip()
    return data, comments, tuple(header)


def _merge_under(base: Mapping, task: Mapping, top: bool = True) -> dict:
    """``task`` over ``base``. Top level: base leaves (``seed``), the task's sections, then base-only
    sections (``log``); inside a shared section: the base's keys (with the task's values), then the task's."""
    out: dict = {}
    for key, value in base.items():
        if key not in task and not (top and isinstance(value, Mapping)):
            out[key] = copy.deepcopy(value)
        elif key in task and not top:
            out[key] = _merge_value(value, task[key])
    for key, value in task.items():
        if key not in out:
            out[key] = _merge_value(base[key], value) if key in base else copy.deepcopy(value)
    for key, value in base.items():
        out.setdefault(key, copy.deepcopy(value))
    return out


def _merge_value(base: Any, task: Any) -> Any:
    if isinstance(base, Mapping) and isinstance(task, Mapping):
        return _merge_under(base, task, top=False)
    return copy.deepcopy(task)


def load_defaults(path: str | Path) -> dict:
    """A task's defaults: ``tasks/base.yaml`` with the task's YAML at ``path`` merged over it."""
    return _merge_under(_parse(BASE_DEFAULTS)[0], _parse(Path(path))[0])


def _comments(path: Path) -> dict[str, str]:
    return {**_parse(BASE_DEFAULTS)[1], **_parse(Path(path))[1]}


def defaults_text(path: str | Path) -> str:
    """The merged defaults as commented YAML (what ``pipelines list keys TASK`` prints)."""
    path = Path(path)
    comments = _comments(path)
    lines = list(_parse(path)[2])

    def render(node: Mapping, prefix: str, depth: int) -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Mapping) and value:
                lines.append(f"{'  ' * depth}{key}:")
                render(value, dotted + ".", depth + 1)
                continue
            flow = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
            flow = flow.removesuffix("\n...").removesuffix("...").strip()
            entry = f"{'  ' * depth}{key}: {flow}"
            note = comments.get(dotted)
            lines.append(f"{entry:<29} # {note}" if note else entry)

    render(load_defaults(path), "", 0)
    return "\n".join(lines) + "\n"


def _number(text: str) -> float | int:
    value = float(text)
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def declared_rules(path: str | Path) -> dict[str, dict]:
    """The choices and bounds declared in the comments of the merged defaults, by dotted key."""
    rules: dict[str, dict] = {}
    for dotted, comment in _comments(Path(path)).items():
        match = _RULE.match(comment)
        if not match:
            continue
        kind = match["type"]
        if match["choices"] is not None:
            cast = {"int": int, "float": float}.get(kind, str)
            rules[dotted] = {"choices": [cast(c.strip()) for c in match["choices"].split("|")]}
        elif match["op"]:
            rules[dotted] = {"op": match["op"], "bound": _number(match["bound"])}
        elif match["lo"] is not None:
            rules[dotted] = {"range": (_number(match["lo"]), _number(match["hi"])),
                             "closed": (match["lo_b"] == "[", match["hi_b"] == "]")}
    return rules


_OPS = {">": (lambda v, b: v > b, "greater than"), ">=": (lambda v, b: v >= b, "at least"),
        "<": (lambda v, b: v < b, "less than"), "<=": (lambda v, b: v <= b, "at most")}


def check_declared(cfg: Mapping, path: str | Path) -> None:
    """Enforce the choices and bounds the defaults file at ``path`` (and the base) declare beside their keys."""
    for dotted, rule in declared_rules(path).items():
        try:
            value = get_key(cfg, dotted)
        except (KeyError, TypeError):
            continue
        if "choices" in rule:
            if value not in rule["choices"]:
                raise ConfigError(f"bad value for '{dotted}': {value!r}; "
                                  f"choose one of {', '.join(map(str, rule['choices']))}")
            continue
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if "op" in rule:
            ok, words = _OPS[rule["op"]]
            if not ok(value, rule["bound"]):
                raise ConfigError(f"bad value for '{dotted}': {value!r}; it must be {words} {rule['bound']}")
            continue
        (lo, hi), (lo_closed, hi_closed) = rule["range"], rule["closed"]
        inside = (lo <= value if lo_closed else lo < value) and (value <= hi if hi_closed else value < hi)
        if not inside:
            interval = f"{'[' if lo_closed else '('}{lo}, {hi}{']' if hi_closed else ')'}"
            raise ConfigError(f"bad value for '{dotted}': {value!r}; it must be in {interval}")


def apply_settings(args, source: str):
    """``--config FILE`` and ``--set key=value`` for a command's own options (keys are the option names,
    ``batch_size`` or ``batch-size``), checked like a task's keys; they override the flags."""
    import argparse

    options = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config", "overrides")}
    if args.config:
        options = merge(options, {k.replace("-", "_"): v for k, v in load_yaml(args.config).items()}, args.config)
    sets = [item.split("=", 1)[0].replace("-", "_") + item[len(item.split("=", 1)[0]):] for item in args.overrides]
    options = apply_overrides(options, sets, f"pipelines {source} --set")
    return argparse.Namespace(**{**vars(args), **options})
