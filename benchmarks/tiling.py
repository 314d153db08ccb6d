"""Batch tiling: ``pipelines tile`` (blocks on Dask, windowed I/O) against MONAI's ``sliding_window_inference``
on the raster read whole into memory, GeoTIFF in, cloud-optimised mask out.

    python benchmarks/tiling.py                              # 2048^2 and 8192^2, tile 512, overlap 64, 3 runs
    python benchmarks/tiling.py --sizes 2048 --runs 5

Methods, each from a synthetic RGB GeoTIFF (uint8, deflate, 512 px tiles) to a uint8 mask COG:
- ``ours_dask``: ``run_job`` on a LocalCluster of ``--workers`` processes x 1 thread (started once, as a
  long-lived cluster would be; passed as ``scheduler``, the same code path as ``--workers N``);
- ``ours_inprocess``: ``run_job`` with ``workers=0`` (no Dask; torch's default threads);
- ``monai``: read the raster whole, normalise, ``sliding_window_inference(mode="gaussian",
  sigma_scale=0.125)`` with the same model, tile, overlap and batch, threshold, write the COG.

The model is a small encoder-decoder (about 5k multiply-adds per pixel, :class:`TinySegmenter`), not the
buildings U-Net++ (an EfficientNet-B0 U-Net++ costs about 5 us per pixel on 2 cores: 8192^2 would take
7 minutes per run), so the figures weigh the tiling machinery (I/O, blending, scheduling, writing) more
than a big model would; with a heavy model both methods converge to the model's own speed.

Time: medians of ``--runs`` rounds that alternate the methods, after one warm-up round. Peak memory: each
method runs once more in a fresh child process; the figure is the resident high-water mark (VmHWM) of every
process involved (for Dask: the driver, which also hosts the scheduler, plus each worker), so shared
libraries are counted once per process. Before timing, ours and MONAI's probabilities are compared on the
smallest size. Writes ``runs/benchmarks/tiling.csv``.
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
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch
from torch import nn

from pipelines.core.io import write_csv

METHODS = ("ours_dask", "ours_inprocess", "monai")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LOADER = f"{Path(__file__).stem}:load_tiny"  # importable on the workers: they inherit sys.path


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinySegmenter(nn.Module):
    """A three-level U-Net with 8-32 channels: logits ``(B, 1, H, W)`` for ``H, W`` multiples of 4."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _conv(3, 8), _conv(8, 16, 2), _conv(16, 32, 2)
        self.mid = _conv(32, 32)
        self.dec2, self.dec1 = _conv(48, 16), _conv(24, 8)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        m = self.mid(self.enc3(e2))
        d2 = self.dec2(torch.cat([nn.functional.interpolate(m, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([nn.functional.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)


def load_tiny(path: str):
    """The ``loader`` the job calls on each worker: ``(model, spec)``."""
    from safetensors.torch import load_file

    model = TinySegmenter()
    model.load_state_dict(load_file(path))
    spec = SimpleNamespace(classes=1, in_channels=3, mean=MEAN, std=STD, tile=512, threshold=0.5)
    return model.eval(), spec


def write_model(path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = TinySegmenter()
    for m in model.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


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


def run_ours(raster: Path, model: Path, out: Path, args, scheduler: str | None, probabilities: bool = False) -> Path:
    from pipelines.tiling import TileOptions, run_job

    opts = TileOptions(model=str(model), inputs=[str(raster)], output=str(out), tile=args.tile, overlap=args.overlap,
                       batch_size=args.batch_size, workers=None if scheduler else 0, scheduler=scheduler,
                       probabilities=probabilities, loader=LOADER)
    summary = run_job(opts)
    if summary.failed:
        raise RuntimeError(summary.failed)
    return out / f"{raster.stem}.tif"


def run_monai(raster: Path, model: Path, out: Path, args, probabilities: bool = False) -> Path:
    import rasterio
    from monai.inferers import sliding_window_inference

    from pipelines.tiling.raster_io import prepare

    net, spec = load_tiny(str(model))
    with rasterio.open(raster) as ds:
        raw, valid, profile = ds.read(), ds.dataset_mask() > 0, ds.profile
    x = torch.from_numpy(prepare(raw, valid, spec.mean, spec.std, 255.0))[None]
    del raw
    with torch.inference_mode():
        prob = sliding_window_inference(x, (args.tile, args.tile), args.batch_size, lambda b: torch.sigmoid(net(b)),
                                        overlap=args.overlap / args.tile, mode="gaussian", sigma_scale=0.125)[0]
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
    from dask.distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR, env=env)
    return cluster, Client(cluster)


def run_method(method: str, raster: Path, model: Path, out: Path, args, scheduler: str | None) -> Path:
    if method == "monai":
        return run_monai(raster, model, out, args)
    return run_ours(raster, model, out, args, scheduler if method == "ours_dask" else None)


def child(args) -> None:
    """One run of one method in this fresh process; prints peak and baseline resident memory (MiB)."""
    import monai.inferers  # noqa: F401  (imports settle before the baseline)
    import rasterio  # noqa: F401

    import pipelines.tiling  # noqa: F401

    client = cluster = None
    scheduler = None
    if args.child == "ours_dask":
        cluster, client = _local_cluster(args.workers)
        scheduler = cluster.scheduler_address
        client.run(lambda path: load_tiny(path) and None, args.model)
    base = _vmhwm() + (sum(client.run(_vmhwm).values()) if client else 0)
    run_method(args.child, Path(args.raster), Path(args.model), Path(args.out), args, scheduler)
    driver = _vmhwm()
    workers = list(client.run(_vmhwm).values()) if client else []
    if client:
        client.close()
        cluster.close()
    print(json.dumps({"peak_mib": (driver + sum(workers)) / 2**20, "baseline_mib": base / 2**20,
                      "driver_mib": driver / 2**20, "worker_mib": max(workers, default=0) / 2**20,
                      "processes": 1 + len(workers)}))


def peak_memory(method: str, raster: Path, model: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--raster", str(raster), "--model", str(model), "--out",
           str(out), "--tile", str(args.tile), "--overlap", str(args.overlap), "--batch-size", str(args.batch_size),
           "--workers", str(args.workers)]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    shutil.rmtree(out, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (1 thread each) for ours_dask")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--tmp", help="folder for the synthetic rasters (default: a temporary one)")
    parser.add_argument("--output", default="runs/benchmarks/tiling.csv")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.child:
        return child(args)

    import rasterio

    work = Path(args.tmp or tempfile.mkdtemp(prefix="tiling_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    model = work / "tiny.safetensors"
    write_model(model)
    rasters = {}
    for size in args.sizes:
        rasters[size] = work / f"synthetic_{size}.tif"
        if not rasters[size].is_file():
            write_raster(rasters[size], size)
    cluster, client = _local_cluster(args.workers) if "ours_dask" in args.methods else (None, None)
    scheduler = cluster.scheduler_address if cluster else None

    smallest = rasters[min(args.sizes)]  # same result first
    for folder in ("check_ours", "check_monai"):
        shutil.rmtree(work / folder, ignore_errors=True)
    ours = run_ours(smallest, model, work / "check_ours", args, scheduler, probabilities=True)
    ref = run_monai(smallest, model, work / "check_monai", args, probabilities=True)
    with rasterio.open(ours) as a, rasterio.open(ref) as b:
        diff = float(np.abs(a.read() - b.read()).max())
    print(f"max |ours - MONAI| probability on {min(args.sizes)}^2: {diff:.2e}")

    times: dict[tuple[str, int], list[float]] = {}
    for size, raster in rasters.items():
        for r in range(args.runs + 1):  # round 0 warms up
            for method in args.methods:
                out = work / f"out_{method}_{size}_{r}"
                tic = time.perf_counter()
                run_method(method, raster, model, out, args, scheduler)
                seconds = time.perf_counter() - tic
                shutil.rmtree(out, ignore_errors=True)
                if r:
                    times.setdefault((method, size), []).append(seconds)
                print(f"  {size}^2 {method:15s} round {r}: {seconds:6.1f} s", flush=True)
    if client:
        client.close()
        cluster.close()

    rows = []
    for size, raster in rasters.items():
        for method in args.methods:
            memory = peak_memory(method, raster, model, work / f"mem_{method}_{size}", args)
            seconds = statistics.median(times[(method, size)])
            rows.append({"method": method, "size": size, "megapixels": size * size / 1e6, "seconds": seconds,
                         "mp_per_s": size * size / 1e6 / seconds, "peak_mib": memory["peak_mib"],
                         "baseline_mib": memory["baseline_mib"], "driver_mib": memory["driver_mib"],
                         "worker_mib": memory["worker_mib"], "processes": memory["processes"],
                         "runs": args.runs, "tile": args.tile, "overlap": args.overlap, "batch": args.batch_size,
                         "workers": args.workers if method == "ours_dask" else 1,
                         "threads": args.workers if method == "ours_dask" else torch.get_num_threads(),
                         "model": "TinySegmenter", "max_abs_diff_vs_monai": diff})
    write_csv(Path(args.output), pd.DataFrame(rows))
    print(f"tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}, TinySegmenter, {args.runs} runs")
    by = {(r["method"], r["size"]): r for r in rows}
    for size in args.sizes:
        for method in args.methods:
            r = by[(method, size)]
            ratio = ""
            if method != "monai" and ("monai", size) in by:
                m = by[("monai", size)]
                ratio = (f"   vs MONAI: x{r['mp_per_s'] / m['mp_per_s']:.2f} speed, "
                         f"x{r['peak_mib'] / m['peak_mib']:.2f} memory")
            print(f"  {size}^2 {method:15s} {r['mp_per_s']:6.2f} MP/s   peak {r['peak_mib']:7.0f} MiB "
                  f"({r['processes']} process{'es' if r['processes'] > 1 else ''}){ratio}")
    print(f"wrote {args.output}")
    if not args.tmp:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
