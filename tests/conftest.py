"""Shared fixtures: the real sample data beside the repo, and a small synthetic BreakHis tree."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (pyproject's addopts): a second thread per worker would only
    # contend for the other worker's core. Set before torch is imported, so its pools and the processes
    # the tests start (DataLoader workers, Dask, Streamlit) start with one thread.
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

SHARED = Path(os.environ.get("PIPELINES_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BREAKHIS_REAL = SHARED / "data" / "breakhis"


# The modules that take longest, longest first (--durations=0 on 2 cores, 2026-12-02: 238, 172, 164, 153, 89
# and 69 s of the suite's 1190 test-seconds). Under --dist loadfile a worker takes the next module whenever it
# has <= 2 tests left, so the order modules are handed out is the schedule: longest first balances the two
# workers (simulated from the measured durations: 625 -> 595 s, the bound being 595; the rest of the modules
# follow in collection order). Update the list when a module's cost changes by tens of seconds.
HEAVIEST_MODULES = ("test_dfu.py", "test_breakhis_end_to_end.py", "test_buildings.py", "test_medmnist.py",
                    "test_inference.py", "test_tile.py")


def pytest_collection_modifyitems(items):
    """The heaviest modules first (HEAVIEST_MODULES), then the rest; within that, slow end-to-end tests first,
    each module's in its own order (a stable sort): the long runs start at once, and the short tests fill in
    around them instead of waiting at the end."""

    def rank(item) -> tuple[int, bool]:
        name = item.path.name
        heavy = HEAVIEST_MODULES.index(name) if name in HEAVIEST_MODULES else len(HEAVIEST_MODULES)
        return heavy, item.get_closest_marker("slow") is None

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it in sys.modules; processes spawned
    later (Dask's workers) would re-run that page instead of starting. Put the real one back."""
    main = sys.modules.get("__main__")
    yield
    if main is not None:
        sys.modules["__main__"] = main


def fit_steps(model, x, y, steps: int = 25, lr: float = 1e-3) -> list[float]:
    """Full-batch AdamW steps on a toy problem; the losses, to show a backbone can learn on CPU."""
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.fixture(scope="session")
def breakhis_real() -> Path:
    if not (BREAKHIS_REAL / "BreaKHis_v1").is_dir():
        pytest.skip(f"real BreakHis sample not found at {BREAKHIS_REAL}")
    return BREAKHIS_REAL


