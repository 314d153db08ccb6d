"""Inference precision on the CPU: fp32, bf16 and int8 for every registered backbone, and what each costs.

    python benchmarks/precision.py                                  # every backbone, batch 1 and 16, 224 px
    python benchmarks/precision.py --backbones 'efficientnet_*' --runs 7
    python benchmarks/precision.py --backbones none --accuracy-run runs/real_data/medmnist/breastmnist_pretrained
    python benchmarks/precision.py --backbones none --training '*' unetplusplus:tu-tf_efficientnet_lite0
    python benchmarks/precision.py --backbones none --tiling runs/buildings/<run>/checkpoints/best.safetensors

Paths (all on the BatchNorm-fused model):
    fp32      PyTorch, channels-last: our float path (the reference)
    bf16      the same under ``torch.autocast("cpu", dtype=torch.bfloat16)``
    onnx      onnxruntime, float32 (to separate the engine's gain from int8's)
    int8      onnxruntime, static QDQ int8 (:func:`pipelines.backbones.quantize.quantize_onnx`), calibrated
              on random images for speed, on the run's training images for ``--accuracy-run``

Rounds interleave the paths so drift in machine load hits all of them alike; each figure is the median
over ``--runs`` rounds after ``--warmup``. ``--accuracy-run`` (a medmnist run folder) scores the run's
best model on its validation split in every path: the task's ACC and AUC and the top-1 agreement with fp32.

``--training`` times one training step (forward, backward, AdamW; channels-last) at fp32 and under bf16
autocast: the measurements behind the registry's table of which families train faster in bf16.

``--tiling WEIGHTS`` runs ``pipelines tile`` (in process, torch's threads) with a trained segmenter on a
synthetic aerial-like GeoTIFF of ``--tile-raster`` px, at fp32 and bf16 in alternating rounds: megapixels
per second and the share of mask pixels on which the two agree.

Writes ``runs/benchmarks/precision_cpu.csv`` (one row per backbone and batch),
``runs/benchmarks/precision_training_cpu.csv``, ``runs/benchmarks/precision_accuracy.csv`` and
``runs/benchmarks/precision_tiling_cpu.csv``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from backbones import build, measure, write_rows

from pipelines.backbones import check_backbone, list_backbones
from pipelines.backbones.inference import prepare_for_inference
from pipelines.core.errors import PipelinesError
from pipelines.core.precision import cpu_features, precision_autocast

PATHS = ("fp32", "bf16", "onnx", "int8")


def path_runners(model: torch.nn.Module, shape: tuple[int, int, int], tmp: Path, name: str,
                 calibration: list[np.ndarray], method: str = "minmax", onnx_optional: bool = False
                 ) -> dict[str, Callable[[torch.Tensor], np.ndarray]]:
    """One ``run(x) -> probabilities-ready logits (numpy)`` per path, all from the same fused model; with
    ``onnx_optional`` a model whose ONNX graph fails the parity check keeps its two torch paths."""
    from pipelines.backbones.onnx_export import OnnxRunner, export_onnx
    from pipelines.backbones.quantize import quantize_onnx

    fused = prepare_for_inference(model, fuse=True, channels_last=True)
    threads = torch.get_num_threads()

    def torch_path(precision: str) -> Callable[[torch.Tensor], np.ndarray]:
        def run(x: torch.Tensor) -> np.ndarray:
            with torch.inference_mode(), precision_autocast(torch.device("cpu"), precision):
                out = fused(x.contiguous(memory_format=torch.channels_last))
            return out.float().numpy()
        return run

    paths = {"fp32": torch_path("fp32"), "bf16": torch_path("bf16")}
    float_file, int8_file = tmp / f"{name}.onnx", tmp / f"{name}.int8.onnx"
    try:
        export_onnx(prepare_for_inference(model, fuse=True, channels_last=False), float_file, shape)
    except PipelinesError as exc:
        if not onnx_optional:
            raise
        print(f"{name}: no onnx/int8 paths: {str(exc).splitlines()[0]}", flush=True)
        return paths
    quantize_onnx(float_file, int8_file, calibration, method)
    onnx_float, onnx_int8 = OnnxRunner(float_file, threads), OnnxRunner(int8_file, threads)
    return {**paths, "onnx": lambda x: onnx_float(x.numpy()), "int8": lambda x: onnx_int8(x.numpy())}


def random_calibration(shape: tuple[int, int, int], batches: int = 8, batch: int = 4) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(batch, *shape, generator=g).numpy() for _ in range(batches)]


def speed(names: list[str], args, tmp: Path) -> list[dict]:
    rows = []
    for name in names:
        try:
            rows += _speed(name, args, tmp)
        except (RuntimeError, PipelinesError) as exc:  # a path this model cannot take: said, the others measured
            print(f"{name:24s} FAILED: {str(exc).splitlines()[0]}", flush=True)
    return rows


def _speed(name: str, args, tmp: Path) -> list[dict]:
    rows = []
    size = check_backbone(name).input_size or args.size
    shape = (3, size, size)
    model = build(name, size)
    runs = path_runners(model, shape, tmp, name, random_calibration(shape))
    for batch in args.batches:
        x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
        ref = runs["fp32"](x)
        # how far each path's logits move from fp32's, relative to their spread (random weights: no accuracy)
        drift = {p: float(np.abs(runs[p](x) - ref).max() / (ref.std() + 1e-12)) for p in PATHS[1:]}
        fns = {p: (lambda fn=fn, x=x: fn(x)) for p, fn in runs.items()}
        img_s = measure(fns, batch, args.warmup, args.runs)
        fastest = max(img_s, key=img_s.get)
        row = {"name": name, "family": check_backbone(name).family, "batch": batch, "size": size,
               "threads": torch.get_num_threads(), **{f"img_s_{p}": round(v, 2) for p, v in img_s.items()},
               **{f"drift_{p}": round(v, 4) for p, v in drift.items()},
               "fastest": fastest, "fastest_vs_fp32": round(img_s[fastest] / img_s["fp32"], 3)}
        rows.append(row)
        cells = "  ".join(f"{p} {v:7.1f}" for p, v in img_s.items())
        print(f"{name:24s} batch {batch:3d}  {cells}  fastest {fastest} x{row['fastest_vs_fp32']:.2f}", flush=True)
    return rows


def training(names: list[str], args) -> list[dict]:
    """Images per second of one training step (forward, backward, AdamW) at fp32 and under bf16 autocast,
    channels-last as the runner trains; ``unetplusplus:<encoder>`` names a U-Net++ on that encoder."""
    from pipelines.backbones import create_backbone
    from pipelines.backbones.segmentation import create_segmenter

    rows = []
    for name in names:
        if name.startswith("unetplusplus:"):
            model, size, batch = create_segmenter(name.split(":", 1)[1], classes=1), 256, 8
            target = torch.rand(batch, 1, size, size).round()
            loss_fn = torch.nn.functional.binary_cross_entropy_with_logits
        else:
            size = check_backbone(name).input_size or args.train_size
            model, batch = create_backbone(name, num_classes=10, img_size=size), args.train_batch
            target = torch.randint(0, 10, (batch,))
            loss_fn = torch.nn.functional.cross_entropy
        model = model.train().to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)

        def step(precision: str, model=model, optimizer=optimizer, x=x, target=target, loss_fn=loss_fn):
            with precision_autocast(torch.device("cpu"), precision):
                loss = loss_fn(model(x).float(), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        try:
            img_s = measure({p: (lambda p=p: step(p)) for p in ("fp32", "bf16")}, batch, args.warmup, args.runs)
        except RuntimeError as exc:  # an operator without a bf16 backward: this model cannot train in bf16
            print(f"train {name:28s} FAILED in bf16: {str(exc).splitlines()[0]}", flush=True)
            continue
        row = {"name": name, "batch": batch, "size": size, "threads": torch.get_num_threads(),
               "train_img_s_fp32": round(img_s["fp32"], 2), "train_img_s_bf16": round(img_s["bf16"], 2),
               "bf16_vs_fp32": round(img_s["bf16"] / img_s["fp32"], 3)}
        rows.append(row)
        print(f"train {name:28s} batch {batch:3d} {size} px  fp32 {img_s['fp32']:7.1f}  bf16 {img_s['bf16']:7.1f}  "
              f"x{row['bf16_vs_fp32']:.2f}", flush=True)
    return rows


def accuracy(run_dir: Path, tmp: Path, calibration_images: int, batch: int, method: str = "minmax"
             ) -> list[dict]:
    """The run's best model on its validation split in every path: ACC, AUC, agreement with fp32."""
    from pipelines.engine.metrics import official_acc, official_auc
    from pipelines.models import load_model
    from pipelines.runs import read_config
    from pipelines.tasks import medmnist
    from pipelines.transforms.augment import build_transform

    cfg = read_config(run_dir)
    if cfg["run"]["task"] != "medmnist":
        raise SystemExit(f"--accuracy-run {run_dir}: a medmnist run is needed (this is {cfg['run']['task']})")
    loaded = load_model(run_dir)
    data = medmnist.load_data(cfg)
    transform = build_transform("none", int(cfg["data"]["image_size"]))

    def tensors(split: str, limit: int | None = None) -> torch.Tensor:
        images = data.images[split][:limit]
        images = np.repeat(images[..., None], 3, axis=3) if images.ndim == 3 else images
        return torch.stack([transform(image=im)["image"] for im in images])

    x_val, y_val = tensors("val"), data.labels["val"]
    calibration = list(tensors("train", calibration_images).split(batch))
    shape = tuple(x_val.shape[1:])
    runs = path_runners(loaded.model, shape, tmp, "run", [c.numpy() for c in calibration], method,
                        onnx_optional=True)
    probs = {p: torch.softmax(torch.from_numpy(np.concatenate([fn(b) for b in x_val.split(batch)])), 1).numpy()
             for p, fn in runs.items()}
    top1 = probs["fp32"].argmax(1)
    rows = []
    for p, pr in probs.items():
        acc, auc = official_acc(y_val, pr, data.task), official_auc(y_val, pr, data.task)
        rows.append({"run": str(run_dir), "backbone": loaded.spec.arch, "path": p, "calibration": method,
                     "n_val": len(y_val),
                     "acc": round(acc, 4), "auc": round(auc, 4), "agreement_with_fp32": round(float(
                         (pr.argmax(1) == top1).mean()), 4), "max_prob_change": round(float(
                             np.abs(pr - probs["fp32"]).max()), 4)})
        r = rows[-1]
        print(f"{p:5s} val ACC {acc:.4f}  AUC {auc:.4f}  top-1 agreement with fp32 {r['agreement_with_fp32']:.4f}"
              f"  largest probability change {r['max_prob_change']:.4f}", flush=True)
    return rows


