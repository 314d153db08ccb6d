"""A small SYNTHETIC multi-camera driving data set in the real nuScenes v1.0 layout, for demos and tests.

Each scene is procedural: an ego car drives at 3-8 m/s along a gently curving road (2 Hz keyframes, known
poses) past 4-10 annotated objects with nuScenes-like sizes - cars (moving in the other lanes, parked,
stopped), adult pedestrians (walking or standing on sidewalks and grass) and barriers - and unannotated
clutter 35-60 m away (buildings with windows, trees). Six pinhole cameras in nuScenes's ring (x right, y
down, z forward) see it: ground and sky by vectorised ray casting into a world-fixed texture (asphalt noise,
lane markings, repair patches, stains, crosswalks, sidewalks, grass; a sky gradient with soft clouds), and
cuboids as Lambert-shaded faces (sun fixed per scene) drawn far to near (painter's algorithm) after
Sutherland-Hodgman clipping at z = 0.1 m, at twice the size and averaged down. Cameras fire 0-42 ms after the
keyframe (CAM_FRONT first), each with its own ego pose, as nuScenes's do.

``num_lidar_pts`` is a stand-in for lidar points: the number of image pixels where the object is visible (not
occluded), summed over the cameras; the visibility level bins the visible share of those pixels. Every object
within 40 m of the ego is annotated, seen or not, so evaluators drop the unseen ones as the devkit does.
It is not real imagery and says nothing about real performance.
"""

from __future__ import annotations

import colorsys
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

from pipelines.core.errors import ConfigError, DataError
from pipelines.core.geometry import (
    box_corners,
    invert_pose,
    matrix_to_quaternion,
    pose_matrix,
    wrap_angle,
    yaw_to_quaternion,
)

__all__ = ["CAMERA_RIG", "DemoObject", "DemoScene", "make_demo_scene", "render_view", "write_demo_nuscenes"]

VERSION = 1
# name, yaw about the ego z axis (deg), mount (x, y, z) in the ego frame (m), horizontal FOV (deg), delay (ms)
CAMERA_RIG = (
    ("CAM_FRONT", 0.0, (1.70, 0.00, 1.51), 70.0, 0),
    ("CAM_FRONT_RIGHT", -55.0, (1.55, -0.49, 1.50), 70.0, 8),
    ("CAM_FRONT_LEFT", 55.0, (1.52, 0.49, 1.51), 70.0, 42),
    ("CAM_BACK", 180.0, (0.03, 0.00, 1.57), 110.0, 25),
    ("CAM_BACK_LEFT", 110.0, (1.04, 0.48, 1.56), 70.0, 33),
    ("CAM_BACK_RIGHT", -110.0, (1.04, -0.48, 1.56), 70.0, 17),
)
PERIOD_US = 500_000  # 2 Hz keyframes
ANNOTATION_RANGE = 40.0  # m from the ego
NEAR = 0.1  # m, near clipping plane
SS = 2  # supersampling factor
TEXEL = 0.15  # m, ground texture resolution
FOG = 110.0  # m, fog length
CLOUD_HEIGHT = 900.0  # m
AMBIENT, DIFFUSE = 0.45, 0.6
CATEGORIES = {
    "vehicle.car": "Synthetic passenger car: a shaded body, glass cabin, wheels, head and tail lights.",
    "human.pedestrian.adult": "Synthetic adult: legs, dark clothing and a skin-toned head.",
    "movable_object.barrier": "Synthetic striped road barrier, always static.",
}
ATTRIBUTES = ("vehicle.moving", "vehicle.parked", "vehicle.stopped", "pedestrian.moving", "pedestrian.standing",
              "pedestrian.sitting_lying_down", "cycle.with_rider", "cycle.without_rider")
VISIBILITY = (("1", "v0-40", 0.4), ("2", "v40-60", 0.6), ("3", "v60-80", 0.8), ("4", "v80-100", 1.0))
# Box faces as corner indices of geometry.box_corners, with their outward normals in the box frame;
# each face starts at its top edge (first two corners) and its third corner is below the second.
FACES = ((0, 1, 2, 3), (5, 4, 7, 6), (4, 0, 3, 7), (1, 5, 6, 2), (4, 5, 1, 0), (3, 2, 6, 7))
NORMALS = np.array([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)], dtype=np.float64)


