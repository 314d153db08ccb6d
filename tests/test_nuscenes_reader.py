"""nuScenes reader: hand-written v1.0 tables with known motion, the real mmdetection3d keyframe projected into
its six cameras, and the errors for broken data sets."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import DataError
from pipelines.core.geometry import matrix_to_quaternion, project_points, transform_points, yaw_to_quaternion
from pipelines.datasets.nuscenes import (
    CAMERAS,
    DETECTION_CLASSES,
    detection_name,
    read_mmdet3d_info,
    read_nuscenes,
)
from tests.conftest import SHARED

INFO = SHARED / "data" / "nuscenes_sample" / "n015-2018-07-24-11-22-45+0800.DERIVED_from_pkl.json"
GOLDEN = SHARED / "fixtures" / "nuscenes_detection_golden.json"
EVAL_KEYS = {"translation", "size", "rotation", "velocity", "detection_name", "attribute_name", "num_pts",
             "ego_translation"}
CAM_YAW = {"CAM_FRONT": 0.0, "CAM_FRONT_RIGHT": -55.0, "CAM_FRONT_LEFT": 55.0, "CAM_BACK": 180.0,
           "CAM_BACK_LEFT": 110.0, "CAM_BACK_RIGHT": -110.0}
T0 = 1_500_000_000_000_000  # µs
CAR_SPEED = 2.0  # m/s along global +x
EGO_YAW = math.pi / 2  # the ego faces global +y and drives that way at 1 m/s


def ego_position(scene: int, t: float) -> list[float]:
    return [100.0 + 10 * scene, 200.0 + t, 0.0]


def car_position(scene: int, t: float) -> list[float]:
    return [110.0 + 10 * scene + CAR_SPEED * t, 205.0, 1.0]


def _camera_rotation(yaw_deg: float) -> list[float]:
    """cam2ego rotation of a camera looking along ego yaw (camera x right, y down, z forward)."""
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return matrix_to_quaternion(np.array([[s, 0, c], [-c, 0, s], [0, -1, 0]], dtype=float)).tolist()


def write_tables(root: Path, scenes: int = 2, times: Sequence[float] = (0.0, 0.5, 1.0),
                 version: str = "v1.0-mini") -> Path:
    """A tiny nuScenes data set in the official v1.0 layout, for readers to parse and tests to break.

    Per scene, samples at ``times`` (s); the ego at :func:`ego_position` facing global +y (yaw 90°); a car
    (``vehicle.car``, attribute ``vehicle.moving``) at :func:`car_position`, heading global +x; in scene 0
    sample 1 a lone pedestrian (no neighbours: NaN velocity) and in sample 0 a dog (no detection class).
    Cameras fire 10 ms apart after the lidar with their own ego poses; images are 16x8 JPEGs.
    Returns ``root``.
    """
    t: dict[str, list[dict]] = {k: [] for k in ("scene", "sample", "sample_data", "calibrated_sensor", "sensor",
                                                "ego_pose", "sample_annotation", "instance", "category",
                                                "attribute", "log", "visibility")}
    t["log"].append({"token": "log0", "logfile": "", "vehicle": "demo", "date_captured": "", "location": "here"})
    t["visibility"].append({"token": "4", "level": "v80-100", "description": ""})
    for channel in ("LIDAR_TOP", *CAMERAS):
        cam = channel.startswith("CAM")
        t["sensor"].append({"token": f"sensor_{channel}", "channel": channel, "modality": "camera" if cam else "lidar"})
        t["calibrated_sensor"].append({
            "token": f"cs_{channel}", "sensor_token": f"sensor_{channel}",
            "translation": [1.0, 0.0, 1.5] if cam else [0.9, 0.0, 1.8],
            "rotation": _camera_rotation(CAM_YAW[channel]) if cam else [1.0, 0.0, 0.0, 0.0],
            "camera_intrinsic": [[8.0, 0.0, 8.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]] if cam else []})
    for name, desc in (("vehicle.car", "car"), ("human.pedestrian.adult", "adult"), ("animal", "dog")):
        t["category"].append({"token": f"cat_{name}", "name": name, "description": desc})
    for name in ("vehicle.moving", "pedestrian.standing"):
        t["attribute"].append({"token": f"attr_{name}", "name": name, "description": ""})

    def pose(token: str, scene: int, time: float) -> str:
        t["ego_pose"].append({"token": token, "translation": ego_position(scene, time),
                              "rotation": yaw_to_quaternion(EGO_YAW).tolist(), "timestamp": T0 + int(time * 1e6)})
        return token

    def annotation(token, sample, inst, category_attr, xyz, size, yaw, prev="", nxt=""):
        t["sample_annotation"].append({
            "token": token, "sample_token": sample, "instance_token": inst, "visibility_token": "4",
            "attribute_tokens": [f"attr_{category_attr}"] if category_attr else [], "translation": xyz,
            "size": size, "rotation": yaw_to_quaternion(yaw).tolist(), "num_lidar_pts": 5, "num_radar_pts": 1,
            "prev": prev, "next": nxt})

    def instance(token, category, anns):
        t["instance"].append({"token": token, "category_token": f"cat_{category}", "nbr_annotations": len(anns),
                              "first_annotation_token": anns[0], "last_annotation_token": anns[-1]})

    image = root / "_tiny.jpg"
    root.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 16, 3), 90, np.uint8)).save(image)
    for s in range(scenes):
        tokens = [f"sample{s}_{k}" for k in range(len(times))]
        t["scene"].append({"token": f"scene{s}", "name": f"scene-{s:04d}", "description": "", "log_token": "log0",
                           "nbr_samples": len(tokens), "first_sample_token": tokens[0],
                           "last_sample_token": tokens[-1]})
        cars = [f"car{s}_{k}" for k in range(len(times))]
        instance(f"inst_car{s}", "vehicle.car", cars)
        for k, (token, time) in enumerate(zip(tokens, times, strict=True)):
            t["sample"].append({"token": token, "timestamp": T0 + int(time * 1e6), "scene_token": f"scene{s}",
                                "prev": tokens[k - 1] if k else "",
                                "next": tokens[k + 1] if k + 1 < len(tokens) else ""})
            for i, channel in enumerate(("LIDAR_TOP", *CAMERAS)):
                sd_time = time + 0.01 * i
                sd = f"sd_{token}_{channel}"
                filename = f"samples/{channel}/{sd}.{'jpg' if i else 'pcd.bin'}"
                t["sample_data"].append({
                    "token": sd, "sample_token": token, "ego_pose_token": pose(f"pose_{sd}", s, sd_time),
                    "calibrated_sensor_token": f"cs_{channel}", "filename": filename,
                    "fileformat": "jpg" if i else "pcd", "width": 16 if i else 0, "height": 8 if i else 0,
                    "timestamp": T0 + int(sd_time * 1e6), "is_key_frame": True, "prev": "", "next": ""})
                if i:
                    (root / filename).parent.mkdir(parents=True, exist_ok=True)
                    (root / filename).write_bytes(image.read_bytes())
            sweep = f"sweep_{token}"  # a non-keyframe camera sweep: ignored, so its image need not exist
            t["sample_data"].append({
                "token": sweep, "sample_token": token, "ego_pose_token": pose(f"pose_{sweep}", s, time + 0.05),
                "calibrated_sensor_token": "cs_CAM_FRONT", "filename": f"sweeps/CAM_FRONT/{sweep}.jpg",
                "fileformat": "jpg", "width": 16, "height": 8, "timestamp": T0 + int((time + 0.05) * 1e6),
                "is_key_frame": False, "prev": "", "next": ""})
            annotation(cars[k], token, f"inst_car{s}", "vehicle.moving", car_position(s, time), [2.0, 4.5, 1.6], 0.0,
                       cars[k - 1] if k else "", cars[k + 1] if k + 1 < len(cars) else "")
            if s == 0 and k == 1:
                instance("inst_ped", "human.pedestrian.adult", ["ped"])
                annotation("ped", token, "inst_ped", "pedestrian.standing", [95.0, 203.0, 0.9], [0.6, 0.7, 1.7],
                           math.pi / 4)
            if s == 0 and k == 0:
                instance("inst_dog", "animal", ["dog"])
                annotation("dog", token, "inst_dog", "", [101.0, 203.0, 0.3], [0.3, 0.8, 0.5], 0.0)
    image.unlink()
    (root / version).mkdir(parents=True, exist_ok=True)
    for name, records in t.items():
        (root / version / f"{name}.json").write_text(json.dumps(records))
    return root


@pytest.fixture()
def tables(tmp_path) -> Path:
    return write_tables(tmp_path / "nuscenes")


def test_detection_name_follows_the_devkit_mapping():
    expected = {
        "vehicle.car": "car", "vehicle.truck": "truck", "vehicle.bus.bendy": "bus", "vehicle.bus.rigid": "bus",
        "vehicle.trailer": "trailer", "vehicle.construction": "construction_vehicle",
        "vehicle.motorcycle": "motorcycle", "vehicle.bicycle": "bicycle", "human.pedestrian.adult": "pedestrian",
        "human.pedestrian.child": "pedestrian", "human.pedestrian.construction_worker": "pedestrian",
        "human.pedestrian.police_officer": "pedestrian", "movable_object.trafficcone": "traffic_cone",
        "movable_object.barrier": "barrier", "animal": None, "human.pedestrian.personal_mobility": None,
        "human.pedestrian.stroller": None, "human.pedestrian.wheelchair": None,
        "movable_object.pushable_pullable": None, "movable_object.debris": None, "static_object.bicycle_rack": None,
        "vehicle.emergency.ambulance": None, "vehicle.emergency.police": None, "vehicle.ego": None,
    }
    assert {k: detection_name(k) for k in expected} == expected
    assert all(detection_name(c) == c for c in DETECTION_CLASSES)


def test_frames_from_hand_written_tables(tables):
    data = read_nuscenes(tables)
    assert data.version == "v1.0-mini" and data.root == tables.resolve()
    assert [f.token for f in data.frames] == [f"sample{s}_{k}" for s in range(2) for k in range(3)]
    assert list(data.scenes()) == ["scene-0000", "scene-0001"]
    for s, frames in enumerate(data.scenes().values()):
        assert [f.index for f in frames] == [0, 1, 2]
        assert [f.prev for f in frames] == ["", f"sample{s}_0", f"sample{s}_1"]
        assert [f.next for f in frames] == [f"sample{s}_1", f"sample{s}_2", ""]
        assert all(f.scene_token == f"scene{s}" for f in frames)
    frame = data.frame("sample1_1")
    assert frame.timestamp == pytest.approx(T0 * 1e-6 + 0.5)
    np.testing.assert_allclose(frame.ego2global[:3, 3], ego_position(1, 0.5))  # the lidar's ego pose
    np.testing.assert_allclose(frame.ego2global[:2, :2], [[0, -1], [1, 0]], atol=1e-12)
    assert [c.name for c in frame.cameras] == list(CAMERAS)
    for i, cam in enumerate(frame.cameras, start=1):
        assert cam.image_path.is_absolute() and cam.image_path.is_file() and (cam.width, cam.height) == (16, 8)
        assert cam.intrinsic.shape == (3, 3) and cam.timestamp == pytest.approx(T0 * 1e-6 + 0.5 + 0.01 * i)
        np.testing.assert_allclose(cam.ego2global[:3, 3], ego_position(1, 0.5 + 0.01 * i))  # its own pose
        np.testing.assert_allclose(cam.cam2ego[:3, 3], [1.0, 0.0, 1.5])
    # the front camera looks along ego +x: a point 10 m ahead of the keyframe ego lies on its optical axis
    uv, depth = project_points(frame.cameras[0].intrinsic,
                               transform_points(frame.cameras[0].ego_to_camera(frame.ego2global), [11.0, 0.0, 1.5]))
    np.testing.assert_allclose(uv, [8.0, 4.0], atol=1e-9)
    assert depth == pytest.approx(10.0 - 0.01)  # the ego moved 1 cm forward before this camera fired


def test_boxes_in_the_ego_frame_with_velocity(tables):
    data = read_nuscenes(tables)
    for frame in data.frames:
        s, k = int(frame.token[6]), int(frame.token[8])
        time = 0.5 * k
        boxes = frame.boxes
        car = boxes.instance_tokens.index(f"inst_car{s}")
        dx, dy, dz = np.subtract(car_position(s, time), ego_position(s, time))
        np.testing.assert_allclose(boxes.center[car], [dy, -dx, dz], atol=1e-9)  # global -> ego: rotate by -90°
        assert boxes.yaw[car] == pytest.approx(-math.pi / 2)
        np.testing.assert_allclose(boxes.velocity[car], [0.0, -CAR_SPEED], atol=1e-9)
        np.testing.assert_allclose(boxes.wlh[car], [2.0, 4.5, 1.6])
        assert DETECTION_CLASSES[boxes.labels[car]] == "car" and boxes.attributes[car] == "vehicle.moving"
        assert boxes.num_pts[car] == 6 and boxes.labels.dtype == np.int64
        assert "inst_dog" not in boxes.instance_tokens  # no detection class
        assert len(boxes) == (2 if frame.token == "sample0_1" else 1)
    ped = data.frame("sample0_1").boxes.select(np.array([t == "inst_ped" for t in
                                                         data.frame("sample0_1").boxes.instance_tokens]))
    assert len(ped) == 1 and ped.attributes == ["pedestrian.standing"] and np.isnan(ped.velocity).all()
    assert ped.yaw[0] == pytest.approx(math.pi / 4 - math.pi / 2)


def test_eval_boxes_in_the_devkit_format(tables):
    gt_item = json.loads(GOLDEN.read_text())["samples"]["sample00"]["gt"][0] if GOLDEN.is_file() else {}
    frame = read_nuscenes(tables).frame("sample0_2")
    (box,) = frame.eval_boxes
    assert set(box) == EVAL_KEYS and set(gt_item) <= set(box)
    assert box["translation"] == car_position(0, 1.0) and box["size"] == [2.0, 4.5, 1.6]
    np.testing.assert_allclose(box["rotation"], [1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(box["velocity"], [CAR_SPEED, 0.0])  # global, one-sided difference at the end
    np.testing.assert_allclose(box["ego_translation"], np.subtract(car_position(0, 1.0), ego_position(0, 1.0)))
    assert (box["detection_name"], box["attribute_name"], box["num_pts"]) == ("car", "vehicle.moving", 6)
    ped = [b for b in read_nuscenes(tables).frame("sample0_1").eval_boxes if b["detection_name"] == "pedestrian"]
    assert len(ped) == 1 and all(math.isnan(v) for v in ped[0]["velocity"])  # kept NaN, as the devkit does


def test_velocity_time_limits_follow_the_devkit(tmp_path):
    """Centred differences may span 2 x 1.5 s; one-sided ones 1.5 s."""
    data = read_nuscenes(write_tables(tmp_path / "gaps", scenes=1, times=(0.0, 0.5, 2.5)))
    velocities = [f.eval_boxes[0]["velocity"] for f in data.frames]
    np.testing.assert_allclose(velocities[:2], [[CAR_SPEED, 0.0], [CAR_SPEED, 0.0]])  # 0.5 s; centred 2.5 s
    assert all(math.isnan(v) for v in velocities[2])  # one-sided 2.0 s > 1.5 s
    assert np.isnan(data.frames[2].boxes.velocity).all()


def test_broken_tables_raise_one_line_errors(tables):
    version = tables / "v1.0-mini"
    records = json.loads((version / "ego_pose.json").read_text())
    del records[3]["translation"]
    (version / "ego_pose.json").write_text(json.dumps(records))
    with pytest.raises(DataError, match=r"ego_pose\.json record 3 has no field 'translation'"):
        read_nuscenes(tables)
    (version / "ego_pose.json").unlink()
    with pytest.raises(DataError, match=r"missing nuScenes table .*ego_pose\.json") as err:
        read_nuscenes(tables)
    assert "\n" not in str(err.value)


def test_missing_image_or_camera_raise(tables):
    image = tables / "samples" / "CAM_BACK_LEFT" / "sd_sample1_2_CAM_BACK_LEFT.jpg"
    image.unlink()
    with pytest.raises(DataError, match=r"missing image .*sd_sample1_2_CAM_BACK_LEFT\.jpg"):
        read_nuscenes(tables)
    path = tables / "v1.0-mini" / "sample_data.json"
    records = [r for r in json.loads(path.read_text()) if r["token"] != "sd_sample1_2_CAM_BACK_LEFT"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match="sample sample1_2 has no keyframe sample_data for camera CAM_BACK_LEFT"):
        read_nuscenes(tables)


def test_version_choice(tables):
    write_tables(tables, scenes=1, version="v1.0-test")
    with pytest.raises(DataError, match=r"v1\.0-mini, v1\.0-test.*--set data\.version="):
        read_nuscenes(tables)
    assert len(read_nuscenes(tables, version="v1.0-test").frames) == 3
    with pytest.raises(DataError, match=r"v1\.0-trainval"):
        read_nuscenes(tables, version="v1.0-trainval")


# --- the real keyframe (mmdetection3d info file) -------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    if not INFO.is_file():
        pytest.skip(f"real nuScenes keyframe not found at {INFO}")
    (frame,) = read_mmdet3d_info(INFO)
    info = json.loads(INFO.read_text())
    return frame, info["data_list"][0], {v: k for k, v in info["metainfo"]["categories"].items()}


def test_real_keyframe_fields(real):
    frame, item, names = real
    assert len(item["instances"]) == 69
    assert len(frame.boxes) == 68  # one instance has bbox_label_3d -1: not a detection class
    assert frame.token == item["token"] and frame.prev == frame.next == "" and frame.index == 0
    assert [c.name for c in frame.cameras] == list(CAMERAS)
    assert all((c.width, c.height) == (1600, 900) and c.image_path.is_file() for c in frame.cameras)
    expected = sorted(names[i["bbox_label_3d"]] for i in item["instances"] if i["bbox_label_3d"] >= 0)
    assert sorted(DETECTION_CLASSES[i] for i in frame.boxes.labels) == expected  # mapped by name, not index
    assert sorted(frame.boxes.num_pts) == sorted(i["num_lidar_pts"] + i["num_radar_pts"]
                                                 for i in item["instances"] if i["bbox_label_3d"] >= 0)
    assert np.isnan(frame.boxes.velocity).any(axis=1).sum() == 2  # NaN velocities kept
    assert all(set(b) == EVAL_KEYS for b in frame.eval_boxes)
    for b, centre in zip(frame.eval_boxes, frame.boxes.center, strict=True):
        np.testing.assert_allclose(b["translation"], transform_points(frame.ego2global, centre), atol=1e-6)
        np.testing.assert_allclose(b["ego_translation"], np.subtract(b["translation"], frame.ego2global[:3, 3]))


def test_real_boxes_project_onto_the_camera_instances(real):
    """Every box the info file lists for a camera projects (ego -> global -> the camera's ego pose ->
    camera) onto its center_2d with its depth; every centre our projection puts in an image is listed."""
    frame, item, names = real
    seen = set()
    for cam in frame.cameras:
        uv, depth = project_points(cam.intrinsic, transform_points(cam.ego_to_camera(frame.ego2global),
                                                                   frame.boxes.center))
        listed = set()
        for inst in item["cam_instances"][cam.name]:
            err = np.nan_to_num(np.linalg.norm(uv - inst["center_2d"], axis=1), nan=np.inf)
            k = int(np.argmin(err))
            assert err[k] < 1.0 and abs(depth[k] - inst["depth"]) < 1e-2, (cam.name, inst["center_2d"])
            assert DETECTION_CLASSES[frame.boxes.labels[k]] == names[inst["bbox_label_3d"]]
            listed.add(k)
        inside = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        assert set(np.flatnonzero(inside)) <= listed, cam.name
        assert len(listed) == len(item["cam_instances"][cam.name])
        seen |= listed
    assert len(seen) >= 0.9 * len(frame.boxes)  # (all 68 here)


def test_real_boxes_in_the_ego_frame(real):
    """Our ego boxes against a direct lidar -> ego conversion of the info's [x, y, z, l, w, h, yaw]."""
    frame, item, _ = real
    lidar2ego = np.asarray(item["lidar_points"]["lidar2ego"])
    raw = np.array([i["bbox_3d"] for i in item["instances"] if i["bbox_label_3d"] >= 0])
    np.testing.assert_allclose(frame.boxes.center, transform_points(lidar2ego, raw[:, :3]), atol=1e-5)
    np.testing.assert_allclose(frame.boxes.wlh, raw[:, [4, 3, 5]])
    heading = np.stack([np.cos(raw[:, 6]), np.sin(raw[:, 6]), np.zeros(len(raw))], 1) @ lidar2ego[:3, :3].T
    diff = np.angle(np.exp(1j * (frame.boxes.yaw - np.arctan2(heading[:, 1], heading[:, 0]))))
    assert np.abs(diff).max() < 1e-2
    attrs = [a for a in frame.boxes.attributes if a]
    assert len(attrs) > 40 and set(attrs) <= {"pedestrian.moving", "pedestrian.standing", "vehicle.moving",
                                              "vehicle.parked", "vehicle.stopped", "cycle.with_rider"}


def test_real_info_errors(real, tmp_path):
    info = json.loads(INFO.read_text())
    path = tmp_path / INFO.name
    path.write_text(json.dumps(info))  # no images beside this copy
    with pytest.raises(DataError, match=r"missing image .*CAM_FRONT__1532402927612460\.jpg"):
        read_mmdet3d_info(path)
    del info["data_list"][0]["lidar_points"]["lidar2ego"]
    path.write_text(json.dumps(info))
    with pytest.raises(DataError, match=r"data_list\[0\] lidar_points has no field 'lidar2ego'"):
        read_mmdet3d_info(path)
