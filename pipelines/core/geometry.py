"""Rigid transforms, quaternions (w, x, y, z as nuScenes stores them) and pinhole projection.

nuScenes conventions: a box's ``size`` is (w, l, h); its length lies along the box's own x axis, width
along y, height along z; ``yaw`` is the rotation about z of that x axis. Poses are 4x4 matrices
``A2B`` that map homogeneous points of frame A into frame B (``cam2ego``, ``ego2global``).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "quaternion_to_matrix", "matrix_to_quaternion", "yaw_to_quaternion", "quaternion_yaw", "pose_matrix",
    "invert_pose", "transform_points", "rotate_vectors", "project_points", "box_corners", "wrap_angle",
]


def quaternion_to_matrix(q) -> np.ndarray:
    """3x3 rotation of a unit quaternion (w, x, y, z)."""
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quaternion(r) -> np.ndarray:
    """Unit quaternion (w, x, y, z) with w >= 0 of a 3x3 rotation."""
    r = np.asarray(r, dtype=np.float64)
    trace = np.trace(r)
    if trace > 0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [0.25 * s, (r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + r[i, i] - r[j, j] - r[k, k])
        q = np.zeros(4)
        q[0] = (r[k, j] - r[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (r[j, i] + r[i, j]) / s
        q[1 + k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q, dtype=np.float64)
    return q if q[0] >= 0 else -q


def yaw_to_quaternion(yaw: float) -> np.ndarray:
    """Quaternion (w, x, y, z) of a rotation by ``yaw`` radians about z."""
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


def quaternion_yaw(q) -> float:
    """Heading of a quaternion: the angle of its rotated x axis in the xy plane (the devkit's yaw)."""
    v = quaternion_to_matrix(q)[:, 0]
    return float(np.arctan2(v[1], v[0]))


def pose_matrix(translation, rotation) -> np.ndarray:
    """4x4 pose from a translation (3,) and a quaternion (w, x, y, z) or a 3x3 rotation."""
    m = np.eye(4)
    rotation = np.asarray(rotation, dtype=np.float64)
    m[:3, :3] = quaternion_to_matrix(rotation) if rotation.shape == (4,) else rotation
    m[:3, 3] = np.asarray(translation, dtype=np.float64)
    return m


def invert_pose(m) -> np.ndarray:
    """Inverse of a rigid 4x4 pose (transpose of the rotation, not a general inverse)."""
    m = np.asarray(m, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def transform_points(m, points) -> np.ndarray:
    """Apply a 4x4 pose to points (..., 3)."""
    m, points = np.asarray(m, dtype=np.float64), np.asarray(points, dtype=np.float64)
    return points @ m[:3, :3].T + m[:3, 3]


def rotate_vectors(m, vectors) -> np.ndarray:
    """Apply only the rotation of a pose to vectors (..., 3) such as velocities."""
    return np.asarray(vectors, dtype=np.float64) @ np.asarray(m, dtype=np.float64)[:3, :3].T


def project_points(intrinsic, points_cam) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (..., 2) and depths (...,) of camera-frame points under a 3x3 intrinsic.
    Points with depth <= 0 get non-finite pixels; check the depth before using them."""
    points_cam = np.asarray(points_cam, dtype=np.float64)
    depth = points_cam[..., 2]
    uvw = points_cam @ np.asarray(intrinsic, dtype=np.float64).T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = uvw[..., :2] / np.where(depth > 0, depth, np.nan)[..., None]
    return uv, depth


def box_corners(center, wlh, yaw) -> np.ndarray:
    """The 8 corners (8, 3) of a box: the first four on the front face (+x, the box's length axis),
    the last four on the back face; within each face top-left, top-right, bottom-right, bottom-left."""
    w, length, h = (float(v) for v in wlh)
    x = length / 2 * np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = w / 2 * np.array([1, -1, -1, 1, 1, -1, -1, 1])
    z = h / 2 * np.array([1, 1, -1, -1, 1, 1, -1, -1])
    c, s = np.cos(yaw), np.sin(yaw)
    corners = np.stack([c * x - s * y, s * x + c * y, z], axis=1)
    return corners + np.asarray(center, dtype=np.float64)


def wrap_angle(angle):
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi
