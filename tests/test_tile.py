"""``pipelines tile`` on real GeoTIFFs: blocks equal the whole raster, georeferencing kept, nodata, resume
after a kill, bad inputs, and the Dask path equal to the in-process one.

The model is an EfficientNet-B0 U-Net++ with seeded random weights at 128 px windows (overlap 32):
equality does not need a trained model, and small windows keep the tests quick on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pytest.importorskip("distributed")

from affine import Affine  # noqa: E402
from rasterio.enums import ColorInterp  # noqa: E402

from pipelines.cli import main  # noqa: E402
from pipelines.tiling import TileOptions, run_job  # noqa: E402
from pipelines.tiling.plan import Grid, Span  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

GEOTIFF = SHARED / "data" / "geotiff" / "rasterio"
RGB = GEOTIFF / "RGB.byte.tif"
RGB1 = GEOTIFF / "rgb1.tif"
RGB1_BLOCKS = 9  # 400 px at tile 128, overlap 32: windows at 0, 96, 192, 272; blocks [0], [96], [192, 272]
TILE, OVERLAP = 128, 32


def needs_data():
    if not RGB.is_file():
        pytest.skip(f"real GeoTIFF samples not found at {GEOTIFF}")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    import torch

    from pipelines.backbones.segmentation import create_segmenter
    from pipelines.models import save_model, segmenter_spec

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "b0.safetensors"
    save_model(create_segmenter("efficientnet-b0"), segmenter_spec("efficientnet-b0", ("building",), TILE, 0.5), path)
    return path


def tile(model, inputs, output, **kw) -> object:
    opts = {"tile": TILE, "overlap": OVERLAP, "workers": 0, **kw}
    return run_job(TileOptions(model=str(model), inputs=[str(p) for p in inputs], output=str(output), **opts))


def reference(model_file: Path, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The whole raster in memory through ``sliding_window_predict``: (K, H, W) probabilities, valid mask."""
    import torch

    from pipelines.engine.sliding_window import sliding_window_predict
    from pipelines.models import load_model
    from pipelines.tiling.raster_io import prepare

    loaded = load_model(model_file)
    model, spec = loaded.model, loaded.spec.input
    with rasterio.open(path) as ds:
        bands = [i + 1 for i, ci in enumerate(ds.colorinterp) if ci.name != "alpha"]
        raw, valid = ds.read(bands), ds.dataset_mask() > 0
    x = torch.from_numpy(prepare(raw, valid, spec.mean, spec.std, 255.0))
    with torch.inference_mode():
        prob = sliding_window_predict(lambda b: torch.sigmoid(model(b)), x, TILE, OVERLAP, batch_size=4)
    return prob.numpy(), valid


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read()


@pytest.fixture(scope="module")
def rgb_probs(model_file, tmp_path_factory) -> np.ndarray:
    """RGB.byte.tif (791x718) through the job in-process, probabilities, 2x2 windows per block."""
    needs_data()
    out = tmp_path_factory.mktemp("rgb")
    summary = tile(model_file, [RGB], out, probabilities=True, block_tiles=2)
    assert summary.done == [str(RGB.resolve())]
    return read(out / "RGB.byte.tif")


@pytest.fixture(scope="module")
def rgb1_probs(model_file, tmp_path_factory) -> np.ndarray:
    """rgb1.tif (400x400, its top-left quarter) in-process, one window per block (3x3 blocks: the lone last
    window joins its neighbour): the uninterrupted run that the Dask and resume tests compare with."""
    needs_data()
    out = tmp_path_factory.mktemp("rgb1")
    tile(model_file, [RGB1], out, probabilities=True, block_tiles=1)
    return read(out / "rgb1.tif")


