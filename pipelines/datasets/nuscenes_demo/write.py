"""Writing scenes as nuScenes v1.0 tables and JPEGs (the devkit's layout), with the README of the demo data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.geometry import (
    matrix_to_quaternion,
    wrap_angle,
    yaw_to_quaternion,
)
from pipelines.datasets.nuscenes_demo.render import (
    _alone_pixels,
    _render,
)
from pipelines.datasets.nuscenes_demo.scene import DemoScene, make_demo_scene
from pipelines.datasets.nuscenes_demo.world import (
    ANNOTATION_RANGE,
    ATTRIBUTES,
    CAMERA_RIG,
    CATEGORIES,
    PERIOD_US,
    SS,
    VERSION,
    VISIBILITY,
)


# -------------------------------------------------------------------------------------------- writing
class _Tokens:
    """32-hex tokens from a seeded stream."""

    def __init__(self, *seed: int):
        self.rng = np.random.default_rng(list(seed))

    def __call__(self) -> str:
        return self.rng.bytes(16).hex()


def _r(values, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in np.ravel(values)]


def _shared_tables(tokens: _Tokens) -> dict[str, list[dict]]:
    """The tables every scene shares: sensors, categories, attributes, visibility levels."""
    return {
        "sensor": [{"token": tokens(), "channel": name, "modality": "camera"} for name, *_ in CAMERA_RIG],
        "category": [{"token": tokens(), "name": n, "description": d} for n, d in CATEGORIES.items()],
        "attribute": [{"token": tokens(), "name": n, "description": f"Synthetic {n.replace('.', ': ')}."}
                      for n in ATTRIBUTES],
        "visibility": [{"token": tok, "level": level, "description": f"visibility of the whole object is between "
                        f"{level[1:].replace('-', ' and ')} %, counted in image pixels (synthetic)"}
                       for tok, level, _ in VISIBILITY],
    }


def _noisy_jpeg(rgb: np.ndarray, path: Path, rng: np.random.Generator) -> None:
    """Mild brightness, white-balance jitter and sensor noise, then a JPEG at quality 90."""
    img = rgb.astype(np.float32) * rng.uniform(0.9, 1.1) * rng.uniform(0.97, 1.03, 3).astype(np.float32)
    img += rng.normal(0, 2.5, img.shape).astype(np.float32)
    Image.fromarray(img.clip(0, 255).round().astype(np.uint8)).save(path, quality=90)


def _write_scene(scene: DemoScene, out: Path, tables: dict[str, list[dict]], seed: int) -> None:
    """Render one scene's keyframes and append its records to ``tables``."""
    tok = _Tokens(seed, scene.index, 7)
    shared = {t: {r.get("channel") or r["name"]: r["token"] for r in tables[t]}
              for t in ("sensor", "category", "attribute")}
    log = {"token": tok(), "logfile": scene.logfile, "vehicle": "synthetic-ego", "location": "synthetic-town",
           "date_captured": "2018-08-01"}
    tables["log"].append(log)
    calib = []
    for (name, *_), k, pose in zip(CAMERA_RIG, scene.intrinsics, scene.cam2ego, strict=True):
        calib.append({"token": tok(), "sensor_token": shared["sensor"][name], "translation": _r(pose[:3, 3]),
                      "rotation": _r(matrix_to_quaternion(pose[:3, :3]), 8),
                      "camera_intrinsic": [_r(row) for row in k]})
    tables["calibrated_sensor"] += calib
    samples = [tok() for _ in range(scene.frames)]
    last_sd: dict[str, dict] = {}
    instances: dict[int, dict] = {}
    heading = float(np.arctan2(scene.local2global[1, 0], scene.local2global[0, 0]))
    for k, sample in enumerate(samples):
        tables["sample"].append({"token": sample, "timestamp": scene.t0 + k * PERIOD_US, "scene_token": "",
                                 "prev": samples[k - 1] if k else "", "next": samples[k + 1] if k + 1 < len(samples)
                                 else ""})
        visible = np.zeros(len(scene.objects), dtype=np.int64)
        alone = np.zeros(len(scene.objects), dtype=np.int64)
        ego_t = scene.ego2local(k * PERIOD_US * 1e-6)
        near = [i for i, o in enumerate(scene.objects)
                if np.linalg.norm(o.centre(k * PERIOD_US * 1e-6)[:2] - ego_t[:2, 3]) <= ANNOTATION_RANGE]
        for c, (name, *_) in enumerate(CAMERA_RIG):
            t = scene.camera_time(k, c)
            rgb, ids, view, items = _render(scene, c, t)
            visible += np.bincount(ids.ravel(), minlength=256)[1:len(scene.objects) + 1]
            for i in near:
                alone[i] += _alone_pixels(view, items[i])
            ts = scene.t0 + k * PERIOD_US + CAMERA_RIG[c][4] * 1000
            filename = f"samples/{name}/{scene.logfile}__{name}__{ts}.jpg"
            _noisy_jpeg(rgb, out / filename, np.random.default_rng([seed, scene.index, k, c, 3]))
            pose = scene.local2global @ scene.ego2local(t)
            ego = {"token": tok(), "timestamp": ts, "rotation": _r(matrix_to_quaternion(pose[:3, :3]), 8),
                   "translation": _r(pose[:3, 3])}
            tables["ego_pose"].append(ego)
            sd = {"token": tok(), "sample_token": sample, "ego_pose_token": ego["token"],
                  "calibrated_sensor_token": calib[c]["token"], "timestamp": ts, "fileformat": "jpg",
                  "is_key_frame": True, "height": scene.image_size[0], "width": scene.image_size[1],
                  "filename": filename, "prev": last_sd[name]["token"] if name in last_sd else "", "next": ""}
            if name in last_sd:
                last_sd[name]["next"] = sd["token"]
            last_sd[name] = sd
            tables["sample_data"].append(sd)
        for i in near:
            _annotate(scene, i, k, sample, heading, int(visible[i]), int(alone[i]), tok, shared, tables, instances)
    _finish_scene(scene, samples, log, tables, instances, tok)


