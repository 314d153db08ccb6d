"""DFUC2021 diabetic foot ulcers: none / infection / ischaemia / both, by an ensemble of EfficientNets.

Stages, each a soft-voting ensemble of ``model.backbones`` trained like any classification run under
``stages/<stage>/<backbone>/``:

1. ``baseline``: the real labelled training images.
2. ``pseudo1`` .. ``pseudoN``: the previous ensemble labels the unlabelled pool; confident images (capped
   per class) join the training set, marked ``source=pseudo`` in split.csv.
3. ``synthetic``: pix2pixHD images of the rare classes, up to ``synth.ratio`` per real training image of
   each, join too (``source=synthetic``, training split only, files under ``synthetic/``).

Validation and test are real labelled images only, split by near-duplicate groups so that twins never
straddle splits; unlabelled images that are twins of validation or test images never become pseudo-labels.
Every stage is scored on the same validation and test images: metrics.json compares baseline with the
final (extended) ensemble, and stages.csv holds every member's and ensemble's scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import check_declared, load_defaults
from pipelines.core.device import Context, on_main
from pipelines.core.errors import ConfigError
from pipelines.core.io import write_csv
from pipelines.datasets.dfu import CLASSES, dfu_split, read_dfuc, write_submission
from pipelines.datasets.dfu_demo import write_demo_dfuc
from pipelines.engine.calibration import calibrate_splits
from pipelines.engine.classification import LabelledImages, check_model_config, check_split_files, selected_epoch
from pipelines.engine.classification import summary_lines as summary_lines  # the task's headline
from pipelines.engine.ensemble import (
    ensemble_probabilities,
    predict_members,
    select_pseudo_labels,
    soft_vote,
    train_members,
)
from pipelines.engine.evaluation import Predicted, Scoring, compact_scores, score_split, write_report
from pipelines.models import save_ensemble
from pipelines.runs import PREDICTIONS as PREDICTIONS  # predictions.csv: one row per test image
from pipelines.runs import read_split, write_split
from pipelines.runs.folder import BEST_WEIGHTS, SPLIT

log = logging.getLogger(__name__)

DESCRIPTION = "diabetic foot ulcers (DFUC2021): EfficientNet ensembles, pseudo-labels, pix2pixHD images"
SPLIT_COLUMNS = ["image", "path", "split", "label", "group", "source", "round", "confidence"]
PREDICTION_COLUMNS = ["image", "path", "label", "group"]
GROUP = "near_duplicate_group"  # what split.csv's group is: metrics' near_duplicate_group_level, intervals by group

DEMO_OVERRIDES = {
    "data.image_size": 64,
    "data.cache_images": True,
    "data.workers": 0,
    "model.backbones": "[efficientnet_b0, efficientnet_b1]",
    "train.epochs": 10,
    "train.lr": 0.001,
    "train.patience": 10,
    "pseudo.threshold": 0.8,
    "pseudo.max_per_class": 100,
    "synth.size": 64,
    "synth.steps": 300,
    "synth.ngf": 16,
    "synth.n_downsampling": 2,
    "synth.n_blocks": 3,
    "eval.bootstrap": 200,
}

# The contract test's run (over DEMO_OVERRIDES, on prepare_demo(small=True)): every stage, in seconds.
SMOKE_OVERRIDES = {
    "data.image_size": 32,
    "model.backbones": "[efficientnet_b0]",
    "train.epochs": 1,
    "train.warmup_epochs": 0,
    "pseudo.threshold": 0.3,
    "synth.size": 32,
    "synth.steps": 2,
    "synth.ngf": 8,
    "synth.n_blocks": 1,
    "synth.ratio": 0.5,
    "eval.bootstrap": 20,
}

HEADLINE = ("macro_f1", "accuracy", "balanced_accuracy", "roc_auc")  # macro-F1: the challenge's metric

DEFAULTS = Path(__file__).with_name("dfu.yaml")  # choices and ranges are declared beside each key


def defaults() -> dict:
    return load_defaults(DEFAULTS)


def validate(cfg: Mapping) -> None:
    if cfg.get("run", {}).get("part_of"):  # a member's or the generator's own config.yaml
        raise ConfigError(f"this folder is part of a DFU run ({cfg['run']['part_of']} from it); resume that run")
    check_declared(cfg, DEFAULTS)
    m, p, s = cfg["model"], cfg["pseudo"], cfg["synth"]
    if not m["backbones"] or not all(isinstance(b, str) for b in m["backbones"]):
        raise ConfigError("model.backbones must list at least one backbone, e.g. [efficientnet_b0, efficientnet_b1]")
    if len(set(m["backbones"])) != len(m["backbones"]):
        raise ConfigError(f"model.backbones lists a backbone twice: {m['backbones']}")
    unknown = sorted(set(m["weights"]) - set(m["backbones"]))
    if unknown:
        raise ConfigError(f"model.weights names {unknown}, which are not in model.backbones {m['backbones']}")
    for backbone in m["backbones"]:
        single = {**cfg, "model": {"backbone": backbone, "weights": m["weights"].get(backbone), "init_from": None,
                                   "pretrained": m.get("pretrained", False)}}
        check_model_config(single)
    if p["rounds"] < 0 or not 0 < p["threshold"] <= 1:
        raise ConfigError("pseudo.rounds must be >= 0 and pseudo.threshold in (0, 1]")
    if s["enabled"]:
        bad = sorted(set(s["classes"]) - set(CLASSES))
        if bad or not s["classes"]:
            raise ConfigError(f"synth.classes {s['classes']} must name some of {', '.join(CLASSES)}")
        if s["ratio"] <= 0:
            raise ConfigError(f"synth.ratio must be > 0, got {s['ratio']}")
        if s["size"] % 2 ** s["n_downsampling"]:
            raise ConfigError(f"synth.size={s['size']} must be a multiple of 2**synth.n_downsampling")
        if s["generator"] and not Path(s["generator"]).expanduser().is_file():
            raise ConfigError(f"synth.generator file not found: {s['generator']}; train one with 'pipelines synth' "
                              "or set synth.generator=null to train it in this run")


def prepare_demo(data_dir: Path, small: bool = False) -> Path:
    """Write (once) the synthetic DFUC2021-layout demo; returns the data root to use. ``small``: 80 labelled,
    16 unlabelled and 4 unlisted patches of 32 px."""
    if small:
        return write_demo_dfuc(Path(data_dir) / "dfuc2021_small", n_labelled=80, n_unlabelled=16, n_unlisted=4,
                               size=32)
    return write_demo_dfuc(Path(data_dir) / "dfuc2021", n_labelled=600, n_unlabelled=200)


def stages(cfg: Mapping) -> list[str]:
    """The stages this run trains, in order; the last is the final (reported) ensemble."""
    names = ["baseline", *[f"pseudo{r}" for r in range(1, int(cfg["pseudo"]["rounds"]) + 1)]]
    return names + (["synthetic"] if cfg["synth"]["enabled"] else [])


def _round(stage: str, cfg: Mapping) -> int:
    """How many pseudo-label rounds a stage's training set includes."""
    if stage == "baseline":
        return 0
    return int(stage.removeprefix("pseudo")) if stage.startswith("pseudo") else int(cfg["pseudo"]["rounds"])


