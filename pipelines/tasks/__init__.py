"""Task registry: ``pipelines run TASK`` looks the task up here.

A task is a module ``NAME.py`` in this folder beside its commented defaults ``NAME.yaml``: the pair is the
registration (no list to edit). The module provides what :class:`~pipelines.tasks.contract.Task` names:
``DESCRIPTION``, ``DEFAULTS`` (its YAML), ``DEMO_OVERRIDES`` and ``SMOKE_OVERRIDES`` (dotted keys),
``HEADLINE`` (its headline metric keys), ``defaults()``, ``validate(cfg)``, ``prepare_demo(data_dir,
small=False)``, ``load_data(cfg, run_dir=None)``, ``train(cfg, run_dir, ctx, data=None)``, ``evaluate(cfg,
run_dir, ctx, data=None)``, ``summary_lines(split, metrics)`` and ``card_facts(cfg, run_dir)``; optionally
``robustness_data(cfg, run_dir)`` (classification: ``pipelines eval --corruptions``) and ``test_images(cfg,
run_dir, indices)`` (the mistakes view, for data addressed by index). :func:`get_task` checks the module
against the contract on first use.

Modules are imported only when used, so one task's heavy dependencies never slow down another.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from types import ModuleType

from pipelines.core.errors import ConfigError
from pipelines.tasks.contract import check_task

__all__ = ["TASKS", "discover", "get_task", "headline"]


def discover(folder: Path, package: str) -> dict[str, str]:
    """Task name -> module for each ``NAME.py`` + ``NAME.yaml`` pair in ``folder``, by name (``base.yaml`` is
    the shared base, a module without a YAML a helper)."""
    return {p.stem: f"{package}.{p.stem}" for p in sorted(Path(folder).glob("*.yaml"))
            if p.stem != "base" and p.with_suffix(".py").is_file()}


TASKS = discover(Path(__file__).parent, __name__)
"""Every registered task: the pairs in this folder."""

_CHECKED: set[str] = set()


def get_task(name: str) -> ModuleType:
    """The task's module, held to the task contract (a broken module is a one-line TaskContractError)."""
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(TASKS)}"
        raise ConfigError(f"unknown task '{name}'; {hint}")
    module = importlib.import_module(TASKS[name])
    if name not in _CHECKED:
        check_task(module, name)
        _CHECKED.add(name)
    return module


def headline(name: str | None) -> tuple[str, ...]:
    """The task's headline metric keys (its ``HEADLINE``); none for a task this install does not have (a
    run folder from elsewhere), so readers show what they can instead of failing."""
    return tuple(get_task(name).HEADLINE) if name in TASKS else ()
