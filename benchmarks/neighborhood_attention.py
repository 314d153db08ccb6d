"""Neighborhood attention: our chunked pure-PyTorch NA against full attention with a neighborhood mask.

    python benchmarks/neighborhood_attention.py                  # 56x56, kernel 7, 2 heads x 32, batch 8
    python benchmarks/neighborhood_attention.py --size 28 --runs 9 --dilation 2

Both compute the same output (checked before timing). Time: forward, and forward + backward, medians
over ``--runs`` rounds that alternate the two methods. Peak memory: each method runs in a fresh child
process and reports its peak resident set size above the same baseline (inputs allocated, nothing run),
so the figure is what the attention itself holds at its high-water mark (on CUDA: max allocated).
Writes ``runs/benchmarks/neighborhood_attention.csv``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from pipelines.backbones.neighborhood_attention import masked_neighborhood_attention, neighborhood_attention
from pipelines.core.io import write_csv

METHODS = {"ours": neighborhood_attention, "masked_full": masked_neighborhood_attention}


def _inputs(args, grad: bool):
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.heads, args.size, args.size, args.head_dim)
    q, k, v = (torch.randn(shape, generator=g).to(args.device).requires_grad_(grad) for _ in range(3))
    rpb = (0.02 * torch.randn(args.heads, 2 * args.kernel - 1, 2 * args.kernel - 1, generator=g)).to(args.device)
    return q, k, v, rpb.requires_grad_(grad)


def _step(method: str, args, tensors, backward: bool) -> None:
    out = METHODS[method](*tensors[:3], args.kernel, args.dilation, tensors[3])
    if backward:
        out.square().mean().backward()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_rss() -> int:
    """This process's resident high-water mark in bytes. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    over from the parent across fork + exec, which would hide a child's own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(args) -> None:
    """Peak memory of one method, forward + backward, in this fresh process."""
    tensors = _inputs(args, grad=True)
    _sync(args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _peak_rss()
    _step(args.child, args, tensors, backward=True)
    _sync(args.device)
    peak = (torch.cuda.max_memory_allocated() if args.device.startswith("cuda")
            else _peak_rss())
    print(json.dumps({"peak_mib": (peak - base) / 2**20}))


def peak_memory(method: str, args) -> float:
    cmd = [sys.executable, __file__, "--child", method, "--size", str(args.size), "--kernel", str(args.kernel),
           "--dilation", str(args.dilation), "--heads", str(args.heads), "--head-dim", str(args.head_dim),
           "--batch", str(args.batch), "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def timings(args) -> dict[tuple[str, str], float]:
    results: dict[tuple[str, str], list[float]] = {}
    for phase, backward in (("forward", False), ("forward_backward", True)):
        tensors = _inputs(args, grad=backward)
        for r in range(args.warmup + args.runs):
            for method in METHODS:
                if backward:
                    for t in tensors:
                        t.grad = None
                _sync(args.device)
                tic = time.perf_counter()
                if backward:
                    _step(method, args, tensors, True)
                else:
                    with torch.no_grad():
                        _step(method, args, tensors, False)
                _sync(args.device)
                if r >= args.warmup:
                    results.setdefault((method, phase), []).append(time.perf_counter() - tic)
    return {key: statistics.median(v) for key, v in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=56)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--output", default="runs/benchmarks/neighborhood_attention.csv")
    args = parser.parse_args()
    if args.child:
        return child(args)

    q, k, v, rpb = _inputs(args, grad=False)
    with torch.no_grad():
        diff = (neighborhood_attention(q, k, v, args.kernel, args.dilation, rpb)
                - masked_neighborhood_attention(q, k, v, args.kernel, args.dilation, rpb)).abs().max().item()
    times = timings(args)
    memory = {m: peak_memory(m, args) for m in METHODS}
    rows = []
    for method in METHODS:
        rows.append({
            "method": method, "size": args.size, "kernel": args.kernel, "dilation": args.dilation,
            "heads": args.heads, "head_dim": args.head_dim, "batch": args.batch, "device": args.device,
            "threads": torch.get_num_threads(),
            "forward_ms": 1000 * times[(method, "forward")],
            "forward_backward_ms": 1000 * times[(method, "forward_backward")],
            "peak_mib": memory[method], "max_abs_diff": diff,
        })
    out = Path(args.output)
    write_csv(out, pd.DataFrame(rows))
    ours, full = rows
    print(f"{args.size}x{args.size}, kernel {args.kernel}, dilation {args.dilation}, batch {args.batch}, "
          f"{args.heads} heads x {args.head_dim}, {args.device} ({torch.get_num_threads()} threads); "
          f"max |ours - masked| = {diff:.1e}")
    for r in rows:
        print(f"  {r['method']:12s} forward {r['forward_ms']:8.1f} ms   forward+backward "
              f"{r['forward_backward_ms']:8.1f} ms   peak {r['peak_mib']:8.1f} MiB")
    print(f"  ours vs masked full attention: {full['forward_ms'] / ours['forward_ms']:.1f}x faster forward, "
          f"{full['forward_backward_ms'] / ours['forward_backward_ms']:.1f}x faster forward+backward, "
          f"{full['peak_mib'] / max(ours['peak_mib'], 1e-6):.1f}x less peak memory")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
