"""Results dashboards over run folders: runs browser, run detail, compare runs, speed vs accuracy.

Start it with ``pipelines dashboard [RUNS_DIR ...]`` (it runs ``streamlit run dashboards/results.py --
RUNS_DIR...``). The page only lays things out; reading and computing is :mod:`pipelines.runs`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st
import yaml

from pipelines import runs as R

VIEWS = ("Runs", "Run detail", "Compare runs", "Speed vs accuracy")
DEMO_NOTE = "SYNTHETIC demo data: these numbers say nothing about real data"
GALLERY_COLUMNS = 4


def parse_roots(argv: Sequence[str]) -> list[Path]:
    """The folders holding run folders, as given after ``--`` on the streamlit command line."""
    parser = argparse.ArgumentParser(prog="dashboards/results.py", description=__doc__)
    parser.add_argument("roots", nargs="*", default=["runs"], help="folders holding run folders (default: runs)")
    return [Path(r).expanduser().resolve() for r in parser.parse_args(list(argv)).roots]


# --- cached reading: every reader is keyed by the run folder and its latest modification time -------------

@st.cache_data(show_spinner=False, max_entries=512)
def _cached(reader: str, run_dir: str, stamp: float):
    return getattr(R, reader)(run_dir)


def read(reader: str, run_dir: Path):
    """``pipelines.runs.<reader>(run_dir)``, read again only when the run folder changed."""
    return _cached(reader, str(run_dir), R.run_stamp(run_dir))


@st.cache_data(show_spinner=False, max_entries=16)
def _cached_index(run_dirs: tuple[str, ...], stamps: tuple[float, ...]) -> R.RunIndex:
    return R.runs_table(run_dirs)


def run_index(run_dirs: list[Path]) -> R.RunIndex:
    return _cached_index(tuple(map(str, run_dirs)), tuple(R.run_stamp(d) for d in run_dirs))


@st.cache_data(show_spinner=False, max_entries=64)
def _cached_mistakes(run_dir: str, stamp: float, limit: int):
    predictions = R.load_predictions(run_dir)
    mistakes = R.confident_mistakes(predictions, limit)
    images, problem = R.load_images(run_dir, mistakes)
    return mistakes, images, problem


@contextlib.contextmanager
def warn_on_bad_files() -> Iterator[None]:
    """A section whose file is corrupt shows one warning line and the page goes on."""
    try:
        yield
    except R.RunFileError as exc:
        st.warning(str(exc))


# --- charts ----------------------------------------------------------------------------------------------

def line_chart(frame: pd.DataFrame, x: str, y: str, color: str, x_title: str, y_title: str) -> alt.Chart:
    """Lines per ``color`` value, long labels (class names, AUCs) in full; epochs are whole numbers."""
    axis = alt.Axis(format="d", tickMinStep=1) if x.startswith("epoch") else alt.Axis(labelAngle=0)
    legend = alt.Legend(labelLimit=320, title=None)
    return alt.Chart(frame).mark_line(point=len(frame) < 200).encode(
        x=alt.X(x, title=x_title, axis=axis), y=alt.Y(y, title=y_title),
        color=alt.Color(color, legend=legend), tooltip=list(frame.columns),
    )


def labelled_points(frame: pd.DataFrame, x: alt.X, y: alt.Y, label: str, **encodings) -> alt.LayerChart:
    """A scatter with each point's ``label`` written beside it."""
    points = alt.Chart(frame).mark_point(filled=True, size=90).encode(x=x, y=y, tooltip=list(frame.columns),
                                                                       **encodings)
    return points + points.mark_text(align="left", dx=8, fontSize=11).encode(text=f"{label}:N")


def show(chart: alt.Chart) -> None:
    st.altair_chart(chart.properties(height=320), width="stretch")


