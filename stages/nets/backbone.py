"""The shared backbone: a torchvision ResNet without its classifier, optionally 5-channel."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision import models

RESNETS = {
    18: (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    34: (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    50: (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V2),
}


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be loaded (no network and no cached file)."""


def _check_depth(depth: int) -> None:
    if depth not in RESNETS:
        raise ValueError(f"train.depth={depth}: supported ResNet depths are {sorted(RESNETS)}")


def _load_resnet(depth: int, pretrained: bool) -> nn.Module:
    builder, weights = RESNETS[depth]
    if not pretrained:
        return builder(weights=None)
    try:
        return builder(weights=weights)
    except (OSError, RuntimeError) as err:    # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsUnavailable(
            f"cannot load ImageNet weights {weights} for ResNet{depth}: {err}. This machine may have "
            f"no network: download {weights.url} elsewhere and place it at {cache} (the torch hub "
            "cache, $TORCH_HOME/hub/checkpoints), or set train.pretrained: false") from None


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