@pytest.fixture(scope="session")
def breakhis_demo(tmp_path_factory) -> Path:
    """The synthetic demo tree as `pipelines run breakhis --demo` writes it (4 patients per subtype), read
    only. Under pytest-xdist the workers share one copy (it takes a while to write): the first to take the
    lock writes it, the others find it complete."""
    import fcntl

    from pipelines.datasets.breakhis_demo import write_demo_breakhis

    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # this run's folder, above each worker's own
    with open(base / "breakhis_demo.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return write_demo_breakhis(base / "demo" / "breakhis")


@pytest.fixture()
def tiny_tree(tmp_path) -> Path:
    """A copy-on-demand BreakHis tree with two real-format PNGs, for breaking in tests."""
    import numpy as np
    from PIL import Image

    folder = tmp_path / "BreaKHis_v1/histology_slides/breast/benign/SOB/adenosis/SOB_B_A_14-22549AB/40X"
    folder.mkdir(parents=True)
    for seq in (1, 2):
        Image.fromarray(np.full((46, 70, 3), 200, np.uint8)).save(folder / f"SOB_B_A-14-22549AB-40-00{seq}.png")
    return tmp_path


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A finished BreakHis run folder (binary, EfficientNet-B0 at 64 px) without the training: what
    exports, apps and dashboards read."""
    import torch

    from pipelines.backbones import create_backbone, save_weights
    from pipelines.config import set_key
    from pipelines.core.io import write_json
    from pipelines.runs import create_run_dir, write_config
    from pipelines.tasks import get_task

    cfg = get_task("breakhis").defaults()
    set_key(cfg, "data.image_size", 64)
    cfg["run"] = {"task": "breakhis", "demo": True, "device": "cpu", "world_size": 1}
    run_dir = create_run_dir(tmp_path_factory.mktemp("runs"), "breakhis", "trained")
    write_config(run_dir, cfg)
    torch.manual_seed(0)
    save_weights(create_backbone("efficientnet_b0", num_classes=2), run_dir / "checkpoints" / "best.safetensors")
    # its evaluation's calibration entry, fitted on stand-in validation probabilities (over-confident ones)
    import numpy as np

    from pipelines.engine.calibration import calibrate_splits

    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 2, n) for s, n in (("val", 60), ("test", 60))}
    probs = {s: np.clip(np.eye(2)[y] * 0.9 + rng.normal(0, 0.3, (len(y), 1)) * [1, -1] + 0.05, 0.01, 0.99)
             for s, y in labels.items()}
    probs = {s: p / p.sum(1, keepdims=True) for s, p in probs.items()}
    _, calibration = calibrate_splits(run_dir, probs, labels, cfg)
    write_json(run_dir / "metrics.json", {"val": {"class_names": ["benign", "malignant"]}, "test": {},
                                          "info": {"calibration": calibration}})
    return run_dir


def _finished_run(root: Path, task: str, sets: dict) -> tuple[Path, dict]:
    """An empty run folder of ``task`` with its defaults, ``sets`` applied, marked a demo run."""
    from pipelines.config import set_key
    from pipelines.runs import create_run_dir, write_config
    from pipelines.tasks import get_task

    cfg = get_task(task).defaults()
    for key, value in sets.items():
        set_key(cfg, key, value)
    cfg["run"] = {"task": task, "demo": True, "device": "cpu", "world_size": 1}
    run_dir = create_run_dir(root, task, "trained")
    write_config(run_dir, cfg)
    return run_dir, cfg


@pytest.fixture(scope="session")
def dfu_run(tmp_path_factory) -> Path:
    """A finished DFU run folder without the training: its final soft-voting ensemble (two random-weight
    MobileNetV3 members at 64 px) and a calibration fitted on stand-in validation probabilities that are
    confident and right, so the model's own near-uniform outputs fall below the refer threshold."""
    import numpy as np
    import torch

    from pipelines.backbones import create_backbone
    from pipelines.core.io import write_json
    from pipelines.datasets.dfu import CLASSES
    from pipelines.engine.calibration import calibrate_splits
    from pipelines.models import classifier_spec, save_ensemble, save_model

    run_dir, cfg = _finished_run(tmp_path_factory.mktemp("dfu_runs"), "dfu", {"data.image_size": 64})
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = run_dir / "members" / f"m{seed}.safetensors"
        save_model(create_backbone("mobilenetv3_large_100", num_classes=4),
                   classifier_spec("mobilenetv3_large_100", CLASSES, 64, task="dfu"), path)
        members.append(path)
    save_ensemble(members, run_dir / "checkpoints" / "best.safetensors", task="dfu")
    rng = np.random.default_rng(0)
    labels = {s: rng.integers(0, 4, 80) for s in ("val", "test")}
    probs = {s: 0.9 * np.eye(4)[y] + 0.1 * rng.dirichlet(np.ones(4), len(y)) for s, y in labels.items()}
    _, calibration = calibrate_splits(run_dir, probs, labels, cfg)
    write_json(run_dir / "metrics.json", {"val": {}, "test": {}, "info": {"calibration": calibration}})
    return run_dir


@pytest.fixture(scope="session")
def segment_run(tmp_path_factory) -> Path:
    """A finished segment run folder without the training: a random-weight U-Net++ on EfficientNet-Lite0
    (128 px tiles) whose validation-chosen threshold is 0.5."""
    import torch

    from pipelines.backbones.segmentation import create_segmenter
    from pipelines.core.io import write_json
    from pipelines.models import save_model, segmenter_spec

    run_dir, _ = _finished_run(tmp_path_factory.mktemp("segment_runs"), "segment", {})
    torch.manual_seed(0)
    encoder = "tu-tf_efficientnet_lite0"
    save_model(create_segmenter(encoder, 1), segmenter_spec(encoder, ("wound",), 128, 0.5, task="segment"),
               run_dir / "checkpoints" / "best.safetensors")
    write_json(run_dir / "metrics.json", {"val": {}, "test": {}, "info": {"threshold": 0.5, "threshold_choice": {
        "by": "pooled validation Dice"}}})
    return run_dir


FUSEG_REAL = SHARED / "data" / "fuseg2021" / "train" / "images"


CHROMIUM = Path("/usr/bin/chromium")


@contextlib.contextmanager
def streamlit_server(page: str, page_args: list[str], timeout: float = 90.0):
    """Serve a page (``app`` or ``dashboard``) on a free localhost port as ``pipelines`` would; yields its URL."""
    import socket
    import subprocess
    import time
    import urllib.request

    from pipelines.launch import streamlit_command

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    proc = subprocess.Popen(streamlit_command(page, page_args, "127.0.0.1", port), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"streamlit did not start: {proc.stdout.read()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def browser():
    """Debian's chromium driven by Playwright; required in CI, skipped on a machine without it."""
    if not CHROMIUM.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/run installs it (apt-get install -y chromium)")
        pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()
