"""The task contract: what a task module gives, so the shared layers (the command line, the run-folder
readers, the model store, the dashboards) never name a task.

A task is a module ``pipelines/tasks/NAME.py`` beside its commented defaults ``NAME.yaml``; the registry
finds it by that pair (:mod:`pipelines.tasks`) and :func:`check_task` holds it to :class:`Task` when it is
first imported. The contract test (``tests/test_task_contract.py``) runs every registered task at its
``SMOKE_OVERRIDES`` through train, evaluate and ``load_model``.

Optional pieces are the small protocols below the main one: a task that has them gets the feature, one
that lacks them gets a one-line refusal (``pipelines eval --corruptions``) or the shared default (the
mistakes view reads images by their ``path`` column; the Runner's files sit in the run folder itself).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol, TypedDict, runtime_checkable

from pipelines.core.errors import PipelinesError

if TYPE_CHECKING:
    import numpy as np

    from pipelines.core.device import Context
    from pipelines.engine.robustness import RobustnessData

__all__ = ["Task", "SupportsRobustness", "SupportsTestImages", "SupportsMembers", "ServedElsewhere", "CardFacts",
           "TaskContractError", "check_task", "members"]


class CardFacts(TypedDict):
    """What a model card says about a run beyond its spec and metrics (the model store writes it)."""

    colour: str  # "rgb" or "grey": how an uploaded image is decoded for this model
    training_data: str  # the data set, its split and its counts, in one sentence
    intended_use: str  # who may use it for what, and what not (diagnosis, driving)
    limitations: list[str]  # what shifts or breaks it, one sentence each


@runtime_checkable
class Task(Protocol):
    """Every piece a task module must have; each is read by a shared layer, named in its docstring."""

    DESCRIPTION: str
    """One line for ``pipelines list tasks``."""
    DEFAULTS: Path
    """The task's commented YAML (merged over ``tasks/base.yaml``): ``pipelines list keys`` prints it and
    ``validate`` enforces the choices and ranges declared beside its keys."""
    DEMO_OVERRIDES: Mapping[str, Any]
    """Dotted keys ``--demo`` sets: the schedule that learns the synthetic demo data on a CPU."""
    SMOKE_OVERRIDES: Mapping[str, Any]
    """Dotted keys, over ``DEMO_OVERRIDES``, for the smallest run that still takes every step (one epoch, tiny
    inputs): what the contract test runs on ``prepare_demo(dir, small=True)``."""
    HEADLINE: tuple[str, ...]
    """Keys of metrics.json's ``val``/``test`` splits that sum a run up, in display order: the columns of the
    dashboards' runs table and comparison, and the metrics of a model store card."""
    PREDICTIONS: str
    """The run folder's per-sample table that evaluation writes (``pipelines.runs.PREDICTIONS``, or
    ``TILES`` for per-tile segmentation scores)."""

    def defaults(self) -> dict:
        """The resolved defaults (base + ``DEFAULTS``) that ``--config`` and ``--set`` change."""

    def validate(self, cfg: dict) -> None:
        """Raise a one-line ConfigError/DataError for a bad config (may fill in derived keys), before any
        run folder exists."""

    def prepare_demo(self, data_dir: Path, small: bool = False) -> Path:
        """Write (once) synthetic data in the real on-disk layout under ``data_dir``; returns the data root.
        ``small``: the least data that still runs every step (the contract test's)."""

    def load_data(self, cfg: Mapping, run_dir: Path | None = None) -> Any:
        """Scan and split ``data.root``, or read the run's split.csv when ``run_dir`` has one (resume, eval).
        Called before the run folder exists, so bad data leaves nothing behind."""

    def train(self, cfg: Mapping, run_dir: Path, ctx: Context, data: Any = None) -> None:
        """Write split.csv, train the task's model kind (:mod:`pipelines.training`) through the one Runner,
        resuming from the run's last state, then evaluate."""

    def evaluate(self, cfg: Mapping, run_dir: Path, ctx: Context, data: Any = None) -> dict:
        """Score the best checkpoint on val and test: metrics.json (``val``, ``test``, ``info``), the
        predictions file and plots; returns what metrics.json holds. ``pipelines eval RUN`` calls it."""

    def summary_lines(self, split: str, metrics: Mapping) -> list[str]:
        """What ``pipelines run`` and ``pipelines eval`` print for one split of metrics.json."""

    def card_facts(self, cfg: Mapping, run_dir: Path) -> CardFacts:
        """The model card's words on the run's data, intended use and limitations."""


