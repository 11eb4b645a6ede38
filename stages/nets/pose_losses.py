"""Losses of the direct 6DoF head (paper sec. 3.2.1: geodesic loss + MSE), mean over the batch.

Units, chosen so that with lambda.rot = 20 and lambda.trans = 1 a degree of rotation error and
the millimetres it moves the face (~1.4 mm at the face's ~80 mm radius) weigh about alike:
  rot:   geodesic angle between the predicted and true crop-frame rotations, degrees (the same
         angle as between the camera-frame rotations: the frame change cancels);
  trans: squared distance between the predicted and true translations, mm^2 (likewise equal in
         the crop and camera frames).
"""
from __future__ import annotations

import math

import torch

from stages.nets.crop_pose import translation_from_codes
from stages.nets.rotation6d import geodesic


def rotation_deg(R_pred: torch.Tensor, R_gt: torch.Tensor) -> torch.Tensor:
    """Mean geodesic angle in degrees; R_pred, R_gt (B, 3, 3)."""
    return geodesic(R_pred.float(), R_gt.float()).mean() * (180.0 / math.pi)


def translation_mm2(code_pred: torch.Tensor, code_gt: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Mean squared translation error in mm^2 of codes (B, 3) (stages.nets.crop_pose) of crops
    with scales (B,) crop px per full px."""
    t_pred = translation_from_codes(code_pred.float(), scale.float())
    t_gt = translation_from_codes(code_gt.float(), scale.float())
    return (((t_pred - t_gt) * 1000.0) ** 2).sum(-1).mean()
