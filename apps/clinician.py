"""Clinician upload app: pick a carded model of the local store, upload images, read predictions.

The view follows the model: a classifier shows its top classes with calibrated probabilities, Grad-CAM
and "refer to a specialist" below its validation-chosen confidence; a segmenter (wound outlines) shows the
mask over the photo, its area in pixels and, given the image scale, in cm^2. Thin over ``pipelines``: the
store (``pipelines.model_store``) and the predictions (``pipelines.serving``). Uploads stay in memory.
Start it with ``pipelines app`` (localhost only).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import sys
from pathlib import Path

import pandas as pd
import streamlit as st

from pipelines.core.errors import PipelinesError
from pipelines.model_store import NOTICE, card_markdown, list_models, load_model
from pipelines.reports import AuditLog, prediction_pdf, record_of, results_csv
from pipelines.serving import classify, segment

log = logging.getLogger("pipelines.app")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "tif", "tiff"]
MAX_FILES = 20  # per upload: each file is predicted (and Grad-CAM'd) while the page waits


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="apps/clinician.py")
    parser.add_argument("--store", default="models")
    parser.add_argument("--audit", default=None)
    return parser.parse_known_args(sys.argv[1:])[0]


@st.cache_resource(max_entries=4, show_spinner="Loading the model...")
def _model(store: str, name: str, sha256: str):  # sha256 in the key: a re-exported model is reloaded
    return load_model(name, store)


def _percent(p: float) -> str:
    """A probability as people read it: never "100.0%" or "0.0%" for what is only very likely or unlikely."""
    return "> 99.9%" if p > 0.999 else "< 0.1%" if p < 0.001 else f"{p:.1%}"


def _show(prediction) -> None:
    top, p = prediction.ranked[0]
    if prediction.refer:
        st.warning(f"**Refer to a specialist** (most likely: {top}, {_percent(p)}): {prediction.refer}.",
                   icon=":material/medical_services:")
    else:
        st.markdown(f"**Prediction: {top}** ({_percent(p)})")
    left, right = st.columns(2)
    left.image(prediction.image, caption="uploaded image", width="stretch")
    if prediction.overlay is not None:
        right.image(prediction.overlay, caption=prediction.explained, width="stretch")
    else:
        right.info(prediction.explained)
    column = "calibrated probability" if prediction.calibrated else "probability"
    table = pd.DataFrame(prediction.ranked[:5], columns=["class", column])
    table[column] = table[column].map(_percent)
    st.table(table.set_index("class"))
    if not prediction.calibrated:
        st.caption("These probabilities are not calibrated: read them as scores, not as chances.")
    st.caption(f"{prediction.seconds * 1000:.0f} ms on this machine, at {prediction.precision} (the card says why)")


def _show_outline(outline, pixels_per_cm: float | None) -> None:
    area = outline.area_cm2(pixels_per_cm)
    size = f"{outline.area_px:,} px ({outline.share:.1%} of the image)"
    if area is not None:
        size += f", {area:.2f} cm² at {pixels_per_cm:g} px/cm"
    regions = f"{outline.regions} region{'s' if outline.regions != 1 else ''}"
    st.markdown(f"**Outlined: {size}; {regions}**" if outline.area_px else "**Nothing outlined in this image**")
    left, right = st.columns(2)
    left.image(outline.image, caption="uploaded image", width="stretch")
    cut = f"probability above {outline.threshold:.2f}" if outline.threshold is not None else "the top class"
    right.image(outline.overlay, caption=f"outline ({cut})", width="stretch")
    if outline.class_areas_px:
        areas = pd.Series(outline.class_areas_px, name="area (px)").rename_axis("class")
        st.table(areas.to_frame())
    mean = f"; mean probability inside {outline.mean_probability:.1%}" if outline.mean_probability is not None else ""
    st.caption(f"{outline.seconds * 1000:.0f} ms on this machine, at {outline.precision}{mean}. The outline is a "
               "draft for a person to check, not a measurement.")


def main() -> None:
    st.set_page_config(page_title="pipelines: clinical images", layout="wide")
    st.title("Clinical image models")
    st.warning(NOTICE, icon="⚠️")
    args = _args()
    store = args.store
    cards, problems = list_models(store)
    for problem in problems:
        st.sidebar.caption(f"skipped {problem}")
    if not cards:
        st.info(f"No model with a card in {store}. Export a finished run into it: "
                f"`pipelines export RUN_DIR --name NAME --store {store}`")
        return
    by_name = {card["name"]: card for card in cards}
    name = st.sidebar.selectbox("Model", list(by_name))
    card = by_name[name]
    with st.sidebar.expander("Model card", expanded=True):
        st.markdown(card_markdown(card))
    if card.get("demo"):
        st.error("This model was trained on SYNTHETIC demo data: its predictions mean nothing for real images.")
    try:
        stored = _model(store, name, card.get("weights_sha256", ""))
    except PipelinesError as exc:
        st.error(f"Model {name} cannot be loaded: {exc}")
        return
    spec = stored.spec  # what the weights file says it is: the card is its summary for people
    st.caption(f"{spec.task} {spec.kind} {name}: {', '.join(spec.classes)}; input {stored.image_size} px "
               f"{'greyscale' if spec.input.colour == 'grey' else 'colour'}")
    outlines = spec.kind == "segmenter"
    pixels_per_cm = None
    if outlines:
        pixels_per_cm = st.number_input("Image scale in pixels per cm (from a ruler in the photo; 0 = unknown)",
                                        min_value=0.0, value=0.0, step=1.0) or None
    uploads = st.file_uploader(f"Upload up to {MAX_FILES} images at a time (PNG, JPEG or TIFF)", type=UPLOAD_TYPES,
                               accept_multiple_files=True) or []
    if len(uploads) > MAX_FILES:
        st.warning(f"{len(uploads)} files uploaded: only the first {MAX_FILES} are read. Upload the others as "
                   "another batch.")
    audit = AuditLog(args.audit) if args.audit else None
    done = st.session_state.get("done", {})  # reruns (a download, a new setting) do not predict or log again
    kept, records = {}, []
    for upload in uploads[:MAX_FILES]:
        data = upload.getvalue()
        key = (card.get("weights_sha256", ""), hashlib.sha256(data).hexdigest(), upload.name, pixels_per_cm)
        with st.container(border=True):
            st.subheader(upload.name)
            try:
                if key not in done:
                    result = (segment if outlines else classify)(stored, data, upload.name)
                    record = record_of(result, card, data, pixels_per_cm)
                    if audit is not None:
                        audit.append(record)
                    done[key] = (result, record, prediction_pdf(record, result.image, result.overlay,
                                                                card_markdown(card)))
                result, record, pdf = kept[key] = done[key]
                if outlines:
                    _show_outline(result, pixels_per_cm)
                else:
                    _show(result)
                records.append(record)
                st.download_button("Download the report (PDF)", pdf, file_name=f"{Path(upload.name).stem}_report.pdf",
                                   mime="application/pdf", key=f"pdf_{key[1]}_{upload.name}", on_click="ignore")
            except PipelinesError as exc:
                st.error(str(exc))
            except Exception as exc:  # one bad file must not take the page down
                log.exception("failed on %s", upload.name)
                st.error(f"{upload.name} could not be processed ({type(exc).__name__}: {exc})")
    st.session_state["done"] = kept  # only this batch's results stay in memory
    if records:
        st.subheader("Results")
        table = pd.read_csv(io.BytesIO(results_csv(records)))
        first = [c for c in ("image", "output", "referred", "confidence", "area_px") if c in table.columns]
        st.dataframe(table[first + [c for c in table.columns if c not in first and c != "weights_sha256"]],
                     hide_index=True)
        st.download_button("Download the results (CSV)", results_csv(records), file_name="results.csv",
                           mime="text/csv", on_click="ignore")
        if audit is not None:
            st.caption(f"Each prediction is logged to {args.audit} (no image is stored).")

main()
