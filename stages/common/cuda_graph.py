"""A tensor function's forward and backward replayed from CUDA graphs: each direction of a
step of many small kernels becomes one launch (finetuning's EPro-PnP layer, whose hundreds of
compiled kernels a step otherwise wait for the host to launch them, and inference's network pass,
whose launches compete for the GIL with the PnP threads: docs/benchmarks.md).

`graphed(fn, generator, name)` behaves as fn(*tensors) -> tuple of tensors, differentiable in
the inputs that require a gradient. For each new signature of its arguments (shapes, dtypes,
which require a gradient, grad mode) it runs fn WARMUPS times, forward and backward, on a side
stream (torch.compile's kernels compile and cuDNN's algorithms are chosen there), then captures
fn's forward and, where an output has a gradient, the backward of those outputs into CUDA graphs
sharing one memory pool; later calls copy the arguments into the graphs' static inputs and
replay them on the current stream. What fn may do: CUDA work of fixed shapes only, no read of a
device value on the host, random numbers from CUDA generators (torch registers a generator that
draws during a capture with the graph: each replay draws from its state at that moment and
advances it as the eager calls would; `generator`, fn's own, is set back after the warm-ups and
the capture, so the first replay draws what the first eager call would), autocast only of its
own and without the cache of cast weights (which would outlive the capture; a capture under the
caller's autocast is refused). The outputs are the graphs' own buffers, overwritten by the next
replay: use them, or queue their copies on the same stream, before the next call; a backward
after a later replay of the same capture stops. If the capture fails, a warning names the
function and fn runs eagerly from then on.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

log = logging.getLogger(__name__)

WARMUPS = 3       # eager passes before the capture, as torch.cuda.make_graphed_callables runs


@dataclass
class Captured:
    """A function's captured passes. replay_forward() refills outputs from inputs (its static
    arguments); replay_backward() refills grad_inputs (one per input, None where none flows) from
    grad_outputs (one per output, None for outputs without a gradient). replays: forward
    replays so far (a backward belongs to the latest)."""

    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    grad_outputs: tuple[torch.Tensor | None, ...]
    grad_inputs: tuple[torch.Tensor | None, ...]
    replay_forward: Callable[[], None]
    replay_backward: Callable[[], None]
    replays: int = 0


class Replay(torch.autograd.Function):
    """One call of a Captured function: its outputs, and in the backward its input gradients."""

    @staticmethod
    def forward(ctx, captured: Captured, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.captured = captured
        for static, arg in zip(captured.inputs, args):
            if static.data_ptr() != arg.data_ptr():
                static.copy_(arg)
        captured.replay_forward()
        captured.replays += 1
        ctx.replay = captured.replays
        outputs = tuple(out.detach() for out in captured.outputs)
        ctx.mark_non_differentiable(*(out for out, grad in zip(outputs, captured.grad_outputs) if grad is None))
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        captured = ctx.captured
        if ctx.replay != captured.replays:
            raise RuntimeError(f"a CUDA graph's backward after {captured.replays - ctx.replay} later forward "
                               "replay(s): their buffers hold the later inputs (one backward per forward, in turn)")
        for static, grad in zip(captured.grad_outputs, grads):
            if static is not None:
                static.copy_(grad)
        captured.replay_backward()
        return (None, *(None if grad is None else grad.clone() for grad in captured.grad_inputs))


def replayed(captured: Captured, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The outputs of one replay of `captured` on args (its inputs' shapes and dtypes)."""
    return Replay.apply(captured, *args)


def signature(args: tuple[torch.Tensor, ...]) -> tuple:
    """What a capture is specific to: each argument's shape, dtype, device and requires_grad, and
    whether gradients are on."""
    return (torch.is_grad_enabled(), *((tuple(a.shape), a.dtype, a.device, a.requires_grad) for a in args))


