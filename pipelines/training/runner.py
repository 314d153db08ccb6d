"""The one training loop: a model kind supplies its batches, step losses and validation; the runner owns
everything around them.

A kind (see :class:`Kind`) is a small object with ``model``, ``steps_per_epoch()``, ``batches(epoch)``,
``step(net, batch, carry) -> (losses, carry)`` and ``validate(model) -> metrics``; optionally
``optimizers(model, settings)`` (one per loss key; default one AdamW named ``loss``), ``state_dict()`` /
``load_state_dict()`` for extras it must carry across a resume, ``ddp`` (False keeps it in one process's
model) and ``find_unused_parameters``. The runner owns the optimizer steps, schedules, AMP, gradient
clipping, DDP, early stopping, best/last checkpoints (through ``save(model, path)``), the resume state
(:mod:`pipelines.training.state`), ``history.csv``, ``plots/training_curves.png``, progress bars and the
callbacks (``start(cfg, run_dir)``, ``epoch(row)``, ``finish(run_dir)``, called on rank 0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from pipelines.core.device import Context
from pipelines.core.io import atomic_link, write_csv
from pipelines.core.precision import bf16_native, precision_autocast
from pipelines.engine.plots import plot_history
from pipelines.runs.folder import BEST_NAME, HISTORY, LAST_NAME, STATE_NAME, TRAINING_CURVES
from pipelines.training.data import autocast
from pipelines.training.loggers import run_loggers
from pipelines.training.schedule import build_scheduler, warmup_steps
from pipelines.training.state import load_state, restore_rng, rng_state, save_state

__all__ = ["Kind", "Settings", "Runner", "Callback"]

log = logging.getLogger(__name__)


class Kind(Protocol):
    model: nn.Module

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int) -> Iterable: ...

    def step(self, net: nn.Module, batch: Any, carry: Any) -> tuple[dict, Any]: ...

    def validate(self, model: nn.Module) -> dict: ...


class Callback(Protocol):
    def start(self, cfg: Mapping, run_dir: Path) -> None: ...

    def epoch(self, row: dict) -> None: ...

    def finish(self, run_dir: Path) -> None: ...


@dataclass(frozen=True)
class Settings:
    """What the runner takes from a task's ``train`` section (keys a task lacks fall back to these)."""

    epochs: int
    lr: float = 1e-3
    body_lr_scale: float = 1.0  # a pretrained body's share of lr (the kind marks which parameters are new)
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    grad_clip: float = 0.0
    amp: bool = False
    cpu_bf16: bool = False  # amp on a CPU: bf16 autocast, for model families measured to train faster in it
    patience: int | None = None
    monitor: str | None = "loss"
    schedule: str = "warmup_cosine"
    unit: str = "epoch"
    checkpoint_every: int = 1

    @classmethod
    def from_train(cls, t: Mapping, **overrides) -> Settings:
        names = cls.__dataclass_fields__
        return cls(**{**{k: t[k] for k in names if k in t}, **overrides})

    @property
    def lower_is_better(self) -> bool:
        return self.monitor == "loss"


def _cpu_bf16(settings: Settings, device: torch.device) -> bool:
    """Whether ``train.amp`` trains in bf16 on this CPU: only where the units are native and the model's family
    was measured to train faster in bf16 (the registry's table); said once in the log either way."""
    if device.type != "cpu" or not settings.amp:
        return False
    if not settings.cpu_bf16:
        log.info("train.amp on CPU: fp32 (bf16 training was not measured faster for this model family)")
        return False
    if not bf16_native(device):
        log.info("train.amp on CPU: fp32 (this processor has no native bfloat16 units)")
        return False
    log.info("train.amp on CPU: bf16 autocast (measured faster for this model family; benchmarks/README.md)")
    return True


