"""The synthetic nuScenes-format demo: official tables and links, determinism, images, boxes that land on
their pixels, and the reader's view of it."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.geometry import invert_pose, pose_matrix, project_points, quaternion_yaw, transform_points
from pipelines.datasets.nuscenes_demo import CAMERA_RIG, make_demo_scene, render_view, write_demo_nuscenes

SCENES, FRAMES, SIZE, SEED = 2, 3, (64, 112), 5
VERSION = "v1.0-demo"
OFFICIAL = {  # the nuScenes v1.0 schema, field for field
    "scene": {"token", "name", "description", "log_token", "nbr_samples", "first_sample_token", "last_sample_token"},
    "sample": {"token", "timestamp", "prev", "next", "scene_token"},
    "sample_data": {"token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "timestamp", "fileformat",
                    "is_key_frame", "height", "width", "filename", "prev", "next"},
    "calibrated_sensor": {"token", "sensor_token", "translation", "rotation", "camera_intrinsic"},
    "sensor": {"token", "channel", "modality"},
    "ego_pose": {"token", "timestamp", "rotation", "translation"},
    "sample_annotation": {"token", "sample_token", "instance_token", "visibility_token", "attribute_tokens",
                          "translation", "size", "rotation", "prev", "next", "num_lidar_pts", "num_radar_pts"},
    "instance": {"token", "category_token", "nbr_annotations", "first_annotation_token", "last_annotation_token"},
    "category": {"token", "name", "description"},
    "attribute": {"token", "name", "description"},
    "visibility": {"token", "level", "description"},
    "log": {"token", "logfile", "vehicle", "date_captured", "location"},
}
CAMERAS = [c[0] for c in CAMERA_RIG]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return write_demo_nuscenes(tmp_path_factory.mktemp("nuscenes") / "demo", SCENES, FRAMES, SIZE, SEED, VERSION)


def tables(root: Path) -> dict[str, dict[str, dict]]:
    return {name: {r["token"]: r for r in json.loads((root / VERSION / f"{name}.json").read_text())}
            for name in OFFICIAL}


def test_tables_have_the_official_fields(demo):
    t = tables(demo)
    for name, fields in OFFICIAL.items():
        assert t[name], name
        for rec in t[name].values():
            assert set(rec) == fields, name
    tokens = [tok for name in OFFICIAL if name != "visibility" for tok in t[name]]
    assert len(set(tokens)) == len(tokens) and all(re.fullmatch(r"[0-9a-f]{32}", tok) for tok in tokens)
    assert sorted((v["token"], v["level"]) for v in t["visibility"].values()) == [
        ("1", "v0-40"), ("2", "v40-60"), ("3", "v60-80"), ("4", "v80-100")]
    assert [s["channel"] for s in t["sensor"].values()] == CAMERAS
    assert {"vehicle.car", "human.pedestrian.adult", "movable_object.barrier"} <= {
        c["name"] for c in t["category"].values()}
    assert (demo / ".complete").is_file() and not demo.with_name("demo.partial").exists()
    assert "SYNTHETIC" in (demo / "README.md").read_text()


def test_samples_and_cameras_link(demo):
    t = tables(demo)
    assert len(t["scene"]) == SCENES and len(t["sample"]) == SCENES * FRAMES
    for scene in t["scene"].values():
        chain, token = [], scene["first_sample_token"]
        while token:
            chain.append(t["sample"][token])
            token = chain[-1]["next"]
        assert len(chain) == scene["nbr_samples"] == FRAMES and chain[-1]["token"] == scene["last_sample_token"]
        assert chain[0]["prev"] == "" and all(b["prev"] == a["token"] for a, b in pairwise(chain))
        assert all(s["scene_token"] == scene["token"] for s in chain) and scene["log_token"] in t["log"]
        assert np.all(np.diff([s["timestamp"] for s in chain]) == 500_000)  # 2 Hz keyframes, in µs
    per_sample = defaultdict(dict)
    for sd in t["sample_data"].values():
        channel = t["sensor"][t["calibrated_sensor"][sd["calibrated_sensor_token"]]["sensor_token"]]["channel"]
        assert sd["is_key_frame"] and sd["ego_pose_token"] in t["ego_pose"]
        assert t["ego_pose"][sd["ego_pose_token"]]["timestamp"] == sd["timestamp"]
        per_sample[sd["sample_token"]][channel] = sd
        assert sd["next"] == "" or t["sample_data"][sd["next"]]["prev"] == sd["token"]
    for token, sample in t["sample"].items():
        assert list(per_sample[token]) == CAMERAS
        assert per_sample[token]["CAM_FRONT"]["timestamp"] == sample["timestamp"]  # the keyframe pose
        assert all(0 <= sd["timestamp"] - sample["timestamp"] < 50_000 for sd in per_sample[token].values())


def test_annotations_chain_per_instance(demo):
    t = tables(demo)
    anns = t["sample_annotation"]
    by_instance = defaultdict(list)
    for ann in anns.values():
        assert ann["sample_token"] in t["sample"] and ann["visibility_token"] in t["visibility"]
        assert ann["num_radar_pts"] == 0 and ann["num_lidar_pts"] >= 0
        by_instance[ann["instance_token"]].append(ann)
        w, _, h = ann["size"]
        assert ann["translation"][2] == pytest.approx(h / 2, abs=1e-5) and w > 0  # standing on the ground (z = 0)
    assert set(by_instance) == set(t["instance"])
    for token, inst in t["instance"].items():
        chain, a = [], inst["first_annotation_token"]
        while a:
            chain.append(anns[a])
            a = chain[-1]["next"]
        assert len(chain) == inst["nbr_annotations"] == len(by_instance[token])
        assert chain[-1]["token"] == inst["last_annotation_token"] and chain[0]["prev"] == ""
        assert all(b["prev"] == a["token"] for a, b in pairwise(chain))
        times = [t["sample"][x["sample_token"]]["timestamp"] for x in chain]
        assert times == sorted(times)
        category = t["category"][inst["category_token"]]["name"]
        attrs = {t["attribute"][x]["name"] for x in chain for x in x["attribute_tokens"]}
        prefix = {"vehicle.car": "vehicle.", "human.pedestrian.adult": "pedestrian."}.get(category)
        assert all(a.startswith(prefix) for a in attrs) if prefix else not attrs
    assert sum(a["num_lidar_pts"] > 0 for a in anns.values()) >= len(anns) // 2


def test_same_seed_writes_identical_bytes(demo, tmp_path):
    again = write_demo_nuscenes(tmp_path / "again", SCENES, FRAMES, SIZE, SEED, VERSION)
    for name in OFFICIAL:
        assert (again / VERSION / f"{name}.json").read_bytes() == (demo / VERSION / f"{name}.json").read_bytes()
    images = sorted(p.relative_to(demo) for p in (demo / "samples").rglob("*.jpg"))
    assert images == sorted(p.relative_to(again) for p in (again / "samples").rglob("*.jpg"))
    assert all((again / p).read_bytes() == (demo / p).read_bytes() for p in images[:12])
    other = make_demo_scene(SEED + 1, 0, FRAMES, SIZE)
    assert not np.allclose(other.objects[0].start, make_demo_scene(SEED, 0, FRAMES, SIZE).objects[0].start)


def test_writes_once_and_guards_other_folders(demo, tmp_path):
    marker = demo / ".complete"
    before = marker.stat().st_mtime_ns
    assert write_demo_nuscenes(demo, SCENES, FRAMES, SIZE, SEED, VERSION) == demo
    assert marker.stat().st_mtime_ns == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("not a demo")
    with pytest.raises(DataError, match="not a synthetic demo"):
        write_demo_nuscenes(tmp_path / "mine", 1, 1, SIZE)
    with pytest.raises(ConfigError, match="image_size"):
        write_demo_nuscenes(tmp_path / "bad", 1, 1, (8, 8))


def test_images_exist_with_their_size(demo):
    t = tables(demo)
    for sd in t["sample_data"].values():
        assert re.fullmatch(r"samples/CAM_[A-Z_]+/.+__CAM_[A-Z_]+__\d{16}\.jpg", sd["filename"])
        with Image.open(demo / sd["filename"]) as im:
            assert im.format == "JPEG" and im.size == (SIZE[1], SIZE[0]) == (sd["width"], sd["height"])
    k = next(iter(t["calibrated_sensor"].values()))["camera_intrinsic"]
    assert k[0][2] == SIZE[1] / 2 and k[1][2] == SIZE[0] / 2 and k[0][0] == pytest.approx(SIZE[1] / 2 / np.tan(
        np.radians(35)))


def _camera_of(t, sd) -> tuple[np.ndarray, np.ndarray]:
    """global -> camera pose (via this sample_data's ego pose and calibration) and the intrinsic."""
    cs, ego = t["calibrated_sensor"][sd["calibrated_sensor_token"]], t["ego_pose"][sd["ego_pose_token"]]
    cam2global = pose_matrix(ego["translation"], ego["rotation"]) @ pose_matrix(cs["translation"], cs["rotation"])
    return invert_pose(cam2global), np.asarray(cs["camera_intrinsic"])


def _object_index(scene, ann, frame: int) -> int:
    """The generator's object behind an annotation (same global centre at the keyframe)."""
    centres = np.array([transform_points(scene.local2global, o.centre(frame * 0.5)) for o in scene.objects])
    i = int(np.argmin(np.linalg.norm(centres - ann["translation"], axis=1)))
    assert np.linalg.norm(centres[i] - ann["translation"]) < 1e-4
    return i


def test_the_most_visible_box_lands_on_its_pixels(demo):
    """Project the best-seen box's centre through the tables into a camera: the JPEG there shows the object
    (it matches a render with it and differs from a render without it), and the pixel count adds up."""
    t = tables(demo)
    ann = max(t["sample_annotation"].values(), key=lambda a: a["num_lidar_pts"])
    sample = t["sample"][ann["sample_token"]]
    scene_rec = t["scene"][sample["scene_token"]]
    index = sorted(s["name"] for s in t["scene"].values()).index(scene_rec["name"])
    frame = (sample["timestamp"] - t["sample"][scene_rec["first_sample_token"]]["timestamp"]) // 500_000
    scene = make_demo_scene(SEED, index, FRAMES, SIZE)
    obj = _object_index(scene, ann, frame)
    assert quaternion_yaw(ann["rotation"]) == pytest.approx(
        float(np.angle(np.exp(1j * (scene.objects[obj].yaw + np.arctan2(scene.local2global[1, 0],
                                                                           scene.local2global[0, 0]))))), abs=1e-6)
    views = {sd["token"]: sd for sd in t["sample_data"].values() if sd["sample_token"] == sample["token"]}
    best, pixels = None, 0
    for sd in views.values():
        cs = t["calibrated_sensor"][sd["calibrated_sensor_token"]]
        cam = CAMERAS.index(t["sensor"][cs["sensor_token"]]["channel"])
        time = (sd["timestamp"] - t["sample"][scene_rec["first_sample_token"]]["timestamp"]) * 1e-6
        assert time == pytest.approx(scene.camera_time(frame, cam))
        rgb, ids = render_view(scene, cam, time)
        pixels += int((ids == obj + 1).sum())
        global2cam, k = _camera_of(t, sd)
        uv, depth = project_points(k, transform_points(global2cam, ann["translation"]))
        inside = depth > 0 and 3 <= uv[0] < SIZE[1] - 3 and 3 <= uv[1] < SIZE[0] - 3
        if inside and (best is None or (ids == obj + 1).sum() > best[-1]):
            best = (sd, cam, time, rgb, uv, (ids == obj + 1).sum())
    assert round(pixels / 4) == ann["num_lidar_pts"]
    assert best is not None, "the best-seen box's centre projects into no camera"
    sd, cam, time, shown, uv, _ = best
    hidden, _ = render_view(scene, cam, time, hide=(obj,))
    jpeg = np.asarray(Image.open(demo / sd["filename"]).convert("RGB"), dtype=np.float32)
    u, v = (round(x) for x in uv)
    patch = np.s_[v - 1:v + 2, u - 1:u + 2]
    with_obj = np.abs(jpeg[patch] - shown[patch]).mean()
    without = np.abs(jpeg[patch] - hidden[patch]).mean()
    assert without > 25 and with_obj < without / 3, (with_obj, without)
    assert np.abs(jpeg - shown).mean() < 15  # the whole JPEG is that render plus jitter, noise and compression


def test_read_nuscenes_reads_the_demo(demo):
    reader = pytest.importorskip("pipelines.datasets.nuscenes")
    data = reader.read_nuscenes(demo)
    assert data.version == VERSION and len(data.frames) == SCENES * FRAMES
    assert [len(f) for f in data.scenes().values()] == [FRAMES] * SCENES
    names = set()
    moving = 0
    for frame in data.frames:
        assert [c.name for c in frame.cameras] == list(reader.CAMERAS) == CAMERAS
        assert all((c.width, c.height) == (SIZE[1], SIZE[0]) for c in frame.cameras)
        np.testing.assert_allclose(frame.ego2global, frame.cameras[0].ego2global)  # CAM_FRONT's pose
        scene = make_demo_scene(SEED, int(frame.scene_name.split("-")[1]) - 1, FRAMES, SIZE)
        for box in frame.eval_boxes:
            names.add(box["detection_name"])
            obj = scene.objects[_object_index(scene, box, frame.index)]
            if np.isnan(box["velocity"]).any():  # seen at one keyframe only
                continue
            truth = scene.local2global[:2, :2] @ obj.velocity
            np.testing.assert_allclose(box["velocity"], truth, atol=1e-3)
            moving += bool(np.linalg.norm(truth) > 0.5)
        assert np.all(np.abs(frame.boxes.center[:, 2] - frame.boxes.wlh[:, 2] / 2) < 1e-4)
    assert names <= {"car", "pedestrian", "barrier"} and {"car", "pedestrian"} <= names
    assert moving > 0
