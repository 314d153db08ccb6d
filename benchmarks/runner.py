"""The shared training runner against a bare PyTorch loop: the runner's cost per epoch.

    python benchmarks/runner.py                      # 8 rounds, 3 epochs each, 1 thread
    python benchmarks/runner.py --rounds 12 --threads 2 --images 512

Both train the same small CNN on the same in-memory images (same batches, AdamW, warm-up/cosine, grad
clipping) and validate with the same function each epoch. The runner adds what it owns: progress bars,
best/last checkpoints, ``history.csv``, the resume state with every random state. Rounds alternate the two
(which goes first alternates too) so machine noise hits both alike; the medians of seconds per epoch and
their ratio are printed. The runner's epochs are timed by a callback (start to the last epoch's row, so
checkpoints and state are in); the one-off training-curves plot after the last epoch is printed apart.
Writes ``runs/benchmarks/runner.csv``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from pipelines.core.device import Context
from pipelines.core.io import write_csv
from pipelines.training import ImageKind, Runner, Settings, make_loader, seed_everything, warmup_cosine


class Images(Dataset):
    def __init__(self, n: int, size: int):
        g = np.random.default_rng(0)
        self.labels = g.integers(0, 4, n)
        self.images = (g.normal(size=(n, 3, size, size)) + self.labels[:, None, None, None]).astype(np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(self.images[i]), "label": int(self.labels[i])}


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))


def _validate(model: nn.Module, val: Images) -> dict:
    model.eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(val.images))
    return {"accuracy": float((logits.argmax(1).numpy() == val.labels).mean())}


SETTINGS = Settings(epochs=3, lr=1e-3, weight_decay=0.01, warmup_epochs=1, grad_clip=5.0, monitor="accuracy")


def bare(train: Images, val: Images, batch: int) -> float:
    """Seconds per epoch of a plain loop doing the same work (no checkpoints, no state, no bars)."""
    seed_everything(0)
    model, loss_fn = _net(), nn.CrossEntropyLoss()
    from pipelines.training import EpochSampler

    sampler = EpochSampler(len(train), 0)
    loader = make_loader(train, batch, 0, 0, sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=SETTINGS.lr, weight_decay=SETTINGS.weight_decay)
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup=steps, total=steps * SETTINGS.epochs))
    tic = time.perf_counter()
    for epoch in range(1, SETTINGS.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        total = 0.0
        for b in loader:
            loss = loss_fn(model(b["image"]), b["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), SETTINGS.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(b["label"])
        _validate(model, val)
    return (time.perf_counter() - tic) / SETTINGS.epochs


class _Clock:
    """A callback timing the epochs themselves (training, validation, checkpoints, state), not the run's
    one-off end (the training-curves plot), which is reported apart."""

    def start(self, cfg, run_dir):
        self.begin = time.perf_counter()

    def epoch(self, row):
        self.last = time.perf_counter()

    def finish(self, run_dir):
        self.end = time.perf_counter()


def runner(train: Images, val: Images, batch: int, ends: list | None = None) -> float:
    seed_everything(0)
    ctx = Context(torch.device("cpu"))
    kind = ImageKind(_net(), nn.CrossEntropyLoss(), train, batch, 0, 0, ctx, functools.partial(_validate, val=val))
    clock = _Clock()
    with tempfile.TemporaryDirectory() as tmp:
        Runner(kind, SETTINGS, Path(tmp), ctx, progress=False, callbacks=[clock]).fit()
    if ends is not None:
        ends.append(clock.end - clock.last)
    return (clock.last - clock.begin) / SETTINGS.epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=384)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, val = Images(args.images, args.size), Images(args.images // 4, args.size)
    ends: list[float] = []
    methods = {"bare": bare, "runner": functools.partial(runner, ends=ends)}
    bare(train, val, args.batch)  # warm-up: allocator, kernels
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        for name in order:
            times[name].append(methods[name](train, val, args.batch))
    medians = {name: statistics.median(v) for name, v in times.items()}
    ratio = medians["runner"] / medians["bare"]
    rows = [{"method": name, "median_s_per_epoch": medians[name], "min_s": min(v), "max_s": max(v),
             "rounds": args.rounds, "threads": args.threads, "images": args.images, "batch": args.batch}
            for name, v in times.items()]
    write_csv(Path("runs/benchmarks/runner.csv"), pd.DataFrame(rows))
    for row in rows:
        print(f"{row['method']:>7}: {row['median_s_per_epoch']:.4f} s/epoch (min {row['min_s']:.4f}, "
              f"max {row['max_s']:.4f})")
    print(f"runner / bare = {ratio:.3f} ({(ratio - 1) * 100:+.1f}% per epoch), {args.rounds} rounds, "
          f"{args.threads} thread(s); once per run after the last epoch (plot): {statistics.median(ends):.3f} s")


if __name__ == "__main__":
    main()
