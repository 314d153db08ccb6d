"""The local model store the clinician app reads: one folder per model with its weights and its card.

    models/NAME/model.safetensors   the best checkpoint of a finished run, its ModelSpec in the header
    models/NAME/card.json           the spec's facts for people (kind, classes, input) plus how well it did and
                                    what it is for
    models/NAME/card.md             the same card for people
    models/NAME/model.int8.onnx     only where the run's parity check chose int8: the graph it checked

A folder without a readable card is not a model of the store: the app lists only carded models.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core.errors import ConfigError
from pipelines.core.io import atomic_write_bytes, file_sha256, write_json
from pipelines.engine.calibration import run_calibration
from pipelines.models import ModelSpec, read_spec, save_model
from pipelines.models import load_model as load_saved
from pipelines.runs import check_run_dir
from pipelines.runs.folder import METRICS_FILE
from pipelines.tasks import get_task
from pipelines.tasks.contract import ServedElsewhere

__all__ = ["WEIGHTS", "CARD", "StoredModel", "export_to_store", "list_models", "load_model", "card_markdown",
           "calibration_lines"]

WEIGHTS, CARD, CARD_MD, INT8 = "model.safetensors", "card.json", "card.md", "model.int8.onnx"
NOTICE = "Research use only. Not a medical device: not for diagnosis or treatment decisions."
SERVED = ("classifier", "ensemble", "segmenter")  # kinds the store and the app serve
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_DETAIL = ("n", "n_tiles", "ci95", "per_class")  # what a card keeps beside the task's headline metrics


@dataclass
class StoredModel:
    """A model of the store, ready to predict, with its spec (what it takes and gives) and its card."""

    name: str
    model: nn.Module
    card: dict
    spec: ModelSpec
    fast: nn.Module | None = None  # the int8 graph (an OnnxModule) when the card serves at int8

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def image_size(self) -> int:
        return int(self.spec.input.size[0])

    @property
    def multilabel(self) -> bool:
        return self.spec.output == "sigmoid"

    @property
    def precision(self) -> str:
        """What predictions run at: the card's parity-checked choice (int8 only with its graph; bf16 only
        where this processor has the units), else fp32."""
        from pipelines.core.precision import resolve_precision

        chosen = (self.card.get("precision") or {}).get("serves_at", "fp32")
        if chosen == "int8":
            return "int8" if self.fast is not None else "fp32"
        return resolve_precision(chosen, torch.device("cpu"))


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ConfigError(f"model name {name!r} is not a plain folder name; use letters, digits, '.', '_' or '-'")
    return name


def _metrics(run_dir: Path, headline: tuple[str, ...]) -> dict:
    """The task's headline metrics of val and test (with n, intervals and per-class scores) and how the
    checkpoint was selected."""
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    out = {}
    for split in ("val", "test"):
        m = metrics.get(split) or {}
        head = {k: m[k] for k in ("n", "n_tiles", *headline) if isinstance(m.get(k), int | float)}
        if m.get("ci95"):
            head["ci95"] = m["ci95"]
        if m.get("per_class"):
            head["per_class"] = {c: {k: v for k, v in r.items() if k in ("precision", "recall", "f1", "support")}
                                 for c, r in m["per_class"].items()}
        out[split] = head
    info = metrics.get("info", {})
    out["selection"] = {k: info[k] for k in ("selected_epoch", "monitor", "protocol") if k in info}
    return out


def export_to_store(run_dir: str | Path, name: str, store: str | Path = "models", force: bool = False) -> Path:
    """Write a finished classification or photo-segmentation run's best model and its card to ``store/name``.

    The card is the model's spec (kind, classes, input, output) plus the run's metrics and the task's words
    on its data, use and limits. Written weights first, card last (each atomically): a folder with a card
    always has its weights. An existing entry of the same name is replaced only with ``force``.
    """
    from pipelines.runs import read_config

    run_dir, name = check_run_dir(run_dir), check_name(name)
    if (Path(store) / name).exists() and not force:
        raise ConfigError(f"model store entry {Path(store) / name} exists; pass --force to replace it or choose "
                          "another --name")
    if not (run_dir / METRICS_FILE).is_file():
        raise ConfigError(f"{run_dir} has no metrics.json; let the run finish or run 'pipelines eval {run_dir}'")
    loaded = load_saved(run_dir)
    calibration = run_calibration(run_dir)
    spec = dataclasses.replace(loaded.spec, calibration=_served_calibration(calibration))
    cfg = read_config(run_dir)
    task_name = spec.task or cfg.get("run", {}).get("task", "")
    task = get_task(task_name)
    if spec.kind not in SERVED or isinstance(task, ServedElsewhere):
        elsewhere = f"; serve it with '{task.SERVED_BY}'" if isinstance(task, ServedElsewhere) else ""
        raise ConfigError(f"{run_dir} holds a {task_name} {spec.kind}; the model store serves image classifiers "
                          f"and photo segmenters{elsewhere}")
    facts = task.card_facts(cfg, run_dir)
    metrics = _metrics(run_dir, task.HEADLINE)
    folder = Path(store) / name
    save_model(loaded.model, spec, folder / WEIGHTS)
    size = spec.input.size[0]
    demo = bool(cfg["run"].get("demo"))
    limitations = list(facts["limitations"])
    if demo:
        limitations.insert(0, "Trained on SYNTHETIC demo data: its predictions on real images are meaningless.")
    card = {
        "name": name,
        "format": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "task": spec.task,
        "kind": spec.kind,
        "backbone": _architecture(spec),
        "classes": list(spec.classes),
        "output": spec.output,
        "input": {
            "image_size": size, "colour": spec.input.colour, "mean": list(spec.input.mean),
            "std": list(spec.input.std),
            "preprocessing": _preprocessing(spec),
        },
        "metrics": metrics,
        "training_data": facts["training_data"] + (" - SYNTHETIC demo data" if demo else ""),
        "demo": demo,
        "intended_use": facts["intended_use"],
        "limitations": limitations,
        "notice": NOTICE,
        "source_run": str(run_dir.resolve()),
        "weights_sha256": file_sha256(folder / WEIGHTS),
    }
    card["precision"] = _precision(run_dir, folder)
    if spec.kind == "segmenter":
        info = json.loads((run_dir / METRICS_FILE).read_text()).get("info", {})
        card["mask"] = {"threshold": spec.input.threshold, "chosen_by": (info.get("threshold_choice") or {}).get("by"),
                        "tile": spec.input.tile}
    else:
        card["calibration"] = calibration
    atomic_write_bytes(folder / CARD_MD, card_markdown(card).encode())
    write_json(folder / CARD, card)
    return folder


def _preprocessing(spec: ModelSpec) -> str:
    decode = f"decode to RGB ({'grey repeated' if spec.input.colour == 'grey' else 'colour'})"
    scale = "scale to [0, 1], subtract mean and divide by std per channel"
    if spec.kind == "segmenter":
        tile = spec.input.tile or spec.input.size[0]
        return (f"{decode}, {scale}; the whole image at its own size in sliding windows of {tile} px "
                "(Gaussian blending): the evaluation path of training")
    size = spec.input.size[0]
    return f"{decode}, resize to {size}x{size} (area), {scale}: the evaluation transform of training"


def _served_calibration(table: dict) -> dict:
    """What the stored spec carries: the fitted map and the refer threshold (see ``ModelSpec.calibration``)."""
    if not table.get("map"):
        return {}
    refer = table.get("refer") or {}
    return {**table["map"], **({"refer_below": refer["threshold"], "max_risk": refer["max_risk"]}
                               if "threshold" in refer else {})}


def _precision(run_dir: Path, folder: Path) -> dict:
    """The card's ``precision``: the run's parity check (metrics.json) and what the model serves at; an int8
    choice brings its checked graph into the store folder."""
    from pipelines.engine.precision import INT8_GRAPH

    table = json.loads((run_dir / METRICS_FILE).read_text()).get("info", {}).get("precision") or {}
    (folder / INT8).unlink(missing_ok=True)
    if not table.get("paths"):
        return {"serves_at": "fp32", "note": "no parity check ran; 'pipelines eval RUN --precision auto' and export "
                                             "again to serve at a faster checked precision"}
    chosen = table["chosen"]
    if chosen == "int8":
        if not (run_dir / INT8_GRAPH).is_file():
            raise ConfigError(f"{run_dir / INT8_GRAPH} is missing; run 'pipelines eval {run_dir} --precision auto' "
                              "again")
        atomic_write_bytes(folder / INT8, (run_dir / INT8_GRAPH).read_bytes())
        table = {**table, "int8_sha256": file_sha256(folder / INT8)}
    return {**table, "serves_at": chosen}


def _architecture(spec: ModelSpec) -> str:
    """The backbone, or an ensemble's members joined by ``+``."""
    return " + ".join(m.arch for m in spec.members) if spec.kind == "ensemble" else spec.arch