# ---------------------------------------------------------------------------------------------- the road
@dataclass(frozen=True)
class _Road:
    """A circular arc road in the scene-local frame; the ego drives its rightmost lane along ``s = 0``.

    ``a`` is the arc length along the ego's lane centre, ``s`` the lateral offset (left positive).
    """

    kappa: float  # curvature (1/m), never 0
    lane: float  # lane width (m)
    lanes: int  # lanes per direction
    park: tuple[float, float]  # parking strip width right, left (m)
    walk: tuple[float, float]  # sidewalk width right, left (m)

    @property
    def right_edge(self) -> float:
        return -self.lane / 2 - self.park[0]

    @property
    def left_edge(self) -> float:
        return (2 * self.lanes - 0.5) * self.lane + self.park[1]

    def point(self, a, s) -> np.ndarray:
        """Scene-local (x, y) of road coordinates (a, s)."""
        th = np.asarray(a, dtype=np.float64) * self.kappa
        s = np.asarray(s, dtype=np.float64)
        return np.stack([np.sin(th) / self.kappa - s * np.sin(th),
                         2 * np.sin(th / 2) ** 2 / self.kappa + s * np.cos(th)], axis=-1)

    def heading(self, a) -> np.ndarray:
        return np.asarray(a, dtype=np.float64) * self.kappa

    def coords(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Road coordinates (a, s) of scene-local points: the inverse of :meth:`point`."""
        r = 1.0 / self.kappa
        sign = np.sign(r)
        qx, qy = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64) - r
        s = sign * (abs(r) - np.hypot(qx, qy))
        return np.arctan2(sign * qx, -sign * qy) * r, s

    def lanes_other(self) -> list[tuple[float, bool]]:
        """Centres ``s`` of the lanes other than the ego's, with whether traffic there runs the other way."""
        same = [(k * self.lane, False) for k in range(1, self.lanes)]
        return same + [((self.lanes + k) * self.lane, True) for k in range(self.lanes)]

    def walk_band(self, side: int) -> tuple[float, float]:
        """Lateral extent (lo, hi) of the right (-1) or left (+1) sidewalk."""
        if side < 0:
            return self.right_edge - 0.25 - self.walk[0], self.right_edge - 0.25
        return self.left_edge + 0.25, self.left_edge + 0.25 + self.walk[1]


# ------------------------------------------------------------------------------------------- textures
def _noise(rng: np.random.Generator, shape: tuple[int, int], cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1] with features about ``cell`` pixels across."""
    gh, gw = max(2, int(shape[0] / cell) + 2), max(2, int(shape[1] / cell) + 2)
    small = rng.random((gh, gw), dtype=np.float32)
    return cv2.resize(small, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _periodic_noise(rng: np.random.Generator, n: int, cells: int) -> np.ndarray:
    """Value noise on an n x n torus (the middle of a 3 x 3 tiling, so its edges meet)."""
    tiled = np.tile(rng.random((cells, cells), dtype=np.float32), (3, 3))
    return cv2.resize(tiled, (3 * n, 3 * n), interpolation=cv2.INTER_CUBIC)[n:2 * n, n:2 * n].clip(0, 1)


@dataclass
class _Texture:
    """A world-fixed ground texture with two coarser levels (4x, 16x) against aliasing far away."""

    levels: list[np.ndarray]  # (ny, nx, 3) float32, then /4, /16
    origin: np.ndarray  # scene-local (x, y) of the first texel's corner
    res: float

    def sample(self, xy: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Colours (N, 3) at scene-local points (N, 2), levels blended by ``weights`` (N, 3); wraps around."""
        out = np.zeros((len(xy), 3), dtype=np.float32)
        for level, (tex, w) in enumerate(zip(self.levels, weights.T, strict=True)):
            used = w > 0
            if not used.any():
                continue
            ij = np.floor((xy[used] - self.origin) / (self.res * 4 ** level)).astype(np.int64)
            out[used] += tex[ij[:, 1] % tex.shape[0], ij[:, 0] % tex.shape[1]] * w[used, None]
        return out


def _colour(rng: np.random.Generator, base, spread: float = 0.1) -> np.ndarray:
    return np.asarray(base, dtype=np.float32) * rng.uniform(1 - spread, 1 + spread, 3).astype(np.float32)


def _markings(road: _Road, a: np.ndarray, s: np.ndarray, rng: np.random.Generator, a_span) -> np.ndarray:
    """(N, 2) alpha of white and yellow paint at road points: lane, edge and centre lines, parking ticks,
    crosswalks."""
    white = np.zeros(a.shape, dtype=np.float32)
    lane, n = road.lane, road.lanes
    yellow = (np.abs(np.abs(s - (n - 0.5) * lane) - 0.12) < 0.07).astype(np.float32)
    dash = np.mod(a, 12.0) < 3.0
    for k in range(n - 1):
        for b in ((k + 0.5) * lane, (n + k + 0.5) * lane):
            white[(np.abs(s - b) < 0.08) & dash] = 1
    for e in (-lane / 2, (2 * n - 0.5) * lane):
        white[np.abs(s - e) < 0.08] = 1
    parking = (s < -lane / 2) | (s > (2 * n - 0.5) * lane)
    white[parking & (np.mod(a, 6.5) < 0.15)] = 1
    for _ in range(rng.integers(1, 3)):
        zebra = np.abs(a - rng.uniform(a_span[0] - 30, a_span[1] + 30)) < 1.6
        white[zebra & (np.mod(s - road.right_edge, 1.0) < 0.5)] = 1
    return np.stack([white, yellow], axis=-1)


def _road_shade(rng: np.random.Generator, road: _Road, origin, res: float, shape, a_span) -> np.ndarray:
    """(ny, nx) multiplicative shade of repair patches, oil stains and manholes on the road."""
    shade = np.ones(shape, dtype=np.float32)

    def px(points: np.ndarray) -> np.ndarray:
        return np.round(((points - origin) / res - 0.5) * 4).astype(np.int32)

    def spot(lo: float, hi: float) -> tuple[float, float]:
        return rng.uniform(a_span[0] - 50, a_span[1] + 50), rng.uniform(lo, hi)

    for _ in range(rng.integers(14, 26)):  # repair patches: rotated rectangles, lighter or darker
        a0, s0 = spot(road.right_edge, road.left_edge)
        half = np.array([rng.uniform(0.5, 2.5), rng.uniform(0.4, 1.5)])
        th = road.heading(a0) + rng.normal(0, 0.1)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        poly = road.point(a0, s0) + (np.array([[1, 1], [1, -1], [-1, -1], [-1, 1]]) * half) @ rot.T
        cv2.fillPoly(shade, [px(poly)], float(rng.choice([rng.uniform(0.65, 0.85), rng.uniform(1.12, 1.32)])),
                     shift=2)
    for _ in range(rng.integers(25, 45)):  # oil stains along the lanes
        a0, s0 = spot(road.right_edge + 0.5, road.left_edge - 0.5)
        centre = px(road.point(a0, s0))
        cv2.circle(shade, tuple(int(v) for v in centre), int(rng.uniform(0.2, 0.8) / res * 4),
                   float(rng.uniform(0.7, 0.9)), -1, shift=2)
    for _ in range(rng.integers(15, 30)):  # cracks: short random walks
        a0, s0 = spot(road.right_edge, road.left_edge)
        steps = np.cumsum(rng.normal(0, 0.5, (int(rng.integers(4, 12)), 2)), axis=0) + np.array([a0, s0])
        cv2.polylines(shade, [px(road.point(steps[:, 0], steps[:, 1]))], False, float(rng.uniform(0.55, 0.75)),
                      1, shift=2)
    for _ in range(rng.integers(2, 6)):  # manholes: a dark disc in a lighter ring
        a0, s0 = spot(0, (2 * road.lanes - 1) * road.lane)
        centre = tuple(int(v) for v in px(road.point(a0, s0)))
        cv2.circle(shade, centre, int(0.45 / res * 4), 1.2, -1, shift=2)
        cv2.circle(shade, centre, int(0.35 / res * 4), 0.5, -1, shift=2)
    return cv2.GaussianBlur(shade, (0, 0), 0.8)


def _decorate_verge(rng: np.random.Generator, col: np.ndarray, road: _Road, origin, res: float, a_span) -> None:
    """Paint plazas, dirt and flower blobs onto the grass beyond the sidewalks (in place)."""
    def px(points: np.ndarray) -> np.ndarray:
        return np.round(((points - origin) / res - 0.5) * 4).astype(np.int32)

    for side in (-1, 1):
        edge = road.walk_band(side)[0 if side < 0 else 1]
        for _ in range(rng.integers(1, 4)):  # paved plazas and parking lots
            a0 = rng.uniform(a_span[0] - 60, a_span[1] + 60)
            s0, s1 = edge + side * rng.uniform(2, 8), edge + side * rng.uniform(12, 30)
            a1 = a0 + rng.uniform(6, 25)
            poly = road.point([a0, a1, a1, a0], [s0, s0, s1, s1])
            tone = rng.choice([np.array([92, 92, 96]), np.array([165, 160, 150])]) * rng.uniform(0.85, 1.1)
            cv2.fillPoly(col, [px(poly)], tuple(float(v) for v in tone), shift=2)
        for _ in range(rng.integers(70, 130)):
            a0 = rng.uniform(a_span[0] - 60, a_span[1] + 60)
            s0 = edge + side * rng.uniform(0.8, 34)
            tone = rng.choice([np.array([118, 100, 72]), np.array([52, 84, 40]), np.array([150, 140, 70]),
                               np.array([170, 150, 160])]) * rng.uniform(0.8, 1.15)
            centre = tuple(int(v) for v in px(road.point(a0, s0)))
            cv2.circle(col, centre, int(rng.uniform(0.3, 2.2) / res * 4), tuple(float(v) for v in tone), -1, shift=2)


def _ground_texture(rng: np.random.Generator, road: _Road, lo: np.ndarray, hi: np.ndarray, a_span) -> _Texture:
    """Asphalt, paint, curbs, tiled sidewalks and patchy grass over the box ``lo``..``hi`` (scene-local)."""
    nx, ny = (int(np.ceil((h - q) / TEXEL / 16)) * 16 for q, h in zip(lo, hi, strict=True))
    xs = lo[0] + (np.arange(nx) + 0.5) * TEXEL
    ys = lo[1] + (np.arange(ny) + 0.5) * TEXEL
    a64, s64 = road.coords(xs[None, :], ys[:, None])
    a, s = a64.astype(np.float32), s64.astype(np.float32)
    shape = (ny, nx)
    big, mid, fine = _noise(rng, shape, 9 / TEXEL), _noise(rng, shape, 1.4 / TEXEL), rng.random(shape, np.float32)
    bright = (0.92 + 0.16 * mid + 0.14 * (fine - 0.5)) * (0.8 + 0.38 * big)  # grain times large-scale tone
    grass, dirt = _colour(rng, (78, 112, 52)), _colour(rng, (122, 106, 78))
    col = grass + _noise(rng, shape, 5 / TEXEL)[..., None] ** 2 * (dirt - grass)

    lo_walk, hi_walk = road.walk_band(-1), road.walk_band(1)
    walk = ((s > lo_walk[0]) & (s < lo_walk[1])) | ((s > hi_walk[0]) & (s < hi_walk[1]))
    col[walk] = _colour(rng, (164, 160, 152), 0.06)
    joints = walk & ((np.mod(a, 1.5) < 0.06) | (np.mod(s, 1.5) < 0.06))
    bright[joints] *= 0.8
    curb = ((s >= lo_walk[1]) & (s <= road.right_edge)) | ((s >= road.left_edge) & (s <= hi_walk[0]))
    col[curb] = _colour(rng, (188, 186, 180), 0.04)
    on_road = np.flatnonzero((s > road.right_edge) & (s < road.left_edge))
    a_r, s_r = a.ravel()[on_road], s.ravel()[on_road]
    u = np.mod(s_r + road.lane / 2, road.lane) - road.lane / 2
    flat_col, flat_bright = col.reshape(-1, 3), bright.reshape(-1)
    flat_col[on_road] = _colour(rng, (84, 85, 88), 0.12)
    flat_bright[on_road] *= 1 - 0.1 * np.exp(-(((np.abs(u) - 0.8) / 0.3) ** 2))  # darker tyre tracks
    col *= (bright * _road_shade(rng, road, lo, TEXEL, shape, a_span))[..., None]
    paint = _markings(road, a_r, s_r, rng, a_span)
    painted = paint.any(axis=1)
    idx, paint = on_road[painted], paint[painted] * rng.uniform(0.55, 1.0, (painted.sum(), 1)).astype(np.float32)
    paint_col = np.array([[225, 225, 225], [215, 175, 45]], np.float32)
    flat_col[idx] = flat_col[idx] * (1 - paint.sum(1, keepdims=True)) + paint @ paint_col
    _decorate_verge(rng, col, road, lo, TEXEL, a_span)
    col = col.clip(0, 255)
    l1 = cv2.resize(col, (nx // 4, ny // 4), interpolation=cv2.INTER_AREA)
    l2 = cv2.resize(l1, (nx // 16, ny // 16), interpolation=cv2.INTER_AREA)
    return _Texture([col, l1, l2], np.asarray(lo, dtype=np.float64), TEXEL)


# -------------------------------------------------------------------------------------------- objects
@dataclass
class DemoObject:
    """One annotated object in the scene-local frame, moving at constant velocity (zero when static).

    ``parts`` are coloured boxes in the object's frame (origin at the box centre): (offset (3,), wlh (3,),
    face colours (6, 3) in :data:`FACES` order), drawn in order, or far to near when ``sort_parts``.
    """

    category: str
    wlh: np.ndarray  # (3,) w, l, h (m)
    yaw: float  # scene-local heading
    start: np.ndarray  # (3,) centre at t = 0, z = h / 2
    velocity: np.ndarray  # (2,) m/s, scene-local
    attribute: str  # '' for none
    parts: list = field(default_factory=list)
    sort_parts: bool = False
    stride: float = 0.0  # m; walking pedestrians swing their legs (the first two parts)
    _local: list | None = field(default=None, repr=False, compare=False)  # shaded parts around the centre

    def centre(self, t: float) -> np.ndarray:
        """Box centre at ``t`` seconds after the scene's first keyframe."""
        return self.start + np.array([*(self.velocity * t), 0.0])

    @property
    def radius(self) -> float:
        return float(np.hypot(self.wlh[0], self.wlh[1]) / 2)


def _faces(colours: np.ndarray) -> np.ndarray:
    return np.broadcast_to(np.asarray(colours, dtype=np.float32), (6, 3)).copy()


def _car_parts(rng: np.random.Generator, wlh: np.ndarray) -> list:
    w, length, h = wlh
    hue = rng.random()
    body = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 0.95), rng.uniform(0.55, 0.95))) * 255
    glass = _colour(rng, (64, 80, 102), 0.15)
    tyre = np.array([26, 26, 28], np.float32)
    parts = []
    wheel = 0.38 * h
    for x in (0.31 * length, -0.31 * length):
        for y in (w / 2 - 0.14, -w / 2 + 0.14):
            parts.append((np.array([x, y, -h / 2 + wheel / 2]), np.array([0.26, 0.7, wheel]), _faces(tyre)))
    z0, z1 = -h / 2 + 0.18 * h, -h / 2 + 0.58 * h
    parts.append((np.array([0, 0, (z0 + z1) / 2]), np.array([w, length, z1 - z0]), _faces(body)))
    for x, colour in ((length / 2 + 0.01, (245, 238, 200)), (-length / 2 - 0.01, (205, 25, 25))):
        for y in (0.33 * w, -0.33 * w):
            parts.append((np.array([x, y, z1 - 0.1 * h]), np.array([0.22 * w, 0.02, 0.1 * h]), _faces(colour)))
    cabin = _faces(glass)
    cabin[4] = body
    parts.append((np.array([-0.06 * length, 0, (z1 + h / 2) / 2]), np.array([0.9 * w, 0.52 * length, h / 2 - z1]),
                  cabin))
    return parts


_SKIN = np.array([(236, 188, 150), (214, 160, 112), (176, 120, 78), (128, 84, 52), (92, 60, 40)], np.float32)
_CLOTHES = np.array([(30, 32, 40), (40, 44, 70), (60, 60, 62), (70, 40, 40), (34, 56, 44), (52, 64, 96)], np.float32)


def _pedestrian_parts(rng: np.random.Generator, wlh: np.ndarray) -> list:
    w, _, h = wlh
    trousers = _colour(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.2)
    shirt = _colour(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 0.25)
    head = _faces(_colour(rng, _SKIN[rng.integers(len(_SKIN))], 0.05))
    head[4] = _colour(rng, (40, 30, 24), 0.3)  # hair
    legs = 0.47 * h
    parts = [(np.array([0, y, -h / 2 + legs / 2]), np.array([0.2, 0.22, legs]), _faces(trousers))
             for y in (0.1 * w / 0.65, -0.1 * w / 0.65)]
    parts.append((np.array([0, 0, -h / 2 + 0.655 * h]), np.array([0.8 * w, 0.32, 0.37 * h]), _faces(shirt)))
    parts.append((np.array([0, 0, -h / 2 + 0.92 * h]), np.array([0.22, 0.24, 0.16 * h]), head))
    return parts


def _barrier_parts(rng: np.random.Generator, wlh: np.ndarray) -> list:
    w, length, h = wlh
    stripe = _colour(rng, (210, 40, 35) if rng.random() < 0.5 else (240, 125, 30), 0.08)
    white = _colour(rng, (232, 232, 228), 0.04)
    n = 5
    return [(np.array([0, (k + 0.5) * w / n - w / 2, 0]), np.array([w / n, length, h]),
             _faces(stripe if k % 2 == 0 else white)) for k in range(n)]


_KINDS = {  # category: (mean wlh, relative size jitter, parts builder)
    "vehicle.car": (np.array([1.9, 4.6, 1.7]), 0.1, _car_parts),
    "human.pedestrian.adult": (np.array([0.65, 0.7, 1.75]), 0.06, _pedestrian_parts),
    "movable_object.barrier": (np.array([2.5, 0.5, 1.0]), 0.05, _barrier_parts),
}


def _place_car(rng: np.random.Generator, road: _Road, a0: float) -> tuple[float, float, float, str]:
    """Lateral offset, heading, speed and attribute of a car near arc position ``a0``."""
    role = rng.choice(["moving", "parked", "stopped"], p=[0.5, 0.35, 0.15])
    if role == "parked":
        left = rng.random() < 0.5
        s = road.left_edge - road.park[1] / 2 if left else road.right_edge + road.park[0] / 2
        return s, road.heading(a0) + np.pi * left + rng.normal(0, 0.03), 0.0, "vehicle.parked"
    s, opposite = road.lanes_other()[rng.integers(len(road.lanes_other()))]
    yaw = road.heading(a0) + np.pi * opposite + rng.normal(0, 0.02)
    return (s, yaw, rng.uniform(3, 8), "vehicle.moving") if role == "moving" else (s, yaw, 0.0, "vehicle.stopped")


def _place_pedestrian(rng: np.random.Generator, road: _Road, a0: float) -> tuple[float, float, float, str]:
    side = -1 if rng.random() < 0.5 else 1
    moving = rng.random() < 0.6
    if rng.random() < 0.7:  # on a sidewalk, walking along it or standing
        lo, hi = road.walk_band(side)
        s = rng.uniform(lo + 0.4, max(lo + 0.5, hi - 0.4))
        yaw = road.heading(a0) + np.pi * (rng.random() < 0.5) if moving else rng.uniform(-np.pi, np.pi)
    else:  # on the grass
        edge = road.walk_band(side)[0 if side < 0 else 1]
        s, yaw = edge + side * rng.uniform(1, 12), rng.uniform(-np.pi, np.pi)
    speed = rng.uniform(1.0, 1.6) if moving else 0.0
    return s, yaw, speed, "pedestrian.moving" if moving else "pedestrian.standing"


def _place_barrier(rng: np.random.Generator, road: _Road, a0: float) -> tuple[float, float, float, str]:
    where = rng.choice(["kerb", "sidewalk", "lane"], p=[0.45, 0.25, 0.3])
    across = 0.0
    if where == "kerb":
        s = road.right_edge + 0.6 if rng.random() < 0.5 else road.left_edge - 0.6
    elif where == "sidewalk":
        lo, hi = road.walk_band(-1 if rng.random() < 0.5 else 1)
        s = (lo + hi) / 2
    else:  # closing part of another lane, sometimes across it
        s = road.lanes_other()[rng.integers(len(road.lanes_other()))][0] + rng.uniform(-0.6, 0.6)
        across = np.pi / 2 * (rng.random() < 0.3)
    return s, road.heading(a0) + np.pi / 2 + across + rng.normal(0, 0.06), 0.0, ""


_PLACERS = {"vehicle.car": _place_car, "human.pedestrian.adult": _place_pedestrian,
            "movable_object.barrier": _place_barrier}


def _rect_distance(points: np.ndarray, centre: np.ndarray, yaw: float, wlh: np.ndarray) -> np.ndarray:
    """Distance of 2D points (..., 2) from a box footprint (0 inside)."""
    c, s = np.cos(yaw), np.sin(yaw)
    d = points - centre[:2]
    local = np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], axis=-1)
    out = np.maximum(np.abs(local) - np.array([wlh[1], wlh[0]]) / 2, 0)
    return np.hypot(out[..., 0], out[..., 1])


