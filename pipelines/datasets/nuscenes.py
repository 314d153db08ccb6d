"""Reader for nuScenes-format data: the official v1.0 JSON tables, and mmdetection3d v1.1 info files as JSON.

Layout (``dataroot``)::

    DATAROOT/v1.0-{mini,trainval,test,...}/{scene,sample,sample_data,calibrated_sensor,sensor,ego_pose,
                                          sample_annotation,instance,category,attribute}.json
    DATAROOT/samples/CAM_*/*.jpg           (sample_data.filename is relative to DATAROOT)

Every keyframe sample becomes a :class:`Frame`: six cameras (each with its own ego pose, since cameras fire
at slightly different times), ground-truth boxes in the keyframe's ego frame for training, and the same
boxes in the global frame in the devkit's evaluation format (``eval_boxes``). Only annotations of the ten
detection classes are kept, as the devkit's detection evaluation does.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipelines.core.errors import DataError
from pipelines.core.geometry import (
    invert_pose,
    pose_matrix,
    quaternion_to_matrix,
    rotate_vectors,
    transform_points,
    yaw_to_quaternion,
)
from pipelines.core.images import image_size

__all__ = [
    "CAMERAS", "DETECTION_CLASSES", "MAX_TIME_DIFF", "detection_name", "Camera", "Boxes", "Frame", "NuScenesData",
    "read_nuscenes", "read_mmdet3d_info",
]

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")
DETECTION_CLASSES = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
                     "traffic_cone", "barrier")
MAX_TIME_DIFF = 1.5  # seconds; the devkit's box_velocity limit (doubled for a centred difference)
_GENERAL_TO_DETECTION = {
    "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus",
    "vehicle.trailer": "trailer", "vehicle.construction": "construction_vehicle", "vehicle.motorcycle": "motorcycle",
    "vehicle.bicycle": "bicycle", "human.pedestrian.adult": "pedestrian", "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian", "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone", "movable_object.barrier": "barrier",
}
# The fields this reader uses, per table (the official schema has more; they are not required).
_FIELDS = {
    "scene": ("token", "name"),
    "sample": ("token", "timestamp", "prev", "next", "scene_token"),
    "sample_data": ("token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "filename", "width",
                    "height", "timestamp", "is_key_frame"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "sensor": ("token", "channel"),
    "ego_pose": ("token", "translation", "rotation"),
    "sample_annotation": ("token", "sample_token", "instance_token", "attribute_tokens", "translation", "size",
                          "rotation", "num_lidar_pts", "num_radar_pts", "prev", "next"),
    "instance": ("token", "category_token"),
    "category": ("token", "name"),
    "attribute": ("token", "name"),
}
_KEY_SENSORS = ("LIDAR_TOP", "CAM_FRONT")  # whose ego pose is the keyframe's, in order of preference
# mmdetection3d's attribute order (cam_instances' attr_label).
_MMDET3D_ATTRIBUTES = ("cycle.with_rider", "cycle.without_rider", "pedestrian.moving", "pedestrian.standing",
                       "pedestrian.sitting_lying_down", "vehicle.moving", "vehicle.parked", "vehicle.stopped", "")


def detection_name(category_name: str) -> str | None:
    """The detection class of a nuScenes category (the devkit's mapping), a detection class name itself,
    or None for categories the detection task ignores (animals, strollers, emergency vehicles, ...)."""
    return category_name if category_name in DETECTION_CLASSES else _GENERAL_TO_DETECTION.get(category_name)


@dataclass
class Camera:
    """One camera image of a frame; ``ego2global`` is the ego pose at this camera's own timestamp."""

    name: str
    image_path: Path
    width: int
    height: int
    intrinsic: np.ndarray  # (3, 3)
    cam2ego: np.ndarray  # (4, 4)
    ego2global: np.ndarray  # (4, 4)
    timestamp: float  # seconds

    def ego_to_camera(self, ego2global: np.ndarray) -> np.ndarray:
        """4x4 map from an ego frame with pose ``ego2global`` (the keyframe's) into this camera, through the
        global frame, because the ego moved between the keyframe and this camera's exposure."""
        return invert_pose(self.cam2ego) @ invert_pose(self.ego2global) @ np.asarray(ego2global, dtype=np.float64)


@dataclass
class Boxes:
    """N boxes in the keyframe's ego frame; ``velocity`` is NaN where the devkit cannot estimate it."""

    center: np.ndarray  # (N, 3)
    wlh: np.ndarray  # (N, 3)
    yaw: np.ndarray  # (N,)
    velocity: np.ndarray  # (N, 2)
    labels: np.ndarray  # (N,) int64 index into DETECTION_CLASSES
    attributes: list[str]  # '' where none
    num_pts: np.ndarray  # (N,) lidar + radar points
    instance_tokens: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, mask) -> Boxes:
        """The boxes where a boolean mask is true (or at integer indices)."""
        idx = np.asarray(mask)
        idx = np.flatnonzero(idx) if idx.dtype == bool else idx.astype(np.int64)
        return Boxes(self.center[idx], self.wlh[idx], self.yaw[idx], self.velocity[idx], self.labels[idx],
                     [self.attributes[i] for i in idx], self.num_pts[idx], [self.instance_tokens[i] for i in idx])


