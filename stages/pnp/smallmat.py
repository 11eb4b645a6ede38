"""Products of small matrices written out entry by entry inside torch.compile.

The PnP layer multiplies 3 x 3 rotations, 6 x 6 normal matrices and their vectors. Eager code
calls the library (`@`); on a GPU each such product is a matrix-multiply kernel of its own,
launched by the host, and a compiled Levenberg-Marquardt iteration made 9 of them
(docs/benchmarks.md, "One GPU"). Inside torch.compile the functions here write every entry as
a sum of products over Python indices, which the compiler fuses into the kernels around them.
The dimensions a function unrolls must be small (a Python loop over each, fixed in the compiled
code); the others may be anything.
"""
from __future__ import annotations

import torch


def matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A (..., m, k) @ B (..., k, n) -> (..., m, n); entry by entry when compiling (m and k
    unrolled: small; n any)."""
    if not torch.compiler.is_compiling():
        return A @ B
    rows = []
    for i in range(A.shape[-2]):
        row = A[..., i, 0, None] * B[..., 0, :]
        for k in range(1, A.shape[-1]):
            row = row + A[..., i, k, None] * B[..., k, :]
        rows.append(row)
    return torch.stack(rows, -2)


def matvec(A: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (..., m, k) @ x (..., k) -> (..., m); entry by entry when compiling (m and k unrolled)."""
    return matmul(A, x[..., None])[..., 0]


def inner_products(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """A (..., m, n) @ B (..., k, n)^T -> (..., m, k): the sums over the last axis of every
    row pair, for small m and k (n any); inside torch.compile a broadcast product summed over n,
    which the compiler turns into a reduction kernel of its own instead of a library call."""
    if not torch.compiler.is_compiling():
        return A @ B.transpose(-1, -2)
    return (A[..., :, None, :] * B[..., None, :, :]).sum(-1)