@dataclass
class _EgoPath:
    road: _Road
    speed: float
    duration: float  # s, first keyframe to the last camera of the last keyframe

    def pose(self, t: float) -> np.ndarray:
        """4x4 ego -> scene-local at ``t`` seconds."""
        a = self.speed * t
        return pose_matrix([*self.road.point(a, 0.0), 0.0], yaw_to_quaternion(float(self.road.heading(a))))

    def footprint(self) -> np.ndarray:
        """Points (N, 2) along the lane the ego's body sweeps (from its rear axle to its front bumper)."""
        a = np.arange(-1.0, self.speed * self.duration + 3.9, 0.4)
        return self.road.point(a, np.zeros_like(a))


def _fits(obj: DemoObject, ego: _EgoPath, others: list[DemoObject], times: np.ndarray, keys: np.ndarray) -> bool:
    """Never on the ego's lane, never on another object, within 30 m of the ego at some keyframe."""
    ego_xy = np.array([ego.pose(t)[:2, 3] for t in keys])
    near = np.linalg.norm(np.array([obj.centre(t)[:2] for t in keys]) - ego_xy, axis=1).min()
    if near > 30.0:
        return False
    path = ego.footprint()
    if min(_rect_distance(path, obj.centre(t), obj.yaw, obj.wlh).min() for t in times) < 1.6:
        return False
    for other in others:
        gap = np.linalg.norm(np.array([obj.centre(t)[:2] - other.centre(t)[:2] for t in times]), axis=1)
        if gap.min() < obj.radius + other.radius + 0.3:
            return False
    return True