def list_models(store: str | Path = "models") -> tuple[list[dict], list[str]]:
    """The carded models of the store (sorted by name) and one line per folder that is not a usable model."""
    cards, problems = [], []
    store = Path(store)
    if not store.is_dir():
        return [], [f"model store {store} not found; fill it with 'pipelines export RUN_DIR --name NAME'"]
    for folder in sorted(p for p in store.iterdir() if p.is_dir() and not p.name.startswith(".")):
        card_path = folder / CARD
        if not card_path.is_file():
            problems.append(f"{folder.name}: no {CARD}; export it again with 'pipelines export RUN_DIR --name NAME'")
            continue
        try:
            card = json.loads(card_path.read_text())
            _check_card(card)
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{folder.name}: unreadable {CARD} ({exc}); export it again")
            continue
        if not (folder / WEIGHTS).is_file():
            problems.append(f"{folder.name}: card without {WEIGHTS}; export it again")
            continue
        cards.append(card)
    return cards, problems


def _check_card(card: dict) -> None:
    for key in ("name", "task", "backbone", "classes", "output", "input"):
        if key not in card:
            raise KeyError(f"missing {key!r}")
    int(card["input"]["image_size"])


def load_model(name: str, store: str | Path = "models") -> StoredModel:
    """The model rebuilt from the spec in its weights file (no pickle is ever read), with its card.

    A folder exported before weights carried a spec rebuilds from its card's backbone, classes and input.
    """
    from pipelines.models.legacy import from_card

    folder = Path(store) / check_name(name)
    card_path = folder / CARD
    if not card_path.is_file():
        raise ConfigError(f"{folder} has no {CARD}; export it with 'pipelines export RUN_DIR --name {name}'")
    card = json.loads(card_path.read_text())
    if (folder / WEIGHTS).is_file() and read_spec(folder / WEIGHTS) is None:
        model, spec = from_card(folder / WEIGHTS, card)
        return StoredModel(name, model.eval(), card, spec)
    loaded = load_saved(folder / WEIGHTS)
    fast = None
    if (card.get("precision") or {}).get("serves_at") == "int8" and (folder / INT8).is_file():
        from pipelines.backbones.quantize import OnnxModule

        fast = OnnxModule(folder / INT8)
    return StoredModel(name, loaded.model, card, loaded.spec, fast)


