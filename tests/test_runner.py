"""The one training runner: resume equals a straight run, damaged states and bad schedules are one line."""

import functools

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from pipelines.backbones import save_weights
from pipelines.core.device import Context
from pipelines.core.errors import ConfigError
from pipelines.training import ClassifierKind, ImageKind, Runner, Settings, seed_everything

CPU = Context(torch.device("cpu"))
NAMES = ["a", "b", "c"]


class Noisy(Dataset):
    """Tiny images whose augmentation (additive noise) draws from a seeded generator, as albumentations does."""

    def __init__(self, n: int, seed: int, target: str = "label"):
        g = np.random.default_rng(seed)
        self.labels = list(g.integers(0, 3, n))
        self.images = (g.normal(size=(n, 3, 8, 8)) + np.asarray(self.labels)[:, None, None, None]).astype(np.float32)
        self.target, self.rng = target, np.random.default_rng(0)

    def reseed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images[i] + self.rng.normal(0, 0.3, self.images[i].shape).astype(np.float32))
        if self.target == "mask":
            return {"image": image, "mask": (image[:1] > 1).float()}
        return {"image": image, "label": int(self.labels[i])}


def _net(out: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
                         nn.Conv2d(4, out, 1), *([nn.AdaptiveAvgPool2d(1), nn.Flatten()] if out == 3 else []))


SETTINGS = dict(lr=0.05, weight_decay=0.01, warmup_epochs=1, grad_clip=1.0, patience=10)


class Kill:
    """Stops the run after epoch ``at`` was committed, as kill -9 between two epochs would."""

    def __init__(self, at):
        self.at = at

    def start(self, cfg, run_dir):
        pass

    def epoch(self, row):
        if row["epoch"] == self.at:
            raise KeyboardInterrupt

    def finish(self, run_dir):
        pass


def _classifier(run_dir, epochs, kill=None, workers=0):
    seed_everything(3)
    kind = ClassifierKind(_net(3), nn.CrossEntropyLoss(), Noisy(24, 1), Noisy(9, 2), NAMES, 8, workers, 3, CPU,
                          show=False)
    return Runner(kind, Settings(epochs=epochs, monitor="balanced_accuracy", **SETTINGS), run_dir, CPU,
                  save=save_weights, callbacks=[Kill(kill)] if kill else []).fit()


def _segmenter(run_dir, epochs, kill=None):
    seed_everything(5)
    val = Noisy(6, 9, "mask")
    loss = nn.BCEWithLogitsLoss()

    def validate(model):
        model.eval()
        val.reseed(0)
        with torch.no_grad():
            batch = [val[i] for i in range(len(val))]
            logits = model(torch.stack([b["image"] for b in batch]))
            target = torch.stack([b["mask"] for b in batch])
            iou = ((logits > 0) & (target > 0)).sum() / ((logits > 0) | (target > 0)).sum().clamp_min(1)
        return {"loss": float(loss(logits, target)), "iou": float(iou)}

    kind = ImageKind(_net(1), loss, Noisy(20, 4, "mask"), 6, 0, 5, CPU, validate, target="mask")
    return Runner(kind, Settings(epochs=epochs, monitor="iou", **SETTINGS), run_dir, CPU,
                  save=save_weights, callbacks=[Kill(kill)] if kill else []).fit()