@dataclass
class Frame:
    """One keyframe: cameras in :data:`CAMERAS` order, ego-frame boxes, and global eval boxes."""

    token: str
    scene_token: str
    scene_name: str
    timestamp: float  # seconds
    prev: str  # sample tokens, '' at the ends of a scene
    next: str
    index: int  # position in its scene
    ego2global: np.ndarray  # (4, 4)
    cameras: list[Camera]
    boxes: Boxes
    eval_boxes: list[dict]


@dataclass
class NuScenesData:
    """All keyframes of one table version, sorted by scene name then time."""

    root: Path
    version: str
    frames: list[Frame]
    _by_token: dict[str, Frame] = field(default_factory=dict, init=False, repr=False)

    def scenes(self) -> dict[str, list[Frame]]:
        """Frames per scene name (nuScenes' official splits list scene names), each in time order."""
        out: dict[str, list[Frame]] = defaultdict(list)
        for f in self.frames:
            out[f.scene_name].append(f)
        return dict(out)

    def frame(self, token: str) -> Frame:
        """The frame of a sample token."""
        if token not in self._by_token:
            self._by_token = {f.token: f for f in self.frames}
        if token in self._by_token:
            return self._by_token[token]
        raise DataError(f"no keyframe with sample token {token!r} in {self.root / self.version}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"missing file {path}; check the data root") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-download or regenerate it") from None


def _need(record, fields, where: str) -> None:
    """DataError naming the first field a record lacks."""
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object; expected the nuScenes/mmdetection3d schema")
    for name in fields:
        if name not in record:
            raise DataError(f"{where} has no field {name!r}; expected the nuScenes/mmdetection3d schema")


