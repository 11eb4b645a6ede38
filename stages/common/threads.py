"""Thread pools beside torch's: numpy's BLAS must not compete with torch for the cores.

numpy's OpenBLAS keeps its worker threads spinning for a while after each call. In a training
or inference process the batch is prepared with numpy (PCA projection, 2D targets) right before
torch's forward, so those spinning threads take the cores torch needs: on the 2-core dev machine
the forward of ResNet18 at 64 px took 80-100 ms instead of 38 ms (benchmarks.bench_train).
"""
from __future__ import annotations

from threadpoolctl import threadpool_limits


def single_thread_blas() -> None:
    """Limit numpy's BLAS (OpenBLAS, MKL) to one thread for the rest of the process."""
    threadpool_limits(limits=1, user_api="blas")
