"""ToC3D's trade-off, measured: one trained detector with and without token compression.

    python benchmarks/toc3d.py runs/toc3d/<run>              # a finished `pipelines run toc3d` folder
    python benchmarks/toc3d.py runs/toc3d/<run> --repeats 15 --threads 1
    python benchmarks/toc3d.py runs/toc3d/<run> --precisions fp32 bf16   # every setting in both, interleaved

Re-runs the run's ablation on its test scenes: no compression (the peer), each ``eval.ablation_ratios``
setting with learned (history-query) scoring, and random scoring at ``eval.random_ratios``. For each:
median backbone and whole-model milliseconds per frame (six views; settings interleaved in every repeat
so machine noise hits them alike), mAP and NDS (all 10 classes and the classes present), and the share of
ground-truth-box tokens that took the full path. With ``--precisions`` every setting runs at each precision
(bf16: autocast; timed interleaved with fp32). Prints the table with changes against no compression at
the same precision, and ``vs fp32`` (the setting's backbone time over its fp32 time); writes
``runs/benchmarks/toc3d.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipelines.backbones.weights import load_weights
from pipelines.core.io import write_csv
from pipelines.core.precision import resolve_precision
from pipelines.datasets.nuscenes import DETECTION_CLASSES
from pipelines.detection3d.model import build_detector
from pipelines.runs import check_run_dir, read_config
from pipelines.tasks import toc3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a toc3d run folder with checkpoints/best.safetensors")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--frames", type=int, default=None, help="test frames timed per repeat (eval.latency_frames)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=("fp32", "bf16"),
                        help="inference precisions to run every setting at (default: fp32)")
    parser.add_argument("--output", default="runs/benchmarks/toc3d.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run_dir = check_run_dir(args.run_dir)
    cfg = read_config(run_dir)
    if args.frames:
        cfg["eval"]["latency_frames"] = args.frames
    data = toc3d.load_data(cfg, run_dir)
    model = build_detector(cfg["model"], len(DETECTION_CLASSES))
    load_weights(model, run_dir / "checkpoints" / "best.safetensors")
    cpu = torch.device("cpu")
    precisions = tuple(dict.fromkeys(["fp32", *(resolve_precision(p, cpu) for p in args.precisions)]))
    table = toc3d.ablation(cfg, model, toc3d.frame_loader(cfg, model), data.of("test"), cpu,
                           repeats=args.repeats, precisions=precisions)
    table.insert(0, "threads", args.threads)
    write_csv(Path(args.output), table)
    print(f"{args.threads} thread(s), {args.repeats} repeats, test scenes of {run_dir}")
    print(f"{'setting':31} {'backbone ms':>12} {'vs none':>8} {'vs fp32':>8} {'model ms':>9} {'vs none':>8} "
          f"{'mAP':>6} {'NDS':>6} {'dNDS pts':>8} {'GT tokens kept':>14}")
    for r in table.itertuples():
        print(f"{r.setting:31} {r.backbone_ms:12.1f} {r.backbone_change:+8.1%} {r.backbone_vs_fp32:8.2f} "
              f"{r.model_ms:9.1f} {r.model_change:+8.1%} {r.map:6.3f} {r.nds:6.3f} {r.nds_points:+8.2f} "
              f"{r.gt_token_share_kept:14.1%}")


if __name__ == "__main__":
    main()
