"""The direct 6DoF pose head (paper Table 1, "Direct 6DoF"): one FC layer regressing the rotation
in the 6D representation and the translation, both in the frame of train.pose_frame (the crop's or
the camera's: stages.nets.pose_frame)."""
from __future__ import annotations

import torch
from torch import nn

from stages.nets.rotation6d import rotation_from_6d, rotation_to_6d

A_UNIT = 0.01       # (a, b): one output unit = 0.01 (f s x 0.01 ~ 3 crop px in the demo's 128 px crops)
Z_UNIT_M = 0.05     # z_v: one output unit = 5 cm (its spread is the faces' size spread, a few %)


class PoseHead(nn.Module):
    """features (B, F) -> R_frame (B, 3, 3) rotation, t_code (B, 3) = (a, b, z_v metres) in the head's frame.

    The FC's weights start at zero and its bias at the mean training pose (`init_mean`): the
    first six outputs are the 6D rotation itself (columns of unit length at the start), the last
    three the code's offset from the mean code in units of (A_UNIT, A_UNIT, Z_UNIT_M)."""

    def __init__(self, features: int):
        super().__init__()
        self.fc = nn.Linear(features, 9)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        with torch.no_grad():
            self.fc.bias[:6] = rotation_to_6d(torch.eye(3))
        self.register_buffer("code_mean", torch.zeros(3))
        self.register_buffer("units", torch.tensor([A_UNIT, A_UNIT, Z_UNIT_M]))

    def init_mean(self, R_mean: torch.Tensor, code_mean: torch.Tensor) -> None:
        """Start at the mean training pose: rotation R_mean (3, 3), code code_mean (3,)."""
        with torch.no_grad():
            self.fc.bias[:6] = rotation_to_6d(torch.as_tensor(R_mean, dtype=torch.float32))
            self.code_mean.copy_(torch.as_tensor(code_mean, dtype=torch.float32))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(features).float()
        return rotation_from_6d(out[:, :6]), self.code_mean + out[:, 6:] * self.units