def _load_table(folder: Path, name: str) -> dict[str, dict]:
    """One table as token -> record, every record checked for the fields this reader uses."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise DataError(f"missing nuScenes table {path}; expected {', '.join(_FIELDS)} as .json in {folder}")
    records = _read_json(path)
    if not isinstance(records, list):
        raise DataError(f"{path} must hold a JSON list of records")
    for i, rec in enumerate(records):
        _need(rec, _FIELDS[name], f"{path} record {i}")
    return {rec["token"]: rec for rec in records}


def _get(tables: dict, name: str, token: str, referrer: str) -> dict:
    try:
        return tables[name][token]
    except KeyError:
        raise DataError(f"{referrer} refers to {name} token {token!r}, which {name}.json lacks") from None


def _version_folder(root: Path, version: str) -> tuple[str, Path]:
    if not root.is_dir():
        raise DataError(f"nuScenes data root {root} not found; pass the folder holding v1.0-*/ and samples/")
    if version == "auto":
        found = sorted(p.name for p in root.glob("v1.0-*") if p.is_dir())
        if not found:
            raise DataError(f"no v1.0-* table folder in {root}; expected e.g. {root}/v1.0-mini/sample.json")
        if len(found) > 1:
            raise DataError(f"several table versions in {root} ({', '.join(found)}); choose one with "
                            f"--set data.version={found[0]}")
        version = found[0]
    if not (root / version).is_dir():
        raise DataError(f"nuScenes table folder {root / version} not found; check data.version")
    return version, root / version


def _box_velocity(tables: dict, ann: dict) -> np.ndarray:
    """Global (vx, vy) from the neighbouring annotations, as the devkit's ``box_velocity``: NaN without
    neighbours or when they are further apart than MAX_TIME_DIFF (twice that for a centred difference)."""
    where = f"sample_annotation {ann['token']}"
    first = _get(tables, "sample_annotation", ann["prev"], where) if ann["prev"] else ann
    last = _get(tables, "sample_annotation", ann["next"], where) if ann["next"] else ann
    if first is last:
        return np.full(2, np.nan)
    times = [_get(tables, "sample", a["sample_token"], f"sample_annotation {a['token']}")["timestamp"] * 1e-6
             for a in (first, last)]
    dt = times[1] - times[0]
    if dt <= 0 or dt > MAX_TIME_DIFF * (2 if ann["prev"] and ann["next"] else 1):
        return np.full(2, np.nan)
    return (np.asarray(last["translation"], float)[:2] - np.asarray(first["translation"], float)[:2]) / dt


def _eval_box(tables: dict, ann: dict, name: str, ego_position: np.ndarray) -> dict:
    """One annotation in the devkit's evaluation box format (global frame)."""
    attrs = ann["attribute_tokens"]
    if len(attrs) > 1:
        raise DataError(f"sample_annotation {ann['token']} has {len(attrs)} attribute_tokens; at most 1 allowed")
    translation = [float(v) for v in ann["translation"]]
    return {
        "translation": translation, "size": [float(v) for v in ann["size"]],
        "rotation": [float(v) for v in ann["rotation"]],
        "velocity": _box_velocity(tables, ann).tolist(), "detection_name": name,
        "attribute_name": _get(tables, "attribute", attrs[0], f"sample_annotation {ann['token']}")["name"]
        if attrs else "",
        "num_pts": int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"]),
        "ego_translation": (np.asarray(translation) - ego_position).tolist(),
    }


def _ego_boxes(eval_boxes: list[dict], instance_tokens: list[str], ego2global: np.ndarray) -> Boxes:
    """Global eval boxes -> :class:`Boxes` in the ego frame of ``ego2global``."""
    global2ego = invert_pose(ego2global)
    n = len(eval_boxes)
    center = transform_points(global2ego, np.array([b["translation"] for b in eval_boxes]).reshape(n, 3))
    heading = np.array([quaternion_to_matrix(b["rotation"])[:, 0] for b in eval_boxes]).reshape(n, 3)
    heading = rotate_vectors(global2ego, heading)
    velocity = np.array([[*b["velocity"], 0.0] for b in eval_boxes]).reshape(n, 3)
    return Boxes(
        center=center, wlh=np.array([b["size"] for b in eval_boxes], dtype=np.float64).reshape(n, 3),
        yaw=np.arctan2(heading[:, 1], heading[:, 0]), velocity=rotate_vectors(global2ego, velocity)[:, :2],
        labels=np.array([DETECTION_CLASSES.index(b["detection_name"]) for b in eval_boxes], dtype=np.int64),
        attributes=[b["attribute_name"] for b in eval_boxes],
        num_pts=np.array([b["num_pts"] for b in eval_boxes], dtype=np.int64), instance_tokens=list(instance_tokens),
    )


def _camera(tables: dict, root: Path, sd: dict, channel: str) -> Camera:
    where = f"sample_data {sd['token']}"
    cs = _get(tables, "calibrated_sensor", sd["calibrated_sensor_token"], where)
    pose = _get(tables, "ego_pose", sd["ego_pose_token"], where)
    intrinsic = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
    if intrinsic.shape != (3, 3):
        raise DataError(f"calibrated_sensor.json record {cs['token']} ({channel}): camera_intrinsic must be 3x3")
    path = root / sd["filename"]
    if not path.is_file():
        raise DataError(f"missing image {path} ({channel} of sample {sd['sample_token']}); restore the samples/ folder")
    return Camera(channel, path, int(sd["width"]), int(sd["height"]), intrinsic,
                  pose_matrix(cs["translation"], cs["rotation"]), pose_matrix(pose["translation"], pose["rotation"]),
                  sd["timestamp"] * 1e-6)


