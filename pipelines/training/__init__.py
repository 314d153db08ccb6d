"""One training runner for every model kind (classifier, segmenter, ToC3D detector, pix2pixHD).

A kind supplies its batches, its step's losses and its validation; :class:`Runner` owns the rest
(optimizers, schedules, AMP, DDP, early stopping, checkpoints, resume, history, plots, callbacks).
"""

from pipelines.training.classifier import MONITORS, ClassifierKind, ImageKind
from pipelines.training.data import (
    EpochLoader,
    EpochSampler,
    autocast,
    epoch_seed,
    inference_autocast,
    make_loader,
    predict,
    seed_everything,
)
from pipelines.training.runner import Callback, Kind, Runner, Settings
from pipelines.training.schedule import build_scheduler, warmup_cosine, warmup_steps
from pipelines.training.state import load_state, restore_rng, rng_state, save_state

__all__ = [
    "Runner", "Settings", "Kind", "Callback", "ImageKind", "ClassifierKind", "MONITORS", "EpochLoader",
    "EpochSampler", "make_loader", "predict", "autocast", "inference_autocast", "seed_everything", "epoch_seed",
    "warmup_cosine", "warmup_steps", "build_scheduler", "load_state", "save_state", "rng_state", "restore_rng",
]
