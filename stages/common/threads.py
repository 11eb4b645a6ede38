"""Thread pools beside torch's: numpy's BLAS must not compete with torch for the cores.

numpy's OpenBLAS keeps its worker threads spinning for a while after each call. In a training
or inference process the batch is prepared with numpy (PCA projection, 2D targets) right before
torch's forward, so those spinning threads take the cores torch needs: on the 2-core dev machine
the forward of ResNet18 at 64 px took 80-100 ms instead of 38 ms (benchmarks.bench_train).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from threadpoolctl import threadpool_limits

from stages.common.schema import AUTO

T = TypeVar("T")


def single_thread_blas() -> None:
    """Limit numpy's BLAS (OpenBLAS, MKL) to one thread for the rest of the process."""
    threadpool_limits(limits=1, user_api="blas")


def single_thread_worker() -> None:
    """In a worker process of a pool that already spreads the work over the cores: numpy's BLAS,
    OpenMP, OpenCV's own pool and torch (when loaded) each run on one thread. Without it every
    worker starts a pool per library sized to the whole machine: 16 workers x 16 OpenCV threads
    on 16 cores (joblib limits BLAS and OpenMP in its workers, not OpenCV)."""
    import sys

    import cv2
    threadpool_limits(limits=1)
    cv2.setNumThreads(1)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share,
    not the machine's count); os.cpu_count() where affinity is unknown (macOS)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def training_threads(workers: int, processes: int = 1) -> int:
    """Torch's intra-op threads for one of `processes` training processes on this machine's cores
    whose batches come from `workers` loader processes of its own: the cores left once each worker
    has one, at least 1. Where the workers share the cores with torch's threads instead, the
    step's parallel regions wait for a thread the kernel has given to a worker: on the 2-core
    machine coarse_train's streamed step, one pass after the other, ran at 81.3-85.1 images/s
    with 2 threads and 84.0-87.9 with 1 in the same runs (docs/benchmarks.md, "Data path at
    scale")."""
    return max(1, usable_cores() // max(processes, 1) - workers)


def thread_count(value: int | str) -> int:
    """A params thread count: an int as it is, `auto` (stages.common.schema.OrAuto) -> usable_cores()."""
    return usable_cores() if value == AUTO else int(value)


def map_rows(fn: Callable[[slice], T], rows: int, workers: int, chunk: int | None = None) -> list[T]:
    """fn over consecutive slices of `rows` rows on `workers` threads -> its results in row order.
    Slices of `chunk` rows (the last one shorter), the same whatever the thread count; None: one
    slice a thread. For work that releases the GIL (numpy's array loops, OpenCV)."""
    size = max(1, chunk or -(-rows // max(workers, 1)))
    parts = [slice(start, start + size) for start in range(0, rows, size)]
    if workers <= 1:
        return [fn(part) for part in parts]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, parts))


def bounded(submit: Callable[..., Future], jobs: Iterable[tuple], limit: int) -> Iterator:
    """submit(*job) for each job -> the futures' results in job order, with at most `limit` jobs
    submitted and not yet consumed (the results never pile up behind a slow caller); a job's
    exception is raised where its result is reached."""
    pending: deque = deque()
    for job in jobs:
        pending.append(submit(*job))
        if len(pending) >= limit:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def ordered_thread_map(fn: Callable[..., T], jobs: Iterable[tuple], workers: int,
                       ahead: int | None = None) -> Iterator[T]:
    """fn(*job) for each job on `workers` threads, in job order, at most `ahead` (None: 2 x
    workers) jobs submitted and not yet consumed. For work that releases the GIL (numpy's array
    loops, file reads)."""
    workers = max(workers, 1)
    with ThreadPoolExecutor(workers) as pool:
        yield from bounded(lambda *job: pool.submit(fn, *job), jobs, ahead or 2 * workers)