def input_gradients(outputs: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...],
                    grad_outputs: tuple[torch.Tensor | None, ...]) -> tuple[torch.Tensor | None, ...]:
    """d(outputs . grad_outputs) / d(input) for each input (None for those that need none or
    get none); grad_outputs None: that output has no gradient."""
    wanted = [x for x in inputs if x.requires_grad]
    pairs = [(out, grad) for out, grad in zip(outputs, grad_outputs) if grad is not None]
    if not (pairs and wanted):
        return (None,) * len(inputs)
    grads = iter(torch.autograd.grad([out for out, _ in pairs], wanted, [grad for _, grad in pairs], allow_unused=True))
    return tuple(next(grads) if x.requires_grad else None for x in inputs)


def capture(fn: Callable, args: tuple[torch.Tensor, ...], generator: torch.Generator | None) -> Captured:
    """fn's forward and (where an output has a gradient) backward on static copies of args (CUDA
    tensors), captured after WARMUPS eager passes on a side stream. Afterwards the generator's
    state is as before (the warm-ups' draws undone) and the current stream the caller's, also
    when the capture fails."""
    device = args[0].device
    if torch.is_autocast_enabled(device.type):
        raise RuntimeError("called under autocast, whose cache of cast weights would outlive the capture")
    inputs = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
    state = None if generator is None else generator.get_state()
    ambient = torch.cuda.current_stream(device)
    stream = torch.cuda.Stream(device=device)
    stream.wait_stream(ambient)
    try:
        with torch.cuda.stream(stream):
            for _ in range(WARMUPS):
                outputs = tuple(fn(*inputs))
                ones = tuple(torch.ones_like(o) if o.requires_grad else None for o in outputs)
                input_gradients(outputs, inputs, ones)
        torch.cuda.synchronize(device)
        forward = torch.cuda.CUDAGraph()
        pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(forward, pool=pool, stream=stream, capture_error_mode="thread_local"):
            outputs = tuple(fn(*inputs))
        grad_outputs = tuple(torch.empty_like(o) if o.requires_grad else None for o in outputs)
        grad_inputs, replay_backward = (None,) * len(inputs), _nothing_flows
        if any(grad is not None for grad in grad_outputs):
            backward = torch.cuda.CUDAGraph()
            with torch.cuda.graph(backward, pool=pool, stream=stream, capture_error_mode="thread_local"):
                grad_inputs = input_gradients(outputs, inputs, grad_outputs)
            replay_backward = backward.replay
    finally:
        torch.cuda.set_stream(ambient)      # a failed capture_end leaves the capture stream current
        ambient.wait_stream(stream)
        if generator is not None:
            generator.set_state(state)
    return Captured(inputs, outputs, grad_outputs, grad_inputs, forward.replay, replay_backward)


def _nothing_flows() -> None:
    """The backward of a capture none of whose outputs has a gradient (never called)."""


def graphed(fn: Callable, generator: torch.Generator | None, name: str) -> Callable:
    """fn (tensors -> tuple of tensors) replayed from CUDA graphs, one capture per signature of
    its arguments (see the module's docstring); name: what the warning of a failed capture calls it."""
    captures: dict[tuple, Captured] = {}
    failed: list[bool] = []

    def call(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if failed:
            return fn(*args)
        key = signature(args)
        if key not in captures:
            try:
                captures[key] = capture(fn, args, generator)
            except Exception as err:  # noqa: BLE001 - any capture failure falls back the same way
                log.warning("CUDA graph capture failed (%s: %s); %s runs eagerly", type(err).__name__, err, name)
                failed.append(True)
                return fn(*args)
        return replayed(captures[key], *args)

    return call


def graph_on(cuda_graph: bool, device: torch.device, key: str) -> bool:
    """The param `key` (a cuda_graph flag) for a stage running on `device`: stops unless that
    is a CUDA device."""
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"{key} is true but the stage runs on {device}: CUDA graphs need a CUDA device "
                         f"(set {key}: false, or the stage's device: cuda on a GPU machine)")
    return cuda_graph