# --- the grid ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width, block_tiles", [(718, 791, 1), (718, 791, 3), (70, 300, 2), (40, 50, 1)])
def test_blocks_cover_the_global_grid_once(height, width, block_tiles):
    import torch

    from pipelines.engine.sliding_window import gaussian_weights, tile_starts

    grid = Grid(height, width, TILE, OVERLAP, block_tiles)
    windows = [w for b in grid.blocks() for w in grid.windows(*b)]
    stride = TILE - OVERLAP
    expected = [(y, x) for y in tile_starts(height, TILE, stride) for x in tile_starts(width, TILE, stride)]
    assert sorted(windows) == sorted(expected) and len(windows) == len(set(windows))  # no window twice
    owned = np.zeros((height, width), int)
    for b in grid.blocks():
        rows, cols = grid.region(*b)
        owned[rows.start:rows.stop, cols.start:cols.stop] += 1
    assert (owned == 1).all()  # regions tile the raster
    h, w = max(height, TILE), max(width, TILE)
    norm = torch.zeros(h, w)
    for y, x in expected:
        norm[y:y + TILE, x:x + TILE] += gaussian_weights(TILE)
    assert np.array_equal(grid.weight_sum(Span(0, height), Span(0, width)), norm[:height, :width].numpy())


# --- equality with the in-memory sliding window -------------------------------------------------------------

def test_blocks_equal_whole_raster_sliding_window(model_file, rgb_probs):
    prob, valid = reference(model_file, RGB)
    assert rgb_probs.shape == prob.shape == (1, 718, 791)
    assert np.abs(rgb_probs[:, valid] - prob[:, valid]).max() < 1e-5
    assert (rgb_probs[:, ~valid] == -1).all()  # nodata in -> nodata out


@pytest.mark.parametrize("shape", [(100, 90), (70, 300)])
def test_rasters_smaller_than_a_window(model_file, tmp_path, shape):
    h, w = shape
    path = tmp_path / "small.tif"
    with rasterio.open(path, "w", driver="GTiff", width=w, height=h, count=3, dtype="uint8", crs="EPSG:32618",
                       transform=Affine(0.5, 0, 500000, 0, -0.5, 4000000)) as ds:
        ds.write(np.random.default_rng(0).integers(0, 256, (3, h, w), dtype=np.uint8))
    tile(model_file, [path], tmp_path / "out", probabilities=True, block_tiles=1)
    prob, _ = reference(model_file, path)
    assert np.abs(read(tmp_path / "out" / "small.tif") - prob).max() < 1e-5


def test_dask_local_cluster_equals_in_process(model_file, rgb1_probs, tmp_path):
    summary = tile(model_file, [RGB1], tmp_path, probabilities=True, block_tiles=1, workers=2)
    assert len(summary.done) == 1 and summary.blocks_computed == RGB1_BLOCKS
    assert np.abs(read(tmp_path / "rgb1.tif") - rgb1_probs).max() < 1e-5


def _worker_environ() -> dict:
    import os

    return {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_",
                                           "MALLOC_TRIM_THRESHOLD_")}


def test_local_cluster_workers_start_with_one_thread_and_the_heap_kept():
    """glibc reads its heap settings when a process starts, so they must reach the workers before they spawn
    (Dask's own MALLOC_TRIM_THRESHOLD_=65536 made their forward passes ~25% slower)."""
    from dask.distributed import Client

    from pipelines.core.allocator import WORKER_ENVIRON
    from pipelines.tiling.executors import local_cluster

    with local_cluster(1) as cluster, Client(cluster) as client:
        (got,) = client.run(_worker_environ).values()
    assert got == {"OMP_NUM_THREADS": "1", **WORKER_ENVIRON}


# --- georeferencing, nodata, mosaics ------------------------------------------------------------------------

