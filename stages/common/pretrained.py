"""ImageNet weights for torchvision networks, with a message that says where to put them offline."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn


class WeightsUnavailable(RuntimeError):
    """ImageNet weights could not be loaded (no network and no cached file)."""


def with_weights(builder: Callable[..., nn.Module], weights, key: str) -> nn.Module:
    """builder(weights=weights), a torchvision model with its pretrained `weights` (a Weights enum
    member); where they cannot be fetched, a WeightsUnavailable that names the file to place in
    torch's hub cache and the params `key` that turns them off."""
    try:
        return builder(weights=weights)
    except (OSError, RuntimeError) as err:    # URLError is an OSError
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise WeightsUnavailable(
            f"cannot load ImageNet weights {weights}: {err}. This machine may have no network: download "
            f"{weights.url} elsewhere and place it at {cache} (the torch hub cache, $TORCH_HOME/hub/checkpoints), "
            f"or set {key}: false") from None
