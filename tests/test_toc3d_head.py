"""The StreamPETR-style head, its losses and the box conversions of the ToC3D detector."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipelines.core.geometry import pose_matrix, quaternion_yaw, yaw_to_quaternion
from pipelines.detection3d.head import Memory, StreamHead
from pipelines.detection3d.losses import detection_loss, hungarian_match
from pipelines.detection3d.model import to_eval_boxes

RANGE = [-40.0, -40.0, -2.0, 40.0, 40.0, 4.0]


def _head(**kw) -> StreamHead:
    torch.manual_seed(0)
    return StreamHead(10, 32, RANGE, num_queries=16, num_propagated=4, layers=2, heads=2, depth_bins=8,
                      depth_range=(1.0, 40.0), **kw)


def _inputs(b=1, v=2):
    feats = torch.randn(b, v, 32, 3, 4)
    k = torch.tensor([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]]).expand(b, v, 3, 3)
    pose = torch.eye(4).expand(b, v, 4, 4)
    return feats, k, pose


def test_head_shapes_and_memory_roundtrip():
    head = _head()
    feats, k, pose = _inputs(b=2)
    out = head(feats, k, pose, (24, 32))
    assert out["logits"].shape == (2, 2, 16, 10) and out["boxes"].shape == (2, 2, 16, 10)
    ts = torch.tensor([0.0, 0.0], dtype=torch.float64)
    memory = head.memory(out, ts)
    assert memory.content.shape == (2, 4, 32) and not memory.content.requires_grad
    out2 = head(feats, k, pose, (24, 32), head.propagate(memory, torch.eye(4).expand(2, 4, 4), ts + 0.5))
    assert out2["logits"].shape == (2, 2, 20, 10)  # propagated queries come first


def test_propagation_moves_reference_points_by_the_ego_motion():
    head = _head()
    ref = torch.tensor([[[10.0, 0.0, 1.0]]])
    memory = Memory(torch.zeros(1, 1, 32), ref, torch.tensor([[[2.0, 0.0]]]), torch.tensor([0.0]))
    # the ego turned 90 degrees left and moved 1 m: a point 10 m ahead is now 10 m to the right, 1 m closer
    prev2cur = torch.from_numpy(np.linalg.inv(pose_matrix([1.0, 0.0, 0.0], yaw_to_quaternion(math.pi / 2))))
    moved = head.propagate(memory, prev2cur[None].float(), torch.tensor([0.5]))
    metres = head.denormalise(moved.reference)[0, 0]
    assert torch.allclose(metres, torch.tensor([0.0, -9.0, 1.0]), atol=1e-4)


def test_hungarian_matches_exact_predictions_to_their_boxes():
    boxes = torch.tensor([[5.0, 1, 0.5, 0, 1, 0, 0, 1, 0, 0], [-8.0, 3, 0.5, 0, 1, 0, 1, 0, 0, 0]])
    preds = torch.cat([torch.zeros(3, 10), boxes.flip(0)])
    logits = torch.full((5, 10), -4.0)
    logits[3, 2], logits[4, 0] = 4.0, 4.0
    q, j = hungarian_match(logits, preds, torch.tensor([0, 2]), boxes)
    assert dict(zip(j.tolist(), q.tolist(), strict=True)) == {0: 4, 1: 3}


def test_loss_masks_unknown_velocity_and_learns():
    head = _head()
    feats, k, pose = _inputs()
    target = [{"labels": torch.tensor([0]),
               "boxes": torch.tensor([[6.0, 2.0, 0.8, 0.6, 1.5, 0.5, 0.0, 1.0, float("nan"), float("nan")]])}]
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = detection_loss(head(feats, k, pose, (24, 32)), target)["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_eval_boxes_are_global_boxes_with_the_devkit_conventions():
    ego2global = pose_matrix([100.0, 50.0, 0.0], yaw_to_quaternion(math.pi / 2))
    pred = {"scores": np.array([0.9]), "labels": np.array([5]), "center": np.array([[10.0, 0.0, 1.0]]),
            "wlh": np.array([[0.6, 0.7, 1.8]]), "yaw": np.array([0.3]), "velocity": np.array([[1.0, 0.0]])}
    classes = ("car", "truck", "bus", "trailer", "construction_vehicle", "pedestrian", "motorcycle", "bicycle",
               "traffic_cone", "barrier")
    (box,) = to_eval_boxes(pred, ego2global, classes)
    assert box["detection_name"] == "pedestrian" and box["attribute_name"] == "pedestrian.moving"
    assert np.allclose(box["translation"], [100.0, 60.0, 1.0])
    assert np.allclose(box["ego_translation"], [0.0, 10.0, 1.0])
    assert quaternion_yaw(box["rotation"]) == pytest.approx(math.pi / 2 + 0.3)
    assert np.allclose(box["velocity"], [0.0, 1.0])


def test_view_bias_peaks_at_the_reference_points_projection():
    head = _head()
    # one camera looking along ego +x (camera z), x right = ego -y, y down = ego -z
    cam2ego = torch.eye(4)
    cam2ego[:3, :3] = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    k = torch.tensor([[20.0, 0, 16], [0, 20.0, 12], [0, 0, 1]])
    point = torch.tensor([[[10.0, -2.5, 0.0]]])  # projects to u = 16 + 20 * 2.5 / 10 = 21, v = 12
    bias = head.view_bias(head.normalise(point), (3, 4), (24, 32), k[None, None], cam2ego[None, None])
    assert bias.shape == (1, 2, 1, 12)  # one map per head, the heads differing in width
    assert (bias[0, :, 0].argmax(-1) == 1 * 4 + 2).all()  # row 1 (v 8..16), column 2 (u 16..24)
    behind = head.view_bias(head.normalise(-point), (3, 4), (24, 32), k[None, None], cam2ego[None, None])
    assert (behind <= -1e4).all()


def test_denoising_queries_are_invisible_to_the_matching_queries():
    from pipelines.detection3d.losses import denoising_queries

    head = _head().eval()
    feats, k, pose = _inputs()
    target = [{"labels": torch.tensor([0, 9]),
               "boxes": torch.tensor([[6.0, 2.0, 0.8, 0.6, 1.5, 0.5, 0.0, 1.0, 0.0, 0.0],
                                      [-3.0, 5.0, 0.5, 0.9, -0.7, 0.0, 1.0, 0.0, 0.0, 0.0]])}]
    dn = denoising_queries(target, head.normalise, 1.0, torch.Generator().manual_seed(0))
    assert dn.shape == (1, 2, 3)
    plain = head(feats, k, pose, (24, 32))
    with_dn = head(feats, k, pose, (24, 32), denoising=dn)
    assert torch.allclose(plain["logits"], with_dn["logits"], atol=1e-5)
    assert with_dn["dn_boxes"].shape == (2, 1, 2, 10)
    losses = detection_loss(with_dn, target)
    assert losses["dn"] > 0 and torch.isfinite(losses["loss"])