def _make_objects(rng: np.random.Generator, ego: _EgoPath, frames: int) -> list[DemoObject]:
    """4-10 objects (at least one car, pedestrian and barrier), placed by rejection sampling."""
    count = int(rng.integers(4, 11))
    kinds = ["vehicle.car", "human.pedestrian.adult", "movable_object.barrier"]
    kinds += list(rng.choice(kinds, size=count - 3, p=[0.5, 0.32, 0.18]))
    keys = np.arange(frames) * PERIOD_US * 1e-6
    times = np.linspace(0, ego.duration, 4 * frames + 2)
    mid = ego.duration / 2
    objects: list[DemoObject] = []
    for kind in kinds:
        base, jitter, builder = _KINDS[kind]
        for _ in range(80):
            a0 = ego.speed * mid + rng.uniform(-34, 34)
            s, yaw, speed, attribute = _PLACERS[kind](rng, ego.road, a0)
            wlh = np.round(base * rng.uniform(1 - jitter, 1 + jitter, 3), 3)
            velocity = speed * np.array([np.cos(yaw), np.sin(yaw)])
            start = np.array([*(ego.road.point(a0, s) - velocity * mid), wlh[2] / 2])
            obj = DemoObject(kind, wlh, float(wrap_angle(yaw)), start, velocity, attribute)
            if _fits(obj, ego, objects, times, keys):
                obj.parts = builder(rng, wlh)
                obj.sort_parts = kind == "movable_object.barrier"
                obj.stride = 0.13 if attribute == "pedestrian.moving" else 0.0
                objects.append(obj)
                break
    return objects