@pytest.mark.parametrize("train", [_classifier, _segmenter], ids=["classifier", "segmenter"])
def test_resumed_run_equals_a_straight_run(train, tmp_path):
    straight = train(tmp_path / "straight", 4)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", 4, kill=2)  # killed after epoch 2: its last_state.pt is the commit point
    resumed = train(tmp_path / "resumed", 4)
    assert list(resumed["epoch"]) == [1, 2, 3, 4]
    columns = [c for c in straight.columns if c != "seconds"]
    # exact: same kernels, same threads, every random state restored
    pd.testing.assert_frame_equal(resumed[columns], straight[columns], check_exact=True)
    a = load_file(tmp_path / "straight" / "checkpoints" / "last.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "resumed" / "plots" / "training_curves.png").is_file()
    history = pd.read_csv(tmp_path / "resumed" / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3, 4]


def test_resume_with_loader_workers_equals_a_straight_run(tmp_path):
    """Worker processes start afresh each epoch, seeded from (seed, epoch): no persistent worker drifts."""
    train = functools.partial(_classifier, workers=2)
    straight = train(tmp_path / "straight", 3)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", 3, kill=1)
    resumed = train(tmp_path / "resumed", 3)
    columns = [c for c in straight.columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed[columns], straight[columns], check_exact=True)


def test_resume_without_restored_random_state_differs(tmp_path, monkeypatch):
    """The equality above rests on the saved random states: dropping them must show (the test can fail)."""
    straight = _classifier(tmp_path / "straight", 3)
    with pytest.raises(KeyboardInterrupt):
        _classifier(tmp_path / "resumed", 3, kill=2)
    monkeypatch.setattr("pipelines.training.runner.restore_rng", lambda state: torch.manual_seed(123))
    resumed = _classifier(tmp_path / "resumed", 3)
    assert resumed["train_loss"].iloc[2] != straight["train_loss"].iloc[2]


def test_damaged_state_is_one_line_naming_the_file_and_the_fallback(tmp_path):
    _classifier(tmp_path, 1)
    state = tmp_path / "checkpoints" / "last_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(ConfigError) as err:
        _classifier(tmp_path, 2)
    message = str(err.value)
    assert "\n" not in message and str(state) in message and "without --resume" in message
    assert "last.safetensors" in message


def test_warmup_as_long_as_the_run_is_clamped_not_trained_at_lr_zero(tmp_path, caplog):
    seed_everything(0)
    kind = ClassifierKind(_net(3), nn.CrossEntropyLoss(), Noisy(16, 1), Noisy(6, 2), NAMES, 8, 0, 0, CPU,
                          show=False)
    settings = Settings(epochs=2, lr=0.1, warmup_epochs=5, monitor="loss")
    history = Runner(kind, settings, tmp_path, CPU, save=save_weights).fit()
    assert "train.warmup_epochs=5 is not below train.epochs=2" in caplog.text
    assert history["lr"].iloc[0] > 0.01  # one warm-up epoch of two, then the cosine


def test_callbacks_see_every_row_and_two_optimizers_step(tmp_path):
    events = []

    class Recorder:
        def start(self, cfg, run_dir):
            events.append(("start", cfg["name"]))

        def epoch(self, row):
            events.append(("epoch", row["epoch"]))

        def finish(self, run_dir):
            events.append(("finish", run_dir))

    class TwoHeads:
        """Two optimizers, one loss each, as a GAN's generator and discriminator."""

        def __init__(self):
            self.model = nn.ModuleDict({"g": nn.Linear(2, 1), "d": nn.Linear(2, 1)})

        def optimizers(self, model, settings):
            return {"G": torch.optim.SGD(model["g"].parameters(), lr=0.1),
                    "D": torch.optim.SGD(model["d"].parameters(), lr=0.1)}

        def steps_per_epoch(self):
            return 2

        def batches(self, epoch):
            return [torch.ones(4, 2)] * 2

        def step(self, net, x, carry):
            return {"G": net["g"](x).pow(2).mean(), "D": (net["d"](x) - 1).pow(2).mean()}, carry

        def validate(self, model):
            return {"loss": 0.0}

    kind = TwoHeads()
    before = {k: v.clone() for k, v in kind.model.state_dict().items()}
    Runner(kind, Settings(epochs=2, schedule="constant"), tmp_path, CPU, save=save_weights, callbacks=[Recorder()],
           cfg={"name": "x"}).fit()
    assert events == [("start", "x"), ("epoch", 1), ("epoch", 2), ("finish", tmp_path)]
    assert all(not torch.equal(before[k], v) for k, v in kind.model.state_dict().items())
    assert {"train_G", "train_D"} <= set(pd.read_csv(tmp_path / "history.csv").columns)


def test_a_last_batch_of_one_is_dropped_so_batch_norm_can_train(tmp_path):
    """9 images at batch 8 leave one image for the last batch; batch norm after pooling cannot train on it."""
    seed_everything(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(4), nn.Linear(4, 3))
    kind = ImageKind(net, nn.CrossEntropyLoss(), Noisy(9, 0), 8, 0, 0, CPU, lambda model: {"loss": 0.0})
    assert kind.steps_per_epoch() == 1
    history = Runner(kind, Settings(epochs=1, schedule="constant"), tmp_path, CPU, save=save_weights).fit()
    assert len(history) == 1
    even = ImageKind(_net(3), nn.CrossEntropyLoss(), Noisy(10, 0), 8, 0, 0, CPU, lambda model: {"loss": 0.0})
    assert even.steps_per_epoch() == 2  # a last batch of two is kept


@pytest.mark.parametrize("amp, family_faster, native, expected", [
    (True, True, True, torch.bfloat16), (True, False, True, None), (True, True, False, None),
    (False, True, True, None)])
def test_amp_on_a_cpu_trains_in_bf16_only_for_families_measured_faster(tmp_path, monkeypatch, amp, family_faster,
                                                                         native, expected):
    from pipelines.training import runner as runner_module

    monkeypatch.setattr(runner_module, "bf16_native", lambda device: native)
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = _net(3)

        def forward(self, x):
            if self.training:  # what the training step runs under (validation is the evaluation's business)
                seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
            return self.body(x)

    kind = ClassifierKind(Probe(), nn.CrossEntropyLoss(), Noisy(16, 1), Noisy(6, 2), NAMES, 8, 0, 3, CPU, show=False)
    Runner(kind, Settings(epochs=1, amp=amp, cpu_bf16=family_faster, schedule="constant"), tmp_path, CPU,
           save=save_weights).fit()
    assert seen and set(seen) == {expected}


def test_the_registry_table_decides_bf16_training_by_name(monkeypatch):
    from pipelines.backbones import registry

    monkeypatch.setattr(registry, "BF16_TRAINING", (("efficientvit_*", True), ("*lite0", False), ("toc3d", True)))
    assert registry.bf16_trains_faster("efficientvit_m5") and registry.bf16_trains_faster("toc3d")
    assert not registry.bf16_trains_faster("tu-tf_efficientnet_lite0") and not registry.bf16_trains_faster("other")