def _input_size(card: dict, colour: str) -> str:
    side = card["input"]["image_size"]
    return f"{colour} images of any size" if card.get("kind") == "segmenter" else f"{side}x{side} {colour}"


def _fmt(value: float, ci: list | None) -> str:
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def card_markdown(card: dict) -> str:
    """The card for people: what the app shows and what ``card.md`` holds."""
    i = card["input"]
    lines = [
        f"# {card['name']}", "", f"**{card['notice']}**", "",
        f"- Task: {card['task']} - classes: {', '.join(card['classes'])} ({card['output']} outputs)",
        f"- Backbone: {card['backbone']}",
        f"- Input: {_input_size(card, 'greyscale' if i['colour'] == 'grey' else 'colour')}; "
        f"{i['preprocessing']}; mean {i['mean']}, std {i['std']}",
        f"- Training data: {card['training_data']}",
        "", "## Metrics (95% bootstrap CI where given)", "",
    ]
    for split in ("test", "val"):
        m = card["metrics"].get(split) or {}
        ci = m.get("ci95", {})
        shown = [f"{k} {_fmt(v, ci.get(k))}" for k, v in m.items()
                 if k not in _DETAIL and isinstance(v, int | float)]
        if shown:
            n = m.get("n", m.get("n_tiles", "?"))
            lines.append(f"- {split} (n={n}): " + ", ".join(shown))
    sel = card["metrics"].get("selection", {})
    if sel.get("selected_epoch") is not None:
        lines.append(f"- Checkpoint: epoch {sel['selected_epoch']} selected on {sel.get('monitor')}")
    elif sel:  # an ensemble: each member selected its own epoch
        protocol = f"; {sel['protocol']}" if sel.get("protocol") else ""
        lines.append(f"- Checkpoints selected on {sel.get('monitor')}{protocol}")
    lines += _precision_lines(card.get("precision") or {})
    if card.get("kind") == "segmenter":
        mask = card.get("mask") or {}
        if mask.get("threshold") is not None:
            lines.append(f"- Mask: pixels with probability above {mask['threshold']:.2f}"
                         + (f" (chosen on {mask['chosen_by']})" if mask.get("chosen_by") else ""))
    else:
        lines += calibration_lines(card.get("calibration") or {})
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Limitations", ""]
    lines += [f"- {item}" for item in card["limitations"]]
    return "\n".join(lines) + "\n"


