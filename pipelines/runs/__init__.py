"""The run folder, written and read in one place.

One folder per ``pipelines run`` (layout and file names in :mod:`pipelines.runs.folder`). The writing side
(:func:`create_run_dir`, :func:`write_config`, :func:`write_environment`) and the reading side the
dashboards and notebooks use (:func:`find_runs`, :func:`runs_table`, ``load_*`` and the table helpers)
share the same file-name constants, so readers read what writers write. Nothing here needs Streamlit.

Example:
    >>> from pipelines import runs
    >>> index = runs.runs_table(runs.find_runs(["runs"]))  # doctest: +SKIP
    >>> index.table[["run", "backbone", "accuracy"]]  # doctest: +SKIP
"""

from pipelines.runs.benchmarks import load_benchmarks, speed_accuracy
from pipelines.runs.folder import (
    ABLATION,
    BENCHMARKS,
    BEST_NAME,
    BEST_WEIGHTS,
    CHECKPOINTS,
    CONFIG,
    ENVIRONMENT,
    HISTORY,
    LAST_NAME,
    LAST_STATE,
    LAST_WEIGHTS,
    METRICS_FILE,
    OVERLAYS,
    PLOTS,
    PREDICTIONS,
    ROBUSTNESS,
    ROBUSTNESS_RELATIVE,
    ROBUSTNESS_SUMMARY,
    SPLIT,
    SPLIT_DIGEST,
    STATE_NAME,
    TILES,
    TRAINING_CURVES,
    check_run_dir,
    create_run_dir,
    read_config,
    read_split,
    write_config,
    write_environment,
    write_run_files,
    write_split,
)
from pipelines.runs.images import load_images, resolve_data_path
from pipelines.runs.index import RunIndex, filter_runs, find_runs, run_stamp, runs_table
from pipelines.runs.read import (
    RunFileError,
    footprint_paths,
    headline,
    headline_union,
    is_multilabel,
    load_ablation,
    load_config,
    load_history,
    load_metrics,
    load_predictions,
    load_tiles,
    object_tables,
    overlay_paths,
    prediction_classes,
    read_history,
)
from pipelines.runs.robustness import (
    load_relative_robustness,
    load_robustness,
    load_robustness_summary,
    robustness_curves,
    robustness_heatmap,
)
from pipelines.runs.tables import (
    breakdown_tables,
    calibration_summary,
    compare_curves,
    compare_metrics,
    confident_mistakes,
    confusion_matrix,
    metric_summary,
    per_class_table,
    pr_curves,
    reliability_points,
    risk_coverage_curve,
    roc_curves,
    training_curves,
)

__all__ = [
    # layout
    "CONFIG", "ENVIRONMENT", "SPLIT", "SPLIT_DIGEST", "HISTORY", "METRICS_FILE", "PREDICTIONS", "CHECKPOINTS",
    "BEST_WEIGHTS",
    "LAST_WEIGHTS", "LAST_STATE", "BEST_NAME", "LAST_NAME", "STATE_NAME", "PLOTS",
    "TRAINING_CURVES", "OVERLAYS", "ROBUSTNESS", "ROBUSTNESS_RELATIVE", "ROBUSTNESS_SUMMARY",
    "TILES", "ABLATION", "BENCHMARKS",
    # writing
    "create_run_dir", "write_config", "read_config", "write_environment", "write_split", "read_split",
    "write_run_files",
    "check_run_dir",
    # reading
    "headline", "headline_union", "RunFileError", "RunIndex", "find_runs", "run_stamp", "runs_table", "filter_runs",
    "load_config", "load_metrics", "read_history", "load_history", "load_predictions", "training_curves",
    "metric_summary", "breakdown_tables", "confusion_matrix", "per_class_table", "is_multilabel",
    "prediction_classes", "roc_curves", "pr_curves", "calibration_summary", "reliability_points",
    "risk_coverage_curve", "confident_mistakes", "load_images", "resolve_data_path",
    "load_robustness", "load_relative_robustness", "load_robustness_summary", "robustness_curves",
    "robustness_heatmap", "compare_metrics", "compare_curves", "load_benchmarks", "speed_accuracy", "load_tiles",
    "overlay_paths", "footprint_paths", "object_tables", "load_ablation",
]