def heatmap(frame: pd.DataFrame, x: str, y: str, value: str) -> alt.Chart:
    base = alt.Chart(frame).encode(x=alt.X(x, title=None, sort=None), y=alt.Y(y, title=None, sort=None))
    scale = alt.Scale(scheme="redyellowgreen", reverse=True, domainMid=1.0)
    cells = base.mark_rect().encode(color=alt.Color(value, scale=scale, title=None),
                                    tooltip=[y, x, alt.Tooltip(value, format=".3f")])
    return cells + base.mark_text().encode(text=alt.Text(value, format=".2f"))


# --- views -------------------------------------------------------------------------------------------------

def empty_page(roots: list[Path]) -> None:
    where = ", ".join(str(r) for r in roots)
    st.info(
        f"No run folders under {where}.\n\n"
        "A run folder is what `pipelines run` writes (`runs/TASK/NAME/` with `config.yaml`, `metrics.json`, ...). "
        "Make one in about a minute on a CPU with synthetic data:\n\n"
        "```\npipelines run breakhis --demo\npipelines dashboard runs\n```\n\n"
        "or point the dashboard at the folder that holds your runs: `pipelines dashboard PATH`."
    )


def sidebar(index: R.RunIndex) -> tuple[pd.DataFrame, str | None]:
    """Runs browser controls: filter by task, sort by a metric, pick a run. Returns the runs shown and the run."""
    table = index.table
    st.sidebar.header("Runs")
    tasks = st.sidebar.multiselect("Task", sorted(table["task"].dropna().unique()), key="tasks")
    metrics = [m for m in index.metrics if table[m].notna().any()]
    sort_by = st.sidebar.selectbox("Sort by (test)", ["newest", *metrics], key="sort_by")
    shown = R.filter_runs(table, tasks, None if sort_by == "newest" else sort_by)
    run = st.sidebar.selectbox("Run", list(shown["run"]), key="run", bind="query-params")
    st.sidebar.caption(f"{len(shown)} of {len(table)} runs")
    return shown, run


def runs_view(shown: pd.DataFrame, headline: list[str]) -> None:
    st.subheader("Runs")
    st.caption("Pick a run in the sidebar; the Run detail tab shows it. Metrics are on the test split.")
    view = shown.assign(data=shown["demo"].map({True: "SYNTHETIC demo", False: ""}))
    metrics = [m for m in headline if view[m].notna().any()]
    columns = ["run", "task", "backbone", "dataset", "data", "finished", "selected_epoch", *metrics, "mtime"]
    config = {m: st.column_config.NumberColumn(m, format="%.4f") for m in metrics}
    config["mtime"] = st.column_config.DatetimeColumn("last written", format="YYYY-MM-DD HH:mm")
    st.dataframe(view[columns], hide_index=True, column_config=config)


def run_detail(run_dir: Path, label: str) -> None:
    st.subheader(f"Run {label}")
    st.caption(str(run_dir))
    cfg, metrics = {}, None
    with warn_on_bad_files():
        cfg = read("load_config", run_dir)
    with warn_on_bad_files():
        metrics = read("load_metrics", run_dir)
    info = (metrics or {}).get("info") or {}
    if info.get("demo", (cfg.get("run") or {}).get("demo")):
        st.warning(info.get("note") or DEMO_NOTE, icon="⚠️")
    with st.expander("Config (config.yaml)"):
        st.code(yaml.safe_dump(cfg, sort_keys=False), language="yaml")
    with warn_on_bad_files():
        curves_section(run_dir, info.get("selected_epoch"))
    if metrics is not None:
        task = (cfg.get("run") or {}).get("task") or info.get("task")
        evaluation_section(metrics, R.headline(task))
    elif not (run_dir / R.METRICS_FILE).is_file():
        st.info("No metrics.json yet: the run is still training or was stopped. "
                f"`pipelines eval {run_dir}` evaluates its best checkpoint.")
    with warn_on_bad_files():
        curves_from_predictions(run_dir)
    with warn_on_bad_files():
        calibration_section(run_dir, info.get("calibration"))
    with warn_on_bad_files():
        robustness_section(run_dir)
    with warn_on_bad_files():
        segmentation_section(run_dir)
    with warn_on_bad_files():
        compression_section(run_dir)
    with warn_on_bad_files():
        mistakes_section(run_dir)  # last: the first look at a data set's images may take seconds