def _keyframe_data(tables: dict) -> dict[str, dict[str, dict]]:
    """sample token -> channel -> its keyframe sample_data record."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for sd in tables["sample_data"].values():
        if sd["is_key_frame"]:
            cs = _get(tables, "calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
            channel = _get(tables, "sensor", cs["sensor_token"], f"calibrated_sensor {cs['token']}")["channel"]
            out[sd["sample_token"]][channel] = sd
    return out


def _frame(tables: dict, root: Path, sample: dict, data: dict[str, dict], anns: list[dict]) -> Frame:
    token = sample["token"]
    missing = [c for c in CAMERAS if c not in data]
    if missing:
        raise DataError(f"sample {token} has no keyframe sample_data for camera {missing[0]}; all of "
                        f"{', '.join(CAMERAS)} are required")
    key = next(data[s] for s in _KEY_SENSORS if s in data)
    pose = _get(tables, "ego_pose", key["ego_pose_token"], f"sample_data {key['token']}")
    ego2global = pose_matrix(pose["translation"], pose["rotation"])
    evals, instances = [], []
    for ann in anns:
        inst = _get(tables, "instance", ann["instance_token"], f"sample_annotation {ann['token']}")
        name = detection_name(_get(tables, "category", inst["category_token"], f"instance {inst['token']}")["name"])
        if name is not None:
            evals.append(_eval_box(tables, ann, name, ego2global[:3, 3]))
            instances.append(ann["instance_token"])
    scene = _get(tables, "scene", sample["scene_token"], f"sample {token}")
    return Frame(token, scene["token"], scene["name"], sample["timestamp"] * 1e-6, sample["prev"], sample["next"], 0,
                 ego2global, [_camera(tables, root, data[c], c) for c in CAMERAS],
                 _ego_boxes(evals, instances, ego2global), evals)


def _number(frames: list[Frame]) -> None:
    """Set each frame's position in its scene (frames already in scene, time order)."""
    counts: dict[str, int] = defaultdict(int)
    for f in frames:
        f.index = counts[f.scene_token]
        counts[f.scene_token] += 1


def read_nuscenes(dataroot: str | Path, version: str = "auto") -> NuScenesData:
    """Every keyframe of ``dataroot/<version>/`` (``auto``: the only ``v1.0-*`` folder there).

    Example:
        >>> data = read_nuscenes("data/nuscenes")  # doctest: +SKIP
        >>> data.frames[0].boxes.center.shape, len(data.frames[0].cameras)
        ((N, 3), 6)
    """
    root = Path(dataroot).expanduser().resolve()
    version, folder = _version_folder(root, version)
    tables = {name: _load_table(folder, name) for name in _FIELDS}
    data = _keyframe_data(tables)
    anns: dict[str, list[dict]] = defaultdict(list)
    for ann in tables["sample_annotation"].values():
        anns[ann["sample_token"]].append(ann)
    frames = [_frame(tables, root, s, data.get(s["token"], {}), anns[s["token"]]) for s in tables["sample"].values()]
    frames.sort(key=lambda f: (f.scene_name, f.scene_token, f.timestamp))
    _number(frames)
    return NuScenesData(root, version, frames)


def _info_image(folder: Path, cam: str, img_path: str) -> Path:
    for path in (folder / img_path, folder / "samples" / cam / Path(img_path).name):
        if path.is_file():
            return path
    raise DataError(f"missing image {folder / img_path} ({cam}); put the images beside the info file")


def _info_camera(folder: Path, cam: str, image: dict, lidar2global: np.ndarray, where: str) -> Camera:
    _need(image, ("img_path", "cam2img", "cam2ego", "lidar2cam", "timestamp"), f"{where} images.{cam}")
    path = _info_image(folder, cam, image["img_path"])
    width, height = image_size(path)
    cam2ego = np.asarray(image["cam2ego"], dtype=np.float64)
    # lidar2cam goes through the camera's own ego pose: recover that pose from it.
    ego2global = lidar2global @ invert_pose(np.asarray(image["lidar2cam"], dtype=np.float64)) @ invert_pose(cam2ego)
    return Camera(cam, path, width, height, np.asarray(image["cam2img"], dtype=np.float64)[:3, :3], cam2ego,
                  ego2global, float(image["timestamp"]))