def _precision_lines(p: dict) -> list[str]:
    """What the card says about the precision it serves at and what that cost on validation."""
    if not p:
        return []
    if not p.get("paths"):
        return [f"- Serves at {p.get('serves_at', 'fp32')}; {p.get('note', '')}".rstrip("; ")]
    chosen = p["paths"][p["serves_at"]]
    metric = next((k for k in chosen if k.startswith("val_")), None)
    ref = p["paths"]["fp32"]
    cost = (f"; val {metric[4:]} {chosen[metric]:.4f} against fp32's {ref[metric]:.4f}, top-1 agreement "
            f"{chosen['agreement']:.2%}, x{chosen['speedup']:.2f} fp32's speed") if metric else ""
    refused = [f"{n} ({q['why']})" for n, q in p["paths"].items() if not q.get("accepted")]
    return [f"- Serves at {p['serves_at']} ({p['by']}){cost}"] + (
        [f"- Refused: {', '.join(refused)}"] if refused else [])


def calibration_lines(table: dict) -> list[str]:
    """What the card says about its probabilities (calibrated or not, test ECE) and its refer threshold."""
    if not table:
        return ["- Probabilities are NOT calibrated (the run was evaluated before calibration existed): run "
                "'pipelines eval RUN_DIR' and export it again"]
    test = table.get("test") or {}
    after, before = test.get("after") or {}, test.get("before") or {}
    how = {"temperature": f"temperature scaling (T = {table.get('temperature', float('nan')):.2f})",
           "vector": "vector scaling (a scale and bias per class)"}.get(table["method"])
    done = (f"calibrated on validation by {how}" if how else
            "left as the model gives them (on validation, cross-validated, no calibration map did better)")
    ece = ""
    if after:
        ci = after.get("ece_ci95")
        ece = (f"; test ECE {after['ece']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
               + f" (uncalibrated {before['ece']:.3f}), Brier {after['brier']:.3f}, NLL {after['nll']:.3f}")
    lines = [f"- Probabilities: {done}{ece}"]
    refer = table.get("refer") or {}
    if "threshold" not in refer:
        return lines + ([f"- No refer threshold: {refer['note']}"] if refer.get("note") else [])
    risk = f"{refer['max_risk']:.0%}"
    if refer["threshold"] > 1:
        return [*lines, f"- Refers every case: no confidence level kept the validation error at or below {risk}"]
    t = refer.get("test") or {}
    on_test = (f"; on test it answers {t['coverage']:.0%} of {t['n']} cases"
               + (f" with {t['risk']:.1%} error" if t.get("risk") is not None else "")
               + f" and refers {t['referred']}") if t else ""
    return [*lines, f"- Refers to a specialist below {refer['threshold']:.1%} confidence (chosen on validation: "
                    f"the most cases answered with at most {risk} error among them){on_test}"]
