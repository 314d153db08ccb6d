"""ToC3D: multi-view 3D object detection on nuScenes-format data with token compression in the ViT backbone.

Wiring only: the reader is :mod:`pipelines.datasets.nuscenes`, the demo scenes come from
:mod:`pipelines.datasets.nuscenes_demo`, the model, training and metrics from :mod:`pipelines.detection3d`.
Scenes are split whole (frames of one scene are near-duplicates of each other); the checkpoint is
selected on validation NDS and the test scenes are scored once, then the same model is re-run without
compression, at each ablation ratio and with random scoring (``ablation.csv``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.backbones.weights import load_weights
from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError, DataError
from pipelines.core.images import check_image_files
from pipelines.core.io import write_csv, write_json
from pipelines.core.precision import resolve_precision
from pipelines.datasets.nuscenes import DETECTION_CLASSES, read_nuscenes
from pipelines.detection3d.data import FrameLoader
from pipelines.detection3d.engine import (
    Setting,
    ablation_settings,
    check_precisions,
    fit,
    latency,
    predict_scenes,
    score,
)
from pipelines.detection3d.model import build_detector
from pipelines.models import load_model
from pipelines.runs import PREDICTIONS as PREDICTIONS  # predictions.csv: one row per box of val and test
from pipelines.runs.folder import ABLATION, BEST_WEIGHTS, HISTORY, METRICS_FILE, SPLIT, read_split, write_split
from pipelines.training import seed_everything

log = logging.getLogger(__name__)

DESCRIPTION = "multi-view 3D detection (nuScenes format): ToC3D token-compressed ViT + StreamPETR-style head"

# What `--demo` changes: the synthetic 96x176 px scenes, a small ViT and head, for a 2-core CPU (about 20 minutes).
DEMO_OVERRIDES = {
    "data.cache_images": True,
    "model.image_size": [96, 176],
    "model.patch_size": 8,
    "model.embed_dim": 128,
    "model.depth": 8,
    "model.heads": 4,
    "model.mlp_ratio": 3.0,
    "model.stages": [2, 4, 6],
    "model.queries": 150,
    "model.propagated": 32,
    "model.decoder_layers": 3,
    "model.depth_bins": 24,
    "model.depth_range": [1.0, 45.0],
    "model.pc_range": [-40.0, -40.0, -2.0, 40.0, 40.0, 4.0],
    "train.epochs": 20,
    "train.lr": 0.001,
    "train.weight_decay": 0.0001,
    "train.grad_clip": 10.0,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every step, in seconds.
SMOKE_OVERRIDES = {
    "model.image_size": [32, 64],
    "model.embed_dim": 32,
    "model.depth": 4,
    "model.heads": 2,
    "model.stages": [1, 2, 3],
    "model.queries": 16,
    "model.propagated": 4,
    "model.decoder_layers": 1,
    "model.depth_bins": 4,
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "train.batch_size": 1,
    "train.clip_length": 2,
    "eval.max_boxes": 20,
    "eval.latency_frames": 1,
    "eval.latency_repeats": 1,
}

HEADLINE = ("nds", "map")  # nuScenes detection score and mAP over all 10 classes

SPLITS = ("train", "val", "test")

DEFAULTS = Path(__file__).with_name("toc3d.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def _check_ratios(key: str, ratios, stages: int) -> None:
    if ratios is None:
        return
    if len(ratios) != stages or not all(0 < float(r) <= 1 for r in ratios):
        raise ConfigError(f"bad value for '{key}': {ratios}; give {stages} keep ratios in (0, 1], one per stage "
                          f"of model.stages, e.g. [0.7, 0.5, 0.5]")


def _asked_precision(e: Mapping) -> str:
    asked = str(e.get("precision", "fp32"))
    if asked not in ("fp32", "bf16", "auto"):
        raise ConfigError(f"bad value for 'eval.precision': {asked!r}; a toc3d detector runs at fp32, bf16 or auto "
                          "(int8 needs a static graph, and the compressed stages keep a varying number of tokens)")
    return asked


def validate(cfg: Mapping) -> None:
    check_declared(cfg, DEFAULTS)
    d, m, t, e = cfg["data"], cfg["model"], cfg["train"], cfg["eval"]
    h, w = m["image_size"]
    if h % m["patch_size"] or w % m["patch_size"]:
        raise ConfigError(f"bad value for 'model.image_size': {m['image_size']}; both sides must be multiples of "
                          f"model.patch_size ({m['patch_size']})")
    stages = list(m["stages"])
    if stages != sorted(set(stages)) or not all(0 < s < m["depth"] for s in stages):
        raise ConfigError(f"bad value for 'model.stages': {stages}; give increasing block indices between 1 and "
                          f"model.depth - 1 ({m['depth'] - 1})")
    _check_ratios("model.keep_ratios", m["keep_ratios"], len(stages))
    for i, r in enumerate(t["keep_ratio_choices"]):
        _check_ratios(f"train.keep_ratio_choices[{i}]", r, len(stages))
    for i, r in enumerate(e["ablation_ratios"]):
        _check_ratios(f"eval.ablation_ratios[{i}]", r, len(stages))
    _check_ratios("eval.random_ratios", e["random_ratios"], len(stages))
    _asked_precision(e)
    if m["embed_dim"] % m["heads"]:
        raise ConfigError(f"bad value for 'model.heads': {m['heads']}; it must divide model.embed_dim "
                          f"({m['embed_dim']})")
    if len(m["pc_range"]) != 6 or not all(a < b for a, b in zip(m["pc_range"][:3], m["pc_range"][3:], strict=True)):
        raise ConfigError(f"bad value for 'model.pc_range': {m['pc_range']}; give x0,y0,z0,x1,y1,z1 with each "
                          "minimum below its maximum")
    if not (0 <= d["val_fraction"] < 1 and 0 <= d["test_fraction"] < 1):
        raise ConfigError("data.val_fraction and data.test_fraction must be in [0, 1)")
    for key in ("split_file", ):
        if d[key] and not Path(d[key]).expanduser().is_file():
            raise ConfigError(f"data.{key} file not found: {d[key]}; give a CSV with columns scene,split")
    if m["weights"] and not Path(m["weights"]).expanduser().is_file():
        raise ConfigError(f"model.weights file not found: {m['weights']}; pass a .safetensors file of the detector")


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) the synthetic multi-camera scenes in the nuScenes v1.0 layout; returns the dataroot.
    ``small``: 3 scenes (one per split) of 2 frames at 32x64 px."""
    from pipelines.datasets.nuscenes_demo import write_demo_nuscenes

    if small:
        return write_demo_nuscenes(Path(data_dir) / "nuscenes_demo_small", scenes=3, frames_per_scene=2,
                                   image_size=(32, 64))
    return write_demo_nuscenes(Path(data_dir) / "nuscenes_demo")


