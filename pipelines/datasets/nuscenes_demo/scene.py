"""A demo scene: the ego path, the camera rig (intrinsics, mounts) and the rays each camera casts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.core.geometry import (
    pose_matrix,
    yaw_to_quaternion,
)
from pipelines.datasets.nuscenes_demo.objects import (
    DemoObject,
    _EgoPath,
    _Item,
    _make_clutter,
    _make_objects,
)
from pipelines.datasets.nuscenes_demo.world import (
    CAMERA_RIG,
    CLOUD_HEIGHT,
    FOG,
    PERIOD_US,
    TEXEL,
    _colour,
    _ground_texture,
    _periodic_noise,
    _Road,
    _Texture,
)


# ------------------------------------------------------------------------------------------ the scene
@dataclass
class _Rays:
    """Per-camera ray geometry in the ego frame (constant, since the ego only moves in its plane)."""

    ground: np.ndarray  # flat pixel indices of rays that hit the ground
    hit: np.ndarray  # (G, 2) ego-frame ground points
    weights: np.ndarray  # (G, 3) texture level weights
    fog: np.ndarray  # (G, 1)
    sky: np.ndarray  # flat pixel indices of the sky
    gradient: np.ndarray  # (S, 3) sky colour before clouds
    cloud_xy: np.ndarray  # (S, 2) ego-frame points on the cloud layer
    cloud_fade: np.ndarray  # (S,)


def _camera_rays(k: np.ndarray, cam2ego: np.ndarray, size: tuple[int, int], horizon, zenith) -> _Rays:
    h, w = size
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    d = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones_like(u)], -1).reshape(-1, 3)
    d = d @ cam2ego[:3, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    origin = cam2ego[:3, 3]
    ground = np.flatnonzero(d[:, 2] < -1e-3)
    sky = np.flatnonzero(d[:, 2] >= -1e-3)
    dg = d[ground]
    t = -origin[2] / dg[:, 2]
    footprint = t / k[0, 0] / np.sqrt(-dg[:, 2])
    lam = np.clip(np.log2(np.maximum(footprint / TEXEL, 1e-6)) / 2, 0, 2)
    weights = np.stack([np.clip(1 - lam, 0, 1), np.clip(1 - np.abs(lam - 1), 0, 1), np.clip(lam - 1, 0, 1)], 1)
    ds = d[sky]
    g = np.clip(ds[:, 2], 0, 1)[:, None] ** 0.5
    up = np.maximum(ds[:, 2], 1e-3)
    fog = (1 - np.exp(-t / FOG)).astype(np.float32)[:, None]
    gradient = (horizon * (1 - g) + zenith * g).astype(np.float32)
    return _Rays(ground, origin[:2] + t[:, None] * dg[:, :2], weights.astype(np.float32), fog, sky, gradient,
                 origin[:2] + ds[:, :2] * (CLOUD_HEIGHT / up)[:, None],
                 np.clip((ds[:, 2] - 0.02) / 0.2, 0, 1).astype(np.float32))


@dataclass
class DemoScene:
    """One synthetic scene: everything needed to render any camera at any time, in a scene-local frame
    (the ego's pose at the first keyframe) that ``local2global`` places in the global frame."""

    index: int
    name: str
    logfile: str
    t0: int  # µs, the first keyframe
    frames: int
    image_size: tuple[int, int]  # (H, W)
    local2global: np.ndarray  # (4, 4)
    intrinsics: list[np.ndarray]  # (3, 3) per camera of CAMERA_RIG
    cam2ego: list[np.ndarray]  # (4, 4) per camera
    objects: list[DemoObject]
    ego: _EgoPath
    clutter: list[_Item]
    texture: _Texture
    clouds: np.ndarray  # (n, n) cloud density on a torus of ``cloud_period`` m
    cloud_period: float
    sun: np.ndarray  # (3,) unit vector towards the sun, scene-local
    horizon: np.ndarray  # (3,) haze colour
    rays: list[_Rays]

    def ego2local(self, t: float) -> np.ndarray:
        return self.ego.pose(t)

    def camera_time(self, frame: int, camera: int) -> float:
        """Seconds after the first keyframe at which ``camera`` fires for keyframe ``frame``."""
        return (frame * PERIOD_US + CAMERA_RIG[camera][4] * 1000) * 1e-6


def _rig(rng: np.random.Generator, image_size: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Intrinsics from the image size and FOV; cam2ego with a slight per-scene calibration jitter."""
    h, w = image_size
    ks, poses = [], []
    for _, yaw, mount, fov, _ in CAMERA_RIG:
        f = w / 2 / np.tan(np.radians(fov) / 2)
        ks.append(np.array([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]]))
        yaw_r = np.radians(yaw) + rng.normal(0, 0.004)
        c, s = np.cos(yaw_r), np.sin(yaw_r)
        rot = np.array([[s, 0, c], [-c, 0, s], [0, -1, 0]])  # camera x right, y down, z along the view
        pitch = rng.normal(0, 0.004)
        tilt = np.array([[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]])
        poses.append(pose_matrix(np.asarray(mount) + rng.normal(0, 0.01, 3), rot @ tilt))
    return ks, poses


def make_demo_scene(seed: int, index: int, frames_per_scene: int = 8,
                    image_size: tuple[int, int] = (96, 176)) -> DemoScene:
    """Scene ``index`` of the data set :func:`write_demo_nuscenes` writes for ``seed`` (each scene has its own
    random stream, so one can be rebuilt alone, e.g. to render it without an object)."""
    rng = np.random.default_rng([seed, index])
    road = _Road(float(rng.choice([-1, 1]) * max(rng.uniform(0, 0.01), 2e-4)), rng.uniform(3.2, 3.7),
                 int(rng.integers(1, 3)), (2.3, 2.3 if rng.random() < 0.7 else 0.0),
                 (rng.uniform(2, 4), rng.uniform(2, 4)))
    duration = (frames_per_scene - 1) * PERIOD_US * 1e-6 + max(r[4] for r in CAMERA_RIG) * 1e-3
    ego = _EgoPath(road, rng.uniform(3, 8), duration)
    a_span = (0.0, ego.speed * duration)
    az, el = rng.uniform(-np.pi, np.pi), rng.uniform(np.radians(35), np.radians(60))
    sun = np.array([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)])
    horizon, zenith = _colour(rng, (200, 208, 218), 0.04), _colour(rng, (78, 128, 200), 0.1)
    objects = _make_objects(rng, ego, frames_per_scene)
    clutter = _make_clutter(rng, road, a_span, sun)
    path = road.point(np.linspace(*a_span, 8), np.zeros(8))
    texture = _ground_texture(rng, road, path.min(0) - 60, path.max(0) + 60, a_span)
    clouds = _periodic_noise(rng, 512, 8) * 0.65 + _periodic_noise(rng, 512, 32) * 0.35
    cover = rng.uniform(0.45, 0.62)
    clouds = np.clip((clouds - cover) / 0.22, 0, 1).astype(np.float32)
    ks, cam2ego = _rig(rng, image_size)
    heading = rng.uniform(-np.pi, np.pi)
    local2global = pose_matrix([*rng.uniform(300, 2500, 2), 0.0], yaw_to_quaternion(heading))
    rays = [_camera_rays(k, pose, image_size, horizon, zenith) for k, pose in zip(ks, cam2ego, strict=True)]
    t0 = 1_533_150_000_000_000 + index * 3_600_000_000 + int(rng.integers(0, 1_000_000))
    return DemoScene(index, f"scene-{index + 1:04d}", f"synthetic-{seed}-{index + 1:04d}", t0, frames_per_scene,
                     tuple(image_size), local2global, ks, cam2ego, objects, ego, clutter, texture, clouds, 3000.0,
                     sun, horizon, rays)
