"""The catalogue of bad inputs and faults (the audit of issue 17): each case makes one fault as a user would
meet it and names what the command must say; later issues add their cases to FAULTS.

A case returns the one line the user sees: for a command, the ``error:`` line of ``pipelines ...`` (exit
code 2, no traceback); for a library call, the DataError's message. Faults whose right answer is a behaviour
rather than a message (resume equality, a damaged tile block computed again, a failed start leaving no run
folder) are the tests after the table; cases of the audit tested where their code lives are listed in
``ELSEWHERE``.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines import runs
from pipelines.cli import main
from pipelines.core.errors import DataError
from pipelines.tasks import get_task
from tests.test_cli import assert_one_line_error, run_cli
from tests.test_task_contract import _sets

ELSEWHERE = {  # a case of the audit -> the test that holds it, where its code lives
    "16-bit greyscale PNG read as all white":
        "test_core.py::test_16_bit_greyscale_is_refused_by_every_reader_not_turned_white",
    "resume equals a straight run (classifier, segmenter)": "test_runner.py::test_resumed_run_equals_a_straight_run",
    "resume equals a straight run (ToC3D)": "test_runner_toc3d.py::test_toc3d_resumed_run_equals_a_straight_run",
    "truncated last_state.pt on --resume":
        "test_runner.py::test_damaged_state_is_one_line_naming_the_file_and_the_fallback",
    "warm-up longer than training":
        "test_runner.py::test_warmup_as_long_as_the_run_is_clamped_not_trained_at_lr_zero",
    "export --opset 3 recorded as 3": "test_inference.py::test_model_json_says_the_opset_the_file_has",
    "export --name twice": "test_app.py::test_export_twice_under_one_name_needs_force",
    "SIGTERM to app/dashboard orphans Streamlit":
        "test_launch.py::test_sigterm_to_pipelines_dashboard_stops_its_streamlit_server",
    "history.csv cut mid-row": "test_results.py::test_history_cut_mid_row_keeps_the_complete_rows_and_warns",
    "a damaged tile block blocks the output": "test_tile.py::test_killed_job_resumes_from_its_finished_blocks",
}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A finished BreakHis demo run at the task contract's smallest settings (one epoch)."""
    task = get_task("breakhis")
    out = tmp_path_factory.mktemp("faults")
    root = task.prepare_demo(out / "data", small=True)
    assert main(["run", "breakhis", "--demo", "--data-root", str(root), "--output", str(out / "runs"),
                 "--device", "cpu", *_sets(task.SMOKE_OVERRIDES)]) == 0
    return out / "runs" / "breakhis" / "demo"


def _command(capsys, *argv) -> str:
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "")
    return [line for line in err.splitlines() if line.strip()][-1]


def _run_copy(smoke_run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(smoke_run, tmp_path / "run"))


# --- the cases ------------------------------------------------------------------------------------------------