def test_onnxruntime_engine_equals_torch_and_exports_once(model_file, rgb1_probs, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="pipelines.tiling"):
        tile(model_file, [RGB1], tmp_path, probabilities=True, block_tiles=1, engine="onnxruntime")
        graphs = list((tmp_path / ".engine").glob("*.onnx"))
        assert len(graphs) == 1 and graphs[0].name.endswith(f"-3x{TILE}.onnx")
        assert np.abs(read(tmp_path / "rgb1.tif") - rgb1_probs).max() < 1e-5
        manifest = json.loads((tmp_path / "manifest.json").read_text())["inputs"]
        assert [e["engine"] for e in manifest.values()] == ["onnxruntime"]
        caplog.clear()
        summary = tile(model_file, [RGB1], tmp_path, probabilities=True, block_tiles=1, engine="onnxruntime")
    assert summary.skipped and "exporting" not in caplog.text  # the graph and the output are reused
    refused = tile(model_file, [RGB1], tmp_path, probabilities=True, block_tiles=1)  # another engine: not reused
    assert "(engine onnxruntime -> torch)" in next(iter(refused.failed.values()))


def test_d4_turns_every_prediction_back_before_averaging():
    from pipelines.tiling.engines import d4_average

    batch = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    assert np.allclose(d4_average(lambda b: b[:, :1] * 2, batch), batch[:, :1] * 2)  # equivariant: unchanged
    rows = np.broadcast_to(np.arange(8, dtype=np.float32)[:, None], (2, 1, 8, 8))
    assert np.allclose(d4_average(lambda b: rows, batch), 3.5)  # a fixed map: its average over the 8 symmetries
    with pytest.raises(ValueError, match="square"):
        d4_average(lambda b: b, batch[..., :4])


def test_d4_tiling_equals_the_sliding_window_of_the_averaged_model(model_file, tmp_path):
    import torch

    from pipelines.engine.sliding_window import sliding_window_predict
    from pipelines.models import load_model
    from pipelines.tiling.engines import d4_average
    from pipelines.tiling.raster_io import prepare

    needs_data()
    tile(model_file, [RGB1], tmp_path, probabilities=True, tta="d4")
    loaded = load_model(model_file)
    with rasterio.open(RGB1) as ds:
        valid = ds.dataset_mask() > 0
        x = torch.from_numpy(prepare(ds.read(), valid, loaded.spec.input.mean, loaded.spec.input.std, 255.0))
    plain = lambda a: torch.sigmoid(loaded.model(torch.from_numpy(a))).numpy()  # noqa: E731
    with torch.inference_mode():
        prob = sliding_window_predict(lambda b: torch.from_numpy(d4_average(plain, b.numpy())), x, TILE, OVERLAP, 4)
    got = read(tmp_path / "rgb1.tif")[:, valid]
    assert np.abs(got - prob.numpy()[:, valid]).max() < 1e-5
    with torch.inference_mode():
        single = sliding_window_predict(lambda b: torch.sigmoid(loaded.model(b)), x, TILE, OVERLAP, 4)
    assert np.abs(got - single.numpy()[:, valid]).max() > 1e-3  # the averaging did something


def test_real_geotiffs_keep_crs_transform_and_size(model_file, tmp_path):
    needs_data()
    inputs = [GEOTIFF / f"rgb{i}.tif" for i in range(1, 5)] + [GEOTIFF / "goes.tif"]
    summary = tile(model_file, inputs, tmp_path, vectorize=True)
    assert len(summary.done) == 5 and not summary.failed
    for src_path in inputs:
        out = tmp_path / f"{src_path.stem}.tif"
        with rasterio.open(src_path) as src, rasterio.open(out) as dst:
            assert dst.crs == src.crs and dst.crs.to_wkt() == src.crs.to_wkt()
            assert dst.transform == src.transform and (dst.width, dst.height) == (src.width, src.height)
            assert dst.profile["compress"] == "deflate" and dst.profile["tiled"] and dst.count == 1
            assert dst.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            assert dst.overviews(1) or max(dst.width, dst.height) <= 512
            mask, valid = dst.read(1), src.dataset_mask() > 0
            assert dst.nodata == 255 and np.array_equal(mask == 255, ~valid)
            assert set(np.unique(mask[valid])) <= {0, 1}
        features = json.loads((tmp_path / f"{src_path.stem}.geojson").read_text())["features"]
        assert sum(f["properties"]["pixels"] for f in features) == int((mask == 1).sum())
    with rasterio.open(GEOTIFF / "goes.tif") as src:
        assert src.crs.to_epsg() is None  # geostationary, no EPSG code: kept as its WKT