@runtime_checkable
class SupportsRobustness(Protocol):
    """Optional (classification tasks): ``pipelines eval RUN --corruptions`` scores the test images under
    MedMNIST-C corruptions."""

    def robustness_data(self, cfg: Mapping, run_dir: Path) -> RobustnessData:
        """The test images at the resolution to corrupt them at, their labels and the corruption list."""


@runtime_checkable
class SupportsTestImages(Protocol):
    """Optional: the dashboards' mistakes view shows the images of predictions.csv rows. Rows with a ``path``
    column are read from ``data.root`` by :mod:`pipelines.runs.images` (the shared default); a task whose
    rows carry an ``index`` into data only it can read (MedMNIST's npz) supplies this."""

    def test_images(self, cfg: Mapping, run_dir: Path, indices: Sequence[int]) -> list[np.ndarray]:
        """The test images at ``indices``, read where the run's config says (never downloaded)."""


@runtime_checkable
class SupportsMembers(Protocol):
    """Optional: a run that trains several models (an ensemble's members, stage by stage) keeps the Runner's
    files (history.csv, checkpoints/last.safetensors, plots/training_curves.png) in each member's folder;
    the run folder itself holds the ensemble (checkpoints/best.safetensors), the split and the metrics."""

    def member_folders(self, cfg: Mapping, run_dir: Path) -> list[Path]:
        """Every folder the Runner trained in for this run, in training order."""


@runtime_checkable
class ServedElsewhere(Protocol):
    """Optional: a task whose models the model store and upload app do not serve (segmenters of large rasters
    need tiling, not one uploaded photo); ``pipelines export`` refuses its runs and names this command."""

    SERVED_BY: str
    """The command that serves the task's runs instead, e.g. ``pipelines tile --model RUN_DIR``."""


class TaskContractError(PipelinesError, TypeError):
    """A task module that lacks a piece of :class:`Task` or gives one of the wrong type."""


def members(protocol: type) -> list[str]:
    """The names a protocol asks for, in declaration order (its attributes, then its methods)."""
    methods = [n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")]
    return [*protocol.__annotations__, *methods]


def check_task(module: ModuleType, name: str) -> ModuleType:
    """``module`` if it satisfies :class:`Task`, else a one-line error naming every missing or bad piece."""
    problems = [f"no {m}" for m in members(Task) if not hasattr(module, m)]
    if not problems:
        for m in members(Task):
            value = getattr(module, m)
            if m[0].islower() and not callable(value):
                problems.append(f"{m} is not a function")
        if not isinstance(module.DESCRIPTION, str) or not module.DESCRIPTION:
            problems.append("DESCRIPTION is not a line of text")
        if not Path(module.DEFAULTS).is_file():
            problems.append(f"DEFAULTS {module.DEFAULTS} is not a file")
        for m in ("DEMO_OVERRIDES", "SMOKE_OVERRIDES"):
            value = getattr(module, m)
            if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
                problems.append(f"{m} is not a mapping of dotted keys to values")
        headline = module.HEADLINE
        if not isinstance(headline, tuple) or not headline or not all(isinstance(k, str) for k in headline):
            problems.append("HEADLINE is not a non-empty tuple of metric names")
    if problems:
        raise TaskContractError(f"task {name} ({module.__name__}) breaks the task contract: {'; '.join(problems)}; "
                                "see pipelines/tasks/contract.py")
    return module
