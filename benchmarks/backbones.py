"""Backbone throughput: every registered backbone in every inference mode, plus the papers' CPU pairs.

    python benchmarks/backbones.py                          # all backbones, batch 16, 224 px, CPU
    python benchmarks/backbones.py --backbones 'efficientvi*' --runs 7
    python benchmarks/backbones.py --pairs-only             # only the papers' side-by-side comparisons
    python benchmarks/backbones.py --device cuda            # GPU: AMP, batch 256 (eager, fused, channels-last)

Modes: ``eager`` (the model as built: timm's eager for timm models), ``fused`` (BatchNorm folded),
``fused_cl`` (fused + channels-last), ``onnx`` (the fused model exported and run in onnxruntime with
the same thread count), ``compile`` (fused + channels-last + torch.compile; opt-in, tens of seconds
per model). Rounds interleave the modes, so drift in machine load hits all of them alike; each figure
is the median over ``--runs`` rounds after ``--warmup`` rounds.

Writes a CSV (one row per backbone: params, GMACs, images/s per mode, the fastest mode and its speed-up
over eager) for the dashboards, and a second CSV for the pairs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from pipelines.backbones import check_backbone, create_backbone, list_backbones
from pipelines.backbones.inference import fuse_batchnorm, prepare_for_inference
from pipelines.core.io import write_csv

CPU_MODES = ("eager", "fused", "fused_cl", "onnx")
GPU_MODES = ("eager", "fused", "fused_cl")
# (subject, peer, what the paper says)
PAIRS = [
    ("efficientvit_m5", "mobilenetv3_large_100", "EfficientViT paper: M5 has 1.45x MobileNetV3-Large's CPU throughput"),
    ("efficientvim_m2", "efficientvit_m4", "EfficientViM paper: M2 is faster than EfficientViT-M4 at similar accuracy"),
]


def count_gmacs(model: torch.nn.Module, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2e9  # the papers' "FLOPs" are multiply-accumulates


def build(name: str, size: int) -> torch.nn.Module:
    return create_backbone(name, num_classes=1000, img_size=size).eval()


def runners(name: str, model: torch.nn.Module, size: int, batch: int, modes: tuple[str, ...],
            device: torch.device, tmp: Path) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per mode that runs a batch end to end."""
    model = model.to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    amp = device.type == "cuda"

    def torch_runner(m: torch.nn.Module, inp: torch.Tensor) -> Callable[[], object]:
        def run():
            with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
                out = m(inp)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out
        return run

    out: dict[str, Callable[[], object]] = {}
    fused = fuse_batchnorm(model)[0] if {"fused", "fused_cl", "onnx", "compile"} & set(modes) else None
    for mode in modes:
        if mode == "eager":
            out[mode] = torch_runner(model, x)
        elif mode == "fused":
            out[mode] = torch_runner(fused, x)
        elif mode == "fused_cl":
            out[mode] = torch_runner(prepare_for_inference(fused, fuse=False, channels_last=True), x_cl)
        elif mode == "compile":
            out[mode] = torch_runner(prepare_for_inference(fused, fuse=False, channels_last=True, compile=True), x_cl)
        elif mode == "onnx":
            from pipelines.backbones.onnx_export import OnnxRunner, export_onnx

            path = tmp / f"{name}.onnx"
            export_onnx(fused.cpu(), path, (3, size, size))
            runner, x_np = OnnxRunner(path, threads=torch.get_num_threads()), x.cpu().numpy()
            out[mode] = lambda runner=runner, x_np=x_np: runner(x_np)
    return out


def measure(run_fns: dict[str, Callable[[], object]], batch: int, warmup: int, runs: int) -> dict[str, float]:
    """Images per second per mode: median over interleaved rounds."""
    times: dict[str, list[float]] = {m: [] for m in run_fns}
    for round_ in range(warmup + runs):
        for mode, fn in run_fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[mode].append(time.perf_counter() - start)
    return {m: batch / statistics.median(t) for m, t in times.items()}


