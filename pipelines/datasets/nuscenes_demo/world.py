"""The demo world's constants, the curving road and the world-fixed ground texture (asphalt, markings, verges)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

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