def eval_of_a_cut_split(capsys, tmp_path, smoke_run):
    run = _run_copy(smoke_run, tmp_path)
    lines = (run / runs.SPLIT).read_text().splitlines(keepends=True)
    (run / runs.SPLIT).write_text("".join(lines[: len(lines) // 2]))  # cut at a line boundary: still a valid CSV
    before = (run / runs.METRICS_FILE).read_bytes()
    line = _command(capsys, "eval", str(run), "--device", "cpu")
    assert (run / runs.METRICS_FILE).read_bytes() == before  # the run's metrics are not replaced
    return line


def resume_with_an_edited_split(capsys, tmp_path, smoke_run):
    run = _run_copy(smoke_run, tmp_path)
    (run / runs.SPLIT).write_text((run / runs.SPLIT).read_text().replace(",test,", ",train,", 1))
    return _command(capsys, "run", "breakhis", "--resume", str(run), "--set", "train.epochs=2", "--device", "cpu")


def _medmnist_file(tmp_path: Path, **change) -> Path:
    from pipelines.datasets.medmnist_demo import write_demo_medmnist

    root = write_demo_medmnist(tmp_path / "medmnist")
    source = next(root.glob("*.npz"))
    with np.load(source) as f:
        arrays = {k: f[k] for k in f.files}
    for key, edit in change.items():
        arrays[key] = edit(arrays[key])
    np.savez(tmp_path / "bad.npz", **arrays)
    return tmp_path / "bad.npz"


def _medmnist_run(capsys, tmp_path, **change):
    bad = _medmnist_file(tmp_path, **change)
    return _command(capsys, "run", "medmnist", "--data-root", str(tmp_path), "--set", f"data.file={bad}",
                    "--output", str(tmp_path / "runs"))


def medmnist_empty_split(capsys, tmp_path, smoke_run):
    return _medmnist_run(capsys, tmp_path, test_images=lambda x: x[:0], test_labels=lambda y: y[:0])


def medmnist_nan_labels(capsys, tmp_path, smoke_run):
    def nan(y):
        y = y.astype(np.float64)
        y[3] = np.nan
        return y

    line = _medmnist_run(capsys, tmp_path, train_labels=nan)
    assert not (tmp_path / "runs").exists()  # refused before a run folder is made
    return line


def medmnist_fractional_labels(capsys, tmp_path, smoke_run):
    return _medmnist_run(capsys, tmp_path, val_labels=lambda y: np.where(y == 1, 0.6, 0.0))


def synth_soft_mask(capsys, tmp_path, smoke_run):
    for name in ("images", "masks"):
        (tmp_path / name).mkdir()
    for stem in ("a", "b"):
        Image.fromarray(np.full((32, 32, 3), 120, np.uint8)).save(tmp_path / "images" / f"{stem}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[8:24, 8:24] = 255 if stem == "a" else 128  # a soft (or JPEG-blurred) mask
        Image.fromarray(mask).save(tmp_path / "masks" / f"{stem}.png")
    return _command(capsys, "synth", "--images", str(tmp_path / "images"), "--masks", str(tmp_path / "masks"),
                    "--output", str(tmp_path / "gen"), "--size", "32", "--steps", "1")


def multi_page_tiff_upload(capsys, tmp_path, smoke_run):
    from pipelines.core.images import decode_image

    pages = [Image.fromarray(np.full((24, 24, 3), v, np.uint8)) for v in (40, 200)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    with pytest.raises(DataError) as error:
        decode_image(buffer.getvalue(), "scan.tif")
    return str(error.value)


def truncated_nuscenes_jpeg(capsys, tmp_path, smoke_run):
    task = get_task("toc3d")
    root = task.prepare_demo(tmp_path / "data", small=True)
    victim = sorted((root / "samples").rglob("*.jpg"))[-1]  # a late frame: training would reach it last
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    line = _command(capsys, "run", "toc3d", "--demo", "--data-root", str(root), "--output", str(tmp_path / "runs"),
                    *_sets(task.SMOKE_OVERRIDES))
    assert not (tmp_path / "runs").exists()  # found before training, not after an epoch
    return line


def reference_of_another_task(capsys, tmp_path, smoke_run):
    other = tmp_path / "other"
    other.mkdir()
    runs.write_config(other, {"run": {"task": "buildings"}})
    return _command(capsys, "eval", str(smoke_run), "--corruptions", "--reference", str(other), "--device", "cpu")


FAULTS = [  # (case, what the one line must say)
    (eval_of_a_cut_split, "split.csv is not the split this run wrote"),
    (resume_with_an_edited_split, "split.csv is not the split this run wrote"),
    (medmnist_empty_split, "the test split is empty"),
    (medmnist_nan_labels, "train_labels holds 1 value(s) that are not whole class numbers (such as nan)"),
    (medmnist_fractional_labels, "val_labels holds"),
    (synth_soft_mask, "b.png has values other than 0/255 or 0/1 (e.g. 128)"),
    (multi_page_tiff_upload, "scan.tif holds 2 pages"),
    (truncated_nuscenes_jpeg, "truncated JPEG"),
    (reference_of_another_task, "is not a breakhis run"),
]


@pytest.mark.parametrize("case, says", FAULTS, ids=[case.__name__ for case, _ in FAULTS])
def test_each_fault_is_one_line_that_names_it(case, says, capsys, tmp_path, smoke_run, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a demo or run folder a case forgets to place lands here, not in the repo
    line = case(capsys, tmp_path, smoke_run)
    assert says in line and "\n" not in line and "Traceback" not in line, line


# --- faults whose answer is a behaviour ------------------------------------------------------------------------

def test_a_run_that_fails_before_its_first_epoch_leaves_no_folder(capsys, tmp_path, monkeypatch):
    """A bad weights file is found when the model is built, after the run folder exists: the folder goes."""
    monkeypatch.chdir(tmp_path)
    task = get_task("breakhis")
    root = task.prepare_demo(tmp_path / "data", small=True)
    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"not a safetensors file")
    code, _, err = run_cli(capsys, "run", "breakhis", "--demo", "--data-root", str(root), "--output",
                           str(tmp_path / "runs"), *_sets({**task.SMOKE_OVERRIDES, "model.weights": weights}))
    assert_one_line_error(code, err, "weights.safetensors")
    assert not list((tmp_path / "runs").rglob(runs.CONFIG)), "a failed start left a run folder"


def test_the_split_digest_is_what_sha256sum_checks(tmp_path):
    import pandas as pd

    runs.write_split(tmp_path, pd.DataFrame({"path": ["a.png", "b.png"], "split": ["train", "test"]}))
    digest, name = (tmp_path / runs.SPLIT_DIGEST).read_text().split()
    from pipelines.core.io import file_sha256

    assert name == runs.SPLIT and digest == file_sha256(tmp_path / runs.SPLIT)
    assert runs.read_split(tmp_path)["path"].tolist() == ["a.png", "b.png"]
    (tmp_path / runs.SPLIT_DIGEST).unlink()  # folders from before the digest are read unchecked
    (tmp_path / runs.SPLIT).write_text("path,split\na.png,train\n")
    assert len(runs.read_split(tmp_path)) == 1
    assert runs.read_split(tmp_path / "nowhere") is None


@pytest.mark.parametrize("case", sorted(ELSEWHERE))
def test_cases_tested_elsewhere_point_at_a_test_that_exists(case):
    file, name = ELSEWHERE[case].split("::")
    assert f"def {name}(" in (Path(__file__).parent / file).read_text(), f"{case}: {ELSEWHERE[case]} is gone"