def benchmark(names: list[str], args, modes: tuple[str, ...], device: torch.device, tmp: Path) -> list[dict]:
    rows = []
    for name in names:
        size = check_backbone(name).input_size or args.size
        model = build(name, size)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gmacs = count_gmacs(model, size)
        speed = measure(runners(name, model, size, args.batch, modes, device, tmp), args.batch, args.warmup,
                        args.runs)
        best = max(speed, key=speed.get)
        row = {"name": name, "family": check_backbone(name).family, "params_m": round(params, 3),
               "gmacs": round(gmacs, 4), "gflops": round(2 * gmacs, 4), "batch": args.batch, "size": size,
               "threads": torch.get_num_threads(), "device": device.type}
        row |= {f"img_s_{m}": round(v, 2) for m, v in speed.items()}
        row |= {"best_mode": best, "best_vs_eager": round(speed[best] / speed["eager"], 3)}
        rows.append(row)
        cells = "  ".join(f"{m} {v:8.1f}" for m, v in speed.items())
        print(f"{name:24s} {params:6.1f}M {gmacs:6.3f} GMACs  {cells}  best {best} x{row['best_vs_eager']:.2f}",
              flush=True)
    return rows


def pairs(args, modes: tuple[str, ...], tmp: Path) -> list[dict]:
    """The papers' CPU protocol: one thread, batch 16, BatchNorm fused; both models in the same run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for subject, peer, claim in PAIRS:
            fns = {}
            for name in (subject, peer):  # onnxruntime gets one thread too: runners reads the torch setting
                model = build(name, args.size)
                for mode, fn in runners(name, model, args.size, args.batch, modes, torch.device("cpu"), tmp).items():
                    fns[(name, mode)] = fn
            speed = measure(fns, args.batch, args.warmup, args.runs)
            print(f"\n{claim}\n  1 thread, batch {args.batch}, {args.size} px:")
            for mode in modes:
                ratio = speed[(subject, mode)] / speed[(peer, mode)]
                print(f"  {mode:9s} {subject} {speed[(subject, mode)]:7.1f} img/s  {peer} "
                      f"{speed[(peer, mode)]:7.1f} img/s  ratio {ratio:.2f}")
                rows.append({"subject": subject, "peer": peer, "mode": mode, "threads": 1, "batch": args.batch,
                             "size": args.size, "subject_img_s": round(speed[(subject, mode)], 2),
                             "peer_img_s": round(speed[(peer, mode)], 2), "ratio": round(ratio, 3)})
    finally:
        torch.set_num_threads(threads)
    return rows


def write_rows(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    write_csv(path, pd.DataFrame(rows))  # columns: the union of the rows' keys, in order
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="*", default=["*"], help="names or patterns (default: all)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--batch", type=int, help="images per batch (default: 16 on CPU, 256 on GPU)")
    parser.add_argument("--size", type=int, default=224, help="input side (default: 224)")
    parser.add_argument("--runs", type=int, default=5, help="timed rounds; the median is reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default: 2)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile mode (slow to start)")
    parser.add_argument("--pairs-only", action="store_true", help="only the papers' 1-thread comparisons")
    parser.add_argument("--no-pairs", action="store_true", help="skip the papers' 1-thread comparisons")
    parser.add_argument("--output", default="runs/benchmarks", help="folder for the CSVs (default: runs/benchmarks)")
    args = parser.parse_args(argv)
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    args.batch = args.batch or (256 if device.type == "cuda" else 16)
    modes = CPU_MODES if device.type == "cpu" else GPU_MODES
    if args.compile:
        modes = (*modes, "compile")
    names = sorted({n for pattern in args.backbones for n in list_backbones(pattern)})
    if not names:
        parser.error(f"no backbone matches {args.backbones}; see 'pipelines list backbones'")
    out = Path(args.output)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}, batch {args.batch}")
    with tempfile.TemporaryDirectory() as tmp:
        if not args.pairs_only:
            rows = benchmark(names, args, modes, device, Path(tmp))
            write_rows(out / f"backbones_{device.type}.csv", rows)
            ratios = [r["best_vs_eager"] for r in rows]
            print(f"fastest path vs eager: median x{statistics.median(ratios):.2f}, "
                  f"range x{min(ratios):.2f}-x{max(ratios):.2f} over {len(rows)} backbones")
        if device.type == "cpu" and not args.no_pairs:
            write_rows(out / "paper_pairs_cpu.csv", pairs(args, ("eager", "fused", "fused_cl", "onnx"), Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
