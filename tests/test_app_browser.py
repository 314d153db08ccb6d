"""The clinician app in a real browser: served on localhost as `pipelines app` serves it, a real BreakHis PNG
uploaded through the page's file input, the prediction read back from the page."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from pipelines.cli import main
from tests.conftest import BREAKHIS_REAL, FUSEG_REAL, streamlit_server


@pytest.mark.slow
def test_upload_a_real_breakhis_png_and_read_the_prediction(browser, trained_run, tmp_path):
    store = tmp_path / "models"
    assert main(["export", str(trained_run), "--name", "breakhis-b0", "--store", str(store)]) == 0
    png = next(BREAKHIS_REAL.rglob("*.png"))
    notes = tmp_path / "notes.png"
    notes.write_text("patient notes, not an image")
    with streamlit_server("app", ["--store", str(store)]) as url:
        page = browser.new_page()
        page.goto(url)
        page.get_by_text("Not a medical device").first.wait_for(timeout=60_000)
        page.locator("input[type=file]").set_input_files([str(png), str(notes)])
        page.get_by_text(re.compile("Prediction: |Refer to a specialist")).first.wait_for(timeout=60_000)
        text = page.inner_text("body")
        assert png.name in text
        assert re.search(r"Prediction: (benign|malignant)|Refer to a specialist \(most likely: (benign|malign)", text)
        page.get_by_text("calibrated probability").first.wait_for(timeout=30_000)
        assert page.get_by_role("button", name="Deploy").count() == 0  # no developer chrome for clinicians
        page.get_by_text("notes.png is not an image file").first.wait_for(timeout=30_000)
        page.close()


@pytest.mark.slow
def test_foot_ulcer_photos_refer_outline_and_download_reports(browser, dfu_run, segment_run, tmp_path):
    from pypdf import PdfReader

    store, audit = tmp_path / "models", tmp_path / "audit.jsonl"
    for run, name in ((dfu_run, "dfu"), (segment_run, "wounds")):
        assert main(["export", str(run), "--name", name, "--store", str(store)]) == 0
    photo = sorted(FUSEG_REAL.glob("*.png"))[0]
    with streamlit_server("app", ["--store", str(store), "--audit", str(audit)]) as url:
        page = browser.new_page()
        page.goto(url)
        page.get_by_text("Not a medical device").first.wait_for(timeout=60_000)
        page.locator("input[type=file]").set_input_files([str(photo)])
        page.get_by_text("Refer to a specialist").first.wait_for(timeout=60_000)  # random members: unsure
        with page.expect_download() as pdf_download:
            page.get_by_role("button", name="Download the report (PDF)").click()
        text = " ".join(PdfReader(pdf_download.value.path()).pages[0].extract_text().split())
        assert "REFER TO A SPECIALIST" in text and photo.name in text and "Research use only" in text
        with page.expect_download() as csv_download:
            page.get_by_role("button", name="Download the results (CSV)").click()
        table = pd.read_csv(csv_download.value.path())
        assert list(table["output"]) == ["refer"] and table["image"].iloc[0] == photo.name
        page.locator("[data-testid=stSelectbox]").first.click()  # the model: switch to the wound segmenter
        page.get_by_role("option", name="wounds").click()
        page.locator("input[type=file]").set_input_files([str(photo)])
        page.get_by_text(re.compile("Outlined: |Nothing outlined")).first.wait_for(timeout=90_000)
        page.close()
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [line["model"] for line in lines] == ["dfu", "wounds"] and lines[0]["referred"]
