"""One config path for every task: commented YAML defaults, ``--config FILE``, ``--set key=value``.

Configs are plain nested dicts. Every key a user may set exists in the task's defaults file, so an
unknown key is a typo: it is rejected with the closest valid keys. Values given on the command line
are parsed with ``yaml.safe_load`` (never ``eval``) and checked against the type of the default and
the task's allowed choices.

Example:
    >>> cfg = {"train": {"epochs": 30, "lr": 0.001}}
    >>> apply_overrides(cfg, ["train.epochs=3"])["train"]["epochs"]
    3
"""

from __future__ import annotations

import contextlib
import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from pipelines.core.errors import ConfigError

__all__ = [
    "load_yaml",
    "dump_yaml",
    "flatten",
    "get_key",
    "set_key",
    "merge",
    "apply_overrides",
    "check_choices",
]


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