@dataclass
class DfuData:
    """split.csv as a table (``SPLIT_COLUMNS``): real labelled rows in train/val/test, the unlabelled pool
    (``unlabelled``, or ``held_out`` for twins of val/test images), the challenge's unlisted test images
    (``unlisted``), and pseudo-labelled and synthetic training rows added by the stages."""

    table: pd.DataFrame
    root: Path
    run_dir: Path | None = None

    def rows(self, split: str) -> pd.DataFrame:
        return self.table[self.table["split"] == split]

    def stage_rows(self, stage: str, cfg: Mapping) -> pd.DataFrame:
        """Train rows of ``stage`` (real, + pseudo rounds so far, + synthetic in the last stage), val and
        test, as split.csv holds them (a member's split.csv)."""
        t = self.table
        train = (t["split"] == "train") & (
            (t["source"] == "real")
            | ((t["source"] == "pseudo") & (t["round"] <= _round(stage, cfg)))
            | ((t["source"] == "synthetic") & (stage == "synthetic"))
        )
        return t[train | t["split"].isin(["val", "test"])][SPLIT_COLUMNS].reset_index(drop=True)

    def labelled(self, stage: str, cfg: Mapping) -> LabelledImages:
        """:meth:`stage_rows` as training reads them (synthetic images in the run folder, not the data root)."""
        rows = self.stage_rows(stage, cfg)
        synthetic = rows["source"] == "synthetic"
        if synthetic.any():  # absolute: a relative run folder (--output runs) is not under the data root
            rows.loc[synthetic, "path"] = [str(self.run_dir.resolve() / p) for p in rows.loc[synthetic, "path"]]
        return LabelledImages(rows, self.root, list(CLASSES), group_name=GROUP)

    def save(self) -> None:
        write_split(self.run_dir, self.table[SPLIT_COLUMNS])


