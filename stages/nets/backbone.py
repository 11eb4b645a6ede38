"""The shared backbone: a torchvision ResNet without its classifier, optionally 5-channel."""
from __future__ import annotations

import torch
from torch import nn
from torchvision import models

from stages.common.pretrained import with_weights

RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    34: (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}


def _check_depth(depth: int) -> None:
    if depth not in RESNETS:
        raise ValueError(f"train.depth={depth}: supported ResNet depths are {sorted(RESNETS)}")


def _load_resnet(depth: int, pretrained: bool) -> nn.Module:
    builder, weights = RESNETS[depth]
    return with_weights(builder, weights, "train.pretrained") if pretrained else builder(weights=None)


def widen_input(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of `conv` taking `in_channels` inputs: the old channels keep their weights, the
    extra ones start at zero (so a pretrained network initially ignores them)."""
    wide = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, :conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    return wide


def build_backbone(depth: int, in_channels: int = 3, pretrained: bool = False) -> tuple[nn.Module, int]:
    """ResNet-`depth` trunk: images (B, in_channels, S, S) -> features (B, F). Returns (module, F)."""
    _check_depth(depth)
    net = _load_resnet(depth, pretrained)
    if in_channels != 3:
        net.conv1 = widen_input(net.conv1, in_channels)
    features = net.fc.in_features
    net.fc = nn.Identity()
    return net, features
