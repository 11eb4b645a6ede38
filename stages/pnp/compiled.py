"""torch.compile for the PnP layer's fixed-shape kernels, with a fall-back to eager code.

The sample costs (stages.pnp.sample_cost) and the masked Levenberg-Marquardt iteration
(stages.pnp.solver) are plain tensor code of fixed shapes: compiled, each becomes a few fused
kernels where eager PyTorch dispatches hundreds of operators (on a GPU, a step of small kernels
is bound by their dispatch). If compiling fails (no C++ compiler, say), a warning is logged and
the eager function is used from then on (but for a failure during a CUDA graph's capture,
which is raised to the capture).
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


_COMPILED: dict[Callable, Callable] = {}
# With dynamic shapes torch.compile passes every Python float it reads (an argument such as the
# LM's cost_rtol, a module constant such as its damping bounds) to the compiled code as a 0-dim
# host tensor, and the code copies each to the GPU at every call: a copy from host memory that
# waits for the stream. Specialised, they are constants of the compiled code (each distinct value
# compiles once). The setting holds while these functions run (and trace), not elsewhere.
FLOATS_AS_CONSTANTS = torch._dynamo.config.patch(specialize_float=True)


def compiled_or_eager(fn: Callable, name: str, compiled: bool = True) -> Callable:
    """fn compiled with torch.compile (dynamic shapes: the first call compiles, tens of seconds
    on a CPU; later processes reuse inductor's disk cache), replaced by fn itself for good once
    the compiled version raises. Built once per function and process. name: what the warning
    calls it. compiled False: fn itself."""
    if not compiled:
        return fn
    if fn not in _COMPILED:
        _COMPILED[fn] = _with_fallback(fn, name)
    return _COMPILED[fn]


def _with_fallback(fn: Callable, name: str) -> Callable:
    """torch.compile(fn), falling back to fn (see compiled_or_eager). Traced with float
    specialisation (`FLOATS_AS_CONSTANTS`)."""
    state = {"fn": torch.compile(fn, dynamic=True)}

    def call(*args):
        try:
            with FLOATS_AS_CONSTANTS:
                return state["fn"](*args)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back the same way
            if state["fn"] is fn or capturing():
                raise
            log.warning("torch.compile failed (%s: %s); %s run eagerly", type(err).__name__, err, name)
            state["fn"] = fn
            return fn(*args)

    return call


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a graph (stages.common.cuda_graph): a failure
    there is the capture's to handle, not a reason to give up compiling for good."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