@dataclass
class SceneData:
    """The data set's frames grouped by scene, and which split each scene is in."""

    root: Path
    split: pd.DataFrame  # scene, split, frames
    scenes: dict[str, list]  # scene name -> frames in time order

    def of(self, split: str) -> list[list]:
        names = self.split.loc[self.split["split"] == split, "scene"]
        return [self.scenes[n] for n in names]


def _split_scenes(names: list[str], d: Mapping, seed: int) -> pd.DataFrame:
    if d["split_file"]:
        path = Path(d["split_file"]).expanduser()
        table = pd.read_csv(path, dtype=str)
        if list(table.columns[:2]) != ["scene", "split"]:
            raise ConfigError(f"{path}: the header must start with scene,split")
        bad = sorted(set(table["split"]) - set(SPLITS))
        if bad:
            raise ConfigError(f"{path}: unknown split {bad[0]!r}; use train, val or test")
        missing = sorted(set(table["scene"]) - set(names))
        if missing:
            raise DataError(f"{path}: scene {missing[0]} is not in the data set; check data.version")
        return table[["scene", "split"]].reset_index(drop=True)
    if len(names) < 3:
        raise DataError(f"{d['root']}: {len(names)} scene(s); a train/val/test split needs at least 3 (or give "
                        "data.split_file)")
    order = np.random.default_rng(seed).permutation(sorted(names))
    n_test = max(1, round(len(names) * d["test_fraction"]))
    n_val = max(1, round(len(names) * d["val_fraction"]))
    splits = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(names) - n_test - n_val)
    return pd.DataFrame({"scene": order, "split": splits}).sort_values(["split", "scene"]).reset_index(drop=True)


def load_data(cfg: Mapping, run_dir: Path | None = None) -> SceneData:
    """The data set's scenes, split by the run's split.csv if it has one (resume, eval), else by scene."""
    d = cfg["data"]
    data = read_nuscenes(Path(d["root"]).expanduser(), d["version"])
    if d["verify_images"]:
        check_image_files([camera.image_path for frame in data.frames for camera in frame.cameras])
    scenes: dict[str, list] = {}
    for frame in data.frames:
        scenes.setdefault(frame.scene_name, []).append(frame)
    split = read_split(run_dir, dtype={"scene": str})
    if split is not None:
        missing = sorted(set(split["scene"]) - set(scenes))
        if missing:
            raise DataError(f"{run_dir / SPLIT}: scene {missing[0]} is not in {d['root']}; "
                            "point data.root at the run's data")
    else:
        split = _split_scenes(list(scenes), d, int(cfg["seed"]))
    split = split[["scene", "split"]].assign(frames=[len(scenes[s]) for s in split["scene"]])
    for name in SPLITS:
        if not (split["split"] == name).any():
            raise DataError(f"no {name} scenes in the split of {d['root']}; adjust data.split_file or the fractions")
    return SceneData(data.root, split, scenes)


