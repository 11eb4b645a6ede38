"""Where a benchmark's GPU work waits: shared by bench_train, bench_infer and bench_finetune.

`sync` waits for the device's queued work (so that wall-clock rates count it), `host_syncs` lists
the places where a call made the host wait for the GPU (CUDA's sync debug mode), and
`profile_tables` gives torch.profiler's operator tables of a call.
"""
from __future__ import annotations

import collections
import time
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def sync(device: torch.device) -> None:
    """Wait for the work queued on a CUDA device; nothing on others."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def host_syncs(call: Callable[[], object], device: torch.device) -> collections.Counter:
    """The places (file:line) where call() made the host wait for the GPU, with their counts;
    empty on other devices."""
    if device.type != "cuda":
        return collections.Counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            call()
            sync(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                               if "synchroniz" in str(w.message))


def format_syncs(places: collections.Counter, most: int = 8) -> str:
    """'N: file:line xK, ...' of host_syncs' places."""
    return f"{sum(places.values())}: " + ", ".join(f"{key} x{n}" for key, n in places.most_common(most))


def profile_tables(call: Callable[[], object], device: torch.device, rows: int = 15) -> str:
    """torch.profiler's view of one call(): a line with the kernels it launched on CUDA (host
    operators elsewhere), their summed own time and the call's wall time, then the operator
    tables by device time (on CUDA) and by the host's own time."""
    from torch.autograd import DeviceType
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        call()
        sync(device)
        wall = 1000 * (time.perf_counter() - start)
    averages = prof.key_averages()
    own = [e for e in averages if e.device_type == (DeviceType.CUDA if cuda else DeviceType.CPU)
           and not getattr(e, "is_user_annotation", False)]      # a compiled graph's span holds its kernels
    busy = sum(e.self_device_time_total if cuda else e.self_cpu_time_total for e in own) / 1000
    tables = [f"{sum(e.count for e in own)} {'kernels' if cuda else 'host operators'}, {busy:.1f} ms of their "
              f"own time in {wall:.1f} ms of wall time (profiled)",
              averages.table(sort_by="self_cpu_time_total", row_limit=rows)]
    if cuda:
        tables.insert(1, averages.table(sort_by="self_cuda_time_total", row_limit=rows))
    return "\n".join(tables)
