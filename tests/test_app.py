"""The clinician app's parts: safe decoding of uploads, the model store and its cards, prediction with the
training's evaluation transform, Grad-CAM, and the Streamlit page itself (AppTest)."""

from __future__ import annotations

import io
import itertools
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pipelines.cli import main
from pipelines.core.errors import DataError
from pipelines.core.images import decode_image
from pipelines.datasets.images import ImageTableDataset
from pipelines.engine.calibration import Calibration
from pipelines.engine.classification import image_cache_size
from pipelines.engine.explain import gradcam
from pipelines.model_store import CARD, WEIGHTS, list_models, load_model
from pipelines.serving import classify
from pipelines.training import make_loader, predict
from pipelines.transforms.augment import build_transform
from tests.conftest import BREAKHIS_REAL

APP = Path(__file__).resolve().parents[1] / "apps" / "clinician.py"


def _encode(array: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, fmt)
    return buf.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares a huge size in 60 bytes: what a decompression bomb looks like before decoding."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def real_png() -> Path:
    return next(BREAKHIS_REAL.rglob("*.png"))


@pytest.fixture(scope="module")
def store(trained_run, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("models")
    assert main(["export", str(trained_run), "--name", "breakhis-b0", "--store", str(store)]) == 0
    return store


# --- decoding uploads --------------------------------------------------------------------------------------------

def test_decode_reads_png_jpeg_tiff_and_drops_alpha():
    rgb = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    assert np.array_equal(decode_image(_encode(rgb), "a.png"), rgb)
    assert np.array_equal(decode_image(_encode(rgb, "TIFF"), "a.tif"), rgb)
    assert decode_image(_encode(rgb, "JPEG"), "a.jpg").shape == (40, 60, 3)
    rgba = np.concatenate([rgb, np.full((40, 60, 1), 128, np.uint8)], axis=2)
    assert np.array_equal(decode_image(_encode(rgba), "a.png"), rgb)


@pytest.mark.parametrize(("data", "colour", "message"), [
    (b"", "rgb", "x.png is empty"),
    (b"%PDF-1.4 not an image", "rgb", "x.png is not an image file"),
    (_png_header(8000, 8000), "rgb", "x.png is 8000x8000 pixels, more than 40,000,000; crop, downscale or tile it"),
    (_png_header(30000, 30000), "rgb", "x.png is too large to decode safely"),
    (_encode(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))[:6000], "rgb",
     "x.png is corrupt or truncated"),
    (_encode(np.zeros((8, 8), np.uint8)), "rgb", "x.png is a greyscale image; this model reads colour"),
    (_encode(np.zeros((8, 8), np.uint16)), "grey", "x.png has 1 channel(s) of mode I;16"),
    (_encode(np.dstack([np.full((8, 8), v, np.uint8) for v in (250, 10, 10)])), "grey", "x.png is a colour image"),
])
def test_decode_refuses_bad_uploads_with_one_line(data, colour, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        decode_image(data, "x.png", colour=colour, max_pixels=40_000_000)
    assert "\n" not in str(info.value)


def test_decode_for_grey_models_repeats_grey_and_accepts_grey_saved_as_rgb():
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    out = decode_image(_encode(grey), "g.png", colour="grey")
    assert out.shape == (8, 8, 3) and np.array_equal(out[..., 2], grey)
    assert decode_image(_encode(np.dstack([grey] * 3)), "g.png", colour="grey").shape == (8, 8, 3)


# --- the model store ----------------------------------------------------------------------------------------------

def test_export_writes_weights_and_a_card_the_store_lists(store, trained_run):
    folder = store / "breakhis-b0"
    card = json.loads((folder / CARD).read_text())
    assert card["task"] == "breakhis" and card["classes"] == ["benign", "malignant"]
    assert card["input"]["image_size"] == 64 and card["input"]["colour"] == "rgb" and card["output"] == "softmax"
    assert card["demo"] and "SYNTHETIC" in card["limitations"][0] and "Not a medical device" in card["notice"]
    assert {"intended_use", "training_data", "metrics", "source_run", "weights_sha256"} <= set(card)
    assert "## Limitations" in (folder / "card.md").read_text()
    stored = load_model("breakhis-b0", store)
    run_weights = load_model_from_run(trained_run)
    for key, value in stored.model.state_dict().items():
        assert torch.equal(value, run_weights[key]), key
    cards, problems = list_models(store)
    assert [c["name"] for c in cards] == ["breakhis-b0"] and problems == []


def load_model_from_run(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run_dir / "checkpoints" / "best.safetensors")


def test_store_lists_only_models_with_a_readable_card(store, tmp_path):
    import shutil

    shutil.copytree(store / "breakhis-b0", tmp_path / "good")
    (tmp_path / "nocard").mkdir()
    (tmp_path / "nocard" / WEIGHTS).write_bytes(b"")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CARD).write_text("{not json")
    cards, problems = list_models(tmp_path)
    assert [c["name"] for c in cards] == ["breakhis-b0"]
    assert len(problems) == 2 and problems[0].startswith("broken: unreadable card.json")


