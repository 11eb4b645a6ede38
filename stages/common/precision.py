"""Mixed precision: which low-precision type a device trains in, and the autocast around the backbone.

`amp: true` means float16 autocast with a GradScaler on CUDA, and bfloat16 autocast on a CPU with
native bfloat16 arithmetic (oneDNN reports it: AVX512-BF16 or AMX). bfloat16 keeps float32's
range, so it needs no loss scaling. Elsewhere (an older CPU, Apple MPS) the network runs in
float32. The regression heads always run in float32 (stages.nets.model, stages.coarse.model):
crop-pixel positions need more than bfloat16's 8-bit mantissa.
"""
from __future__ import annotations

import contextlib

import torch


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bfloat16 convolutions natively on this CPU."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and check())


def amp_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """The autocast type for `device` when mixed precision is asked for, None for float32."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autocast context for `dtype` (from amp_dtype); a no-op context for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 ones do not."""
    return dtype == torch.float16
