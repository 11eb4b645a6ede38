"""stages.common.processes.ordered_map and stages.common.threads.ordered_thread_map: results in order,
at most `ahead` jobs beyond the caller, a job's exception raised where its result is reached."""
import os
import time

import pytest

from stages.common.processes import ordered_map
from stages.common.threads import ordered_thread_map


def _mark(folder: str, k: int) -> int:
    """Write folder/<k> (the job ran) -> k squared."""
    open(os.path.join(folder, str(k)), "w").close()
    return k * k


def _fail_at(k: int, bad: int) -> int:
    """k, or a ValueError naming k when k == bad."""
    if k == bad:
        raise ValueError(f"job {k}")
    return k


def test_jobs_run_at_most_ahead_of_a_slow_caller_and_come_back_in_order(tmp_path):
    results = ordered_map(_mark, ((str(tmp_path), k) for k in range(20)), workers=2, ahead=3)
    assert next(results) == 0
    time.sleep(1.0)                       # the workers are idle long before: only 3 jobs were given to them
    assert len(os.listdir(tmp_path)) == 3
    assert list(results) == [k * k for k in range(1, 20)]
    assert len(os.listdir(tmp_path)) == 20


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_raises_when_its_result_is_reached(workers):
    results = ordered_map(_fail_at, ((k, 5) for k in range(10)), workers=workers)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="job 5"):
        next(results)


def test_a_single_job_runs_in_this_process():
    assert list(ordered_map(os.getpid, [()], workers=4)) == [os.getpid()]


def test_threads_run_at_most_ahead_of_a_slow_caller_and_come_back_in_order():
    started = []

    def job(k: int) -> int:
        started.append(k)
        return k * k

    results = ordered_thread_map(job, ((k,) for k in range(20)), workers=2, ahead=3)
    assert next(results) == 0
    time.sleep(0.2)                       # the threads are idle: no job past the first 3 was submitted
    assert set(started) <= {0, 1, 2}
    assert list(results) == [k * k for k in range(1, 20)]
    failing = ordered_thread_map(_fail_at, ((k, 5) for k in range(10)), workers=2)
    assert [next(failing) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="job 5"):
        next(failing)