# -------------------------------------------------------------------------------------------- clutter
@dataclass
class _Item:
    """Something drawn as one unit of the painter's algorithm: boxes (lists of faces), then discs."""

    centre: np.ndarray  # (3,) scene-local, for sorting and culling
    radius: float
    parts: list  # boxes from _box_part: corners (F, 4, 3), normals (F, 3), rgb tuples, windows per face or None
    discs: list = field(default_factory=list)  # (centre (3,), radius, rgb tuple)
    ident: int = 0  # value in the id buffer; 0 for clutter
    sort_parts: bool = False


def _shade(colours: np.ndarray, normals: np.ndarray, sun: np.ndarray) -> list[tuple[int, int, int]]:
    lit = AMBIENT + DIFFUSE * np.clip(normals @ sun, 0, None)
    return [tuple(int(v) for v in c) for c in np.clip(colours * lit[:, None], 0, 255)]


def _box_part(centre, wlh, yaw: float, colours: np.ndarray, sun: np.ndarray, windows: list | None = None) -> tuple:
    """A box standing on something (no bottom face) as Lambert-shaded faces: corners (5, 4, 3), normals (5, 3),
    colours, and per face its windows or None."""
    corners = box_corners(centre, wlh, yaw)[np.array(FACES[:5])]
    c, s = np.cos(yaw), np.sin(yaw)
    normals = NORMALS[:5] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    return corners, normals, _shade(colours[:5], normals, sun), windows


