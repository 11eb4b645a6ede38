"""Mixed precision and memory layout: the low-precision type a device runs in, the autocast
around the backbone, and where a network's weights and input live.

`amp: true` means bfloat16 autocast on a CUDA device that has bfloat16 arithmetic (Ampere and
later: torch.cuda.is_bf16_supported()), float16 autocast with a GradScaler on older CUDA
devices, and bfloat16 autocast on a CPU with native bfloat16 arithmetic (oneDNN reports it:
AVX512-BF16 or AMX). bfloat16 keeps float32's range, so it needs no loss scaling. Elsewhere (an
older CPU, Apple MPS) the network runs in float32. The regression heads always run in float32
(stages.nets.model, stages.coarse.model): crop-pixel positions need more than bfloat16's 8-bit
mantissa.

On CUDA the convolution weights and the backbone's input are stored channels_last (NHWC: the
layout tensor cores read without a transpose) and cuDNN picks its fastest algorithms per input
shape (cudnn.benchmark). On one H100, ResNet50 at 256 px: a train step 2,070 images/s in float16
NCHW at batch 64, 3,430 channels_last at batch 128; the bfloat16 forward 7,323 (NCHW) vs 9,330
(channels_last) at batch 256. On the CPU nothing of this applies: the weights stay NCHW and the
results stay bit-identical to a network never placed with `place_network`.
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
        with torch.cuda.device(device):      # native bfloat16 (Ampere on): emulated it is slow
            return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """The autocast context for `dtype` (from amp_dtype); a no-op context for None. cache False:
    weights are cast at each use, not kept for the context (inside a CUDA graph's capture, where
    the kept casts would outlive it)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype, cache_enabled=cache)


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """float16 gradients underflow without loss scaling; bfloat16 and float32 ones do not."""
    return dtype == torch.float16


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA, the plain NCHW layout elsewhere."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def place_network(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` moved to `device` (in place, returned), its 4-D weights in memory_format(device);
    on CUDA cuDNN benchmarks its algorithms per input shape."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return model.to(device=device, memory_format=memory_format(device))


def like_weight(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """Input (B, C, H, W) channels_last when conv's weight (O, C, kh, kw) is stored so
    (place_network on CUDA); otherwise x itself, untouched."""
    weight = conv.weight
    if weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return x.contiguous(memory_format=torch.channels_last)
    return x
