"""Rendering one camera view: ray-cast ground and sky, shaded cuboids far to near, shadows, the id map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from pipelines.core.geometry import (
    box_corners,
    invert_pose,
)
from pipelines.datasets.nuscenes_demo.objects import (
    DemoObject,
    _box_part,
    _Item,
)
from pipelines.datasets.nuscenes_demo.scene import DemoScene
from pipelines.datasets.nuscenes_demo.world import (
    FACES,
    NEAR,
    SS,
)


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