def _window_grid(face: np.ndarray, width: float, height: float, rng: np.random.Generator) -> tuple:
    """Window quads (n, 4, 3) on a building face and their colours."""
    cols, rows = max(1, int(width / 3.2)), max(1, int((height - 0.5) / 3.0))
    j, i = np.meshgrid(np.arange(cols), np.arange(rows))
    u0, u1 = (j + 0.22) / cols, (j + 0.78) / cols
    v0, v1 = (i * 3.0 + 0.9) / height, (i * 3.0 + 2.4) / height
    p0, du, dv = face[0], face[1] - face[0], face[3] - face[0]
    uv = np.stack([np.stack([u0, v0], -1), np.stack([u1, v0], -1), np.stack([u1, v1], -1),
                   np.stack([u0, v1], -1)], axis=2).reshape(-1, 4, 2)
    quads = p0 + uv[..., :1] * du + uv[..., 1:] * dv
    tint = rng.uniform(0.7, 1.5, (len(quads), 1)) * np.array([[48, 58, 74]])
    return quads, [tuple(int(v) for v in c) for c in tint.clip(0, 255)]


def _make_clutter(rng: np.random.Generator, road: _Road, a_span, sun: np.ndarray) -> list[_Item]:
    """Unannotated buildings (with windows) and trees 35-60 m to either side of the road."""
    items = []
    tones = np.array([(150, 150, 152), (120, 96, 78), (190, 176, 150), (150, 82, 66), (110, 112, 120)], np.float32)
    for side in (-1, 1):
        a = a_span[0] - 80 + rng.uniform(0, 10)
        while a < a_span[1] + 80:
            front, depth, height = rng.uniform(9, 24), rng.uniform(8, 16), rng.uniform(5, 22)
            s = side * (rng.uniform(36, 50) + depth / 2)
            mid = a + front / 2
            centre = np.array([*road.point(mid, s), height / 2])
            yaw = float(road.heading(mid))
            wall = _colour(rng, tones[rng.integers(len(tones))], 0.1)
            wlh = np.array([depth, front, height])
            corners = box_corners(centre, wlh, yaw)
            windows = [_window_grid(corners[list(FACES[f])], (depth, depth, front, front)[f], height, rng)
                       for f in range(4)]
            part = _box_part(centre, wlh, yaw, _faces(wall), sun, [*windows, None])
            items.append(_Item(centre, float(np.linalg.norm(wlh) / 2), [part]))
            a += front + rng.uniform(2, 14)
    for _ in range(rng.integers(20, 40)):
        mid = rng.uniform(a_span[0] - 70, a_span[1] + 70)
        s = (-1 if rng.random() < 0.5 else 1) * rng.uniform(33, 48)
        trunk, r = rng.uniform(1.8, 3.2), rng.uniform(1.6, 3.4)
        base = np.array([*road.point(mid, s), 0.0])
        crown = base + np.array([0, 0, trunk + 0.8 * r])
        bark = _faces(_colour(rng, (92, 66, 46)))
        part = _box_part(base + np.array([0, 0, trunk / 2]), (0.35, 0.35, trunk), 0.0, bark, sun)
        green = _colour(rng, (58, 96, 42), 0.2)
        step = rng.normal(0, 1, 3) * [0.5 * r, 0.5 * r, 0.15 * r]
        discs = [(crown, r, green * 0.65), (crown + step, 0.75 * r, green * 0.85),
                 (crown + np.array([0, 0, 0.35 * r]), 0.5 * r, green * 1.1)]
        items.append(_Item(crown, trunk + 2 * r, [part],
                           [(c, rad, tuple(int(v) for v in np.clip(g, 0, 255))) for c, rad, g in discs]))
    return items


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