def test_footprints_cleaned_into_a_geopackage_in_the_rasters_crs(model_file, tmp_path):
    needs_data()
    gpd = pytest.importorskip("geopandas")
    raw = tile(model_file, [RGB1], tmp_path / "raw", vectorize=True)
    assert not raw.failed
    clean = tile(model_file, [RGB1], tmp_path / "clean", vectorize=True, footprint_format="gpkg", min_area=50.0,
                 fill_holes=50.0, regularize=True, simplify=2.0)
    assert not clean.failed
    before = gpd.read_file(tmp_path / "raw" / "rgb1.geojson")
    after = gpd.read_file(tmp_path / "clean" / "rgb1.gpkg")
    with rasterio.open(RGB1) as src:
        assert after.crs == before.crs and after.crs.to_epsg() == src.crs.to_epsg()
    assert 0 < len(after) <= len(before) and (after.geometry.area >= 50.0).all()
    assert {"pixels", "area", "mean_probability"} <= set(after.columns)
    assert after["area"].to_numpy() == pytest.approx(after.geometry.area.to_numpy())
    assert not any(g.interiors and min(type(g)(r).area for r in g.interiors) < 50.0
                   for g in after.geometry if g.geom_type == "Polygon")
    # the cleaned footprints scored against the raw ones: the big ones survive
    from pipelines.footprints.score import score_footprint_files

    s = score_footprint_files(tmp_path / "clean" / "rgb1.gpkg", tmp_path / "raw" / "rgb1.geojson", RGB1,
                              min_area=50.0).summary
    assert s["predicted"] == len(after) and s["recall"] > 0.5, s
    manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())["inputs"]
    assert next(iter(manifest.values()))["vectors"].endswith("rgb1.gpkg")


def test_mosaic_of_adjacent_tiles_equals_the_merged_raster(model_file, rgb_probs, rgb1_probs, tmp_path):
    """rgb1-4 are the four quarters of RGB.byte.tif (one pixel shared at the seams); as one mosaic their
    output equals the merged raster's, seams included. Processed one by one, the seams differ."""
    tiles = [GEOTIFF / f"rgb{i}.tif" for i in range(1, 5)]
    summary = tile(model_file, tiles, tmp_path / "mosaic", probabilities=True, mosaic="rgb", block_tiles=2)
    assert len(summary.done) == 1
    with rasterio.open(tmp_path / "mosaic" / "rgb.tif") as ds, rasterio.open(RGB) as merged:
        assert ds.transform == merged.transform and (ds.width, ds.height) == (791, 718)
        assert ds.crs == rasterio.open(tiles[0]).crs
        mosaic = ds.read()
    assert np.abs(mosaic - rgb_probs).max() < 1e-5
    seam = np.abs(rgb1_probs[0, 300:399, 395:399] - rgb_probs[0, 300:399, 395:399])
    assert seam.max() > 1e-3  # alone, the tile's edge sees other context than in the merged raster


def test_nodata_values_do_not_leak_into_valid_pixels(model_file, tmp_path):
    """An RGBA raster (alpha = the nodata mask) with two different fillings under alpha = 0: the valid pixels'
    predictions are the same, and the masked pixels are nodata."""
    needs_data()
    from rasterio.windows import Window

    crop = Window(0, 0, 300, 300)  # the top-left corner: scene and nodata border
    with rasterio.open(RGB) as src:
        rgb, valid = src.read(window=crop), src.dataset_mask(window=crop)
        profile = {"driver": "GTiff", "width": 300, "height": 300, "count": 4, "dtype": "uint8",
                   "crs": src.crs, "transform": src.window_transform(crop), "photometric": "RGB"}
    assert 0.2 < (valid > 0).mean() < 0.8
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        noisy = np.where(valid > 0, rgb, rng.integers(0, 256, rgb.shape, dtype=np.uint8))
        with rasterio.open(tmp_path / f"{name}.tif", "w", **profile) as ds:
            ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
            ds.write(np.concatenate([noisy, valid[None]]))
    tile(model_file, [tmp_path / "a.tif", tmp_path / "b.tif"], tmp_path / "out", probabilities=True, block_tiles=2)
    a, b = read(tmp_path / "out" / "a.tif"), read(tmp_path / "out" / "b.tif")
    ok = valid > 0
    assert np.abs(a[:, ok] - b[:, ok]).max() < 1e-5
    assert (a[:, ~ok] == -1).all() and (b[:, ~ok] == -1).all()