def tiling(weights: Path, args, tmp: Path) -> list[dict]:
    """``pipelines tile`` megapixels per second at fp32 and bf16 (rounds alternate), and their mask agreement."""
    import rasterio
    from tiling import write_raster  # benchmarks/tiling.py: the same synthetic rasters

    from pipelines.tiling import TileOptions, run_job

    raster = tmp / f"synthetic_{args.tile_raster}.tif"
    write_raster(raster, args.tile_raster)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    masks = {}
    for r in range(args.runs + 1):  # round 0 warms up
        for precision in times:
            out = tmp / f"tile_{precision}_{r}"
            tic = time.perf_counter()
            summary = run_job(TileOptions(model=str(weights), inputs=[str(raster)], output=str(out), workers=0,
                                          precision=precision))
            seconds = time.perf_counter() - tic
            if summary.failed:
                raise PipelinesError(f"pipelines tile failed: {summary.failed}")
            if r:
                times[precision].append(seconds)
            if r == 1:
                with rasterio.open(out / f"{raster.stem}.tif") as ds:
                    masks[precision] = ds.read()
            print(f"  tile {args.tile_raster}^2 {precision} round {r}: {seconds:6.1f} s", flush=True)
    mp = args.tile_raster ** 2 / 1e6
    speed = {p: mp / statistics.median(t) for p, t in times.items()}
    agreement = float((masks["fp32"] == masks["bf16"]).mean())
    row = {"weights": str(weights), "raster": args.tile_raster, "runs": args.runs, "threads": torch.get_num_threads(),
           "mp_s_fp32": round(speed["fp32"], 4), "mp_s_bf16": round(speed["bf16"], 4),
           "bf16_vs_fp32": round(speed["bf16"] / speed["fp32"], 3), "mask_agreement": round(agreement, 6)}
    print(f"tile {args.tile_raster}^2: fp32 {speed['fp32']:.3f} MP/s, bf16 {speed['bf16']:.3f} MP/s, "
          f"x{row['bf16_vs_fp32']:.2f}; masks agree on {agreement:.4%} of pixels", flush=True)
    return [row]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="*", default=["*"], help="names or patterns; 'none' for no speed table")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes (default: 1 16)")
    parser.add_argument("--size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--training", nargs="*", metavar="NAME",
                        help="also time training steps, fp32 vs bf16, of these backbones (patterns) and "
                             "'unetplusplus:<encoder>' segmenters")
    parser.add_argument("--train-batch", type=int, default=32, help="training batch (default: 32)")
    parser.add_argument("--train-size", type=int, default=128, help="training input side (default: 128)")
    parser.add_argument("--accuracy-run", type=Path, nargs="+", default=[],
                        help="medmnist run folders: accuracy of each path on each run's val split")
    parser.add_argument("--calibration-images", type=int, default=256, help="training images to calibrate int8 on")
    parser.add_argument("--calibration-method", default="minmax", choices=("minmax", "percentile"))
    parser.add_argument("--tiling", type=Path, metavar="WEIGHTS",
                        help="a trained segmenter (.safetensors): pipelines tile throughput at fp32 and bf16")
    parser.add_argument("--tile-raster", type=int, default=2048, help="raster side for --tiling (default: 2048)")
    parser.add_argument("--output", default="runs/benchmarks", help="folder for the CSVs (default: runs/benchmarks)")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    names = [] if args.backbones == ["none"] else sorted({n for p in args.backbones for n in list_backbones(p)})
    out = Path(args.output)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; CPU {cpu_features()}")
    with tempfile.TemporaryDirectory() as tmp:
        if names:
            rows = speed(names, args, Path(tmp))
            write_rows(out / "precision_cpu.csv", rows)
            for batch in args.batches:
                ratios = [r["fastest_vs_fp32"] for r in rows if r["batch"] == batch]
                print(f"batch {batch}: fastest path vs fp32, median x{statistics.median(ratios):.2f} "
                      f"(x{min(ratios):.2f}-x{max(ratios):.2f}) over {len(ratios)} backbones")
        if args.training:
            trained = sorted({n for p in args.training if not p.startswith("unetplusplus:")
                              for n in list_backbones(p)}) + [p for p in args.training if p.startswith("unetplusplus:")]
            write_rows(out / "precision_training_cpu.csv", training(trained, args))
        if args.accuracy_run:
            write_rows(out / "precision_accuracy.csv", [
                row for run_dir in args.accuracy_run
                for row in accuracy(run_dir, Path(tmp), args.calibration_images, 64, args.calibration_method)])
        if args.tiling:
            write_rows(out / "precision_tiling_cpu.csv", tiling(args.tiling, args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
