"""Batch tiling with the real U-Net++: ``pipelines tile`` against MONAI's ``sliding_window_inference`` with
the same weights, GeoTIFF in, cloud-optimised uint8 mask out.

    python benchmarks/tiling.py                                  # 2048^2 (3 runs) and 8192^2 (1 run)
    python benchmarks/tiling.py --sizes 2048 --runs 5 --encoder efficientnet-b0

The model: U-Net++ on an EfficientNet-Lite0 encoder (``--encoder``; the buildings task's architecture),
saved as a segmenter file the way a run saves it, seeded random weights with non-trivial BatchNorm
statistics (speed does not depend on what the weights learnt). Tile 512, overlap 64, batch 4, Gaussian
blending (sigma 0.125), threshold 0.5, on synthetic aerial-like RGB GeoTIFFs (uint8, deflate, 512 px blocks).

Methods (each run in a fresh child process; one small raster first warms it up: model load, the ONNX
export, oneDNN's kernels, the Dask workers; then the timed raster):
- ``monai``: the peer. The raster read whole, normalised, ``sliding_window_inference(mode="gaussian")``
  on the model as loaded (eager float32, the training layout), thresholded, written as a COG.
- ``monai_heap``: the same, with glibc told to keep freed memory for reuse as our tiler does
  (:mod:`pipelines.core.allocator`), to show how much of our lead that one setting is.
- ``ours_torch``: ``run_job`` in one process, the default torch engine (BatchNorm folded, channels-last), fp32.
- ``ours_onnxruntime``: in one process, ``--engine onnxruntime`` (fp32).
- ``ours_bf16``: in one process, torch engine with ``--precision bf16``.
- ``ours_dask``, ``ours_dask_onnxruntime``: a LocalCluster of ``--workers`` processes x 1 thread.

Where the time goes: the model alone on batches of four 512^2 windows in this process (eager, prepared,
bf16, onnxruntime; with glibc's default heap, then with freed memory kept), megapixels per second; a
method's tiling throughput over its model's is the share the machinery (reading, blending, writing,
scheduling) leaves.

Time: medians over ``--runs`` (8192^2: ``--big-runs``) rounds that alternate the methods. Memory: the
resident high-water mark (VmHWM) of every process of the child (for Dask: the driver, which hosts the
scheduler, plus each worker). Before timing, ours and MONAI's probabilities are compared on 1024^2.
Writes ``runs/benchmarks/tiling.csv`` and ``tiling_model.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipelines.core.io import write_csv

METHODS = ("monai", "monai_heap", "ours_torch", "ours_onnxruntime", "ours_bf16", "ours_dask", "ours_dask_onnxruntime")
OURS = {  # method -> (in-process?, engine, precision)
    "ours_torch": (True, "torch", "fp32"), "ours_onnxruntime": (True, "onnxruntime", "fp32"),
    "ours_bf16": (True, "torch", "bf16"), "ours_dask": (False, "torch", "fp32"),
    "ours_dask_onnxruntime": (False, "onnxruntime", "fp32"),
}
TILE, OVERLAP, BATCH = 512, 64, 4
WARMUP = 1024


def write_model(path: Path, encoder: str) -> None:
    from pipelines.backbones.segmentation import create_segmenter
    from pipelines.models import save_model, segmenter_spec

    torch.manual_seed(0)
    model = create_segmenter(encoder)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
    save_model(model.eval(), segmenter_spec(encoder, ("building",), TILE, 0.5, task="buildings"), path)


def write_raster(path: Path, size: int) -> None:
    """A synthetic aerial-like RGB GeoTIFF (smooth fields plus noise), written in strips."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(size)
    coarse = rng.integers(40, 220, (3, size // 64 + 2, size // 64 + 2)).astype(np.float32)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 3, "dtype": "uint8", "crs": "EPSG:32618",
               "transform": from_origin(500000, 4500000, 0.5, 0.5), "tiled": True, "blockxsize": 512,
               "blockysize": 512, "compress": "deflate", "nodata": 0}
    with rasterio.open(path, "w", **profile) as ds:
        for r in range(0, size, 512):
            rows = np.arange(r, min(r + 512, size)) / 64
            cols = np.arange(size) / 64
            strip = coarse[:, rows.astype(int)][:, :, cols.astype(int)]
            strip = strip + rng.normal(0, 12, strip.shape)
            ds.write(np.clip(strip, 1, 255).astype(np.uint8), window=((r, r + len(rows)), (0, size)))


def _vmhwm() -> int:
    """This process's resident high-water mark in bytes (VmHWM: ru_maxrss is inherited across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_ours(method: str, raster: Path, model: Path, out: Path, scheduler: str | None = None,
             probabilities: bool = False) -> Path:
    from pipelines.tiling import TileOptions, run_job

    _, engine, precision = OURS[method]
    opts = TileOptions(model=str(model), inputs=[str(raster)], output=str(out), tile=TILE, overlap=OVERLAP,
                       batch_size=BATCH, workers=None if scheduler else 0, scheduler=scheduler,
                       probabilities=probabilities, engine=engine, precision=precision)
    summary = run_job(opts)
    if summary.failed:
        raise RuntimeError(summary.failed)
    return out / f"{raster.stem}.tif"


def run_monai(raster: Path, model: Path, out: Path, probabilities: bool = False) -> Path:
    import rasterio
    from monai.inferers import sliding_window_inference

    from pipelines.models import load_model
    from pipelines.tiling.raster_io import prepare

    loaded = load_model(model)
    net, spec = loaded.model.eval(), loaded.spec.input
    with rasterio.open(raster) as ds:
        raw, valid, profile = ds.read(), ds.dataset_mask() > 0, ds.profile
    x = torch.from_numpy(prepare(raw, valid, spec.mean, spec.std, 255.0))[None]
    del raw
    with torch.inference_mode():
        prob = sliding_window_inference(x, (TILE, TILE), BATCH, lambda b: torch.sigmoid(net(b)),
                                        overlap=OVERLAP / TILE, mode="gaussian", sigma_scale=0.125)[0]
    del x
    if probabilities:
        data, dtype, nodata = prob.numpy(), "float32", -1.0
    else:
        data, dtype, nodata = (prob >= spec.threshold).numpy().astype(np.uint8), "uint8", 255
    data[:, ~valid] = nodata
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{raster.stem}.tif"
    profile.update(driver="COG", dtype=dtype, count=data.shape[0], nodata=nodata, compress="deflate")
    for key in ("tiled", "blockxsize", "blockysize", "interleave"):
        profile.pop(key, None)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def _local_cluster(workers: int):
    from dask.distributed import Client

    from pipelines.tiling.executors import local_cluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    cluster = local_cluster(workers)  # the one `pipelines tile --workers N` starts
    return cluster, Client(cluster)


def _warm_worker(model: str, engine: str, graph: str | None, precision: str) -> None:
    """Build this worker's predictor and run the batch sizes a job runs, as the warm-up raster may not reach
    every worker. Submitted as a task, not ``client.run``: some of the first run's cost is per thread, and
    tasks run on the worker's task thread."""
    from pipelines.core.io import file_sha256
    from pipelines.tiling.engines import predictor

    predict = predictor(model, file_sha256(model), "cpu", None, precision, engine, graph, "none")
    for batch in (BATCH, 1):
        predict(np.zeros((batch, 3, TILE, TILE), np.float32))


def child(args) -> None:
    """One method on one raster in this fresh process, after a warm-up raster: prints seconds and memory.
    Both go to one output folder, so the ONNX graph (exported beforehand by the parent) and the engine
    built for it serve both."""
    method, raster, model, out = args.child, Path(args.raster), Path(args.model), Path(args.out)
    client = cluster = scheduler = None
    in_process, engine, precision = OURS.get(method, (True, "torch", "fp32"))
    if engine == "onnxruntime":
        shutil.copytree(args.graphs, out / ".engine")
    if not in_process:
        cluster, client = _local_cluster(args.workers)
        scheduler = cluster.scheduler_address

    if method == "monai_heap":
        from pipelines.core.allocator import retain_freed_memory

        retain_freed_memory()

    def once(r: Path) -> None:
        if method.startswith("monai"):
            run_monai(r, model, out)
        else:
            run_ours(method, r, model, out, scheduler)

    once(Path(args.warmup))
    if client:
        graph = next((out / ".engine").glob("*.onnx"), None) if engine == "onnxruntime" else None
        graph_path = str(graph.resolve()) if graph else None
        client.gather([client.submit(_warm_worker, str(model.resolve()), engine, graph_path, precision, workers=[w],
                                     pure=False) for w in client.nthreads()])
    tic = time.perf_counter()
    once(raster)
    seconds = time.perf_counter() - tic
    driver = _vmhwm()
    workers = list(client.run(_vmhwm).values()) if client else []
    if client:
        client.close()
        cluster.close()
    print(json.dumps({"seconds": seconds, "peak_mib": (driver + sum(workers)) / 2**20, "driver_mib": driver / 2**20,
                      "worker_mib": max(workers, default=0) / 2**20, "processes": 1 + len(workers)}))


def run_child(method: str, raster: Path, warmup: Path, model: Path, out: Path, workers: int, graphs: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--raster", str(raster), "--warmup", str(warmup),
           "--model", str(model), "--out", str(out), "--workers", str(workers), "--graphs", str(graphs)]
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    shutil.rmtree(out, ignore_errors=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def model_throughput(model_path: Path, graph: Path, runs: int) -> list[dict]:
    """Megapixels per second of the model alone on batches of four 512^2 windows, per execution path."""
    from pipelines.backbones.inference import prepare_for_inference
    from pipelines.backbones.onnx_export import OnnxRunner
    from pipelines.models import load_model

    model = load_model(model_path).model.eval()
    x = torch.randn(BATCH, 3, TILE, TILE)
    fast = prepare_for_inference(model, fuse=True, channels_last=True)
    xc = x.contiguous(memory_format=torch.channels_last)
    runner = OnnxRunner(graph)
    xn = x.numpy()

    def bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast(xc)

    paths = {"eager fp32 (MONAI's)": lambda: model(x), "folded + channels-last fp32 (ours_torch)": lambda: fast(xc),
             "folded + channels-last bf16 (ours_bf16)": bf16, "onnxruntime fp32 (ours_onnxruntime)":
             lambda: runner(xn)}
    rows = _time_paths(paths, runs, heap="default")
    from pipelines.core.allocator import retain_freed_memory

    if retain_freed_memory():  # process-wide from here on, as in every tiling process
        rows += _time_paths(paths, runs, heap="kept")
    return rows


def _time_paths(paths: dict, runs: int, heap: str) -> list[dict]:
    times = {k: [] for k in paths}
    with torch.inference_mode():
        for f in paths.values():
            f()
        for _ in range(runs):
            for name, f in paths.items():
                tic = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - tic)
    mp = BATCH * TILE * TILE / 1e6
    return [{"path": k, "heap": heap, "seconds_per_batch": statistics.median(v), "mp_per_s": mp / statistics.median(v),
             "runs": runs, "threads": torch.get_num_threads()} for k, v in times.items()]


def check_agreement(raster: Path, model: Path, work: Path, graphs: Path) -> dict[str, float]:
    import rasterio

    ref = run_monai(raster, model, work / "check_monai", probabilities=True)
    with rasterio.open(ref) as ds:
        expected = ds.read()
    diffs = {}
    for method in ("ours_torch", "ours_onnxruntime", "ours_bf16"):
        shutil.rmtree(work / f"check_{method}", ignore_errors=True)
        shutil.copytree(graphs, work / f"check_{method}" / ".engine")
        path = run_ours(method, raster, model, work / f"check_{method}", probabilities=True)
        with rasterio.open(path) as ds:
            got = ds.read()
        valid = expected >= 0
        diffs[method] = float(np.abs(got[valid] - expected[valid]).max())
        diffs[method + "_mask_agreement"] = float(((got[valid] >= 0.5) == (expected[valid] >= 0.5)).mean())
    return diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--encoder", default="tu-tf_efficientnet_lite0")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (1 thread each)")
    parser.add_argument("--runs", type=int, default=3, help="rounds per size up to 4096^2")
    parser.add_argument("--big-runs", type=int, default=1, help="rounds per size above 4096^2")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tmp", help="folder for the synthetic rasters and the model (default: a temporary one)")
    parser.add_argument("--output", default="runs/benchmarks/tiling.csv")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    for hidden in ("--raster", "--warmup", "--model", "--out", "--graphs"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        return child(args)

    work = Path(args.tmp or tempfile.mkdtemp(prefix="tiling_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / f"unetpp_{args.encoder}.safetensors"
    if not model.is_file():
        write_model(model, args.encoder)
    rasters = {}
    for size in {*args.sizes, WARMUP}:
        rasters[size] = work / f"synthetic_{size}.tif"
        if not rasters[size].is_file():
            write_raster(rasters[size], size)

    graphs = work / "engine"  # the onnxruntime engine's graph, exported once (pipelines tile caches it alike)
    if not any(graphs.glob("*.onnx")):
        from pipelines.core.io import file_sha256
        from pipelines.models import load_model
        from pipelines.tiling.engines import export_graph

        export_graph(load_model(model).model, 3, file_sha256(model), TILE, graphs)
    forward = model_throughput(model, next(graphs.glob("*.onnx")), runs=5)
    out_dir = Path(args.output).parent
    write_csv(out_dir / "tiling_model.csv", pd.DataFrame(forward))
    print(f"U-Net++ {args.encoder}, the model alone on {BATCH} x {TILE}^2 ({torch.get_num_threads()} threads):")
    for row in forward:
        print(f"  {row['path']:42s} {row['heap']:7s} heap {row['mp_per_s']:5.2f} MP/s")
    agreement = check_agreement(rasters[WARMUP], model, work, graphs)
    print(f"largest |ours - MONAI| probability on {WARMUP}^2: " + ", ".join(
        f"{k} {v:.1e}" for k, v in agreement.items() if not k.endswith("agreement")) + "; mask agreement: " +
        ", ".join(f"{k.removesuffix('_mask_agreement')} {v:.5f}" for k, v in agreement.items()
                  if k.endswith("agreement")), flush=True)

    results: dict[tuple[str, int], list[dict]] = {}
    for size in args.sizes:
        runs = args.runs if size <= 4096 else args.big_runs
        for r in range(runs):
            order = args.methods if r % 2 == 0 else list(reversed(args.methods))
            for method in order:
                got = run_child(method, rasters[size], rasters[WARMUP], model, work / f"out_{method}_{size}_{r}",
                                args.workers, graphs)
                results.setdefault((method, size), []).append(got)
                print(f"  {size}^2 {method:22s} round {r}: {got['seconds']:6.1f} s, peak {got['peak_mib']:6.0f} MiB",
                      flush=True)

    rows = []
    for (method, size), got in results.items():
        seconds = statistics.median(g["seconds"] for g in got)
        rows.append({"method": method, "size": size, "megapixels": size * size / 1e6, "seconds": seconds,
                     "seconds_all": ";".join(f"{g['seconds']:.2f}" for g in got),
                     "mp_per_s": size * size / 1e6 / seconds, "peak_mib": max(g["peak_mib"] for g in got),
                     "driver_mib": max(g["driver_mib"] for g in got), "worker_mib": max(g["worker_mib"] for g in got),
                     "processes": got[0]["processes"], "runs": len(got), "tile": TILE, "overlap": OVERLAP,
                     "batch": BATCH, "workers": args.workers if method.startswith("ours_dask") else 1,
                     "model": f"U-Net++ {args.encoder}", **{f"check_{k}": v for k, v in agreement.items()}})
    write_csv(Path(args.output), pd.DataFrame(rows))
    by = {(r["method"], r["size"]): r for r in rows}
    for size in args.sizes:
        for method in args.methods:
            r = by[(method, size)]
            ratio = ""
            if method != "monai" and ("monai", size) in by:
                m = by[("monai", size)]
                ratio = (f"   vs MONAI: x{r['mp_per_s'] / m['mp_per_s']:.2f} speed, "
                         f"x{r['peak_mib'] / m['peak_mib']:.2f} memory")
            print(f"  {size}^2 {method:22s} {r['mp_per_s']:6.2f} MP/s   peak {r['peak_mib']:7.0f} MiB "
                  f"({r['processes']} process{'es' if r['processes'] > 1 else ''}){ratio}")
    print(f"wrote {args.output}")
    if not args.tmp:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
