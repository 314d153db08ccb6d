"""ToC3D on the shared runner: streaming clips carry memory between steps, and a killed run that resumes
equals a straight one (history and final weights)."""

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from pipelines.config import apply_overrides
from pipelines.datasets.nuscenes import DETECTION_CLASSES
from pipelines.detection3d import engine
from pipelines.detection3d.model import build_detector
from pipelines.tasks import toc3d
from pipelines.training import seed_everything
from tests.test_runner import Kill

TINY = {**toc3d.DEMO_OVERRIDES, "model.embed_dim": 32, "model.depth": 4, "model.heads": 2, "model.stages": [1, 2, 3],
        "model.queries": 20, "model.propagated": 8, "model.decoder_layers": 1, "model.depth_bins": 8,
        "train.epochs": 3, "train.clip_length": 2, "train.batch_size": 2}



@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from pipelines.datasets.nuscenes_demo import write_demo_nuscenes

    root = write_demo_nuscenes(tmp_path_factory.mktemp("nus"), scenes=4, frames_per_scene=3)
    cfg = apply_overrides(toc3d.defaults(), [f"{k}={v}" for k, v in TINY.items()])
    cfg["data"]["root"] = str(root)
    toc3d.validate(cfg)
    return cfg, toc3d.load_data(cfg)


def _fit(cfg, data, run_dir, kill=None):
    seed_everything(int(cfg["seed"]))
    model = build_detector(cfg["model"], len(DETECTION_CLASSES))
    return engine.fit(model, toc3d.frame_loader(cfg, model), data.of("train"), data.of("val"), DETECTION_CLASSES,
                      cfg, run_dir, torch.device("cpu"), callbacks=[Kill(kill)] if kill else [])


def test_toc3d_resumed_run_equals_a_straight_run(scenes, tmp_path):
    cfg, data = scenes
    straight = _fit(cfg, data, tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        _fit(cfg, data, tmp_path / "resumed", kill=2)
    resumed = _fit(cfg, data, tmp_path / "resumed")
    assert list(resumed.columns[:8]) == ["epoch", "lr", "train_loss", "train_cls", "train_l1", "train_dn",
                                         "train_tokens", "val_map"]
    columns = [c for c in straight.columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed[columns], straight[columns], check_exact=True)
    a = load_file(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    for name in ("history.csv", "plots/training_curves.png", "checkpoints/best.safetensors"):
        assert (tmp_path / "resumed" / name).is_file()
