"""stages.pnp.smallmat: the written-out small products inside torch.compile against the
library's, and the normal equations written out against their einsums."""
import torch
from torch.profiler import ProfilerActivity, profile

from stages.pnp import cost
from stages.pnp.smallmat import inner_products, matmul, matvec

MATRIX_PRODUCTS = ("aten::bmm", "aten::mm", "aten::matmul", "aten::baddbmm", "aten::addmm")


def _products(R, x, H, step, left, right):
    return matmul(R, x), matmul(R, R), matvec(H, step), inner_products(left, right)


def test_compiled_products_match_the_library_and_call_no_matrix_multiply():
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(5, 3, 3, generator=g), torch.randn(5, 3, 70, generator=g), torch.randn(5, 6, 6, generator=g),
            torch.randn(5, 6, generator=g), torch.randn(5, 8, 70, generator=g), torch.randn(5, 10, 70, generator=g))
    eager = _products(*args)
    R, x, H, step, left, right = args
    assert torch.equal(eager[0], R @ x) and torch.equal(eager[3], left @ right.transpose(1, 2))
    compiled = torch.compile(_products, dynamic=True)
    compiled(*args)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fused = compiled(*args)
    assert not [e.name for e in prof.events() if e.name in MATRIX_PRODUCTS]
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_written_out_normal_equations_match_the_einsums():
    moments = torch.randn(7, 8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    H, g = cost.written_out_normal_equations(moments)
    H_ref, g_ref = cost._assemble_normal_equations(moments)
    torch.testing.assert_close(H, H_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(g, g_ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(H, H.transpose(1, 2), rtol=0, atol=1e-12)
