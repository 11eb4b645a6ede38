"""The two-branch network (paper Fig. 1): one backbone, a 2D landmark head and a 3D shape head."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.common.precision import like_weight
from stages.nets.backbone import build_backbone
from stages.nets.coordconv import add_coord_channels
from stages.nets.heads import LandmarkHead, ShapeHead
from stages.nets.posehead import PoseHead

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild the network (saved in checkpoints and model.pt)."""

    depth: int
    coordconv: bool
    shape_head: str
    crop_size: int
    n_verts: int
    n_components: int
    input_size: int = 0     # side the crop is resized to before the backbone; 0 = crop_size
    pose_head: str = "pnp"  # pnp (pose from landmarks + mesh) | direct6dof (PoseHead, Table 1)

    def to_dict(self) -> dict:
        return asdict(self)


class InputResize(nn.Module):
    """Crops (B, C, S, S) -> (B, C, size, size), antialiased bilinear; unchanged when size is 0 or S."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size and self.size != x.shape[-1]:
            return F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x


class FaceNet(nn.Module):
    """images (B, 3, S, S) RGB in [0, 255] (uint8 or float) -> dict of
    mu (B, V, 2) crop px, sigma (B, V) crop px, verts (B, V, 3) metres, coeffs (B, C)
    (verts left out under with_verts=False with a PCA shape head), and with
    config.pose_head = direct6dof R_crop (B, 3, 3), t_code (B, 3) (stages.nets.crop_pose).

    With config.input_size < S the crop is resized (antialiased bilinear) before the backbone,
    a cheaper network for the CPU demo; the outputs stay in the S-pixel crop's coordinates.
    """

    def __init__(self, config: NetConfig, pretrained: bool = False):
        super().__init__()
        self.config = config
        in_channels = 5 if config.coordconv else 3
        self.backbone, features = build_backbone(config.depth, in_channels, pretrained)
        self.landmarks = LandmarkHead(features, config.n_verts, config.crop_size)
        self.shape = ShapeHead(features, config.n_verts, config.n_components, config.shape_head)
        if config.pose_head not in ("pnp", "direct6dof"):
            raise ValueError(f"train.pose_head={config.pose_head!r}: expected 'pnp' or 'direct6dof'")
        self.pose = PoseHead(features) if config.pose_head == "direct6dof" else None
        self.resize = InputResize(config.input_size)   # first: a linear filter with unit weights commutes with the normalisation
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor, with_verts: bool = True) -> dict[str, torch.Tensor]:
        """with_verts=False leaves "verts" out where the shape head need not decode it ('pca' mode)."""
        x = self.resize(images.float())
        x = (x - self.pixel_mean) / self.pixel_std
        if self.config.coordconv:
            x = add_coord_channels(x)
        features = self.backbone(like_weight(x, self.backbone.conv1)).float()
        with torch.autocast(features.device.type, enabled=False):     # heads in float32 (stages.common.precision)
            mu, sigma = self.landmarks(features)
            verts, coeffs = self.shape(features, with_verts)
            pose = {} if self.pose is None else dict(zip(("R_crop", "t_code"), self.pose(features)))
        out = {"mu": mu, "sigma": sigma, "coeffs": coeffs, **pose}
        return out if verts is None else {**out, "verts": verts}