def _annotate(scene: DemoScene, i: int, k: int, sample: str, heading: float, visible: int, alone: int,
              tok: _Tokens, shared: dict, tables: dict, instances: dict) -> None:
    """One sample_annotation (global frame), chained to the instance's previous one."""
    obj = scene.objects[i]
    share = visible / alone if alone else 0.0
    level = next(v[0] for v in VISIBILITY if share <= v[2] + 1e-9)
    ann = {"token": tok(), "sample_token": sample, "instance_token": "", "visibility_token": level,
           "attribute_tokens": [shared["attribute"][obj.attribute]] if obj.attribute else [],
           "translation": _r(scene.local2global[:3, :3] @ obj.centre(k * PERIOD_US * 1e-6) + scene.local2global[:3, 3]),
           "size": _r(obj.wlh, 3), "rotation": _r(yaw_to_quaternion(float(wrap_angle(obj.yaw + heading))), 8),
           "prev": "", "next": "", "num_lidar_pts": round(visible / SS ** 2), "num_radar_pts": 0}
    if i not in instances:
        instances[i] = {"token": tok(), "category_token": shared["category"][obj.category], "nbr_annotations": 0,
                        "first_annotation_token": ann["token"], "last_annotation_token": "", "_last": None}
    inst = instances[i]
    ann["instance_token"] = inst["token"]
    if inst["_last"] is not None:
        ann["prev"] = inst["_last"]["token"]
        inst["_last"]["next"] = ann["token"]
    inst["_last"] = ann
    inst["nbr_annotations"] += 1
    inst["last_annotation_token"] = ann["token"]
    tables["sample_annotation"].append(ann)


def _finish_scene(scene: DemoScene, samples: list[str], log: dict, tables: dict, instances: dict,
                  tok: _Tokens) -> None:
    token = tok()
    for rec in tables["sample"][-len(samples):]:
        rec["scene_token"] = token
    tables["scene"].append({"token": token, "log_token": log["token"], "nbr_samples": len(samples),
                            "first_sample_token": samples[0], "last_sample_token": samples[-1], "name": scene.name,
                            "description": f"Synthetic: ego at {scene.ego.speed:.1f} m/s, "
                                           f"{len(scene.objects)} objects, seed-made."})
    for i in sorted(instances):
        rec = dict(instances[i])
        rec.pop("_last")
        tables["instance"].append(rec)