def curves_section(run_dir: Path, selected_epoch: int | None) -> None:
    history, problem = read("read_history", run_dir)
    if history is None:
        return
    st.markdown("#### Training curves")
    if problem:
        st.warning(problem)
    curves = R.training_curves(history)
    left, right = st.columns(2)
    for column, panel, title in ((left, "loss", "loss"), (right, "validation", "validation score")):
        part = curves[curves["panel"] == panel]
        if part.empty:
            continue
        chart = line_chart(part, "epoch:Q", "value:Q", "curve:N", "epoch", title)
        if selected_epoch:
            selected = pd.DataFrame({"epoch": [selected_epoch]})
            chart += alt.Chart(selected).mark_rule(strokeDash=[4, 4]).encode(x="epoch:Q")
        with column:
            show(chart)
    if selected_epoch:
        st.caption(f"Dashed line: the selected (best on validation) epoch, {selected_epoch}.")


def evaluation_section(metrics: dict, headline: tuple[str, ...]) -> None:
    splits = [s for s in ("test", "val") if isinstance(metrics.get(s), dict) and metrics[s]]
    if not splits:
        st.info("metrics.json holds no evaluated split.")
        return
    split_name = st.radio("Split", splits, horizontal=True, key="detail_split")
    split = metrics[split_name]
    st.markdown(f"#### Metrics ({split_name}, n = {split.get('n', '?')})")
    st.table(metrics_with_intervals(R.metric_summary(split, headline)))
    confusion_section(split)
    per_class = R.per_class_table(split)
    if per_class is not None:
        st.markdown("#### Per-class precision, recall, F1")
        st.dataframe(per_class.style.format(precision=3))
    objects_section(split)
    for name, table in R.breakdown_tables(split).items():
        with st.expander(f"Scores {name}"):
            st.dataframe(table.style.format(precision=3))


def objects_section(split: dict) -> None:
    """Building footprints scored as objects (SpaceNet: one-to-one matches at IoU >= the threshold)."""
    tables = R.object_tables(split)
    if tables is None:
        return
    o = split["objects"]
    st.markdown(f"#### Footprints as objects (IoU >= {o['iou_threshold']}, at least {o['min_area_px']:g} px)")
    st.table(metrics_with_intervals(tables["scores"]))
    st.caption("true {true}, predicted {predicted}, matched {matched}".format(**tables["counts"].iloc[0].to_dict()))
    if "match_iou" in tables:
        show(alt.Chart(tables["match_iou"]).mark_bar().encode(
            x=alt.X("IoU:N", title="IoU of matched pairs"), y=alt.Y("matches:Q", title="matches")))
    if "cleaning" in tables:
        with st.expander("Scores by footprint cleaning"):
            st.dataframe(tables["cleaning"].style.format(precision=3), hide_index=True)


def metrics_with_intervals(summary: pd.DataFrame):
    """``metric | value | 95% CI`` with the interval as ``[low, high]`` (blank where none was computed)."""
    intervals = ["" if pd.isna(lo) or pd.isna(hi) else f"[{lo:.4f}, {hi:.4f}]"
                 for lo, hi in zip(summary["ci95_low"], summary["ci95_high"], strict=True)]
    table = summary[["metric", "value"]].assign(**{"95% CI (bootstrap)": intervals})
    return table.style.format({"value": "{:.4f}"}).hide(axis="index")


