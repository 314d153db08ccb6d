"""Task registry: ``pipelines run TASK`` looks the task up here.

A task module provides ``DESCRIPTION``, ``defaults() -> dict``, ``DEMO_OVERRIDES`` (dotted keys),
``validate(cfg)``, ``prepare_demo(data_dir) -> Path``, ``load_data(cfg, run_dir=None)`` (scan and
split, or the run's split.csv), ``train(cfg, run_dir, ctx, data=None)``, ``evaluate(cfg, run_dir, ctx, data=None)`` and
``summary_lines(split, metrics) -> list[str]`` (what ``pipelines run`` prints for val and test);
classification tasks add ``robustness_data(cfg, run_dir)`` for ``pipelines eval --corruptions``.
Modules are imported only when used, so one task's heavy dependencies never slow down another.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType

from pipelines.core.errors import ConfigError

__all__ = ["TASKS", "get_task"]

TASKS = {
    "breakhis": "pipelines.tasks.breakhis",
    "medmnist": "pipelines.tasks.medmnist",
    "buildings": "pipelines.tasks.buildings",
    "dfu": "pipelines.tasks.dfu",
    "toc3d": "pipelines.tasks.toc3d",
}


def get_task(name: str) -> ModuleType:
    if name not in TASKS:
        close = difflib.get_close_matches(name, list(TASKS), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of {', '.join(TASKS)}"
        raise ConfigError(f"unknown task '{name}'; {hint}")
    return importlib.import_module(TASKS[name])