# ------------------------------------------------------------------------------------------ rendering
def _supersampled(k: np.ndarray) -> np.ndarray:
    """The intrinsic of the SS-times larger image whose SS x SS pixel blocks average to the original's."""
    k2 = np.array(k, dtype=np.float64)
    k2[:2] *= SS
    k2[:2, 2] += (SS - 1) / 2
    return k2


@dataclass
class _View:
    """One camera at one instant: scene-local points -> SS-times-larger image."""

    local2cam: np.ndarray
    position: np.ndarray  # camera centre, scene-local
    k: np.ndarray
    size: tuple[int, int]  # (H, W) supersampled
    planes: np.ndarray  # (4, 3) inward frustum side-plane normals (camera frame)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        return points @ self.local2cam[:3, :3].T + self.local2cam[:3, 3]

    def sees(self, centre: np.ndarray, radius: float) -> bool:
        """False when a sphere is certainly outside the view frustum."""
        c = self.to_camera(centre)
        return bool(c[2] > NEAR - radius and (self.planes @ c > -radius).all())

    def polygon(self, points: np.ndarray) -> list[float] | None:
        """Pixel coordinates of a scene-local polygon clipped at the near plane, or None when behind it."""
        cam = self.to_camera(points)
        if (cam[:, 2] < NEAR).any():
            cam = _clip_near(cam)
            if len(cam) < 3:
                return None
        uv = cam[:, :2] / cam[:, 2:] * [self.k[0, 0], self.k[1, 1]] + self.k[:2, 2]
        return uv.ravel().tolist()


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a camera-frame polygon against the plane z = NEAR."""
    out = []
    for a, b in zip(poly, np.roll(poly, -1, axis=0), strict=True):
        if a[2] >= NEAR:
            out.append(a)
        if (a[2] >= NEAR) != (b[2] >= NEAR):
            out.append(a + (NEAR - a[2]) / (b[2] - a[2]) * (b - a))
    return np.array(out).reshape(-1, 3)


def _view(scene: DemoScene, camera: int, t: float) -> _View:
    cam2local = scene.ego2local(t) @ scene.cam2ego[camera]
    k = _supersampled(scene.intrinsics[camera])
    h, w = scene.image_size[0] * SS, scene.image_size[1] * SS
    xs = np.array([-k[0, 2], w - k[0, 2]]) / k[0, 0]
    ys = np.array([-k[1, 2], h - k[1, 2]]) / k[1, 1]
    planes = np.array([[1, 0, -xs[0]], [-1, 0, xs[1]], [0, 1, -ys[0]], [0, -1, ys[1]]], dtype=np.float64)
    planes /= np.linalg.norm(planes, axis=1, keepdims=True)
    return _View(invert_pose(cam2local), cam2local[:3, 3], k, (h, w), planes)


def _object_item(obj: DemoObject, t: float, ident: int, sun: np.ndarray) -> _Item:
    """An object's parts as faces at time ``t`` (walking pedestrians swing their legs)."""
    c, s = np.cos(obj.yaw), np.sin(obj.yaw)
    if obj._local is None:
        rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
        obj._local = [_box_part(rot @ offset, wlh, obj.yaw, colours, sun) for offset, wlh, colours in obj.parts]
    centre = obj.centre(t)
    swing = obj.stride * np.sin(2 * np.pi * 0.9 * t) * np.array([c, s, 0.0])
    parts = [(corners + centre + (swing * (1 - 2 * i) if obj.stride and i < 2 else 0), *rest)
             for i, (corners, *rest) in enumerate(obj._local)]
    return _Item(centre, obj.radius + obj.wlh[2] / 2, parts, ident=ident, sort_parts=obj.sort_parts)


def _draw_item(item: _Item, view: _View, colour: ImageDraw.ImageDraw | None, ids: ImageDraw.ImageDraw) -> None:
    """Back-face-culled faces (with their windows) then discs, into the colour image (if any) and id image."""
    parts = item.parts
    if item.sort_parts:
        parts = sorted(parts, key=lambda p: -np.linalg.norm(p[0].mean(axis=(0, 1)) - view.position))
    for corners, normals, rgbs, windows in parts:
        centres = (corners[:, 0] + corners[:, 2]) / 2  # faces are parallelograms
        facing = np.einsum("ij,ij->i", centres - view.position, normals) < 0
        for f in np.flatnonzero(facing):
            uv = view.polygon(corners[f])
            if uv is None:
                continue
            ids.polygon(uv, fill=item.ident)
            if colour is not None:
                colour.polygon(uv, fill=rgbs[f])
                if windows is not None and windows[f] is not None:
                    _draw_windows(windows[f], view, colour)
    for centre, radius, rgb in item.discs:
        c = view.to_camera(centre)
        if c[2] <= radius + NEAR:
            continue
        u, v = c[:2] / c[2] * [view.k[0, 0], view.k[1, 1]] + view.k[:2, 2]
        r = view.k[0, 0] * radius / c[2]
        ids.ellipse([u - r, v - r, u + r, v + r], fill=item.ident)
        if colour is not None:
            colour.ellipse([u - r, v - r, u + r, v + r], fill=rgb)