def confusion_section(split: dict) -> None:
    counts = R.confusion_matrix(split)
    if counts is None:
        st.caption("No confusion matrix (multi-label runs score each label on its own: see the per-label table).")
        return
    corner = "true \\ predicted"
    st.markdown("#### Confusion matrix (counts)")
    st.caption("Rows: true class; columns: predicted class (the order of class_names).")
    st.table(counts.rename_axis(index=corner))
    st.markdown("#### Confusion matrix (row-normalised)")
    st.caption("Each row: the fraction of that true class predicted as each class (the diagonal is recall).")
    fractions = R.confusion_matrix(split, normalize=True).rename_axis(index=corner)
    st.table(fractions.style.format("{:.1%}", na_rep="-").background_gradient(cmap="Blues", vmin=0, vmax=1, axis=None))


def curves_from_predictions(run_dir: Path) -> None:
    predictions = read("load_predictions", run_dir)
    if predictions is None:
        return
    roc, pr = R.roc_curves(predictions), R.pr_curves(predictions)
    if not roc.empty:
        st.markdown("#### ROC and precision-recall curves (test, one vs rest)")
        roc = roc.assign(curve=roc["class"] + roc["auc"].map(" (AUC {:.3f})".format))
        pr = pr.assign(curve=pr["class"] + pr["average_precision"].map(" (AP {:.3f})".format))
        diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 4], color="grey")
        show(line_chart(roc, "fpr:Q", "tpr:Q", "curve:N", "false positive rate", "true positive rate")
             + diagonal.encode(x="x:Q", y="y:Q"))
        show(line_chart(pr, "recall:Q", "precision:Q", "curve:N", "recall", "precision"))


def calibration_section(run_dir: Path, calibration: dict | None) -> None:
    """Scores before and after calibration, the reliability diagram and the risk-coverage curve with the
    refer threshold (classification runs)."""
    from pipelines.model_store import calibration_lines

    predictions = read("load_predictions", run_dir)
    if predictions is None:  # not a classification run (or not evaluated)
        return
    st.markdown("#### Calibration and referral")
    for line in calibration_lines(calibration or {}):
        st.caption(line.removeprefix("- "))
    summary = R.calibration_summary(calibration or {})
    if summary is None:
        return
    st.table(summary.style.format(precision=4).hide(axis="index"))
    left, right = st.columns(2)
    points = R.reliability_points(calibration, "test")
    if not points.empty:
        diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(strokeDash=[4, 4], color="grey")
        with left:
            show(line_chart(points, "confidence:Q", "accuracy:Q", "probabilities:N", "confidence (test)",
                            "accuracy in the bin").mark_line(point=True) + diagonal.encode(x="x:Q", y="y:Q"))
    curve = R.risk_coverage_curve(predictions)
    refer = calibration.get("refer") or {}
    if not curve.empty:
        chart = line_chart(curve.assign(curve="test"), "coverage:Q", "risk:Q", "curve:N", "coverage (share answered)",
                           "error among answered")
        if "max_risk" in refer:
            chart += alt.Chart(pd.DataFrame({"risk": [refer["max_risk"]]})).mark_rule(strokeDash=[4, 4]).encode(
                y="risk:Q")
        with right:
            show(chart)
        st.caption("Answering the most confident test cases first; dashed: the risk the refer threshold was "
                   "chosen for on validation.")


def mistakes_section(run_dir: Path) -> None:
    predictions = read("load_predictions", run_dir)
    if predictions is None:
        return
    total = len(R.confident_mistakes(predictions))
    st.markdown(f"#### Most confident mistakes ({total} wrong of {len(predictions)} test predictions)")
    if not total:
        return
    limit = st.slider("Show", 1, min(total, 48), min(total, 8), key="mistakes_shown") if total > 1 else total
    with st.spinner("Loading the test images..."):
        mistakes, images, problem = _cached_mistakes(str(run_dir), R.run_stamp(run_dir), limit)
    if problem:
        st.warning(problem)
    columns = st.columns(GALLERY_COLUMNS)
    for i, ((_, row), image) in enumerate(zip(mistakes.iterrows(), images, strict=True)):
        caption = f"true {row['label']} → predicted {row['pred']} ({row['confidence']:.2f})"
        with columns[i % GALLERY_COLUMNS]:
            if image is None:
                st.caption(caption)
            else:
                st.image(image, caption=caption, width="stretch")


