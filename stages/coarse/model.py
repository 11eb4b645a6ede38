"""The landmark network: a torchvision backbone, a small feature pyramid and soft-argmax heatmaps.

The backbone is cut after its stride-16 stage; the stride-16, 8 and 4 features are merged
top-down (upsample + 1x1 lateral) into one stride-4 map, from which a 1x1 convolution gives one
heatmap per landmark. A spatial softmax turns each heatmap into a probability map whose
expectation is the landmark (integral regression), so the output is differentiable
sub-pixel coordinates in the input's continuous pixel frame.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from stages.common.precision import like_weight
from stages.common.pretrained import with_weights

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PYRAMID_STRIDES = (4, 8, 16)
BN_MOMENTUM = 0.1   # torchvision's MobileNetV3 uses 0.01: too slow for a few hundred steps


def _backbone_blocks(name: str, pretrained: bool) -> list[nn.Module]:
    """The backbone as a list of sequential blocks (stem first), classifier removed."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    builder = getattr(torchvision.models, name)
    if pretrained:
        net = with_weights(builder, torchvision.models.get_model_weights(name).DEFAULT, "coarse_train.pretrained")
    else:
        net = builder(weights=None)
    if name.startswith("resnet"):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        return [stem, net.layer1, net.layer2, net.layer3]
    return list(net.features)


def _pyramid_taps(blocks: list[nn.Module], probe: int = 64) -> tuple[list[int], list[int]]:
    """Indices of the last block at each pyramid stride and their channel counts."""
    x = torch.zeros(1, 3, probe, probe)
    taps, channels = {}, {}
    with torch.no_grad():
        for index, block in enumerate(blocks):
            x = block(x)
            stride = probe // x.shape[-1]
            if stride in PYRAMID_STRIDES:
                taps[stride], channels[stride] = index, x.shape[1]
    missing = [s for s in PYRAMID_STRIDES if s not in taps]
    if missing:
        raise ValueError(f"backbone has no stage at stride(s) {missing}")
    return [taps[s] for s in PYRAMID_STRIDES], [channels[s] for s in PYRAMID_STRIDES]


class LandmarkNet(nn.Module):
    """Image (B, 3, S, S) float in [0, 1] -> landmarks (B, L, 2) in input px (continuous)."""

    def __init__(self, backbone: str, n_points: int, pretrained: bool = False, width: int = 64):
        super().__init__()
        blocks = _backbone_blocks(backbone, pretrained)
        for module in nn.ModuleList(blocks).modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = BN_MOMENTUM
        taps, channels = _pyramid_taps(blocks)
        self.blocks = nn.ModuleList(blocks[: taps[-1] + 1])
        self.taps = taps
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.fuse = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.heatmaps = nn.Conv2d(width, n_points, 1)
        self.log_beta = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def stem(self) -> nn.Conv2d:
        """The backbone's first convolution (its weight's layout is the input's: like_weight)."""
        return next(m for m in self.blocks[0].modules() if isinstance(m, nn.Conv2d))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> fused stride-4 features (B, width, S/4, S/4)."""
        x = like_weight((image - self.mean) / self.std, self.stem)
        tapped = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if index in self.taps:
                tapped.append(x)
        fused = self.laterals[-1](tapped[-1])
        for feature, lateral in zip(reversed(tapped[:-1]), reversed(self.laterals[:-1])):
            fused = F.interpolate(fused, size=feature.shape[-2:], mode="nearest") + lateral(feature)
        return self.fuse(fused)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        features = self.features(image).float()
        with torch.autocast(features.device.type, enabled=False):    # logits in float32 (stages.common.precision)
            logits = self.heatmaps(features)
        return soft_argmax(logits * self.log_beta.exp(), image.shape[-1] / logits.shape[-1])


def soft_argmax(logits: torch.Tensor, stride: float) -> torch.Tensor:
    """Heatmap logits (B, L, h, w) -> expected positions (B, L, 2) in input px, where cell
    (i, j) has its centre at ((j + 0.5) stride, (i + 0.5) stride)."""
    batch, points, height, width = logits.shape
    prob = logits.flatten(2).softmax(-1).view(batch, points, height, width)
    xs = (torch.arange(width, device=logits.device, dtype=prob.dtype) + 0.5) * stride
    ys = (torch.arange(height, device=logits.device, dtype=prob.dtype) + 0.5) * stride
    return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)