@pytest.mark.parametrize(("argv", "message"), [
    (["--name", "../escape"], "is not a plain folder name"),
    (["--name", "ok", "--output", "x"], "--output is for the ONNX export"),
])
def test_export_refuses_bad_names(trained_run, tmp_path, capsys, argv, message):
    assert main(["export", str(trained_run), "--store", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err


def test_export_twice_under_one_name_needs_force(trained_run, tmp_path, capsys):
    args = ["export", str(trained_run), "--store", str(tmp_path), "--name", "twice"]
    assert main(args) == 0
    card = (tmp_path / "twice" / CARD).read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "twice exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "twice" / CARD).read_text() == card
    assert main([*args, "--force"]) == 0


def test_servers_bind_to_localhost_unless_told(monkeypatch, store):
    from pipelines import launch

    seen = []

    class Server:  # stands in for the Streamlit process launch() starts and waits for
        def __init__(self, cmd):
            seen.append(cmd)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Server)
    assert main(["app", "--store", str(store)]) == 0
    assert main(["dashboard", str(store), "--host", "0.0.0.0", "--port", "8600"]) == 0
    app, dashboard = (dict(itertools.pairwise(cmd)) for cmd in seen)
    assert app["--server.address"] == "127.0.0.1" and app["run"].endswith("apps/clinician.py")
    assert dashboard["--server.address"] == "0.0.0.0" and dashboard["--server.port"] == "8600"
    assert seen[0][-2:] == ["--store", str(store.resolve())]


def test_serving_commands_refuse_missing_folders(tmp_path, capsys):
    assert main(["app", "--store", str(tmp_path / "none")]) == 2
    assert "model store" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path / "none")]) == 2
    assert "runs folder" in capsys.readouterr().err


# --- prediction and explanation -----------------------------------------------------------------------------------

def test_classify_matches_the_evaluation_path_on_a_real_breakhis_png(store):
    stored = load_model("breakhis-b0", store)
    path = real_png()
    prediction = classify(stored, path.read_bytes(), path.name)
    # evaluation's image cache holds its own final resize: served = evaluated, to the decimal (a 700x460 photo)
    dataset = ImageTableDataset([path], np.array([0]), build_transform("none", stored.image_size),
                                cache_size=image_cache_size("none", stored.image_size))
    raw = predict(stored.model, make_loader(dataset, 1, 0, 0), torch.device("cpu"), amp=False, show=False)
    assert stored.spec.calibration["method"] in ("none", "temperature", "vector") and prediction.calibrated
    expected = Calibration.from_dict(stored.spec.calibration).apply(raw)[0]  # the map fitted on validation
    assert list(prediction.probs) == ["benign", "malignant"]
    np.testing.assert_allclose(list(prediction.probs.values()), expected, atol=1e-5)
    assert prediction.image.shape == (460, 700, 3) and prediction.overlay.shape == prediction.image.shape
    assert prediction.ranked[0][1] >= prediction.ranked[1][1]


def test_card_and_weights_carry_the_calibration_and_the_refer_threshold(store, trained_run):
    card = json.loads((store / "breakhis-b0" / CARD).read_text())
    run_info = json.loads((trained_run / "metrics.json").read_text())["info"]["calibration"]
    assert card["calibration"] == run_info and run_info["fitted_on"] == "val"
    test = run_info["test"]
    assert {"ece", "adaptive_ece", "brier", "nll"} <= set(test["before"]) and len(test["after"]["ece_ci95"]) == 2
    stored = load_model("breakhis-b0", store)
    assert stored.spec.calibration["refer_below"] == run_info["refer"]["threshold"]
    assert all((trained_run / "plots" / f"{name}.png").is_file() for name in ("reliability", "risk_coverage"))
    text = (store / "breakhis-b0" / "card.md").read_text()
    assert "- Probabilities: " in text and ("Refers to a specialist below" in text or "Refers every case" in text)