def _info_attributes(item: dict, centres: np.ndarray) -> list[str]:
    """Attribute per lidar box, taken from the camera instances (the 3D instances carry none)."""
    attrs = [""] * len(centres)
    for cam, instances in item.get("cam_instances", {}).items():
        cam2lidar = invert_pose(np.asarray(item["images"][cam]["lidar2cam"], dtype=np.float64))
        for inst in instances:
            dist = np.linalg.norm(centres - transform_points(cam2lidar, inst["bbox_3d"][:3]), axis=1)
            if len(dist) and dist.min() < 0.05 and 0 <= inst.get("attr_label", -1) < len(_MMDET3D_ATTRIBUTES):
                attrs[int(dist.argmin())] = _MMDET3D_ATTRIBUTES[inst["attr_label"]]
    return attrs


def _info_eval_boxes(item: dict, names: dict[int, str], lidar2global: np.ndarray, ego_position: np.ndarray,
                     where: str) -> list[dict]:
    """mmdet3d lidar-frame instances -> global eval boxes (yaw-only rotations, as nuScenes annotates)."""
    kept = []
    for i, inst in enumerate(item["instances"]):
        _need(inst, ("bbox_3d", "bbox_label_3d", "velocity", "num_lidar_pts", "num_radar_pts"), f"{where} instance {i}")
        if names.get(int(inst["bbox_label_3d"])) in DETECTION_CLASSES:  # -1: a class the detection task ignores
            kept.append(inst)
    boxes = np.array([inst["bbox_3d"] for inst in kept], dtype=np.float64).reshape(-1, 7)
    attrs = _info_attributes(item, boxes[:, :3])
    centres = transform_points(lidar2global, boxes[:, :3])
    heading = rotate_vectors(lidar2global, np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), 0 * boxes[:, 6]], 1))
    vel = np.array([[np.nan if v is None else v for v in inst["velocity"]] + [0.0] for inst in kept]).reshape(-1, 3)
    vel = rotate_vectors(lidar2global, vel)[:, :2]
    return [{
        "translation": centres[k].tolist(), "size": [box[4], box[3], box[5]],
        "rotation": yaw_to_quaternion(float(np.arctan2(heading[k, 1], heading[k, 0]))).tolist(),
        "velocity": vel[k].tolist(), "detection_name": names[int(inst["bbox_label_3d"])], "attribute_name": attrs[k],
        "num_pts": int(inst["num_lidar_pts"]) + int(inst["num_radar_pts"]),
        "ego_translation": (centres[k] - ego_position).tolist(),
    } for k, (box, inst) in enumerate(zip(boxes.tolist(), kept, strict=True))]


def read_mmdet3d_info(path: str | Path) -> list[Frame]:
    """Frames of an mmdetection3d v1.1 nuScenes info file converted to JSON (``metainfo`` + ``data_list``),
    images beside it. Boxes there are ``[x, y, z, l, w, h, yaw]`` in the lidar frame, z at the box centre."""
    path = Path(path).expanduser().resolve()
    info = _read_json(path)
    _need(info, ("metainfo", "data_list"), str(path))
    _need(info["metainfo"], ("categories",), f"{path} metainfo")
    names = {int(v): k for k, v in info["metainfo"]["categories"].items()}
    frames, counts = [], defaultdict(int)
    for i, item in enumerate(info["data_list"]):
        where = f"{path} data_list[{i}]"
        _need(item, ("token", "timestamp", "ego2global", "images", "lidar_points", "instances"), where)
        _need(item["lidar_points"], ("lidar2ego",), f"{where} lidar_points")
        _need(item["images"], CAMERAS, f"{where} images")
        ego2global = np.asarray(item["ego2global"], dtype=np.float64)
        lidar2global = ego2global @ np.asarray(item["lidar_points"]["lidar2ego"], dtype=np.float64)
        evals = _info_eval_boxes(item, names, lidar2global, ego2global[:3, 3], where)
        scene = str(item.get("scene_token") or path.stem)
        cameras = [_info_camera(path.parent, c, item["images"][c], lidar2global, where) for c in CAMERAS]
        frames.append(Frame(str(item["token"]), scene, scene, float(item["timestamp"]), "", "", counts[scene],
                            ego2global, cameras, _ego_boxes(evals, [""] * len(evals), ego2global), evals))
        counts[scene] += 1
    return frames