def build_split(cfg: Mapping) -> pd.DataFrame:
    """Read the data set and split it by near-duplicate groups (``SPLIT_COLUMNS``)."""
    d = cfg["data"]
    frame = read_dfuc(d["root"], verify=d["verify_images"])
    frame = frame.join(dfu_split(frame, d["root"], d["val_fraction"], d["test_fraction"], int(cfg["seed"]),
                                 d["grouping"], d["max_distance"]))
    frame["group"] = "g" + frame["group"].astype(str)
    frame["source"] = np.where(frame["labelled"], "real", "")
    frame["round"] = np.nan
    frame["confidence"] = np.nan
    return frame[SPLIT_COLUMNS]


def load_data(cfg: Mapping, run_dir: Path | None = None) -> DfuData:
    """The run's split.csv if it has one (resume, eval), else a new scan, grouping and split of ``data.root``."""
    table = read_split(run_dir, dtype={"image": str, "group": str, "label": str, "source": str},
                       keep_default_na=False, na_values={"round": [""], "confidence": [""]})
    if table is not None:
        data = DfuData(table, Path(cfg["data"]["root"]), run_dir)
        check_split_files(data.root, table.loc[table["source"] != "synthetic", "path"])  # synthetic: in the run
        return data
    return DfuData(build_split(cfg), Path(cfg["data"]["root"]), run_dir)


def member_folders(cfg: Mapping, run_dir: Path) -> list[Path]:
    """Each stage's members, trained like any classification run under ``stages/<stage>/<backbone>/``."""
    return [run_dir / "stages" / stage / b for stage in stages(cfg) for b in cfg["model"]["backbones"]]


def card_facts(cfg: Mapping, run_dir: Path) -> dict:
    """What a model card says about a DFU ensemble beyond its metrics: its data, its use and its limits."""
    counts = ""
    table = read_split(run_dir, dtype=str, keep_default_na=False)
    if table is not None:
        train = table[table["split"] == "train"].groupby("source").size().to_dict()
        held = {s: int((table["split"] == s).sum()) for s in ("val", "test")}
        counts = (f"; training images {', '.join(f'{n} {s}' for s, n in sorted(train.items()))}; "
                  f"val {held['val']} / test {held['test']} real images")
    return {
        "colour": "rgb",
        "training_data": f"DFUC2021 foot-ulcer patches (none / infection / ischaemia / both), split by "
                         f"{cfg['data']['grouping'].replace('_', '-')} groups; soft-voting ensemble of "
                         f"{' + '.join(cfg['model']['backbones'])}{counts}",
        "intended_use": "Research on photographs of diabetic foot ulcers cropped like DFUC2021's patches: to study "
                        "models and to give a second look, never to diagnose infection or ischaemia.",
        "limitations": [
            "One challenge data set: other cameras, lighting, skin tones and wound care shift the images.",
            "Ischaemia is rare (227 of 5,955 labelled DFUC2021 images): its scores rest on few test images.",
            "Pseudo-labels and pix2pixHD images in training can repeat the first ensemble's mistakes.",
            "Probabilities are not calibrated to any clinical population's prevalence.",
        ],
    }


def _counts(data: LabelledImages) -> dict:
    train = data.part("train")
    return {source: rows["label"].value_counts().reindex(CLASSES, fill_value=0).astype(int).to_dict()
            for source, rows in train.groupby("source")}


def _pseudo_label(data: DfuData, cfg: Mapping, stage: str, previous: Path, ctx: Context) -> None:
    """Add this round's pseudo-labels to split.csv (once: a resumed run keeps the ones it chose). Rank 0
    chooses and writes them; the other ranks wait and take its table."""
    if not (data.table["round"] == _round(stage, cfg)).any():
        data.table = on_main(ctx, _choose_pseudo_labels, data, cfg, stage, previous, ctx)