# --- resume -------------------------------------------------------------------------------------------------

def test_killed_job_resumes_from_its_finished_blocks(model_file, rgb_probs, tmp_path):
    """Kill -9 a job on RGB.byte.tif (49 blocks of one or two windows), damage one finished block file, run it
    again: the recorded blocks are not computed again, the damaged one is, and the output equals an
    uninterrupted run's."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipelines", "tile", str(RGB), "--model", str(model_file), "--output", str(out),
           "--tile", str(TILE), "--overlap", str(OVERLAP), "--workers", "0", "--block-tiles", "1",
           "--probabilities"]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=Path(__file__).parents[1])
    sidecar, listed = out / ".partial" / "RGB.byte.json", {}
    deadline = time.monotonic() + 300
    while (len(listed) < 5 or "npy" not in listed.values()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
        with contextlib.suppress(OSError, ValueError, KeyError):
            listed = json.loads(sidecar.read_text())["done"]
    done = len(listed)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    total = 7 * 7  # 8 windows per axis; the lone last one joins its neighbour
    assert 5 <= done < total, proc.stderr.read().decode()
    assert not (out / "RGB.byte.tif").exists()  # nothing under the final name until it is complete
    entry = json.loads((out / "manifest.json").read_text())["inputs"][str(RGB.resolve())]
    assert entry["status"] == "running"
    listed = json.loads(sidecar.read_text())["done"]  # as the killed job left it
    damaged = next(out / ".partial" / "RGB.byte" / f"{k}.npy" for k, v in sorted(listed.items()) if v == "npy")
    damaged.write_bytes(damaged.read_bytes()[:200])  # a block file the disk lost the end of: computed again

    summary = tile(model_file, [RGB], out, probabilities=True, block_tiles=1)
    entry = json.loads((out / "manifest.json").read_text())["inputs"][str(RGB.resolve())]
    reused = entry["blocks"]["reused"]
    assert reused == len(listed) - 1 and summary.blocks_reused == reused and entry["blocks"]["total"] == total
    assert entry["blocks"]["computed"] == summary.blocks_computed == total - reused
    assert entry["status"] == "done" and entry["model_sha256"] and entry["seconds"] > 0
    assert np.abs(read(out / "RGB.byte.tif") - rgb_probs).max() < 1e-5  # as an uninterrupted run
    assert not (out / ".partial" / "RGB.byte").exists() and not sidecar.exists()


def logged(capsys, caplog) -> str:
    """What the CLI wrote to stderr: its log lines (pytest holds the logging handlers) and prints."""
    caplog.set_level(logging.INFO)
    text = caplog.text + capsys.readouterr().err
    caplog.clear()
    return text


def test_rerun_skips_finished_scenes_and_refuses_other_settings(model_file, tmp_path, capsys, caplog):
    needs_data()
    caplog.set_level(logging.INFO)
    small = GEOTIFF / "rgb4.tif"
    common = ["tile", str(small), "--model", str(model_file), "--output", str(tmp_path), "--tile", str(TILE),
              "--workers", "0"]
    args = [*common, "--overlap", str(OVERLAP)]
    assert main(args) == 0
    first = (tmp_path / "rgb4.tif").stat().st_mtime_ns
    logged(capsys, caplog)
    assert main(args) == 0
    err = logged(capsys, caplog)
    assert "already done" in err and "0 computed" in err and (tmp_path / "rgb4.tif").stat().st_mtime_ns == first
    other = [*common, "--overlap", "16"]
    assert main(other) == 2
    err = logged(capsys, caplog)
    assert "overlap 32 -> 16" in err and "--overwrite" in err
    assert (tmp_path / "rgb4.tif").stat().st_mtime_ns == first  # not touched
    assert main([*other, "--overwrite"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())["inputs"][str(small.resolve())]
    assert manifest["overlap"] == 16 and manifest["status"] == "done"


# --- bad inputs ---------------------------------------------------------------------------------------------

def test_bad_inputs_each_get_one_line_and_the_good_file_finishes(model_file, tmp_path, capsys, caplog):
    needs_data()
    caplog.set_level(logging.INFO)
    bad = tmp_path / "in"
    bad.mkdir()
    (bad / "notes.tif").write_text("not a raster\n")
    (bad / "empty.tif").write_bytes(b"")
    base = {"driver": "GTiff", "width": 64, "height": 64, "dtype": "uint8"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)  # on purpose
        with rasterio.open(bad / "nocrs.tif", "w", count=3, **base) as ds:
            ds.write(np.ones((3, 64, 64), np.uint8))
    with rasterio.open(bad / "gray.tif", "w", count=1, crs="EPSG:32618",
                       transform=Affine(1, 0, 500000, 0, -1, 4000000), **base) as ds:
        ds.write(np.ones((1, 64, 64), np.uint8))
    good = GEOTIFF / "rgb3.tif"
    code = main(["tile", str(bad), str(good), str(tmp_path / "missing.tif"), "--model", str(model_file),
                 "--output", str(tmp_path / "out"), "--tile", str(TILE), "--overlap", str(OVERLAP), "--workers", "0"])
    out = capsys.readouterr().out
    errors = [line for line in caplog.messages if line.startswith("error: ")]
    err = logged(capsys, caplog)
    assert code == 2 and "Traceback" not in err
    expected = {"notes.tif": "not a raster GDAL can read", "empty.tif": "empty file (0 bytes)",
                "nocrs.tif": "no CRS", "gray.tif": "1 band, but the model takes 3", "missing.tif": "not found"}
    assert len(errors) == len(expected)
    for name, message in expected.items():
        assert any(name in line and message in line for line in errors), (name, errors)
    assert (tmp_path / "out" / "rgb3.tif").is_file()
    assert "1 done, 0 already done, 5 failed" in err and out.strip().endswith(str((tmp_path / "out").resolve()))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())["inputs"]
    assert sorted(e["status"] for e in manifest.values()) == ["done"] + ["failed"] * 5


@pytest.mark.parametrize("extra, match", [
    (["--tile", "100"], "--tile 100: the U-Net++ needs a multiple of 32"),
    (["--overlap", "128"], "--overlap 128: must be at least 0 and smaller than the tile (128)"),
    (["--device", "tpu"], "bad --device 'tpu'"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not allowed with argument"),
    (["--model", "nowhere.safetensors"], "model nowhere.safetensors not found"),
    (["--regularize"], "add --vectorize"),
    (["--vectorize", "--simplify", "-1"], "simplify must be >= 0"),
    (["--engine", "onnxruntime", "--precision", "bf16"], "--precision bf16 runs on the torch engine"),
    (["--engine", "onnxruntime", "--device", "cuda"], "--engine onnxruntime runs on the CPU"),
])
def test_job_level_mistakes_end_with_one_line(model_file, tmp_path, capsys, extra, match):
    argv = ["tile", str(tmp_path), "--model", str(model_file), "--output", str(tmp_path / "out"), "--tile", str(TILE),
            *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and match in err[-1], err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_geotiffs_is_a_mistake(model_file, tmp_path, capsys):
    assert main(["tile", str(tmp_path), "--model", str(model_file), "--output", str(tmp_path / "out")]) == 2
    assert "no GeoTIFF files in" in capsys.readouterr().err