README = """# SYNTHETIC nuScenes-format demo data

Everything here is SYNTHETIC, written by `pipelines.datasets.nuscenes_demo.write_demo_nuscenes` ({recipe}).
It is not nuScenes and not real imagery; numbers measured on it say nothing about real performance.

Layout: the official nuScenes v1.0 tables in `{version}/` and keyframe JPEGs in `samples/CAM_*/`, six cameras
per keyframe at 2 Hz, no lidar or radar files.

How it was made: per scene an ego car drives 3-8 m/s along a gently curving road; 4-10 objects (vehicle.car,
human.pedestrian.adult, movable_object.barrier) with nuScenes-like sizes move at constant velocity or stand
still; buildings and trees 35-60 m away are unannotated clutter. Six pinhole cameras in nuScenes's ring
(yaws 0, -55, +55, 180, +110, -110 degrees; 70 degree horizontal FOV, 110 for CAM_BACK) fire 0-42 ms after
the keyframe, each with its own ego pose. Ground and sky are ray cast into a world-fixed procedural texture;
objects are Lambert-shaded boxes drawn far to near, clipped at 0.1 m, rendered at 2x and averaged down, then
given mild brightness jitter, noise and JPEG compression (quality 90).

Stand-ins: `num_lidar_pts` is the number of image pixels where the object is visible, summed over the six
cameras (`num_radar_pts` is 0); `visibility_token` bins the visible share of the pixels the object would cover
unoccluded. All objects within 40 m of the ego are annotated, including unseen ones (0 points).
"""


def _recipe(scenes: int, frames: int, image_size: tuple[int, int], seed: int, version: str) -> str:
    return json.dumps({"generator": VERSION, "scenes": scenes, "frames_per_scene": frames,
                       "image_size": list(image_size), "seed": seed, "version": version})


def _check_args(scenes: int, frames_per_scene: int, image_size: tuple[int, int], version: str) -> None:
    if scenes < 1 or frames_per_scene < 1:
        raise ConfigError(f"scenes ({scenes}) and frames_per_scene ({frames_per_scene}) must be at least 1")
    if len(image_size) != 2 or min(image_size) < 16:
        raise ConfigError(f"image_size {tuple(image_size)} must be (height, width), each at least 16 pixels")
    if not version.startswith("v1.0-"):
        raise ConfigError(f"version {version!r} must start with 'v1.0-' (e.g. v1.0-demo), as readers look for it")


def write_demo_nuscenes(root: Path, scenes: int = 24, frames_per_scene: int = 8,
                        image_size: tuple[int, int] = (96, 176), seed: int = 0, version: str = "v1.0-demo") -> Path:
    """Write the synthetic data set under ``root`` unless a complete copy with these settings is there;
    returns ``root``.

    Tables go to ``root/<version>/*.json``, images to ``root/samples/<CAM>/``; all is written into
    ``<root>.partial`` and renamed when done (a ``.complete`` marker holds the settings), so an interrupted
    run never leaves a half data set. A complete copy made with other settings is replaced; a folder that is
    not one of these raises :class:`DataError` instead of being overwritten.

    Example:
        >>> root = write_demo_nuscenes(Path("data/nuscenes_demo"), scenes=2, frames_per_scene=3)  # doctest: +SKIP
        >>> sorted(p.name for p in (root / "samples").iterdir())[:2]  # doctest: +SKIP
        ['CAM_BACK', 'CAM_BACK_LEFT']
    """
    root = Path(root)
    image_size = tuple(int(v) for v in image_size)
    _check_args(scenes, frames_per_scene, image_size, version)
    recipe = _recipe(scenes, frames_per_scene, image_size, seed, version)
    marker = root / ".complete"
    if marker.is_file() and marker.read_text() == recipe:
        return root
    if root.exists() and not marker.is_file() and any(root.iterdir()):
        raise DataError(f"{root} exists and is not a synthetic demo data set (no .complete marker); "
                        "choose an empty folder or remove it")
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, *_ in CAMERA_RIG:
        (tmp / "samples" / name).mkdir(parents=True)
    tables: dict[str, list[dict]] = {n: [] for n in ("scene", "sample", "sample_data", "calibrated_sensor", "ego_pose",
                                                     "sample_annotation", "instance", "log")}
    tables.update(_shared_tables(_Tokens(seed, 999_999)))
    for index in range(scenes):
        _write_scene(make_demo_scene(seed, index, frames_per_scene, image_size), tmp, tables, seed)
    (tmp / version).mkdir()
    for name in sorted(tables):
        (tmp / version / f"{name}.json").write_text(json.dumps(tables[name], indent=0) + "\n")
    (tmp / "README.md").write_text(README.format(recipe=recipe, version=version))
    (tmp / ".complete").write_text(recipe)
    if root.exists():
        shutil.rmtree(root)
    tmp.rename(root)
    return root