def frame_loader(cfg: Mapping, model) -> FrameLoader:
    m = cfg["model"]
    return FrameLoader(m["image_size"], model.backbone.grid, m["pc_range"], cache=bool(cfg["data"]["cache_images"]))


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: SceneData | None = None) -> None:
    """Train into ``run_dir`` (continuing from its last checkpoint if it has one), then evaluate."""
    if ctx.distributed:
        raise ConfigError("toc3d trains in one process; run it without torchrun")
    data = data if data is not None else load_data(cfg, run_dir)
    if not (run_dir / SPLIT).is_file():
        write_split(run_dir, data.split)
    seed_everything(int(cfg["seed"]))
    model = build_detector(cfg["model"], len(DETECTION_CLASSES))
    if cfg["model"]["weights"]:
        load_weights(model, Path(cfg["model"]["weights"]).expanduser())
    n_train = sum(len(s) for s in data.of("train"))
    log.info("training on %d frames of %d scenes (%d parameters)", n_train, len(data.of("train")),
             sum(p.numel() for p in model.parameters()))
    fit(model, frame_loader(cfg, model), data.of("train"), data.of("val"), DETECTION_CLASSES, cfg, run_dir,
        ctx.device)
    evaluate(cfg, run_dir, ctx, data)


def ablation(cfg: Mapping, model, loader: FrameLoader, scenes: list[list], device, repeats: int | None = None,
             precisions: tuple[str, ...] = ("fp32",)) -> pd.DataFrame:
    """The trained model on ``scenes`` without compression, at each ablation ratio and with random scoring, at
    each of ``precisions`` (all timed interleaved in every repeat): median backbone and whole-model latency
    per frame, mAP, NDS and the share of GT-box tokens kept. Changes are against no compression at the same
    precision; ``backbone_vs_fp32`` is the same setting's backbone time over its fp32 time."""
    e = cfg["eval"]
    settings = ablation_settings(e["ablation_ratios"], e["random_ratios"], precisions)
    frames = scenes[0][: max(1, e["latency_frames"])]
    times = latency(model, loader, frames, settings, device, repeats or e["latency_repeats"])
    rows = []
    for s in settings:
        result = score(predict_scenes(model, loader, scenes, DETECTION_CLASSES, device, s, e["max_boxes"]),
                       DETECTION_CLASSES)
        rows.append({"setting": s.name, "precision": s.precision,
                     "keep_ratios": "none" if s.keep_ratios is None else list(s.keep_ratios),
                     "scoring": "none" if s.keep_ratios is None else s.scoring,
                     "backbone_ms": times[s.name]["backbone"], "model_ms": times[s.name]["model"],
                     "map": result["map"], "nds": result["nds"], "map_present": result["present"]["map"],
                     "nds_present": result["present"]["nds"], "gt_token_share_kept": result["gt_token_share_kept"]})
    table = pd.DataFrame(rows)
    base = table.groupby("precision").transform("first")  # each precision's no-compression row
    table["backbone_change"] = table["backbone_ms"] / base["backbone_ms"] - 1
    table["model_change"] = table["model_ms"] / base["model_ms"] - 1
    table["nds_points"] = (table["nds"] - base["nds"]) * 100
    fp32_ms = dict(zip(table["setting"], table["backbone_ms"], strict=True))
    table["backbone_vs_fp32"] = [ms / fp32_ms.get(s.at("fp32").name, float("nan"))
                                 for ms, s in zip(table["backbone_ms"], settings, strict=True)]
    return table


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: SceneData | None = None) -> dict:
    """Best checkpoint on val and test (once) -> metrics.json, predictions.csv, ablation.csv."""
    data = data if data is not None else load_data(cfg, run_dir)
    best = run_dir / BEST_WEIGHTS
    if not best.is_file():
        raise DataError(f"{best} not found; train the run first (pipelines run toc3d ...)")
    model = load_model(best, ctx.device).model
    seed_everything(int(cfg["seed"]))  # random scoring in the ablation draws from torch's generator
    loader = frame_loader(cfg, model)
    e = cfg["eval"]
    main, checked, precision_table = _main_setting(cfg, model, loader, data, ctx.device)
    results, predictions = {}, []
    for split in ("val", "test"):
        prediction = checked if split == "val" and checked else predict_scenes(
            model, loader, data.of(split), DETECTION_CLASSES, ctx.device, main, e["max_boxes"])
        results[split] = score(prediction, DETECTION_CLASSES)
        predictions += [{"split": split, "sample_token": token, **_flat(b)}
                        for token, boxes in prediction["boxes"].items() for b in boxes]
    write_csv(run_dir / PREDICTIONS, pd.DataFrame(predictions))
    table = ablation(cfg, model, loader, data.of("test"), ctx.device, precisions=("fp32", main.precision))
    write_csv(run_dir / ABLATION, table)
    history = pd.read_csv(run_dir / HISTORY) if (run_dir / HISTORY).is_file() else pd.DataFrame()
    selected = int(history.loc[history["best"], "epoch"].iloc[-1]) if len(history) else None
    test = results["test"]
    metrics = {
        "map": test["map"], "nds": test["nds"], "tp_errors": test["tp_errors"], **results,
        "ablation": table.to_dict(orient="records"),
        "info": {"task": "toc3d", "demo": bool(cfg["run"]["demo"]), "selected_epoch": selected,
                 "keep_ratios": main.at("fp32").name, "precision": precision_table,
                 "monitor": "val NDS over the classes present",
                 "protocol": "scenes split whole; selected on val; test evaluated once",
                 "classes_present": test["present"]["classes"]},
    }
    if metrics["info"]["demo"]:
        metrics["info"]["note"] = ("SYNTHETIC demo scenes: these numbers say nothing about real nuScenes; map/nds "
                                   "count all 10 classes (absent ones score 0), see present for the classes present")
    write_json(run_dir / METRICS_FILE, metrics)
    return metrics


