"""The shared training runner against a bare PyTorch loop: the runner's cost per epoch, and where it goes.

    python benchmarks/runner.py                                  # EfficientNet-B0, 64 px, 512 images, 1 thread
    python benchmarks/runner.py --model cnn --images 384 --rounds 12 --threads 2

Both train the same model on the same in-memory images (same batches, AdamW with warm-up/cosine, grad
clipping) and validate with the same function each epoch. The runner adds what it owns: progress bars,
best/last checkpoints, ``history.csv``, the resume state with every random state, callbacks. Each round
trains both (which goes first alternates), so machine noise hits both alike; the headline is the median
over rounds of the paired ratio runner / bare (seconds per epoch), with a bootstrap 95% interval. Each
(round, method) runs in a fresh child process (``--same-process`` runs them all in this one), so neither
inherits the other's allocator and page-cache state; imports and a short warm-up are not timed.

Phases, timed the same way in both: ``train`` (first batch to the last optimizer step), ``validate``, and
for the runner ``commit`` (everything else in its epoch: checkpoints, history, state, bookkeeping). The
one-off training-curves plot after the last epoch is reported apart. Writes ``runs/benchmarks/runner.csv``
(one row per round and method).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
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
from pipelines.training import EpochSampler, ImageKind, Runner, Settings, make_loader, seed_everything, warmup_cosine


class Images(Dataset):
    def __init__(self, n: int, size: int, seed: int = 0):
        g = np.random.default_rng(seed)
        self.labels = g.integers(0, 4, n)
        self.images = (g.normal(size=(n, 3, size, size)) + self.labels[:, None, None, None]).astype(np.float32)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"image": torch.from_numpy(self.images[i]), "label": int(self.labels[i])}


def build(name: str, size: int) -> nn.Module:
    """``cnn``: a three-layer CNN (the runner's fixed costs at their largest share); otherwise a backbone of
    the registry (an epoch as long as a real task's)."""
    if name == "cnn":
        return nn.Sequential(nn.Conv2d(3, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                             nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                             nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 4))
    from pipelines.backbones import create_backbone

    return create_backbone(name, num_classes=4, in_chans=3, img_size=size)


class Phases:
    """Seconds spent per phase, summed over a run's epochs."""

    def __init__(self):
        self.seconds: dict[str, float] = {"train": 0.0, "validate": 0.0}

    def timed_batches(self, batches):
        tic = time.perf_counter()
        yield from batches  # the loop's steps run between the yields, so this spans the whole train phase
        self.seconds["train"] += time.perf_counter() - tic

    def timed_validate(self, validate, model):
        tic = time.perf_counter()
        out = validate(model)
        self.seconds["validate"] += time.perf_counter() - tic
        return out


def _validate(model: nn.Module, val: Images, batch: int) -> dict:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(val), batch):
            logits = model(torch.from_numpy(val.images[i:i + batch]))
            correct += int((logits.argmax(1).numpy() == val.labels[i:i + batch]).sum())
    return {"accuracy": correct / len(val)}


def bare(args, train: Images, val: Images) -> dict:
    """A plain loop doing the same work (no checkpoints, no state, no bars)."""
    s, phases = settings(args), Phases()
    seed_everything(0)
    model, loss_fn = build(args.model, args.size), nn.CrossEntropyLoss()
    sampler = EpochSampler(len(train), 0)
    loader = make_loader(train, args.batch, 0, 0, sampler)
    optimizer = torch.optim.AdamW(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    steps = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, functools.partial(warmup_cosine, warmup=steps, total=steps * s.epochs))
    validate = functools.partial(_validate, val=val, batch=args.batch)
    tic = time.perf_counter()
    for epoch in range(1, s.epochs + 1):
        model.train()
        sampler.set_epoch(epoch)
        total = 0.0
        for b in phases.timed_batches(loader):
            loss = loss_fn(model(b["image"]), b["label"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(b["label"])
        phases.timed_validate(validate, model)
    return {"epoch_s": (time.perf_counter() - tic) / s.epochs, **_per_epoch(phases, s.epochs)}


class _Clock:
    """A callback timing the epochs themselves (training, validation, checkpoints, state), not the run's
    one-off end (the training-curves plot)."""

    def start(self, cfg, run_dir):
        self.begin = time.perf_counter()

    def epoch(self, row):
        self.last = time.perf_counter()

    def finish(self, run_dir):
        self.end = time.perf_counter()


def runner(args, train: Images, val: Images) -> dict:
    s, phases = settings(args), Phases()
    seed_everything(0)
    ctx = Context(torch.device("cpu"))
    validate = functools.partial(_validate, val=val, batch=args.batch)
    kind = ImageKind(build(args.model, args.size), nn.CrossEntropyLoss(), train, args.batch, 0, 0, ctx,
                     functools.partial(phases.timed_validate, validate))
    batches = kind.batches
    kind.batches = lambda epoch: phases.timed_batches(batches(epoch))
    clock = _Clock()
    from pipelines.backbones import save_weights

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        Runner(kind, s, Path(tmp), ctx, save=save_weights, progress=False, callbacks=[clock]).fit()
    epoch_s = (clock.last - clock.begin) / s.epochs
    out = {"epoch_s": epoch_s, **_per_epoch(phases, s.epochs), "plot_once_s": clock.end - clock.last}
    out["commit_s"] = epoch_s - out["train_s"] - out["validate_s"]
    return out


def settings(args) -> Settings:
    return Settings(epochs=args.epochs, lr=1e-3, weight_decay=0.01, warmup_epochs=1, grad_clip=5.0,
                    monitor="accuracy")


def _per_epoch(phases: Phases, epochs: int) -> dict:
    return {f"{k}_s": v / epochs for k, v in phases.seconds.items()}


def _interval(values: list[float], seed: int = 0, n: int = 2000) -> tuple[float, float]:
    g = np.random.default_rng(seed)
    v = np.asarray(values)
    medians = np.median(v[g.integers(0, len(v), (n, len(v)))], axis=1)
    return float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))


def _warm_up(args) -> None:
    """A few untimed steps of a throwaway model, the same for both methods: kernels and allocator warm."""
    model = build(args.model, args.size)
    optimizer = torch.optim.AdamW(model.parameters())
    x = torch.randn(args.batch, 3, args.size, args.size)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()


def _child(args, method: str) -> dict:
    """One method's run in a fresh process (this script with ``--one METHOD``); its result as a dict."""
    cmd = [sys.executable, __file__, "--one", method]
    for key in ("model", "epochs", "threads", "images", "size", "batch", "tmp"):
        if getattr(args, key) is not None:
            cmd += [f"--{key}", str(getattr(args, key))]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the {method} run failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_b0", help="cnn or a backbone of the registry")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tmp", default=None, help="where the runner's run folders go (default: the system's)")
    parser.add_argument("--same-process", action="store_true", help="run every round in this process")
    parser.add_argument("--one", choices=("bare", "runner"), help=argparse.SUPPRESS)  # a child's method
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = {"bare": bare, "runner": runner}
    if args.one or args.same_process:
        train, val = Images(args.images, args.size), Images(args.images // 4, args.size, seed=1)
        _warm_up(args)
    if args.one:
        print(json.dumps(methods[args.one](args, train, val)))
        return

    def run(name: str) -> dict:
        if args.same_process:
            return methods[name](args, train, val)
        return _child(args, name)

    rows, ratios = [], []
    for r in range(args.rounds):
        order = list(methods) if r % 2 == 0 else list(methods)[::-1]
        got = {name: run(name) for name in order}
        ratios.append(got["runner"]["epoch_s"] / got["bare"]["epoch_s"])
        rows += [{"round": r, "method": name, **got[name]} for name in methods]
        print(f"round {r + 1}/{args.rounds}: bare {got['bare']['epoch_s']:.3f} s/epoch, runner "
              f"{got['runner']['epoch_s']:.3f} (ratio {ratios[-1]:.3f})", flush=True)
    frame = pd.DataFrame(rows).assign(model=args.model, threads=args.threads, images=args.images,
                                      size=args.size, batch=args.batch, epochs=args.epochs)
    write_csv(Path("runs/benchmarks/runner.csv"), frame)
    med = frame.groupby("method").median(numeric_only=True)
    for name in methods:
        phases = ", ".join(f"{k[:-2]} {med.loc[name, k]:.3f}" for k in ("train_s", "validate_s", "commit_s")
                           if k in med.columns and not np.isnan(med.loc[name, k]))
        print(f"{name:>7}: {med.loc[name, 'epoch_s']:.3f} s/epoch ({phases})")
    low, high = _interval(ratios)
    ratio = statistics.median(ratios)
    print(f"runner / bare = {ratio:.3f} [{low:.3f}, {high:.3f}] ({(ratio - 1) * 100:+.1f}% per epoch; median "
          f"of {args.rounds} paired rounds, bootstrap 95% interval), {args.model} {args.size} px, "
          f"{args.images} images, {args.threads} thread(s); once per run after the last epoch (plot): "
          f"{med.loc['runner', 'plot_once_s']:.3f} s")


if __name__ == "__main__":
    main()
