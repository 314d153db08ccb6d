import pytest

from pipelines.config import apply_overrides, check_choices, defaults_text, flatten, load_yaml, merge
from pipelines.core.errors import ConfigError
from pipelines.tasks import get_task

DEFAULTS = {"seed": 0, "data": {"root": "data", "magnification": "all", "weights": None},
            "train": {"epochs": 30, "lr": 0.001, "amp": True, "ratios": [0.5]}}


def test_set_parses_yaml_values_with_dotted_keys():
    cfg = apply_overrides(DEFAULTS, ["train.epochs=3", "train.lr=1e-4", "train.amp=false",
                                     "data.magnification=40", "data.weights=/w.pt", "train.ratios=[0.7, 0.5]"])
    assert cfg["train"] == {"epochs": 3, "lr": 1e-4, "amp": False, "ratios": [0.7, 0.5]}
    assert cfg["data"]["magnification"] == "40"  # numbers become strings where the default is one
    assert cfg["data"]["weights"] == "/w.pt"
    assert DEFAULTS["train"]["epochs"] == 30  # the defaults are not mutated


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch'.*train.epochs"):
        apply_overrides(DEFAULTS, ["train.epoch=3"])


@pytest.mark.parametrize("item, match", [
    ("train.epochs=three", "expected int"),
    ("train.amp=1", "expected bool"),
    ("train.epochs", "expects key=value"),
])
def test_bad_values_are_rejected(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(DEFAULTS, [item])


def test_config_file_merge_rejects_unknown_nested_key(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  epochs: 5\n")
    assert merge(DEFAULTS, load_yaml(good), str(good))["train"]["epochs"] == 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epocs: 5\n")
    with pytest.raises(ConfigError, match=r"train\.epocs.*train\.epochs"):
        merge(DEFAULTS, load_yaml(bad), str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "missing.yaml")


def test_choices_and_positive():
    with pytest.raises(ConfigError, match="choose one of all, 40"):
        check_choices({"m": "50"}, {"m": ("all", "40")})
    with pytest.raises(ConfigError, match="greater than 0"):
        check_choices({"e": 0}, {}, positive=["e"])


def test_task_defaults_validate_and_every_key_is_documented():
    task = get_task("breakhis")
    cfg = task.defaults()
    task.validate(cfg)
    text = defaults_text(task.DEFAULTS)  # the task's YAML merged over tasks/base.yaml
    for key in flatten(cfg):
        leaf = key.split(".")[-1]
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{leaf}:"))
        assert "# (" in line, f"{key} has no '# (type) meaning' comment"
    for key, value in task.DEMO_OVERRIDES.items():
        apply_overrides(cfg, [f"{key}={value}"])
