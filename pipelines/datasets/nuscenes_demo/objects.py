"""Annotated objects (cars, pedestrians, barriers) with their motion along the road, and the unannotated clutter."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field

import numpy as np

from pipelines.core.geometry import (
    box_corners,
    pose_matrix,
    wrap_angle,
    yaw_to_quaternion,
)
from pipelines.datasets.nuscenes_demo.world import (
    AMBIENT,
    DIFFUSE,
    FACES,
    NORMALS,
    PERIOD_US,
    _colour,
    _Road,
)


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