def robustness_section(run_dir: Path) -> None:
    table = read("load_robustness", run_dir)
    if table is None:
        return
    st.markdown("#### Corruption robustness (test split)")
    summary = read("load_robustness_summary", run_dir) or {}
    measure = st.radio("Score", ["accuracy", "balanced_error"], horizontal=True, key="robustness_measure")
    curves = R.robustness_curves(table)
    show(line_chart(curves, "severity:O", f"{measure}:Q", "corruption:N", "severity (0 = clean)",
                    measure.replace("_", " ")))
    relative = read("load_relative_robustness", run_dir)
    if relative is not None:
        reference = summary.get("reference_run", "the reference run")
        st.markdown(f"##### BE and rBE relative to {reference}")
        st.caption("Below 1: more robust than the reference. BE: mean balanced error over the reference's; "
                   "rBE: the extra error the corruption causes over the reference's.")
        show(heatmap(R.robustness_heatmap(relative), "measure:N", "corruption:N", "value:Q"))


def segmentation_section(run_dir: Path) -> None:
    tiles, overlays = read("load_tiles", run_dir), R.overlay_paths(run_dir)
    if tiles is None and not overlays:
        return
    st.markdown("#### Segmentation: per-tile scores")
    if tiles is not None:
        numeric = tiles.select_dtypes("number")
        st.caption("Means over tiles: " + ", ".join(f"{c} {v:.3f}" for c, v in numeric.mean().items()))
        order = tiles.sort_values("iou")["tile"].astype(str).tolist()
        show(alt.Chart(tiles.assign(tile=tiles["tile"].astype(str))).mark_bar().encode(
            x=alt.X("tile:N", sort=order, title="tile (worst first)"), y=alt.Y("iou:Q", title="IoU"),
            tooltip=list(tiles.columns)))
        st.dataframe(tiles.sort_values("iou"), hide_index=True)
    gallery("Footprints over the test tiles", R.footprint_paths(run_dir), 24)
    gallery("Overlays", overlays, 48)


def gallery(title: str, paths: list[Path], limit: int) -> None:
    """The first ``limit`` pictures under a heading, in rows of GALLERY_COLUMNS; nothing when there are none."""
    if not paths:
        return
    st.markdown(f"#### {title}")
    columns = st.columns(GALLERY_COLUMNS)
    for i, path in enumerate(paths[:limit]):
        with columns[i % GALLERY_COLUMNS]:
            st.image(str(path), caption=path.stem, width="stretch")


def compression_section(run_dir: Path) -> None:
    table = read("load_ablation", run_dir)
    if table is None:
        return
    st.markdown("#### Token compression: the same detector at each setting (test scenes)")
    st.caption("Latency: medians per frame (all cameras); NDS and mAP over all 10 nuScenes classes; "
               "GT tokens kept: share of tokens inside projected ground-truth boxes that took the full path. "
               "Settings named '... bf16' are the same detector under bf16 autocast, timed in the same repeats.")
    show(labelled_points(table, alt.X("backbone_ms:Q", title="backbone ms per frame"),
                         alt.Y("nds:Q", title="NDS", scale=alt.Scale(zero=False)), "setting"))
    st.dataframe(table, hide_index=True)


def compare_view(index: R.RunIndex, shown: pd.DataFrame) -> None:
    st.subheader("Compare runs")
    finished = list(shown.loc[shown["finished"], "run"])
    runs = st.multiselect("Runs", list(shown["run"]), default=finished[:2], key="compare_runs")
    if not runs:
        st.info("Pick two or more runs.")
        return
    split = st.radio("Split", ["test", "val"], horizontal=True, key="compare_split")
    metrics, histories = {}, {}
    for run in runs:
        with warn_on_bad_files():
            metrics[run] = read("load_metrics", index.path(run))
        with warn_on_bad_files():
            histories[run], problem = read("read_history", index.path(run))
            if problem:
                st.warning(f"{run}: {problem}")
    table = R.compare_metrics(metrics, split, index.metrics)
    if table.empty:
        st.info(f"None of these runs has {split} metrics yet.")
    else:
        st.table(table.style.format("{:.4f}", na_rep="-").highlight_max(axis=1, color="#d4edda"))
    columns = sorted({c for h in histories.values() if h is not None for c in h.columns if c.startswith("val_")})
    if columns:
        default = "val_balanced_accuracy" if "val_balanced_accuracy" in columns else columns[0]
        column = st.selectbox("Validation curve", columns, index=columns.index(default), key="compare_curve")
        show(line_chart(R.compare_curves(histories, column), "epoch:Q", "value:Q", "run:N", "epoch", column))


