"""The shared base under each task's defaults, and choices/ranges declared beside their keys."""

import pytest
import yaml

from pipelines.config import BASE_DEFAULTS, check_declared, declared_rules, defaults_text, load_defaults, load_yaml
from pipelines.core.errors import ConfigError
from pipelines.tasks import TASKS, get_task


def write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_sits_on_the_base_and_validates(name):
    task = get_task(name)
    cfg = task.defaults()
    base = load_yaml(BASE_DEFAULTS)
    assert cfg["log"] == {"mlflow": False, "mlflow_uri": None, "tensorboard": False}
    assert "seed" in cfg and set(base["train"]) <= set(cfg["train"])
    assert next(iter(cfg)) == "seed" and list(cfg)[-1] == "log"
    assert yaml.safe_load(defaults_text(task.DEFAULTS)) == cfg  # what 'list keys' prints is the config itself
    task.validate(cfg)


def test_a_task_overrides_base_values_and_adds_keys():
    cfg = get_task("buildings").defaults()
    assert cfg["train"]["epochs"] == 40 and cfg["train"]["lr"] == 0.001  # the task's values
    assert cfg["train"]["warmup_epochs"] == 1 and cfg["train"]["grad_clip"] == 5.0  # the base's
    assert cfg["train"]["monitor"] == "iou" and "tile" in cfg["eval"]  # the task's own keys
    text = defaults_text(get_task("buildings").DEFAULTS)
    assert "epochs: 40                  # (int > 0) maximum epochs" in text  # base comment, task value


def test_declared_choices_and_ranges_are_enforced(tmp_path):
    path = write(tmp_path / "t.yaml", "\n".join([
        "data:",
        "  task: binary   # (str: binary|subtype) which labels",
        "  size: 28       # (int: 28|64) which file",
        "  share: 0.2     # (float in [0, 1)) share of groups",
        "  gamma: 2.0     # (float >= 0.5) focusing",
        "  steps: 3       # (int > 0) steps",
        "  free: 1        # (int) anything",
    ]) + "\n")
    cfg = load_defaults(path)
    check_declared(cfg, path)
    assert declared_rules(path)["data.size"] == {"choices": [28, 64]}
    cases = [
        ("data.task", "subtypes", "bad value for 'data.task': 'subtypes'; choose one of binary, subtype"),
        ("data.size", 32, "choose one of 28, 64"),
        ("data.share", 1.0, r"'data.share': 1.0; it must be in \[0, 1\)"),
        ("data.gamma", 0.1, "it must be at least 0.5"),
        ("data.steps", 0, "'data.steps': 0; it must be greater than 0"),
        ("train.epochs", -1, "'train.epochs': -1; it must be greater than 0"),  # declared in the base
    ]
    for dotted, value, message in cases:
        section, key = dotted.split(".")
        bad = {**cfg, section: {**cfg[section], key: value}}
        with pytest.raises(ConfigError, match=message):
            check_declared(bad, path)
    check_declared({**cfg, "data": {**cfg["data"], "free": -5, "share": 0.0}}, path)


def test_task_yaml_choices_match_the_code_that_reads_them():
    from pipelines.datasets.breakhis import MAGNIFICATIONS
    from pipelines.datasets.massachusetts import FORMATS
    from pipelines.datasets.medmnist import FLAGS, SIZES
    from pipelines.engine.losses import LOSSES
    from pipelines.engine.segmentation import SEGMENTATION_MONITORS
    from pipelines.training import MONITORS
    from pipelines.transforms.augment import AUGMENTATIONS, SEGMENTATION_AUGMENTATIONS

    def choices(task, key):
        return set(declared_rules(get_task(task).DEFAULTS)[key]["choices"])

    assert choices("breakhis", "data.magnification") == {"all", *MAGNIFICATIONS}
    for task in ("breakhis", "dfu"):
        assert choices(task, "train.monitor") == set(MONITORS)
    for task in ("breakhis", "dfu", "medmnist"):
        assert choices(task, "train.loss") == set(LOSSES)
        assert choices(task, "train.augment") == set(AUGMENTATIONS)
    assert choices("medmnist", "data.dataset") == set(FLAGS) and choices("medmnist", "data.size") == set(SIZES)
    assert choices("buildings", "data.format") == set(FORMATS)
    assert choices("buildings", "train.monitor") == set(SEGMENTATION_MONITORS)
    assert choices("buildings", "train.augment") == set(SEGMENTATION_AUGMENTATIONS)


def test_tile_and_synth_take_config_and_set(tmp_path):
    from pipelines.cli import _build_parser
    from pipelines.config import apply_settings

    config = write(tmp_path / "synth.yaml", "steps: 50\nn-blocks: 3\n")
    args = _build_parser().parse_args(["synth", "--images", "i", "--masks", "m", "--output", "o", "--steps", "7",
                                       "--config", str(config), "--set", "batch-size=2", "--set", "edges=true"])
    args = apply_settings(args, "synth")
    assert (args.steps, args.n_blocks, args.batch_size, args.edges, args.size) == (50, 3, 2, True, 128)
    args = _build_parser().parse_args(["tile", "x.tif", "--model", "r", "--output", "o", "--set", "overlap=32",
                                       "--set", "threshold=0.3"])
    args = apply_settings(args, "tile")
    assert (args.overlap, args.threshold) == (32, 0.3)
    with pytest.raises(ConfigError, match=r"unknown config key 'overlp'.*overlap"):
        apply_settings(_build_parser().parse_args(["tile", "x.tif", "--model", "r", "--output", "o", "--set",
                                                   "overlp=3"]), "tile")
    with pytest.raises(ConfigError, match="bad value for 'steps'"):
        apply_settings(_build_parser().parse_args(["synth", "--images", "i", "--masks", "m", "--output", "o",
                                                   "--set", "steps=many"]), "synth")
