"""The task contract over every registered task (as timm's tests loop over its registry).

Each task runs through ``pipelines run TASK --demo`` at its ``SMOKE_OVERRIDES`` on its small demo data, and
its run folder must hold what the shared layers read: the files of :mod:`pipelines.runs`, the task's
headline metrics for val and test, a model that ``load_model`` rebuilds from the header alone, and the same
metrics when evaluated again. A new task gets all of this by being registered.
"""

from __future__ import annotations

import ast
import json
import math
import re
import types
from pathlib import Path

import pytest
import torch

from pipelines import load_model, runs
from pipelines.config import apply_overrides
from pipelines.core.errors import ConfigError
from pipelines.tasks import TASKS, get_task
from pipelines.tasks.contract import (
    CardFacts,
    ServedElsewhere,
    SupportsMembers,
    Task,
    TaskContractError,
    check_task,
    members,
)

PACKAGE = Path(__file__).resolve().parents[1] / "pipelines"
NAMES = list(TASKS)


def _sets(overrides) -> list[str]:
    return [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module", params=NAMES)
def smoke(request, tmp_path_factory):
    """(name, task module, run folder, metrics.json as written by the run) of one task's smallest run."""
    from pipelines.cli import main

    name = request.param
    task = get_task(name)
    out = tmp_path_factory.mktemp(f"contract_{name}")
    root = task.prepare_demo(out / "data", small=True)
    args = ["run", name, "--demo", "--data-root", str(root), "--output", str(out / "runs"), "--device", "cpu"]
    assert main([*args, *_sets(task.SMOKE_OVERRIDES)]) == 0
    run_dir = out / "runs" / name / "demo"
    return name, task, run_dir, json.loads((run_dir / runs.METRICS_FILE).read_text())


# --- the modules ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_every_task_module_satisfies_the_protocol(name):
    task = get_task(name)
    assert isinstance(task, Task)
    assert check_task(task, name) is task
    assert Path(task.DEFAULTS).resolve() == PACKAGE / "tasks" / f"{name}.yaml"  # the pair that registers it
    assert task.PREDICTIONS in (runs.PREDICTIONS, runs.TILES)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_parse_and_validate_with_the_demo_and_smoke_settings(name):
    task = get_task(name)
    cfg = task.defaults()
    assert {"seed", "data", "model", "train", "eval", "log"} <= set(cfg) and "root" in cfg["data"]
    task.validate(cfg)
    demo = apply_overrides(cfg, [f"{k}={v}" for k, v in task.DEMO_OVERRIDES.items()], "demo settings")
    task.validate(demo)
    smoke = apply_overrides(demo, [f"{k}={v}" for k, v in task.SMOKE_OVERRIDES.items()], "smoke settings")
    task.validate(smoke)
    assert smoke["train"]["epochs"] == 1


def test_a_task_is_registered_by_its_module_and_yaml_pair(tmp_path):
    from pipelines.tasks import discover

    for name in ("base.yaml", "alpha.py", "alpha.yaml", "helper.py", "orphan.yaml"):
        (tmp_path / name).write_text("")
    assert discover(tmp_path, "pkg") == {"alpha": "pkg.alpha"}
    assert discover(PACKAGE / "tasks", "pipelines.tasks") == TASKS
    assert set(TASKS) == {"breakhis", "buildings", "classify", "dfu", "medmnist", "segment", "toc3d"}


def test_a_module_missing_pieces_is_one_line_naming_them():
    fake = types.ModuleType("pipelines.tasks.fake")
    for piece in members(Task):
        if piece not in ("HEADLINE", "card_facts"):
            setattr(fake, piece, getattr(get_task("breakhis"), piece))
    with pytest.raises(TaskContractError, match=r"task fake .* no HEADLINE; no card_facts; see .*contract\.py") as e:
        check_task(fake, "fake")
    assert "\n" not in str(e.value)
    fake.HEADLINE, fake.card_facts = ["accuracy"], "not a function"
    with pytest.raises(TaskContractError, match=r"card_facts is not a function.*HEADLINE is not a non-empty tuple"):
        check_task(fake, "fake")


def _code_strings(path: Path) -> list[str]:
    """String constants of a module that are not docstrings."""
    tree = ast.parse(path.read_text())
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and n.body
            and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


SHARED = [PACKAGE / "cli.py", PACKAGE / "model_store.py", *sorted((PACKAGE / "runs").glob("*.py"))]


@pytest.mark.parametrize("path", SHARED, ids=lambda p: p.name)
def test_shared_layers_name_no_task(path):
    pattern = re.compile(rf"\b({'|'.join(NAMES)})\b")
    named = [s for s in _code_strings(path) if pattern.search(s)]
    assert not named, f"{path.name} names a task: {named}"


@pytest.mark.parametrize("path", [PACKAGE / "cli.py", PACKAGE / "model_store.py", PACKAGE / "runs" / "index.py"],
                         ids=lambda p: p.name)
def test_shared_layers_keep_no_list_of_headline_metrics(path):
    """The runs table and the model card take their metrics from the tasks' HEADLINE (file schemas such as
    ablation.csv's columns are the readers' business and stay in pipelines.runs.read)."""
    headline = {m for name in NAMES for m in get_task(name).HEADLINE}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            names = {e.value for e in node.elts if isinstance(e, ast.Constant)} & headline
            assert len(names) < 2, f"{path.name} line {node.lineno} lists headline metrics: {sorted(names)}"


# --- a run of every task at its smallest settings ------------------------------------------------------------

@pytest.mark.slow
def test_the_run_folder_is_complete(smoke):
    name, task, run_dir, metrics = smoke
    trained = task.member_folders(runs.read_config(run_dir), run_dir) if isinstance(task, SupportsMembers) \
        else [run_dir]
    assert trained
    for path in (runs.CONFIG, runs.ENVIRONMENT, runs.SPLIT, runs.METRICS_FILE, task.PREDICTIONS):
        assert (run_dir / path).is_file(), f"{name}: no {path}"
    assert (run_dir / runs.BEST_WEIGHTS).is_file()
    for folder in trained:  # where the Runner wrote its files: the run folder, or each member's
        for path in (runs.HISTORY, runs.BEST_WEIGHTS, runs.LAST_WEIGHTS, Path(runs.PLOTS) / "training_curves.png"):
            assert (folder / path).is_file(), f"{name}: no {path} in {folder.relative_to(run_dir.parent)}"
        assert len(runs.load_history(folder)) == 1  # one epoch
    assert runs.load_config(run_dir)["run"] == {"task": name, "demo": True, "device": "cpu", "world_size": 1}
    assert json.loads((run_dir / runs.ENVIRONMENT).read_text())
    split = runs.read_split(run_dir)  # checked against split.sha256, which every run writes beside it
    assert (run_dir / runs.SPLIT_DIGEST).is_file()
    assert {"split"} <= set(split.columns) and {"train", "val", "test"} <= set(split["split"])
    for split in ("val", "test"):
        scores = metrics[split]
        for key in task.HEADLINE:
            assert isinstance(scores.get(key), int | float) and not isinstance(scores[key], bool), \
                f"{name}: metrics.json {split}.{key} is {scores.get(key)!r}"
    assert metrics["info"]["task"] == name and metrics["info"]["demo"] is True


def _same(a, b, where: str) -> None:
    """Equal up to float rounding, NaN equal to NaN, recursively."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    elif isinstance(a, float):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_evaluating_again_gives_the_same_metrics(smoke):
    from pipelines.cli import main

    name, task, run_dir, metrics = smoke
    assert main(["eval", str(run_dir), "--device", "cpu"]) == 0  # task.evaluate from the run folder alone
    again = json.loads((run_dir / runs.METRICS_FILE).read_text())
    for split in ("val", "test"):
        _same(metrics[split], again[split], f"{name} {split}")
    lines = [line for split in ("val", "test") for line in task.summary_lines(split, again[split])]
    assert lines and all(isinstance(line, str) and line for line in lines)


def _forward(loaded) -> torch.Tensor:
    """The model on a random input of its spec's shape (a detector: six views with plain cameras)."""
    spec = loaded.spec
    h, w = spec.input.size
    torch.manual_seed(0)
    image = torch.rand(1, spec.input.channels, h, w)
    with torch.no_grad():
        if spec.kind == "detector":
            views = 6
            k = torch.tensor([[w / 2, 0, w / 2], [0, w / 2, h / 2], [0, 0, 1.0]])
            out, _ = loaded.model(image[:, None].expand(1, views, -1, -1, -1), k.expand(1, views, 3, 3),
                                  torch.eye(4).expand(1, views, 4, 4), torch.zeros(1))
            return out["logits"]
        out = loaded.model(image)
        return out["out"] if isinstance(out, dict) else out


@pytest.mark.slow
def test_the_model_loads_from_its_header_and_runs(smoke):
    name, _, run_dir, _ = smoke
    loaded = load_model(run_dir)  # no config, metrics or task module read
    assert loaded.spec.task == name and not loaded.model.training
    out = _forward(loaded)
    assert torch.isfinite(out).all()
    assert out.shape[-1 if loaded.spec.kind in ("detector", "classifier", "ensemble") else 1] == \
        len(loaded.spec.classes)
    assert torch.equal(out, _forward(load_model(run_dir / runs.BEST_WEIGHTS)))


@pytest.mark.slow
def test_dashboards_and_model_store_use_the_headline(smoke, tmp_path):
    from pipelines.model_store import export_to_store

    name, task, run_dir, metrics = smoke
    index = runs.runs_table([run_dir])
    assert index.metrics == list(task.HEADLINE)
    row = index.table.iloc[0]
    assert all(row[k] == pytest.approx(metrics["test"][k], nan_ok=True) for k in task.HEADLINE)
    summary = runs.metric_summary(metrics["test"], runs.headline(name))
    assert list(summary["metric"]) == list(task.HEADLINE)
    facts = task.card_facts(runs.read_config(run_dir), run_dir)
    assert set(facts) == set(CardFacts.__annotations__) and facts["colour"] in ("rgb", "grey")
    assert all(isinstance(facts[k], str) and facts[k] for k in ("training_data", "intended_use"))
    assert facts["limitations"] and all(isinstance(x, str) and x for x in facts["limitations"])
    kind = load_model(run_dir).spec.kind
    if kind in ("classifier", "ensemble", "segmenter") and not isinstance(task, ServedElsewhere):  # store serves
        card = json.loads((export_to_store(run_dir, name, tmp_path / "models") / "card.json").read_text())
        count, *headline = list(card["metrics"]["test"])[: 1 + len(task.HEADLINE)]
        assert count in ("n", "n_tiles") and headline == list(task.HEADLINE)
        assert card["training_data"].startswith(facts["training_data"])
    else:  # refused in one line that says what serves it instead, and nothing left in the store
        with pytest.raises(ConfigError, match="serves image classifiers") as refused:
            export_to_store(run_dir, name, tmp_path / "models")
        if isinstance(task, ServedElsewhere):
            assert task.SERVED_BY in str(refused.value)
        assert not (tmp_path / "models" / name).exists()