def test_classify_refers_below_the_threshold_and_says_why(store):
    import dataclasses

    stored = load_model("breakhis-b0", store)
    path = real_png()
    answered = dataclasses.replace(stored, spec=dataclasses.replace(
        stored.spec, calibration={**stored.spec.calibration, "refer_below": 0.0}))
    assert classify(answered, path.read_bytes(), path.name, explain=False).refer is None
    doubtful = dataclasses.replace(stored, spec=dataclasses.replace(
        stored.spec, calibration={**stored.spec.calibration, "refer_below": 0.999999, "max_risk": 0.05}))
    why = classify(doubtful, path.read_bytes(), path.name, explain=False).refer
    assert "below its refer threshold 100.0%" in why and "5% of the validation cases" in why
    raw = dataclasses.replace(stored, spec=dataclasses.replace(stored.spec, calibration={}))
    prediction = classify(raw, path.read_bytes(), path.name, explain=False)
    assert prediction.refer is None and not prediction.calibrated


class _Brightness(nn.Module):
    """Class 1's logit is the mean brightness of a ReLU map: its Grad-CAM must light up the bright square."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, :, 1, 1] = 1.0  # channel 0: brightness
            self.conv.weight[1, :, 1, 1] = -1.0  # channel 1: darkness
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.act(self.conv(x))).flatten(1))


def test_gradcam_highlights_what_drives_the_class():
    x = torch.full((1, 3, 32, 48), -1.0)
    x[..., 8:16, 30:40] = 2.0
    _, cam = gradcam(_Brightness().eval(), x, target=1)
    assert cam.shape == (32, 48) and cam.max() == pytest.approx(1.0)
    inside = np.zeros((32, 48), bool)
    inside[8:16, 30:40] = True
    assert cam[inside].min() > 0.9 and cam[~inside].mean() < 0.2
    _, cam0 = gradcam(_Brightness().eval(), x, target=0)  # class 0 looks at the dark background
    assert cam0[inside].mean() < cam0[~inside].mean()


@pytest.mark.parametrize("backbone", ["efficientnet_b0", "medvitv2_tiny"])
def test_gradcam_finds_the_feature_map_of_registry_backbones(backbone):
    from pipelines.backbones import create_backbone

    model = create_backbone(backbone, num_classes=3, img_size=64).eval()
    logits, cam = gradcam(model, torch.randn(1, 3, 64, 96))
    assert logits.shape == (1, 3) and cam.shape == (64, 96) and cam.min() >= 0 and cam.max() <= 1


# --- the Streamlit page -------------------------------------------------------------------------------------------

def _app(monkeypatch, store: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setattr(sys, "argv", [str(APP), "--store", str(store)])
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    assert not at.exception
    return at


def test_app_lists_carded_models_shows_the_card_and_the_notice(monkeypatch, store):
    at = _app(monkeypatch, store)
    assert at.sidebar.selectbox[0].options == ["breakhis-b0"]
    assert any("Not a medical device" in w.value for w in at.warning)
    assert any("## Intended use" in m.value for m in at.sidebar.markdown)
    assert any("SYNTHETIC" in e.value for e in at.error)  # a demo-trained model says so


def test_app_predicts_uploads_and_survives_bad_ones(monkeypatch, store):
    at = _app(monkeypatch, store)
    png = real_png()
    at.file_uploader[0].set_value([
        (png.name, png.read_bytes(), "image/png"),
        ("notes.png", b"patient notes, not an image", "image/png"),
        ("bomb.png", _png_header(40000, 40000), "image/png"),
    ])
    at.run()
    assert not at.exception
    answered = [m.value for m in at.markdown if m.value.startswith("**Prediction: ")]
    referred = [w.value for w in at.warning if w.value.startswith("**Refer to a specialist**")]
    assert len(answered) + len(referred) == 1
    errors = [e.value for e in at.error]
    assert any(e.startswith("notes.png is not an image file") for e in errors)
    assert any(e.startswith("bomb.png is too large to decode safely") for e in errors)
    assert len(at.table) == 1 and sorted(at.table[0].value.index) == ["benign", "malignant"]


def test_app_with_an_empty_store_says_how_to_fill_it(monkeypatch, tmp_path):
    at = _app(monkeypatch, tmp_path)
    assert any("pipelines export RUN_DIR --name NAME" in i.value for i in at.info)
