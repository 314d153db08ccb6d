"""The results dashboard in a real browser: served as `pipelines dashboard ROOT` serves it, driven by chromium."""

from __future__ import annotations

import pytest

from tests.conftest import streamlit_server
from tests.test_results import CLASSES, CONFUSION, write_classification_run

TIMEOUT_MS = 60_000


@pytest.mark.slow
def test_confusion_matrix_of_a_run_in_the_browser(tmp_path, browser):
    write_classification_run(tmp_path, name="demo", demo=True)
    write_classification_run(tmp_path, name="other", demo=False)
    with streamlit_server("dashboard", [str(tmp_path)]) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            page.goto(url)
            page.get_by_text("2 of 2 runs").wait_for(timeout=TIMEOUT_MS)  # the runs browser, in the sidebar
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_test_id("stSelectbox").filter(has_text="Run").click()
            page.get_by_role("option", name="breakhis/demo").click()
            page.get_by_role("tab", name="Run detail").click()
            page.get_by_text("Run breakhis/demo").wait_for(timeout=TIMEOUT_MS)
            page.get_by_text("SYNTHETIC demo data").first.wait_for(timeout=TIMEOUT_MS)
            heading = page.get_by_role("heading", name="Confusion matrix (counts)")
            heading.wait_for(timeout=TIMEOUT_MS)
            table = page.locator("table").filter(has_text="true \\ predicted").filter(has_not_text="%")
            table.wait_for(timeout=TIMEOUT_MS)
            rows = [[cell.strip() for cell in row.locator("th, td").all_inner_texts()]
                    for row in table.locator("tbody tr").all()]
            assert [row[0] for row in rows] == CLASSES
            assert [[int(c) for c in row[1:]] for row in rows] == CONFUSION
            assert "view=Run" in page.url and "run=breakhis" in page.url  # the view can be shared as a link
        finally:
            page.close()
