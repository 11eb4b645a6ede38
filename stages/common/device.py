"""The one device choice of every stage that runs a network: params `device` (auto | cpu | cuda),
the decode choices' `auto` (crop.decode: stages/crop.py; coarse_train.decode, coarse_predict.decode:
torch_path). torch is imported where a device is picked, not here:
crop's OpenCV path asks `gpu_driver_present` first and never loads it."""
from __future__ import annotations

import os

from stages.common.schema import DEVICE

GPU_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")   # NVIDIA's driver; WSL's GPU device


def gpu_driver_present() -> bool:
    """Whether a GPU driver that CUDA could use is loaded. Without one CUDA is unavailable, and a
    caller that needs torch only for CUDA can skip importing it (about 470 MB of resident memory:
    the CPU demo's crop stage would grow from 130 MB to 600 MB)."""
    return any(os.path.exists(path) for path in GPU_DRIVER_PATHS)


def pick_device(name: str, key: str = "device", index: int | None = None):
    """`auto`: CUDA when present, else the CPU; `cpu`; `cuda` (stops when CUDA is absent) -> a
    torch.device.

    key: the params key that gave `name`, for the messages ("infer.device"); index: this process's
    CUDA device (torchrun's LOCAL_RANK), None for the current one. An unknown name stops
    with a message naming the key and the choices, never falls back to the CPU.
    """
    import torch
    if name not in DEVICE.values:
        raise ValueError(f"{key}={name!r}: expected one of {', '.join(DEVICE.values)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{key}=cuda but CUDA is not available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


def torch_path(choice: str, device) -> bool:
    """A decode choice (coarse_train.decode, coarse_predict.decode: auto | opencv | torch) and the
    stage's torch device -> whether images are decoded and warped on that device (torchvision's
    decode_jpeg, stages/face/warp_torch.py): `torch`, or `auto` on CUDA; `opencv` never."""
    return choice == "torch" or (choice == "auto" and device.type == "cuda")


def host_to_device(x, device):
    """A host tensor on `device`, copied without waiting for the GPU: from pinned memory, since a
    copy from pageable memory first waits for all the work queued before it (on a GPU, the
    previous forward). Elsewhere a plain copy."""
    if device.type != "cuda":
        return x.to(device)
    return x.pin_memory().to(device, non_blocking=True)
