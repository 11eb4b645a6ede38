"""numpy's BLAS pool is limited to one thread for training and inference processes; `auto`
thread counts are the process's usable cores."""
import os
from dataclasses import replace
from pathlib import Path

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from stages.common.params import load_params
from stages.common.threads import single_thread_blas, thread_count, usable_cores
from stages.nets.inference import InferSettings


def blas_threads() -> list[int]:
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_single_thread_blas_limits_every_blas_pool_to_one_thread():
    before = {pool["prefix"]: pool["num_threads"] for pool in threadpool_info()}
    try:
        single_thread_blas()
        threads = blas_threads()
        assert threads and all(n == 1 for n in threads)
    finally:
        threadpool_limits(limits=before)


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_auto_threads_are_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert usable_cores() == 3 and thread_count("auto") == 3 and thread_count(2) == 2
    cfg = replace(load_params(Path(__file__).resolve().parents[2] / "params.yaml").infer, device="cpu", workers="auto")
    assert InferSettings.of(cfg).workers == 3
    assert InferSettings.of(replace(cfg, workers=2)).workers == 2


def test_map_rows_covers_every_row_once_in_order_with_slices_fixed_by_the_chunk():
    from stages.common.threads import map_rows
    for workers in (1, 2, 5):
        assert map_rows(lambda rows: (rows.start, rows.stop), 10, workers, chunk=4) == [(0, 4), (4, 8), (8, 12)]
    assert map_rows(lambda rows: list(range(10))[rows], 10, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert map_rows(lambda rows: rows, 0, 4) == []


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no CPU affinity on this platform")
def test_a_cpu_trainer_leaves_a_core_to_each_loader_worker_and_a_gpu_trainer_keeps_torchs_threads(monkeypatch):
    import torch

    from stages.common.distributed import Dist, share_cores
    from stages.common.threads import training_threads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert [training_threads(w) for w in (0, 4, 15, 16, 40)] == [16, 12, 1, 1, 1]
    assert training_threads(2, processes=4) == 2 and training_threads(0, processes=3) == 5
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        share_cores(Dist(0, 1, torch.device("cuda", 0)), 4)
        assert torch.get_num_threads() == 3
        share_cores(Dist(0, 2, torch.device("cpu")), 6)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