def _main_setting(cfg: Mapping, model, loader: FrameLoader, data: SceneData, device) -> tuple[Setting, dict | None,
                                                                                            dict]:
    """The evaluation's setting (``model.keep_ratios`` at ``eval.precision``); with ``auto`` the check on
    validation, whose prediction is returned so val is not predicted twice; metrics.json's ``precision``."""
    e = cfg["eval"]
    asked = _asked_precision(e)
    keep = Setting(cfg["model"]["keep_ratios"])
    if asked != "auto":
        precision = resolve_precision(asked, device)
        return keep.at(precision), None, {"chosen": precision, "by": f"eval.precision={asked}",
                                          "device": device.type}
    chosen, prediction, table = check_precisions(
        model, loader, data.of("val"), DETECTION_CLASSES, device, keep, e["max_boxes"],
        float(e["precision_tolerance"]), e["latency_frames"], e["latency_repeats"])
    return keep.at(chosen), prediction, table


def _flat(box: Mapping) -> dict:
    x, y, z = box["translation"]
    w, length, h = box["size"]
    return {"class": box["detection_name"], "score": box["detection_score"], "x": x, "y": y, "z": z, "w": w,
            "l": length, "h": h, **dict(zip(("qw", "qx", "qy", "qz"), box["rotation"], strict=True)),
            "vx": box["velocity"][0], "vy": box["velocity"][1], "attribute": box["attribute_name"]}


def summary_lines(split: str, m: Mapping) -> list[str]:
    """nuScenes mAP/NDS over all 10 classes and over the classes present, with the TP errors."""
    p = m["present"]
    errors = ", ".join(f"{k} {v:.3f}" for k, v in p["tp_errors"].items() if v is not None)
    return [f"{split}: mAP {m['map']:.3f}, NDS {m['nds']:.3f} (all 10 classes); over the classes present "
            f"({', '.join(p['classes'])}): mAP {p['map']:.3f}, NDS {p['nds']:.3f}; {errors}"]


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a ToC3D detector beyond its metrics: its data, its use and its limits."""
    table = read_split(run_dir, dtype={"scene": str})
    counts = ""
    if table is not None:
        per = table.groupby("split").agg(scenes=("scene", "size"), frames=("frames", "sum"))
        counts = " (" + ", ".join(f"{s} {r.scenes} scenes / {r.frames} frames" for s, r in per.iterrows()) + ")"
    m = cfg["model"]
    return {
        "colour": "rgb",
        "training_data": f"nuScenes-format multi-camera scenes ({cfg['data']['version']}), split by whole "
                         f"scenes{counts}; ViT {m['embed_dim']}x{m['depth']} at {m['image_size'][0]}x"
                         f"{m['image_size'][1]} px, keep ratios {m['keep_ratios']}",
        "intended_use": "Research on camera-only 3D detection and token compression (speed against NDS), "
                        "never to drive or to decide anything on a road.",
        "limitations": [
            "Trained on the scenes of one data set: other cities, cameras, rigs and weather shift the images.",
            "Compression keeps the tokens its scorer expects objects in: small or unusual objects may lose detail.",
            "Box scores are not calibrated probabilities.",
        ],
    }
