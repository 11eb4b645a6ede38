"""The two-branch network (paper Fig. 1): one backbone, a 2D landmark head and a 3D shape head."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.common.precision import like_weight
from stages.nets.backbone import build_backbone
from stages.nets.coordconv import add_coord_channels, image_coord_maps
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
    pose_frame: str = "crop"    # the direct head's frame (stages.nets.pose_frame.FRAMES)
    coord_maps: str = "crop"    # CoordConv's maps: crop | image (full-image positions: forward needs inv_warps)
    image_size: tuple[int, int] = (0, 0)    # (W, H) px of the full images: the image maps' [-1, 1] span

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
    config.pose_head = direct6dof R_frame (B, 3, 3), t_code (B, 3) in config.pose_frame
(stages.nets.pose_frame). With config.coord_maps = image, forward needs each crop's
crop -> full-image warp, inv_warps (B, 2, 3).

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
        if config.coordconv and config.coord_maps == "image" and min(config.image_size) <= 0:
            raise ValueError(f"coord_maps 'image' needs the full images' size, got image_size={config.image_size}")
        self.pose = PoseHead(features) if config.pose_head == "direct6dof" else None
        self.resize = InputResize(config.input_size)   # first: a linear filter with unit weights commutes with the normalisation
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor, with_verts: bool = True,
                inv_warps: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """with_verts=False leaves "verts" out where the shape head need not decode it ('pca' mode);
        inv_warps (B, 2, 3): the crops' crop -> full-image warps, read by image CoordConv maps only."""
        x = self.resize(images.float())
        x = (x - self.pixel_mean) / self.pixel_std
        if self.config.coordconv:
            x = self.add_coords(x, inv_warps)
        features = self.backbone(like_weight(x, self.backbone.conv1)).float()
        with torch.autocast(features.device.type, enabled=False):     # heads in float32 (stages.common.precision)
            mu, sigma = self.landmarks(features)
            verts, coeffs = self.shape(features, with_verts)
            pose = {} if self.pose is None else dict(zip(("R_frame", "t_code"), self.pose(features)))
        out = {"mu": mu, "sigma": sigma, "coeffs": coeffs, **pose}
        return out if verts is None else {**out, "verts": verts}

    def add_coords(self, x: torch.Tensor, inv_warps: torch.Tensor | None) -> torch.Tensor:
        """The normalised input (B, 3, R, R) with CoordConv's two maps appended (B, 5, R, R)."""
        if self.config.coord_maps == "crop":
            return add_coord_channels(x)
        if inv_warps is None:
            raise ValueError("a network with image CoordConv maps (train.coord_maps: image) needs each crop's "
                             "inv_warps (its full-image positions)")
        maps = image_coord_maps(inv_warps, self.config.crop_size, x.shape[-1], self.config.image_size)
        return torch.cat([x, maps.to(x.dtype)], dim=1)
