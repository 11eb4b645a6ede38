"""This process's place in a torchrun run: rank, world size and device (one process per GPU).

A stage started by `torchrun --nproc_per_node N -m stages.<name>` (or `python -m stages.launch`,
with params `gpus` > 1) sees WORLD_SIZE, RANK and LOCAL_RANK; `start_distributed` joins the
process group (nccl on CUDA, gloo on the CPU) and gives each process its own CUDA device. A
process started plainly is rank 0 of a world of 1 and joins nothing.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from stages.common.device import pick_device
from stages.common.threads import training_threads

# How long a collective may wait: between epochs the other processes wait at a barrier while rank
# 0 validates and writes the checkpoint, on the real data's 71,000 val images about a minute on
# an H200 with 16 cores, longer from cold or network storage; NCCL's default of 10 minutes would
# stop such a run at its first epoch's end.
COLLECTIVE_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) run. host: the group of collectives of
    host values (the barriers' waits, objects exchanged), gloo beside nccl; None: the default
    group (gloo itself on CPUs)."""

    rank: int
    world: int
    device: torch.device
    host: dist.ProcessGroup | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_distributed(device_name: str, key: str = "train.device") -> Dist:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU).
    device_name: auto | cpu | cuda (params `key`, named in messages); on CUDA the process's
    device is cuda:LOCAL_RANK."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = pick_device(device_name, key, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world,
                                timeout=COLLECTIVE_TIMEOUT)
    host = host_group(Dist(rank, world, device)) if world > 1 and use_cuda else None
    return Dist(rank=rank, world=world, device=device, host=host)


def replica(model: torch.nn.Module, ctx: Dist, sync_batchnorm: bool = False,
            key: str = "sync_batchnorm") -> torch.nn.Module:
    """The module a training step runs: `model` itself in one process, else a DDP replica of it
    (gradients averaged over the processes). With sync_batchnorm (params `key`) its BatchNorm
    layers become nn.SyncBatchNorm in place first: they normalise over the global batch, not this
    process's share, in training; in eval mode they use their running statistics without a
    collective (rank 0 validates alone). Their state dict is BatchNorm's: the saved model loads
    into the plain network. CUDA only (torch's SyncBatchNorm); on the CPU it stops naming `key`."""
    if ctx.world == 1:
        return model
    if sync_batchnorm:
        if ctx.device.type != "cuda":
            raise ValueError(f"{key} is true but the {ctx.world} processes run on {ctx.device.type}: "
                             "torch's SyncBatchNorm needs CUDA (set it to false)")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[ctx.device] if ctx.device.type == "cuda" else None)


def same_everywhere(value: int, ctx: Dist, what: str) -> None:
    """Stop in every process unless all of them hold the same `value` (an int, e.g. the epoch a
    run resumes after): processes that went on with different ones would wait in each other's
    collectives until the timeout. `what` names the value in the message."""
    if ctx.world == 1:
        return
    bounds = torch.tensor([value, -value], dtype=torch.int64, device=ctx.device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    high, low = int(bounds[0]), -int(bounds[1])
    if high != low:
        raise RuntimeError(f"the {ctx.world} processes disagree on {what}: from {low} to {high}")


def barrier(ctx: Dist) -> None:
    """Wait until every process gets here (nothing in one process), on ctx.host: with nccl a
    gloo group, whose waiting processes sleep where nccl's spin a core each (while rank 0
    validates, say, on the machine's cores)."""
    if ctx.world > 1:
        dist.barrier(group=ctx.host)


def gathered(value, ctx: Dist) -> list:
    """Every process's `value` (any picklable object) in rank order, exchanged on the host group;
    every process must call it. In one process: [value]."""
    if ctx.world == 1:
        return [value]
    values = [None] * ctx.world
    dist.all_gather_object(values, value, group=ctx.host)
    return values


def mean_over_ranks(values: torch.Tensor, ctx: Dist) -> torch.Tensor:
    """The element-wise mean over the processes of `values`, a tensor on ctx.device (nccl reduces
    CUDA tensors only); every process must call it. In one process: `values` itself."""
    if ctx.world == 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total / ctx.world


def host_group(ctx: Dist) -> dist.ProcessGroup | None:
    """A gloo group of every process, for collectives of host numbers (CPU tensors) that must not
    wait for the device as an nccl collective's result does; None in one process. Every process
    must call it, in the same order."""
    return dist.new_group(backend="gloo", timeout=COLLECTIVE_TIMEOUT) if ctx.world > 1 else None


def process_workers(workers: int, ctx: Dist) -> int:
    """A process's share of the machine's `workers` loader processes (a params value: the
    machine's, whatever the number of training processes): workers // world, at least 1 where
    workers > 0 (0, loading in the process itself, stays 0)."""
    return max(1, workers // ctx.world) if workers > 0 else 0


def share_cores(ctx: Dist, workers: int) -> None:
    """On the CPU, where the step runs on torch's threads: leave one core to each of this
    process's `workers` loader processes (stages.common.threads.training_threads). On a GPU the
    step does not run on them and torch's setting stays."""
    if ctx.device.type == "cpu":
        torch.set_num_threads(training_threads(workers, ctx.world))
