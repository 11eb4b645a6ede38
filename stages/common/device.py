"""The one device choice of every stage that runs a network: params `device` (auto | cpu | cuda)."""
from __future__ import annotations

import torch

from stages.common.schema import DEVICE


def pick_device(name: str, key: str = "device", index: int | None = None) -> torch.device:
    """`auto`: CUDA when present, else the CPU; `cpu`; `cuda` (stops when CUDA is absent).

    key: the params key that gave `name`, for the messages ("infer.device"); index: this process's
    CUDA device (torchrun's LOCAL_RANK), None for the current one. An unknown name stops
    with a message naming the key and the choices, never falls back to the CPU.
    """
    if name not in DEVICE.values:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(DEVICE.values)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}=cuda but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)