def speed_view(roots: list[Path], runs: pd.DataFrame, headline: list[str]) -> None:
    st.subheader("Speed vs accuracy")
    benchmarks, problems = R.load_benchmarks(roots)
    for problem in problems:
        st.warning(problem)
    if benchmarks.empty:
        st.info("No backbone benchmark table under ROOT/benchmarks/. `python benchmarks/backbones.py` writes "
                "runs/benchmarks/backbones_cpu.csv (images/s per backbone).")
        return
    st.caption("Throughput: images/s of each backbone's fastest mode (" + ", ".join(
        sorted({Path(s).name for s in benchmarks["source"]})) + ").")
    metrics = [m for m in headline if runs[m].notna().any()]
    joined = pd.DataFrame()
    if metrics:
        metric = st.selectbox("Accuracy metric (test)", metrics, key="speed_metric")
        joined = R.speed_accuracy(benchmarks, runs, metric)
    if joined.empty:
        st.info("No run used a benchmarked backbone (or has test metrics yet): throughput vs size only.")
    else:
        show(labelled_points(joined, alt.X("throughput:Q", scale=alt.Scale(type="log"), title="images/s (log)"),
                             alt.Y(f"{metric}:Q", scale=alt.Scale(zero=False)), "run", color="backbone:N",
                             shape=alt.Shape("demo:N", title="demo data")))
    size = st.radio("Size measure", [c for c in ("params_m", "gmacs") if c in benchmarks.columns],
                    horizontal=True, key="speed_size")
    if size:
        used = set(runs["backbone"].dropna())
        frame = benchmarks.assign(used=benchmarks["name"].isin(used).map({True: "yes", False: "no"}))
        show(labelled_points(frame, alt.X(f"{size}:Q", scale=alt.Scale(type="log"), title=f"{size} (log)"),
                             alt.Y("throughput:Q", scale=alt.Scale(type="log"), title="images/s (log)"), "name",
                             color=alt.Color("used:N", title="used by a run",
                                             scale=alt.Scale(domain=["yes", "no"], range=["#d1495b", "#7a9cc6"]))))


def main() -> None:
    st.set_page_config(page_title="Results dashboard", layout="wide")
    roots = parse_roots(sys.argv[1:])
    st.title("Results dashboard")
    st.caption("Run folders under " + ", ".join(f"`{r}`" for r in roots))
    run_dirs = R.find_runs(roots)
    if not run_dirs:
        empty_page(roots)
        return
    index = run_index(run_dirs)
    for problem in index.problems:
        st.warning(problem)
    shown, run = sidebar(index)
    tabs = dict(zip(VIEWS, st.tabs(list(VIEWS), key="view", bind="query-params"), strict=True))
    with tabs["Runs"]:
        if tabs["Runs"].open:
            runs_view(shown, index.metrics)
    with tabs["Run detail"]:
        if tabs["Run detail"].open:
            if run is None:
                st.info("No run matches the sidebar's filter.")
            else:
                run_detail(index.path(run), run)
    with tabs["Compare runs"]:
        if tabs["Compare runs"].open:
            compare_view(index, shown)
    with tabs["Speed vs accuracy"]:
        if tabs["Speed vs accuracy"].open:
            speed_view(roots, index.table, index.metrics)


main()