class Runner:
    """Fit ``kind`` into ``run_dir``; resumes from ``checkpoints/last_state.pt`` when it is there.

    With ``settings.unit == "step"`` (GANs) each runner epoch is one optimizer step: the history has one
    row per ``step`` (the kind's logged values), the state, ``last_name`` and the history are written every
    ``checkpoint_every`` steps and at the end, and nothing is selected (no best checkpoint, no patience).
    ``checkpoint_dir`` (default ``run_dir/checkpoints``) holds ``last_state.pt`` and the weights.
    ``save(model, path)`` writes a checkpoint; it is required so that every weights file a run writes carries
    the model's spec (:func:`pipelines.models.checkpoint_saver`).
    """

    def __init__(self, kind: Kind, settings: Settings, run_dir: Path, ctx: Context, *,
                 save: Callable[[nn.Module, Path], None], callbacks: Sequence[Callback] = (),
                 cfg: Mapping | None = None, desc: str = "epoch", checkpoint_dir: Path | None = None,
                 last_name: str = LAST_NAME, progress: bool = True, resume_hint: str | None = None):
        self.kind, self.s, self.ctx = kind, settings, ctx
        self.run_dir = Path(run_dir)
        self.ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else self.run_dir / "checkpoints"
        self.last_name, self.resume_hint, self.steps = last_name, resume_hint, settings.unit == "step"
        self.show = progress and ctx.is_main
        self.save, self.callbacks, self.cfg, self.desc = save, list(callbacks), cfg or {}, desc
        self.device = ctx.device
        self.model = kind.model
        self.net = self.model
        if ctx.distributed and getattr(kind, "ddp", True):
            if self.device.type == "cuda":
                self.model = kind.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(kind, "find_unused_parameters", False)))
        make = getattr(kind, "optimizers", None)
        self.optimizers = make(self.model, settings) if make else {
            "loss": torch.optim.AdamW(self.model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)}
        self.params = {k: [p for g in o.param_groups for p in g["params"]] for k, o in self.optimizers.items()}
        steps = max(1, int(kind.steps_per_epoch()))
        total = steps * settings.epochs
        warmup = warmup_steps(settings.warmup_epochs, settings.epochs, steps)
        self.schedulers = {k: build_scheduler(o, settings.schedule, warmup, total) for k, o in self.optimizers.items()}
        self.mixed = settings.amp and (self.device.type == "cuda" or _cpu_bf16(settings, self.device))
        use_scaler = self.device.type == "cuda" and settings.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    # ----------------------------------------------------------------------------------- state
    def _better(self, score: float, best: float | None) -> bool:
        if best is None:
            return True
        return score < best if self.s.lower_is_better else score > best

    def _state(self, counters: dict) -> dict:
        extra = getattr(self.kind, "state_dict", None)
        return {
            **counters,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "kind": extra() if extra else {},
        }

    def _restore(self) -> dict | None:
        saved = load_state(self.ckpt / STATE_NAME, self.resume_hint)
        if saved is None:
            return None
        extra = saved.pop("kind")
        if extra and hasattr(self.kind, "load_state_dict"):
            self.kind.load_state_dict(extra)  # first: a kind may refuse a state of other settings
        self.model.load_state_dict(saved.pop("model"))
        for key, sd in saved.pop("optimizers").items():
            self.optimizers[key].load_state_dict(sd)
        for key, sd in saved.pop("schedulers").items():
            self.schedulers[key].load_state_dict(sd)
        self.scaler.load_state_dict(saved.pop("scaler"))
        restore_rng(saved.pop("rng"))
        return saved

    # ----------------------------------------------------------------------------------- loop
    def _optimize(self, losses: Mapping) -> None:
        scaled = self.scaler.is_enabled()  # fp16 on CUDA only; elsewhere the plain calls, no per-step detour
        for key, optimizer in self.optimizers.items():
            optimizer.zero_grad(set_to_none=True)
            (self.scaler.scale(losses[key]) if scaled else losses[key]).backward()
            if self.s.grad_clip:
                if scaled:
                    self.scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(self.params[key], self.s.grad_clip)
            if scaled:
                self.scaler.step(optimizer)
            else:
                optimizer.step()
        if scaled:
            self.scaler.update()
        for scheduler in self.schedulers.values():
            scheduler.step()

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the kind's batches; the mean of each logged loss (weighted by its ``n``)."""
        self.net.train()
        sums: dict[str, float] = {}
        count, carry = 0.0, None
        bar = tqdm(self.kind.batches(epoch), total=self.kind.steps_per_epoch(), leave=False,
                   desc=f"{self.desc} {epoch}/{self.s.epochs}", disable=not self.show or self.steps)
        for batch in bar:
            if self.mixed:  # CUDA: bf16 or fp16 with a scaler; a CPU: bf16
                cuda = self.device.type == "cuda"
                with autocast(self.device, True) if cuda else precision_autocast(self.device, "bf16"):
                    losses, carry = self.kind.step(self.net, batch, carry)
            else:
                losses, carry = self.kind.step(self.net, batch, carry)
            self._optimize(losses)
            n = float(losses.get("n", 1))
            for key, value in losses.items():
                if key != "n":
                    sums[key] = sums.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value) * n
            count += n
            bar.set_postfix(loss=f"{sums[next(iter(self.optimizers))] / count:.4f}", refresh=False)
        return {k: v / max(count, 1.0) for k, v in sums.items()}

    def _row(self, epoch: int, train: dict, val: dict, improved: bool, seconds: float) -> dict:
        if self.steps:
            return {"step": epoch, **{k: v for k, v in train.items() if k not in self.optimizers}, "seconds": seconds}
        return {"epoch": epoch, "lr": next(iter(self.optimizers.values())).param_groups[0]["lr"],
                **{f"train_{k}": v for k, v in train.items()},
                **({"val_loss": val["loss"]} if "loss" in val else {}),
                **{f"val_{k}": v for k, v in val.items()
                   if k not in ("n", "loss") and (v is None or isinstance(v, (int, float)))},
                "best": improved, "seconds": seconds}

    def _commit(self, state: dict, history: list[dict], improved: bool) -> None:
        """Weights, history, then the state: the state is the commit point a resume starts from. An improved
        epoch's best checkpoint is the last one's file, linked rather than serialised and written twice."""
        last = self.ckpt / self.last_name
        self.save(self.model, last)
        if improved:
            atomic_link(last, self.ckpt / BEST_NAME)
        write_csv(self.run_dir / HISTORY, pd.DataFrame(history))
        save_state(self.ckpt / STATE_NAME, self._state(state))

    def fit(self) -> pd.DataFrame:
        """Train until ``epochs`` or early stopping; the history, one row per epoch (or step)."""
        saved = self._restore()
        state = saved or {"epoch": 0, "best_score": None, "best_epoch": 0, "bad_epochs": 0, "history": []}
        unit = "step" if self.steps else "epoch"
        if saved:
            best = "" if self.s.monitor is None else \
                f" (best val_{self.s.monitor} {state['best_score']} at epoch {state['best_epoch']})"
            log.info("resuming %s from its checkpoint at %s %d of %d%s", self.run_dir, unit, state["epoch"],
                     self.s.epochs, best)
        if state["epoch"] >= self.s.epochs:
            log.info("%s is already trained to %s %d (asked for %d); nothing to train", self.run_dir, unit,
                     state["epoch"], self.s.epochs)
        main = self.ctx.is_main
        if main:
            for callback in self.callbacks:
                callback.start(self.cfg, self.run_dir)
        # opt-in MLflow / TensorBoard: started once per run folder, finished by the command after evaluation
        loggers = run_loggers(self.cfg, self.run_dir) if main and self.cfg.get("log") else []
        history = list(state["history"])
        patience = self.s.patience if self.s.patience is not None else math.inf
        bar = tqdm(total=self.s.epochs, initial=min(state["epoch"], self.s.epochs), desc=self.desc, unit="step",
                   disable=not (self.show and self.steps), dynamic_ncols=True)
        committed = state["epoch"]
        try:
            for epoch in range(state["epoch"] + 1, self.s.epochs + 1):
                if state["bad_epochs"] >= patience:
                    break
                tic = time.perf_counter()
                train = self._train_epoch(epoch)
                val = self.kind.validate(self.model)
                value = val.get(self.s.monitor) if self.s.monitor else None
                score = float("nan") if value is None else float(value)
                improved = self.s.monitor is not None and self._better(score, state["best_score"])
                row = self._row(epoch, train, val, improved, time.perf_counter() - tic)
                history.append(row)
                if improved:
                    state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
                elif self.s.monitor is not None:
                    state["bad_epochs"] += 1
                state.update(epoch=epoch, history=history)
                bar.update(1)
                if main and (epoch % self.s.checkpoint_every == 0 or epoch == self.s.epochs):
                    self._commit(state, history, improved)
                    committed = epoch
                if main:
                    for callback in [*self.callbacks, *loggers]:
                        callback.epoch(dict(row))
                    if not self.steps:
                        log.info("epoch %d: %s val_%s %.4f%s (%.0fs)", epoch,
                                 " ".join(f"{k} {v:.4f}" for k, v in row.items()
                                          if k.startswith("train_") or (k == "val_loss" and self.s.monitor != "loss")),
                                 self.s.monitor, score, " *" if improved else "", row["seconds"])
                if state["bad_epochs"] >= patience:
                    log.info("early stopping: no better val_%s for %d epochs", self.s.monitor, self.s.patience)
        finally:
            bar.close()
        if main and (committed != state["epoch"] or not (self.ckpt / self.last_name).is_file()):
            self._commit(state, history, False)  # stopped early between two checkpoints
        frame = pd.DataFrame(history)
        if main:
            if not frame.empty and not self.steps:
                plot_history(frame, self.run_dir / TRAINING_CURVES, self.s.monitor)
            for callback in self.callbacks:
                callback.finish(self.run_dir)
        return frame