def _choose_pseudo_labels(data: DfuData, cfg: Mapping, stage: str, previous: Path, ctx: Context) -> pd.DataFrame:
    r = _round(stage, cfg)
    pool = data.rows("unlabelled")
    if pool.empty:
        log.info("%s: the unlabelled pool is empty; no pseudo-labels", stage)
        data.save()
        return data.table
    members = [previous / b for b in cfg["model"]["backbones"]]
    probs = soft_vote(predict_members(data.labelled("baseline", cfg), cfg, members, pool, ctx))
    p = cfg["pseudo"]
    chosen = select_pseudo_labels(probs, CLASSES, p["threshold"], p["max_per_class"])
    index = pool.index[chosen["position"].to_numpy()]
    data.table.loc[index, ["split", "source"]] = ["train", "pseudo"]
    data.table.loc[index, "label"] = chosen["label"].to_numpy()
    data.table.loc[index, "round"] = r
    data.table.loc[index, "confidence"] = chosen["confidence"].to_numpy()
    counts = chosen["label"].value_counts().reindex(CLASSES, fill_value=0).to_dict()
    log.info("%s: %d of %d unlabelled images pseudo-labelled (confidence >= %.2f): %s", stage, len(chosen),
             len(pool), p["threshold"], counts)
    data.save()
    return data.table


def _synthesise(data: DfuData, cfg: Mapping, ctx: Context) -> None:
    """Train (or load) the generator and add synthetic images of ``synth.classes`` to split.csv (once).
    Rank 0 trains, generates and writes; the other ranks wait and take its table."""
    if not (data.table["source"] == "synthetic").any():
        data.table = on_main(ctx, _synthesise_on_main, data, cfg, ctx)


def _synthesise_on_main(data: DfuData, cfg: Mapping, ctx: Context) -> pd.DataFrame:
    from pipelines.synthesis.rare_classes import synthesise_rare_classes

    # the generator learns from the real training images of the classes it is to draw, so that their
    # look is not drowned out by the common classes (no validation or test image ever reaches it)
    train = data.table[(data.table["split"] == "train") & (data.table["source"] == "real")]
    rows = synthesise_rare_classes(train[SPLIT_COLUMNS], data.root, data.run_dir, cfg["synth"], CLASSES,
                                   int(cfg["seed"]), ctx.device)
    data.table = pd.concat([data.table, pd.DataFrame(rows, columns=SPLIT_COLUMNS)], ignore_index=True)
    data.save()
    return data.table


def train(cfg: Mapping, run_dir: Path, ctx: Context, data: DfuData | None = None) -> None:
    """Train every stage's ensemble into ``run_dir/stages`` (resuming where a killed run stopped), then evaluate."""
    data = data if data is not None else load_data(cfg, run_dir)
    data.run_dir = run_dir
    if ctx.is_main and not (run_dir / SPLIT).is_file():
        data.save()
    counts = data.table.groupby("split").size().to_dict()
    log.info("DFUC2021: %s images per split; near-duplicate groups with twins: %d", counts,
             int((data.table[data.table["source"] == "real"].groupby("group").size() > 1).sum()))
    previous = None
    for stage in stages(cfg):
        if stage.startswith("pseudo"):
            _pseudo_label(data, cfg, stage, previous, ctx)
        elif stage == "synthetic":
            _synthesise(data, cfg, ctx)
        labelled = data.labelled(stage, cfg)
        log.info("stage %s: training images by source and class %s", stage, _counts(labelled))
        train_members(labelled, cfg, run_dir / "stages" / stage, ctx, data.stage_rows(stage, cfg), run_dir)
        previous = run_dir / "stages" / stage
    if ctx.is_main:
        evaluate(cfg, run_dir, ctx, data)


