"""The CPU that processes waiting at a barrier burn while rank 0 works (issue 17: several GPUs).

Between epochs the training stages' other processes wait while rank 0 validates on the machine's
cores. `stages.common.distributed.barrier` waits on `ctx.host`: with nccl a gloo group, where
the default group's barrier would hold each waiter on its GPU's stream. Here 2 processes
(`torch.multiprocessing`, the project's `start_distributed`) on --device: rank 0 sleeps
--seconds while rank 1 waits, once at `barrier(ctx)` and once at the default group's
`dist.barrier()`; printed per way: rank 1's wall and CPU seconds of the wait and their ratio
(1.0: a core spun throughout). On the CPU both ways are gloo; nccl needs 2 GPUs.

    python -m benchmarks.bench_wait [--device cpu|cuda] [--seconds 5]
"""
from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from stages.common.distributed import barrier, start_distributed


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_wait(wait, rank: int, seconds: float) -> tuple[float, float]:
    """(wall, CPU) seconds of rank's `wait()`, rank 0 arriving `seconds` late."""
    dist.barrier()
    if rank == 0:
        time.sleep(seconds)
    wall, cpu = time.perf_counter(), time.process_time()
    wait()
    return time.perf_counter() - wall, time.process_time() - cpu


def waiter(rank: int, port: int, device: str, seconds: float, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank))
    ctx = start_distributed(device)
    ways = (("barrier(ctx)", lambda: barrier(ctx), ctx.host), ("default group", dist.barrier, None))
    for way, wait, group in ways:
        wall, cpu = timed_wait(wait, rank, seconds)
        if rank == 1:
            queue.put((way, dist.get_backend(group), wall, cpu))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit(f"--device cuda needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(waiter, args=(free_port(), args.device, args.seconds, queue), nprocs=2, join=True)
    print(f"rank 1 waiting {args.seconds:g} s for rank 0 on {args.device}:")
    while not queue.empty():
        way, backend, wall, cpu = queue.get()
        print(f"  {way:14s} ({backend}): wall {wall:.2f} s, CPU {cpu:.3f} s = {cpu / wall:.3f} of a core")


if __name__ == "__main__":
    main()
