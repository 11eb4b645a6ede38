"""numpy's BLAS pool is limited to one thread for training and inference processes."""
from threadpoolctl import threadpool_info, threadpool_limits

from stages.common.threads import single_thread_blas


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