def evaluate(cfg: Mapping, run_dir: Path, ctx: Context, data: DfuData | None = None) -> dict:
    """Every stage's members and ensemble on val and test: metrics.json (the final ensemble, with the
    baseline beside it), stages.csv, predictions.csv, submission.csv (unlisted images) and plots.

    The ensembles' scores carry 95% intervals (near-duplicate groups resampled); the members' do not."""
    part_of = cfg.get("run", {}).get("part_of")
    if part_of:  # an ensemble member's or the generator's folder
        whole = (Path(run_dir) / part_of).resolve()
        raise ConfigError(f"{run_dir} is part of the DFU run {whole}; evaluate that: pipelines eval {whole}")
    data = data if data is not None else load_data(cfg, run_dir)
    data.run_dir = run_dir
    names = stages(cfg)
    missing = [s for s in names if not all((run_dir / "stages" / s / b / BEST_WEIGHTS).is_file()
                                           for b in cfg["model"]["backbones"])]
    if missing:
        raise ConfigError(f"{run_dir} has no trained ensemble for stage(s) {', '.join(missing)}; "
                          f"resume it: pipelines run dfu --resume {run_dir}")
    scoring = Scoring(CLASSES, group_name=GROUP, bootstrap=int(cfg["eval"]["bootstrap"]), seed=int(cfg["seed"]))
    table, entries, predicted, final = [], {}, {}, names[-1]
    served, precision = ensemble_probabilities(  # the final ensemble, as served: at eval.precision
        data.labelled(final, cfg), cfg, [run_dir / "stages" / final / b for b in cfg["model"]["backbones"]],
        scoring, HEADLINE[0], run_dir, ctx)
    labelled = data.labelled(final, cfg)
    served, calibration = calibrate_splits(run_dir, served, {s: labelled.labels(s) for s in served}, cfg,
                                           groups={s: labelled.part(s)["group"].astype(str).to_list() for s in served})
    for stage in names:
        labelled = data.labelled(stage, cfg)
        folders = [run_dir / "stages" / stage / b for b in cfg["model"]["backbones"]]
        entry = {"train_images": _counts(labelled), "members": {}, "ensemble": {}}
        for split in ("val", "test"):
            rows, y = labelled.part(split), labelled.labels(split)
            members = predict_members(labelled, cfg, folders, rows, ctx)  # each member at fp32
            ensemble = served[split] if stage == final else soft_vote(members)
            for name, probs in {**members, "ensemble": ensemble}.items():
                metrics = score_split(y, probs, scoring, rows, bootstrap=None if name == "ensemble" else 0)
                if stage == final and name == "ensemble":
                    predicted[split] = Predicted(rows[PREDICTION_COLUMNS], y, ensemble, members, metrics)
                scores = compact_scores(metrics, CLASSES)
                table.append({"stage": stage, "model": name, "split": split,
                              **{k: v for k, v in scores.items() if k != "ci95"}})
                target = entry["ensemble"] if name == "ensemble" else entry["members"].setdefault(name, {})
                target[split] = scores
        entry["selected_epochs"] = {f.name: selected_epoch(f) for f in folders}
        entries[stage] = entry
    unlisted = data.rows("unlisted")
    if not unlisted.empty:
        folders = [run_dir / "stages" / final / b for b in cfg["model"]["backbones"]]
        probs = soft_vote(predict_members(data.labelled(final, cfg), cfg, folders, unlisted, ctx))
        write_submission(run_dir / "submission.csv", unlisted["image"].tolist(), probs)
    comparison = {label: {split: entries[stage]["ensemble"][split] for split in ("val", "test")}
                  for label, stage in (("baseline", "baseline"), ("extended", final))}
    write_csv(run_dir / "stages.csv", pd.DataFrame(table))
    best = [run_dir / "stages" / final / b / BEST_WEIGHTS for b in cfg["model"]["backbones"]]
    save_ensemble(best, run_dir / BEST_WEIGHTS, task="dfu")  # what load_model(run_dir) gives
    report = write_report(run_dir, predicted, scoring, {**_info(cfg, data, names), "precision": precision,
                                                        "calibration": calibration},
                          {"stages": entries, "comparison": comparison})
    _log_comparison(report)
    return report


def _info(cfg: Mapping, data: DfuData, names: list[str]) -> dict:
    pseudo = data.table[data.table["source"] == "pseudo"]
    info = {
        "task": "dfu",
        "demo": bool(cfg["run"]["demo"]),
        "stages": names,
        "final_stage": names[-1],
        "members": list(cfg["model"]["backbones"]),
        "monitor": f"val_{cfg['train']['monitor']}",
        "grouping": cfg["data"]["grouping"],
        "pseudo_labels": {f"round{int(r)}": rows["label"].value_counts().reindex(CLASSES, fill_value=0)
                          .astype(int).to_dict() for r, rows in pseudo.groupby("round")},
        "synthetic_images": data.table[data.table["source"] == "synthetic"]["label"].value_counts()
                            .reindex(CLASSES, fill_value=0).astype(int).to_dict(),
        "protocol": "members selected on val; every stage scored on the same real val and test images; "
                    "the final stage is fixed in advance, not chosen on test",
    }
    if info["demo"]:
        info["note"] = "SYNTHETIC demo data: these numbers say nothing about real foot ulcers"
    return info


def _log_comparison(report: Mapping) -> None:
    for label, scores in report["comparison"].items():
        t = scores["test"]
        log.info("%s ensemble: test macro-F1 %.3f (per class %s), val macro-F1 %.3f", label, t["macro_f1"],
                 ", ".join(f"{c} {t[f'f1_{c}']:.2f}" for c in CLASSES), scores["val"]["macro_f1"])
