"""Files written before every weights file carried a :class:`~pipelines.models.spec.ModelSpec`.

Each old format becomes a spec here, then loads like a new file:

- a classification run's checkpoint without a spec: the run's ``config.yaml`` (``model.backbone``,
  ``data.image_size``) and ``metrics.json`` (class names), as ``load_trained_classifier`` read it;
- a ToC3D run's checkpoint: the config's ``model`` section and the nuScenes detection classes;
- a DFU ensemble member (``stages/<stage>/<backbone>``) and a DFU run folder (its final stage's members);
- a model-store folder's weights without a spec: its ``card.json`` (backbone, classes, input, output);
- the ``pipelines.segmenter`` header (``SegmenterSpec``) and the ``pipelines.pix2pixhd`` header
  (``Pix2PixHDSpec``).
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from pipelines.core.errors import PipelinesError, WeightsError
from pipelines.models.kinds import (
    SoftVote,
    classifier_spec,
    detector_spec,
    ensemble_spec,
    generator_spec,
    segmenter_spec,
)
from pipelines.models.spec import ModelSpec
from pipelines.runs.folder import BEST_WEIGHTS, CONFIG, METRICS_FILE

__all__ = ["from_header", "from_card", "is_ensemble_run", "ensemble_run"]

SEGMENTER_KEY = "pipelines.segmenter"
PIX2PIXHD_KEY = "pipelines.pix2pixhd"


def _config(run_dir: Path) -> dict:
    from pipelines.config import load_yaml

    return load_yaml(run_dir / CONFIG)


def _run_of(file: Path) -> Path | None:
    """The run folder a ``checkpoints/*.safetensors`` file belongs to (an ensemble member's own folder)."""
    if file.parent.name != "checkpoints":
        return None
    folder = file.parent.parent
    if (folder / CONFIG).is_file():
        return folder
    stage_run = folder.parent.parent.parent  # RUN/stages/<stage>/<backbone>/checkpoints
    if folder.parent.parent.name == "stages" and (stage_run / CONFIG).is_file():
        return folder
    return None


def _segmenter(file: Path, text: str) -> ModelSpec:
    raw = json.loads(text)
    k = int(raw.get("classes", 1))
    names = ("foreground",) if k == 1 else tuple(f"class_{i}" for i in range(k))
    return segmenter_spec(raw.get("encoder", "efficientnet-b0"), names, int(raw.get("tile", 512)),
                          float(raw.get("threshold", 0.5)), in_channels=int(raw.get("in_channels", 3)),
                          deep_supervision=bool(raw.get("deep_supervision", False)),
                          mean=raw.get("mean", (0.485, 0.456, 0.406)), std=raw.get("std", (0.229, 0.224, 0.225)))


def _generator(file: Path, text: str) -> ModelSpec:
    from pipelines.synthesis.spec import Pix2PixHDSpec

    return generator_spec(Pix2PixHDSpec.from_json(text))


def _colour(cfg: dict) -> str:
    if cfg.get("run", {}).get("task") == "medmnist":
        from pipelines.datasets.medmnist import CATALOG

        info = CATALOG["datasets"].get(cfg["data"].get("dataset"), {})
        return "grey" if info.get("channels") == 1 else "rgb"
    return "rgb"


def _classifier_run(run_dir: Path) -> ModelSpec:
    """A classification run's spec from its config and metrics (a DFU member: the ensemble run's)."""
    member = run_dir.parent.parent.name == "stages"
    root = run_dir.parent.parent.parent if member else run_dir
    cfg = _config(root)
    task = cfg.get("run", {}).get("task", "")
    if member:
        from pipelines.datasets.dfu import CLASSES

        return classifier_spec(run_dir.name, CLASSES, int(cfg["data"]["image_size"]), task,
                               drop_rate=cfg["model"].get("drop_rate", 0.0))
    metrics = run_dir / METRICS_FILE
    if not metrics.is_file():
        raise WeightsError(f"{run_dir} has no metrics.json (an unfinished run without a model spec); let it "
                           f"finish or run 'pipelines eval {run_dir}'")
    report = json.loads(metrics.read_text())
    class_names = report.get("val", {}).get("class_names")
    if not class_names or "backbone" not in cfg.get("model", {}):
        raise WeightsError(f"{run_dir} is not a classification run (no class names in metrics.json or no "
                           "model.backbone in config.yaml)")
    multilabel = str(report.get("info", {}).get("task_type", "")).startswith("multi-label")
    return classifier_spec(cfg["model"]["backbone"], class_names, int(cfg["data"]["image_size"]), task,
                           colour=_colour(cfg), output="sigmoid" if multilabel else "softmax",
                           drop_rate=cfg["model"].get("drop_rate", 0.0))


def _run_spec(run_dir: Path) -> ModelSpec:
    cfg_dir = run_dir.parent.parent.parent if run_dir.parent.parent.name == "stages" else run_dir
    cfg = _config(cfg_dir)
    if cfg.get("run", {}).get("task") == "toc3d":
        from pipelines.datasets.nuscenes import DETECTION_CLASSES

        return detector_spec(cfg["model"], DETECTION_CLASSES)
    return _classifier_run(run_dir)


def from_header(file: Path, meta: dict[str, str]) -> tuple[nn.Module, ModelSpec]:
    """The module and spec of a weights file without a ``pipelines.model`` header entry."""
    from pipelines.models.files import build_from_file

    try:
        if SEGMENTER_KEY in meta:
            spec = _segmenter(file, meta[SEGMENTER_KEY])
        elif PIX2PIXHD_KEY in meta:
            spec = _generator(file, meta[PIX2PIXHD_KEY])
        elif (run := _run_of(file)) is not None:
            spec = _run_spec(run)
        else:
            raise WeightsError(f"{file} carries no model spec and is not in a run folder; save it with "
                               "pipelines.models.save_model (every file the project writes has one)")
    except PipelinesError as exc:
        raise WeightsError(str(exc) if str(file) in str(exc) else f"{file}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise WeightsError(f"{file} has a damaged legacy spec ({type(exc).__name__}: {exc}); train it again") from None
    return build_from_file(file, spec), spec


def is_ensemble_run(run_dir: Path) -> bool:
    """A DFU-style run folder: ``model.backbones`` in its config and members under ``stages/``."""
    if not ((run_dir / CONFIG).is_file() and (run_dir / "stages").is_dir()):
        return False
    return bool(_config(run_dir).get("model", {}).get("backbones"))


def ensemble_run(run_dir: Path) -> tuple[nn.Module, ModelSpec]:
    """The final stage's members of a DFU run written before the run saved its ensemble."""
    from pipelines.models.files import load_model
    from pipelines.tasks.dfu import stages

    cfg = _config(run_dir)
    final = stages(cfg)[-1]
    folders = [run_dir / "stages" / final / b for b in cfg["model"]["backbones"]]
    missing = [f for f in folders if not (f / BEST_WEIGHTS).is_file()]
    if missing:
        raise WeightsError(f"{missing[0]} has no checkpoints/best.safetensors; resume the run: "
                           f"pipelines run dfu --resume {run_dir}")
    members = [load_model(f) for f in folders]
    spec = ensemble_spec([m.spec for m in members], cfg.get("run", {}).get("task", "dfu"))
    return SoftVote([m.model for m in members], spec.output), spec


def from_card(file: Path, card: dict) -> tuple[nn.Module, ModelSpec]:
    """A model-store file exported before weights carried a spec, rebuilt from its card."""
    from pipelines.models.files import build_from_file

    try:
        spec = classifier_spec(card["backbone"], card["classes"], int(card["input"]["image_size"]),
                               card.get("task", ""), colour=card["input"].get("colour", "rgb"),
                               output=card.get("output", "softmax"))
    except (KeyError, TypeError, ValueError) as exc:
        raise WeightsError(f"{file} carries no model spec and its card is unreadable ({exc}); export it "
                           "again") from None
    return build_from_file(file, spec), spec