def _draw_windows(windows: tuple, view: _View, draw: ImageDraw.ImageDraw) -> None:
    quads, colours = windows
    cam = view.to_camera(quads)
    ok = (cam[..., 2] > NEAR).all(axis=1)
    uv = cam[..., :2] / np.maximum(cam[..., 2:], NEAR) * [view.k[0, 0], view.k[1, 1]] + view.k[:2, 2]
    for quad, rgb, keep in zip(uv, colours, ok, strict=True):
        if keep:
            draw.polygon(quad.ravel().tolist(), fill=rgb)


def _background(scene: DemoScene, camera: int, t: float) -> np.ndarray:
    """Ground (textured, fogged) and sky (gradient, clouds) by ray casting at the output size (the texture's
    coarser levels filter it); returned supersampled, (H*SS, W*SS, 3) float32."""
    rays = scene.rays[camera]
    pose = scene.ego2local(t)
    rot, shift = pose[:2, :2], pose[:2, 3]
    h, w = scene.image_size
    img = np.empty((h * w, 3), dtype=np.float32)
    ground = scene.texture.sample(rays.hit @ rot.T + shift, rays.weights)
    img[rays.ground] = ground * (1 - rays.fog) + scene.horizon * rays.fog
    n = scene.clouds.shape[0]
    ij = np.floor((rays.cloud_xy @ rot.T + shift) / scene.cloud_period * n).astype(np.int64) % n
    cover = (scene.clouds[ij[:, 1], ij[:, 0]] * rays.cloud_fade)[:, None]
    img[rays.sky] = rays.gradient * (1 - cover) + np.array([236, 238, 242], np.float32) * (1 - 0.12 * cover) * cover
    return np.repeat(np.repeat(img.reshape(h, w, 3), SS, axis=0), SS, axis=1)


def _shadows(scene: DemoScene, view: _View, items: list[_Item], objects: list[DemoObject]) -> np.ndarray:
    """(H*SS, W*SS) mask of the objects' cast shadows on the ground (the sun projection of their boxes)."""
    mask = Image.new("L", (view.size[1], view.size[0]), 0)
    draw = ImageDraw.Draw(mask)
    sun = scene.sun
    for item, obj in zip(items, objects, strict=True):
        if not view.sees(item.centre, item.radius + obj.wlh[2] / np.tan(np.arcsin(sun[2]))):
            continue
        corners = box_corners(item.centre, obj.wlh, obj.yaw)
        flat = corners - corners[:, 2:] / sun[2] * sun
        for face in FACES:
            uv = view.polygon(flat[list(face)])
            if uv is not None:
                draw.polygon(uv, fill=255)
    return np.asarray(mask, dtype=np.float32) / 255


def _render(scene: DemoScene, camera: int, t: float, hide=()) -> tuple[np.ndarray, np.ndarray, _View, dict]:
    """The image, the id buffer, the view and the drawn objects' items (by object index)."""
    view = _view(scene, camera, t)
    items = {i: _object_item(o, t, i + 1, scene.sun) for i, o in enumerate(scene.objects) if i not in hide}
    img = _background(scene, camera, t)
    shadow = _shadows(scene, view, list(items.values()), [scene.objects[i] for i in items])
    img *= (1 - 0.42 * shadow)[..., None]
    canvas = Image.fromarray(img.clip(0, 255).astype(np.uint8))
    ids = Image.new("L", canvas.size, 0)
    draw, draw_ids = ImageDraw.Draw(canvas), ImageDraw.Draw(ids)
    visible = [it for it in (*scene.clutter, *items.values()) if view.sees(it.centre, it.radius)]
    for item in sorted(visible, key=lambda it: -float(np.linalg.norm(it.centre - view.position))):
        _draw_item(item, view, draw, draw_ids)
    h, w = scene.image_size
    rgb = np.asarray(canvas, dtype=np.float32).reshape(h, SS, w, SS, 3).mean(axis=(1, 3))
    return np.round(rgb).astype(np.uint8), np.asarray(ids), view, items


def render_view(scene: DemoScene, camera: int, t: float, hide: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Camera ``camera`` (index into :data:`CAMERA_RIG`) at ``t`` seconds after the first keyframe, without
    the objects in ``hide``; noise-free (the written JPEGs add jitter, noise and compression).

    Returns the image (H, W, 3) uint8 and the supersampled id buffer (H*SS, W*SS) uint8: object ``i`` is
    ``i + 1`` where it is visible, 0 elsewhere.
    """
    rgb, ids, _, _ = _render(scene, camera, t, hide)
    return rgb, ids


def _alone_pixels(view: _View, item: _Item) -> int:
    """Supersampled pixels an object would cover in the image if nothing hid it."""
    if not view.sees(item.centre, item.radius):
        return 0
    mask = Image.new("L", (view.size[1], view.size[0]), 0)
    _draw_item(item, view, None, ImageDraw.Draw(mask))
    return int(np.count_nonzero(np.asarray(mask)))


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
