"""Synthetic training images of rare classes: a pix2pixHD generator trained (or loaded) on the real training
images of those classes, drawing new ones from their edge layouts turned by the dihedral group.

Used by the ``dfu`` task's ``synthetic`` stage; the caller adds the returned rows to its split table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.images import read_image
from pipelines.engine.plots import save_png

__all__ = ["synthesise_rare_classes"]

log = logging.getLogger(__name__)


def synthesise_rare_classes(train: pd.DataFrame, root: Path, run_dir: Path, s: Mapping, classes: Sequence[str],
                            seed: int, device) -> list[dict]:
    """Up to ``s["ratio"]`` synthetic images per real training image of each of ``s["classes"]``, written
    under ``run_dir/synthetic/``; returns their split rows (``split=train``, ``source=synthetic``, the group
    naming the real image whose layout each one took).

    ``train``: the real training rows (``image, path, label, ...``, paths relative to ``root``); ``s``: the
    task's ``synth`` section (size, generator or its training settings, classes, ratio).
    """
    from pipelines.synthesis import Pix2PixHDSpec, generate, load_generator, train_pix2pixhd
    from pipelines.synthesis.conditioning import class_label_map, dihedral, edge_map

    real = train[train["label"].isin(s["classes"])]
    if real.empty:
        raise DataError(f"the training split has no real images of synth.classes {s['classes']} to learn from; "
                        "choose classes present in train.csv or set synth.enabled=false")
    images = [cv2.resize(read_image(root / p), (s["size"],) * 2, interpolation=cv2.INTER_AREA)
              for p in real["path"]]
    index = {c: i for i, c in enumerate(classes)}
    edges = [edge_map(image, s["size"]) for image in images]
    if s["generator"]:
        generator, spec = load_generator(s["generator"])
        if spec.input_nc != 1 + len(classes):
            raise ConfigError(f"synth.generator={s['generator']} takes {spec.input_nc} input channels; a DFU "
                              f"generator takes {1 + len(classes)} (edges + one plane per class)")
    else:
        spec = Pix2PixHDSpec(input_nc=1 + len(classes), output_nc=3, ngf=s["ngf"], n_downsampling=s["n_downsampling"],
                             n_blocks=s["n_blocks"], size=s["size"], channels=("edges", *classes))
        maps = [class_label_map(e, index[c], len(classes)) for e, c in zip(edges, real["label"], strict=True)]
        out = run_dir / "synthesis"
        train_pix2pixhd(maps, images, spec, out, steps=s["steps"], batch_size=s["batch_size"],
                        vgg_weights=s["vgg_weights"], device=device, seed=seed,
                        config={"seed": seed, "synth": dict(s), "run": {"task": "dfu", "part_of": ".."}},
                        pairs=real)
        generator, spec = load_generator(out / "generator.safetensors")
    rng = np.random.default_rng(seed)
    rows = []
    (run_dir / "synthetic").mkdir(parents=True, exist_ok=True)
    for name in s["classes"]:
        sources = np.flatnonzero(real["label"].to_numpy() == name)
        wanted = round(s["ratio"] * len(sources))
        if not len(sources):
            log.warning("synth: no real training images of %s to take layouts from; none synthesised", name)
            continue
        picks = rng.choice(sources, wanted, replace=True)
        maps = np.stack([class_label_map(dihedral(edges[i], int(rng.integers(8))), index[name], len(classes))
                         for i in picks])
        fakes = generate(generator, maps, device=device, batch_size=16)
        for j, (fake, i) in enumerate(zip(fakes, picks, strict=True)):
            path = f"synthetic/{name}_{j:05d}.png"
            save_png(fake, run_dir / path)
            rows.append({"image": Path(path).name, "path": path, "split": "train", "label": name,
                         "group": f"synthetic:{real['image'].iloc[i]}", "source": "synthetic", "round": np.nan,
                         "confidence": np.nan})
        log.info("synth: %d %s images (%.1f per real one)", wanted, name, s["ratio"])
    return rows
