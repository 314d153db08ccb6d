"""Real-data results: every experiment from scratch and from the packaged ImageNet weights, same recipe otherwise.

    python benchmarks/real_data.py --shared ../shared --out runs/real_data            # everything
    python benchmarks/real_data.py --only breastmnist,breakhis                        # a subset
    python benchmarks/real_data.py --only fuseg --starts pretrained                   # one start (others kept)

Each experiment runs the pipelines as a user would (``pipelines run TASK``, in this process, one after the
other), selects its checkpoint on validation and touches its test data once. Experiments:

- ``breastmnist``: ``medmnist`` on the official BreastMNIST split (546/78/156 images of 28 px, upsampled to
  ``--breast-size``), EfficientNet-Lite0; test ACC and AUC with 95% bootstrap intervals.
- ``fuseg``: ``segment`` on the 50 FUSeg 2021 wound photos, 5-fold cross-validation by near-duplicate group
  (each fold's 10 test photos are fixed; validation is drawn from the other 40), and each fold's model on the 8
  Medetec images as an external test. Dice is the wound F1 pooled over each test set's pixels; the headline is
  the mean over folds with a t interval, next to the pooled Medetec Dice of every fold's model.
- ``roads``: ``buildings`` on the 8 Massachusetts road tiles (5 train, 1 val, 2 test; road masks in the
  buildings layout), U-Net++ on Lite0; test IoU with its interval over resampled tiles.
- ``breakhis``: ``classify`` on the 10 BreakHis sample images, grouped by patient through a path,group CSV:
  only a check that real files flow through the own-folder task (the test split holds two or three images).

Writes ``OUT/real_data.json`` (every number, its interval, the recipe and the seconds) and
``OUT/real_data.md`` (the table for the README). The run folders stay under ``OUT`` for the dashboards.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pipelines.cli import main as cli
from pipelines.core.io import write_json

EXPERIMENTS = ("breastmnist", "fuseg", "roads", "breakhis")
STARTS = {"scratch": {"model.pretrained": "false"}, "pretrained": {"model.pretrained": "true"}}


def _sets(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def run(task: str, root: Path, out: Path, name: str, sets: dict) -> tuple[dict, float, Path]:
    """``pipelines run TASK`` into ``out/TASK/name``: (metrics.json, seconds, run folder). Reuses a finished run."""
    run_dir = out / task / name
    if not (run_dir / "metrics.json").is_file():
        start = time.perf_counter()
        code = cli(["run", task, "--data-root", str(root), "--output", str(out), "--name", name, *_sets(sets)])
        if code:
            raise SystemExit(f"{task} {name} failed (exit {code})")
        (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    return json.loads((run_dir / "metrics.json").read_text()), float((run_dir / "seconds.txt").read_text()), run_dir


def _ci(m: dict, key: str) -> list[float] | None:
    return (m.get("ci95") or {}).get(key)


def starts(args) -> list[tuple[str, dict]]:
    """The starts ``--starts`` asks for (scratch, pretrained), each with its settings."""
    return [(s, STARTS[s]) for s in args.starts.split(",")]


def _compare(task: str, root: Path, out: Path, prefix: str, recipe: dict, experiment: str, metric: str,
             keys: tuple[str, ...], args, n_key: str = "n") -> list[dict]:
    """One run per start (scratch, pretrained) of ``task`` with ``recipe``: a result row each, ``keys`` of test."""
    rows = []
    for start, flag in starts(args):
        m, seconds, _ = run(task, root, out, f"{prefix}_{start}", {**recipe, **flag})
        t = m["test"]
        rows.append({"experiment": experiment, "start": start, "metric": metric, "values": {k: t[k] for k in keys},
                     "ci95": {k: _ci(t, k) for k in keys}, "n": t[n_key], "seconds": seconds, "recipe": recipe})
    return rows


def breastmnist(shared: Path, out: Path, args) -> list[dict]:
    recipe = {"model.backbone": "efficientnet_lite0", "data.image_size": args.breast_size,
              "data.dataset": "breastmnist"}
    return _compare("medmnist", shared / "medmnist", out, "breastmnist", recipe, "BreastMNIST (official split)",
                    "test ACC / AUC", ("acc", "auc"), args)


def _fold_layout(images: Path, masks: Path, folds: int, out: Path, max_distance: int, seed: int) -> list[Path]:
    """One folder per fold (symbolic links): train/ (the other folds) and test/ (this fold) of images/ and masks/;
    folds are whole near-duplicate groups, so no copy of a photo is on both sides."""
    from sklearn.model_selection import GroupKFold

    from pipelines.datasets.folders import near_duplicate_column

    names = sorted(p.name for p in images.iterdir() if not p.name.startswith("."))
    groups = near_duplicate_column(images, pd.Series(names), max_distance)
    order = np.random.default_rng(seed).permutation(len(names))  # GroupKFold is deterministic: shuffle the rows
    roots = []
    for k, (train, test) in enumerate(GroupKFold(folds).split(order, groups=groups.iloc[order].to_numpy())):
        root = out / "fuseg_folds" / f"fold{k}"
        for split, index in (("train", train), ("test", test)):
            for kind, folder in (("images", images), ("masks", masks)):
                target = root / split / kind
                target.mkdir(parents=True, exist_ok=True)
                for i in order[index]:
                    link = target / names[i]
                    if not link.exists():
                        link.symlink_to((folder / names[i]).resolve())
        roots.append(root)
    return roots


def _external(run_dir: Path, root: Path, masks_dir: str = "labels", threshold: float | None = None) -> dict:
    """The run's best model on every image/mask pair under ``root``, at ``threshold`` (None: the one saved with
    the model): pooled scores with 95% intervals."""
    import torch

    from pipelines.datasets.folders import read_pair_folders
    from pipelines.engine.segmentation import TileTable, score_tiles
    from pipelines.models import load_model
    from pipelines.runs import read_config
    from pipelines.tasks.segment import read_pair

    cfg = read_config(run_dir)
    table = read_pair_folders(root, masks_dir=masks_dir).assign(split="test")
    data = TileTable(table, root, read_pair, target="wound")
    loaded = load_model(run_dir)
    e = {**cfg["eval"], "threshold": loaded.spec.input.threshold if threshold is None else threshold}
    scores, _ = score_tiles(loaded.model, data.tiles("test"), e, torch.device("cpu"), amp=False, bootstrap=1000,
                            seed=0)
    return scores


def fuseg(shared: Path, out: Path, args) -> list[dict]:
    base = shared / "fuseg2021"
    roots = _fold_layout(base / "train" / "images", base / "train" / "labels", args.folds, out, 64, seed=0)
    recipe = {"data.target": "wound", "train.epochs": args.seg_epochs, "data.crops_per_tile": args.seg_crops}
    rows = []
    for start, flag in starts(args):
        dice, at_half, thresholds, external, seconds = [], [], [], [], 0.0
        for k, root in enumerate(roots):
            m, s, run_dir = run("segment", root, out, f"fuseg_{start}_fold{k}", {**recipe, **flag})
            dice.append(m["test"]["f1"])
            thresholds.append(m["info"]["threshold"])
            # what the validation-chosen cut changed: the same fold's test photos at 0.5 (an ablation, reported)
            at_half.append(_external(run_dir, root / "test", "masks", 0.5)["f1"])
            external.append(_external(run_dir, base / "medetec_test")["f1"])
            seconds += s
        mean = statistics.fmean(dice)
        half = _t95(len(dice)) * statistics.stdev(dice) / math.sqrt(len(dice)) if len(dice) > 1 else float("nan")
        interval = [max(0.0, mean - half), min(1.0, mean + half)]
        rows.append({"experiment": f"FUSeg wound segmentation ({args.folds}-fold CV, 50 photos)", "start": start,
                     "metric": "test Dice, mean of folds", "values": {"dice": mean}, "ci95": {"dice": interval},
                     "folds": dice, "thresholds": thresholds, "folds_at_0.5": at_half, "n": 50, "seconds": seconds,
                     "recipe": recipe})
        ext = statistics.fmean(external)
        rows.append({"experiment": "Medetec external test (8 images, each fold's model)", "start": start,
                     "metric": "Dice, mean of the fold models", "values": {"dice": ext},
                     "ci95": {"dice": [min(external), max(external)]}, "folds": external, "n": 8, "seconds": 0.0,
                     "recipe": recipe, "interval": "range over the fold models"})
    return rows


def _t95(n: int) -> float:
    return {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78, 6: 2.57, 7: 2.45, 8: 2.36, 9: 2.31, 10: 2.26}.get(n, 1.96)


def roads(shared: Path, out: Path, args) -> list[dict]:
    recipe = {"model.encoder": "tu-tf_efficientnet_lite0", "data.format": "png", "train.epochs": args.road_epochs,
              "data.crops_per_tile": args.road_crops, "data.mask_nodata": True,  # 45-87% of each tile is white no-data
              **({"train.patience": args.road_patience}
                                                         if args.road_patience else {})}
    return _compare("buildings", shared / "massachusetts_roads", out, "roads", recipe,
                    "Massachusetts roads (8 tiles: 5 / 1 / 2)", "test IoU", ("iou", "f1"), args, n_key="n_tiles")


def breakhis(shared: Path, out: Path, args) -> list[dict]:
    root = shared / "breakhis" / "BreaKHis_v1" / "histology_slides" / "breast"
    groups = out / "breakhis_groups.csv"
    paths = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    groups.parent.mkdir(parents=True, exist_ok=True)
    # BreaKHis keeps each patient's images in one folder (SOB_B_F_14-25197/40X/...): that folder is the group
    pd.DataFrame({"path": paths, "group": [Path(p).parts[-3] for p in paths]}).to_csv(groups, index=False)
    recipe = {"data.groups": str(groups), "data.image_size": 96, "train.epochs": 5, "eval.bootstrap": 200,
              "data.val_fraction": 0.3, "data.test_fraction": 0.3}
    return _compare("classify", root, out, "breakhis", recipe,
                    "BreakHis sample through classify (10 images, 8 patients)", "test accuracy", ("accuracy",), args)


def _fmt(row: dict) -> str:
    parts = []
    for key, value in row["values"].items():
        ci = row["ci95"].get(key)
        parts.append(f"{key} {value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
    return "; ".join(parts)


def table(rows: list[dict]) -> str:
    lines = ["| experiment | start | metric | result [95% interval] | test n | minutes |", "|---|---|---|---|---|---|"]
    for r in rows:
        minutes = f"{r['seconds'] / 60:.1f}" if r["seconds"] else "-"
        lines.append(f"| {r['experiment']} | {r['start']} | {r['metric']} | {_fmt(r)} | {r['n']} | {minutes} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path(os.environ.get("PIPELINES_SHARED", "../shared")))
    parser.add_argument("--out", type=Path, default=Path("runs/real_data"))
    parser.add_argument("--only", default=",".join(EXPERIMENTS), help="comma-separated subset of EXPERIMENTS")
    parser.add_argument("--starts", default=",".join(STARTS), help="comma-separated subset of scratch,pretrained")
    parser.add_argument("--breast-size", type=int, default=96, help="network input of BreastMNIST's 28 px images")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seg-epochs", type=int, default=40, help="segment epochs per FUSeg fold")
    parser.add_argument("--seg-crops", type=int, default=4, help="random crops per photo and epoch")
    parser.add_argument("--road-epochs", type=int, default=40)
    parser.add_argument("--road-crops", type=int, default=32, help="random crops per road tile and epoch")
    parser.add_argument("--road-patience", type=int, default=40,
                        help="epochs without a better val IoU before stopping (default: 40, no early stop)")
    args = parser.parse_args(argv)
    data = args.shared / "data"
    chosen = [e.strip() for e in args.only.split(",") if e.strip()]
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        parser.error(f"unknown experiment(s) {unknown}; choose from {', '.join(EXPERIMENTS)}")
    wanted = set(args.starts.split(","))
    if not wanted <= set(STARTS):
        parser.error(f"unknown start(s) {sorted(wanted - set(STARTS))}; choose from {', '.join(STARTS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    results_file = args.out / "real_data.json"
    rows = json.loads(results_file.read_text())["rows"] if results_file.is_file() else []
    for name in chosen:
        rows = [r for r in rows if not (r.get("source") == name and r["start"] in wanted)]  # others are kept
        started = time.perf_counter()
        new = globals()[name](data, args.out, args)
        for r in new:
            r["source"] = name
        rows += new
        write_json(results_file, {"rows": rows, "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0") or 0)})
        print(f"{name}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    text = table(rows)
    (args.out / "real_data.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
