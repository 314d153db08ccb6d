"""Soft-voting ensembles of classifiers, each trained like any single run, and pseudo-labels from them.

A member is an ordinary classification run folder (``checkpoints/``, ``history.csv``) under the ensemble's
stage folder, named after its backbone, so one member's training resumes and reads like any run's. The
ensemble's probability is the plain mean of its members' softmax outputs (soft voting).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.core.device import Context
from pipelines.engine.classification import LabelledImages, classifier_spec_of, load_best_model, train_classifier
from pipelines.engine.precision import classifier_probabilities
from pipelines.models import SoftVote
from pipelines.runs import write_run_files
from pipelines.training import make_loader, predict

__all__ = ["member_config", "train_members", "predict_members", "ensemble_probabilities", "soft_vote",
           "select_pseudo_labels"]

log = logging.getLogger(__name__)


def member_config(cfg: Mapping, backbone: str) -> dict:
    """The ensemble's config as one member sees it: ``model.backbone`` set, its own local weights if any."""
    member = copy.deepcopy(dict(cfg))
    m = member["model"]
    weights = (m.get("weights") or {}).get(backbone)
    member["model"] = {"backbone": backbone, "weights": weights, "pretrained_hub": m["pretrained_hub"],
                       "pretrained": m.get("pretrained", False), "init_from": None, "drop_rate": m["drop_rate"]}
    return member


def train_members(data: LabelledImages, cfg: Mapping, stage_dir: Path, ctx: Context,
                  split: pd.DataFrame | None = None, run_dir: Path | None = None) -> list[Path]:
    """Train every backbone of ``model.backbones`` on ``data`` into ``stage_dir/<backbone>``; a member
    that already finished (or stopped early) is not trained again, a killed one resumes.

    Each member folder is a run folder of its own: config.yaml (the member's config; ``run.member`` names its
    stage and backbone, ``run.part_of`` the ensemble's ``run_dir`` relative to it), environment.json and
    split.csv (``split``, else ``data.table``), written by rank 0.
    """
    folders = []
    for i, backbone in enumerate(cfg["model"]["backbones"]):
        folder = Path(stage_dir) / backbone
        member = member_config(cfg, backbone)
        member["seed"] = int(cfg["seed"]) + i  # members differ in initialisation and sampling too
        member["run"] = {**member.get("run", {}), "member": {"stage": Path(stage_dir).name, "backbone": backbone},
                         **({"part_of": os.path.relpath(run_dir, folder)} if run_dir is not None else {})}
        if ctx.is_main:
            write_run_files(folder, member, ctx.device, data.table if split is None else split,
                            {"world_size": ctx.world_size})
        log.info("%s: training member %d/%d (%s)", Path(stage_dir).name, i + 1, len(cfg["model"]["backbones"]),
                 backbone)
        train_classifier(data, member, folder, ctx)
        folders.append(folder)
    return folders


def _loader(data: LabelledImages, cfg: Mapping, rows: pd.DataFrame, ctx: Context):
    """``rows`` of ``data.table`` (labelled or not) through the evaluation transform, in order."""
    d, e = cfg["data"], cfg["eval"]
    view = LabelledImages(rows.assign(split="predict", label=data.class_names[0]), data.root, data.class_names)
    dataset = view.dataset("predict", "none", d["image_size"], d["cache_images"])
    return make_loader(dataset, e["batch_size"], d["workers"], int(cfg["seed"]), device=ctx.device)


def _member(cfg: Mapping, folder: Path, data: LabelledImages, ctx: Context) -> torch.nn.Module:
    model = load_best_model(folder, classifier_spec_of(member_config(cfg, Path(folder).name), data.class_names))
    model = model.to(ctx.device)
    return model.to(memory_format=torch.channels_last) if cfg["train"]["channels_last"] else model


@torch.no_grad()
def predict_members(data: LabelledImages, cfg: Mapping, member_dirs: Sequence[Path], rows: pd.DataFrame,
                    ctx: Context) -> dict[str, np.ndarray]:
    """Each member's best checkpoint on ``rows`` of ``data.table`` (labelled or not): ``{backbone: probs (N, K)}``."""
    loader = _loader(data, cfg, rows, ctx)
    return {Path(folder).name: predict(_member(cfg, folder, data, ctx), loader, ctx.device, cfg["train"]["amp"],
                                       bool(cfg["train"]["channels_last"]), desc=f"predict {Path(folder).name}",
                                       show=ctx.is_main)
            for folder in member_dirs}


def ensemble_probabilities(data: LabelledImages, cfg: Mapping, member_dirs: Sequence[Path], scoring, headline: str,
                           run_dir: Path, ctx: Context) -> tuple[dict[str, np.ndarray], dict]:
    """The soft-voting ensemble as the one model a run serves, on val and test at ``eval.precision`` (``auto``:
    each path checked on val, the whole ensemble as one graph for int8), and metrics.json's ``precision``."""
    ensemble = SoftVote([_member(cfg, f, data, ctx) for f in member_dirs])
    loaders = {split: _loader(data, cfg, data.part(split), ctx) for split in ("val", "test")}
    return classifier_probabilities(ensemble, loaders, _loader(data, cfg, data.part("train"), ctx),
                                    data.labels("val"), scoring, headline, cfg["eval"], ctx.device,
                                    bool(cfg["train"]["amp"]), bool(cfg["train"]["channels_last"]), run_dir)


def soft_vote(member_probs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The mean of the members' class probabilities."""
    return np.mean(np.stack(list(member_probs.values())), axis=0)


def select_pseudo_labels(probs: np.ndarray, class_names: Sequence[str], threshold: float,
                         max_per_class: int | None) -> pd.DataFrame:
    """Which unlabelled images join training: ensemble confidence at least ``threshold``, the most
    confident ``max_per_class`` of each predicted class (so the majority classes cannot flood the set).

    Returns one row per selected image: ``position`` (into ``probs``), ``label``, ``confidence``.
    """
    if len(probs) == 0:
        return pd.DataFrame(columns=["position", "label", "confidence"])
    pred, conf = probs.argmax(1), probs.max(1)
    frame = pd.DataFrame({"position": np.arange(len(probs)), "label": [class_names[i] for i in pred],
                          "confidence": conf})
    frame = frame[frame["confidence"] >= threshold].sort_values(["confidence", "position"],
                                                                 ascending=[False, True])
    if max_per_class is not None:
        frame = frame.groupby("label", sort=False).head(int(max_per_class))
    return frame.sort_values("position").reset_index(drop=True)
