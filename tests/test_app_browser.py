"""The clinician app in a real browser: served on localhost as `pipelines app` serves it, a real BreakHis PNG
uploaded through the page's file input, the prediction read back from the page."""

from __future__ import annotations

import re

import pytest

from pipelines.cli import main
from tests.conftest import BREAKHIS_REAL, streamlit_server


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
