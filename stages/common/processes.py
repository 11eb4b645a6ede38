"""Worker processes that run a bounded number of tasks ahead of their caller.

joblib's `Parallel(return_as="generator")` starts the next task whenever a worker is free, so
results pile up in the caller's memory when it consumes them more slowly than the workers make
them (all of them, in the worst case: a whole split's meshes). `ordered_map` keeps at most
`ahead` tasks submitted and not yet consumed.
"""
from __future__ import annotations

from itertools import chain, islice
from typing import Callable, Iterable, Iterator, TypeVar

from joblib.executor import get_memmapping_executor

from stages.common.threads import bounded, usable_cores

T = TypeVar("T")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "NUMEXPR_NUM_THREADS")


def ordered_map(fn: Callable[..., T], jobs: Iterable[tuple], workers: int, ahead: int | None = None) -> Iterator[T]:
    """fn(*job) for each job, in job order, on `workers` loky processes (joblib's reusable pool;
    in this process when workers <= 1 or there is a single job), each with its BLAS and OpenMP pools limited to its
    share of the cores. At most `ahead` (None: 2 x workers) jobs are submitted and not yet
    consumed. fn and its arguments must be picklable (arrays over 1 MB travel as memory maps);
    an exception in a job is raised here when its result is reached."""
    jobs = iter(jobs)
    head = list(islice(jobs, 2))
    jobs = chain(head, jobs)
    if workers <= 1 or len(head) < 2:
        for job in jobs:
            yield fn(*job)
        return
    share = str(max(1, usable_cores() // workers))
    executor = get_memmapping_executor(workers, env={name: share for name in THREAD_VARIABLES})
    yield from bounded(lambda *job: executor.submit(fn, *job), jobs, ahead or 2 * workers)
