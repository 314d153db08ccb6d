"""Reports and records of the clinician app: the results CSV, the one-page PDF read back with pypdf, the
audit log's lines (whole under concurrent writers, never the image), and the app writing them: a DFU
ensemble and a wound segmenter served on real foot-ulcer photos (Streamlit's AppTest)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.cli import main
from pipelines.model_store import card_markdown, load_model
from pipelines.reports import AuditLog, prediction_pdf, record_of, results_csv
from pipelines.serving import classify, segment
from tests.conftest import FUSEG_REAL

APP = Path(__file__).resolve().parents[1] / "apps" / "clinician.py"


@pytest.fixture(scope="module")
def store(dfu_run, segment_run, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("models")
    assert main(["export", str(dfu_run), "--name", "dfu", "--store", str(store)]) == 0
    assert main(["export", str(segment_run), "--name", "wounds", "--store", str(store)]) == 0
    return store


def photos(n: int = 2) -> list[Path]:
    return sorted(FUSEG_REAL.glob("*.png"))[:n]


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    assert len(reader.pages) == 1
    return reader.pages[0].extract_text()


def test_a_referred_ensemble_prediction_is_recorded_in_csv_and_pdf(store):
    stored = load_model("dfu", store)
    photo = photos(1)[0]
    data = photo.read_bytes()
    prediction = classify(stored, data, photo.name)
    assert prediction.refer and "below its refer threshold" in prediction.refer  # random members: unsure
    record = record_of(prediction, stored.card, data)
    assert record.output == "refer" and record.referred and record.image_sha256 == hashlib.sha256(data).hexdigest()
    assert record.weights_sha256 == stored.card["weights_sha256"] and record.threshold > 0.5
    table = pd.read_csv(io.BytesIO(results_csv([record])))
    assert table.loc[0, "output"] == "refer" and {f"prob_{c}" for c in stored.class_names} <= set(table.columns)
    assert table[[f"prob_{c}" for c in stored.class_names]].sum(axis=1).iloc[0] == pytest.approx(1, abs=1e-4)
    text = _pdf_text(prediction_pdf(record, prediction.image, prediction.overlay, card_markdown(stored.card)))
    flat = " ".join(text.split())
    for expected in ("REFER TO A SPECIALIST", "calibrated probabilities", "Research use only", photo.name,
                     record.image_sha256[:16], record.weights_sha256[:16], "dfu"):
        assert expected in flat, expected


def test_an_outline_is_recorded_with_its_area(store):
    stored = load_model("wounds", store)
    photo = photos(1)[0]
    outline = segment(stored, photo.read_bytes(), photo.name)
    record = record_of(outline, stored.card, photo.read_bytes(), pixels_per_cm=20.0)
    assert record.kind == "segmentation" and record.details["area_px"] == int(outline.mask.sum())
    assert record.details["area_cm2"] == pytest.approx(outline.area_px / 400, rel=1e-3)
    row = pd.read_csv(io.BytesIO(results_csv([record]))).iloc[0]
    assert row["area_px"] == outline.area_px and row["threshold"] == 0.5
    assert "Outlined:" in _pdf_text(prediction_pdf(record, outline.image, outline.overlay, card_markdown(stored.card)))


def test_audit_lines_stay_whole_under_concurrent_writers(store, tmp_path):
    stored = load_model("dfu", store)
    photo = photos(1)[0]
    data = photo.read_bytes()
    record = record_of(classify(stored, data, photo.name, explain=False), stored.card, data)
    log = AuditLog(tmp_path / "audit" / "log.jsonl")
    threads = [threading.Thread(target=lambda: [log.append(record) for _ in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "audit" / "log.jsonl").read_text().splitlines()
    assert len(lines) == 200 and all(json.loads(line)["image_sha256"] == record.image_sha256 for line in lines)


def _app(monkeypatch, store: Path, audit: Path | None = None):
    from streamlit.testing.v1 import AppTest

    argv = ["clinician.py", "--store", str(store)] + (["--audit", str(audit)] if audit else [])
    monkeypatch.setattr(sys, "argv", argv)
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.run()
    return at


def test_app_refers_logs_once_per_prediction_and_tables_the_batch(monkeypatch, store, tmp_path):
    audit = tmp_path / "audit.jsonl"
    at = _app(monkeypatch, store, audit)
    at.sidebar.selectbox[0].set_value("dfu").run()
    files = photos(2)
    at.file_uploader[0].set_value([(p.name, p.read_bytes(), "image/png") for p in files])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    referred = [w.value for w in at.warning if w.value.startswith("**Refer to a specialist**")]
    assert len(referred) == 2 and all("below its refer threshold" in w for w in referred)
    table = at.dataframe[0].value
    assert list(table["image"]) == [p.name for p in files] and set(table["output"]) == {"refer"}
    at.run()  # a rerun (a download, a widget) neither predicts nor logs again
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert len(lines) == 2 and {line["image"] for line in lines} == {p.name for p in files}
    assert {line["image_sha256"] for line in lines} == {hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    raw = audit.read_bytes()
    assert all(p.read_bytes()[8:64] not in raw for p in files) and len(raw) < 4000  # hashes, never pixels
    assert {"time", "model", "weights_sha256", "output", "threshold", "referred"} <= set(lines[0])


def test_app_outlines_wounds_and_caps_the_batch(monkeypatch, store):
    at = _app(monkeypatch, store)
    at.sidebar.selectbox[0].set_value("wounds").run()
    small = io.BytesIO()  # a real photo at 128 px: 20 outlines stay quick
    Image.open(photos(1)[0]).convert("RGB").resize((128, 128)).save(small, "PNG")
    at.file_uploader[0].set_value([(f"{i}.png", small.getvalue(), "image/png") for i in range(21)])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("21 files uploaded: only the first 20 are read" in w.value for w in at.warning)
    shown = [m.value for m in at.markdown if m.value.startswith(("**Outlined: ", "**Nothing outlined"))]
    assert len(shown) == 20 and len(at.dataframe[0].value) == 20
    assert np.all(at.dataframe[0].value["kind"] == "segmentation")
